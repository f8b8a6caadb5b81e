"""How the novelty score was chosen without a test donor: each type left out of the training cells in turn,
validation donors scored (docs/trust.md, "Novelty from the whole transcriptome").

  python scripts/novelty_choice.py [--config=configs/annotate.py]

For each cell type T of the config's data (its own split, seed 0): novelty.fit on the training donors' cells of
every other type, then the validation donors' cells are scored, and each part of the score (the distance to the
nearest reference cells in the PCA, the count of raised genes) and the score itself is judged by the AUROC of
the known types' cells (high) against T's (low). Beside them, the ceiling no unsupervised score reaches: a
one-vs-rest logistic regression for T trained with T's labels on every training cell over all detected genes
(standardised log expression), scored on the same validation cells. Prints a markdown table.
"""

import sys
import pathlib

import numpy as np
from absl import app, flags, logging
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from cardiac_jax import cli, dataset, novelty, preprocess  # noqa: E402

FLAGS = flags.FLAGS
cli.define_config("annotate", "The config whose data and split are used.")


def main(argv):
  del argv
  config = FLAGS.config
  data = dataset.prepare(config)
  adata, _ = dataset.load(config)
  adata, _, _ = preprocess.quality_control(adata, time_key=config.data.time_key, label_key=config.data.label_key,
                                           donor_key=config.data.donor_key, time_order=config.data.time_order)
  x = preprocess.as_csr(adata.X)
  labels, split = data.cell_labels, data.cell_split
  kind, target_sum = data.preprocessing.kind, data.preprocessing.target_sum
  query = np.flatnonzero(split == 1)
  everyone = np.flatnonzero(split == 0)
  detected = np.flatnonzero(preprocess.detected_in(x, everyone) >= 3)
  log_all = preprocess.log_columns(x, detected, kind, target_sum)
  mean, scale = log_all[everyone].mean(0), log_all[everyone].std(0) + 1e-2
  rows = {"distance to the nearest reference cells": [], "genes raised above any training cell's": [],
          "novelty score (the larger of the two, standardised)": [],
          "ceiling: supervised one-vs-rest regression with the type's labels": []}
  for t in range(len(data.encoding.classes)):
    known = ~(labels[query] == t)
    model = novelty.fit(x, adata.var_names, everyone[labels[everyone] != t], kind, target_sum, config.seed,
                        config.data.novelty_genes or novelty.N_GENES)
    parts = model.parts(x[query], adata.var_names, kind)
    rows["distance to the nearest reference cells"].append(roc_auc_score(known, -parts[:, 0]))
    rows["genes raised above any training cell's"].append(roc_auc_score(known, -parts[:, 1]))
    rows["novelty score (the larger of the two, standardised)"].append(roc_auc_score(known, model.score_block(x[query], adata.var_names, kind)))
    oracle = LogisticRegression(C=0.05, max_iter=300).fit((log_all[everyone] - mean) / scale, labels[everyone] == t)
    rows["ceiling: supervised one-vs-rest regression with the type's labels"].append(
        roc_auc_score(known, -oracle.decision_function((log_all[query] - mean) / scale)))
  classes = data.encoding.classes
  print(f"Validation donors' cells ({len(query):,}), each type left out of the training cells in turn; AUROC of "
        "known (high) against the left-out type (low).\n")
  print("| score | " + " | ".join(classes) + " | mean |")
  print("|---|" + "---|" * (len(classes) + 1))
  for name, values in rows.items():
    print(f"| {name} | " + " | ".join(f"{v:.3f}" for v in values) + f" | {np.mean(values):.3f} |")


if __name__ == "__main__":
  logging.set_verbosity(logging.WARNING)
  app.run(main)
