"""Honest numbers in one run: the model, its ablations, the three scales and the three split units, each over
several seeds and beside baselines fitted on the very same sequences.

Within a seed, every method of a data setting (scale x split unit) sees identical splits and sequences:
`dataset.prepare` is deterministic given the config, and ablations change only the model or the loss.
Each training run has its own workdir under the suite's, so an interrupted suite resumes: finished runs are
read back from their results.json.

Writes <workdir>/results.json (every run), results.md (the table) and results.png (accuracy with spread).
"""

import json
import pathlib
import time

import matplotlib.pyplot as plt
import numpy as np
from absl import logging

from cardiac_jax import dataset, figures, integrity, metrics, report
from cardiac_jax import workdir as rundir
from cardiac_jax.configs import annotate_fast
from cardiac_jax.configs import default as default_config
from cardiac_jax.errors import ConfigError
from cardiac_jax.experiments import baselines, celltypist_compare, tables
from cardiac_jax.sequences import MODES

# The annotate recipe before gene scaling, time channels and the linear path (the per-cell rows' first version).
PREVIOUS_RECIPE = {"data.input_scaling": "sequence", "data.time_channels": False, "model.linear_path": False,
                   "train.linear_start": False, "train.calibration_method": "auto",
                   "train.early_stopping_metric": "accuracy"}
ACCURACY_STOPPING = {"train.early_stopping_metric": "accuracy"}
NLL_CALIBRATION = dict(ACCURACY_STOPPING, **{"train.calibration_method": "auto"})


SMALL_NETWORK = default_config.network(32, 1)
# configs/default.py's network (the seed's sizes), which the annotate config had before its own.
SEED_NETWORK = {"model.hidden_dim": 128, "model.num_layers": 3, "model.num_heads": 8, "model.head_dims": (128, 64)}
# Each cell alone, one step (the annotate config's no-context ablation).
CELL_ALONE = {"data.sequence_mode": "cell", "model.pooling": "mean"}


# Model rows: id -> (data setting (scale, split unit), method name in the table, config overrides).
ROWS = {
    "model": (("base", "donor"), "model", {}),
    "no-attention": (("base", "donor"), "model without attention", {"model.use_attention": False}),
    "unidirectional": (("base", "donor"), "model, unidirectional LSTM", {"model.bidirectional": False}),
    "no-label-smoothing": (("base", "donor"), "model without label smoothing", {"train.label_smoothing": 0.0}),
    "bfloat16": (("base", "donor"), "model, bfloat16 computation", {"model.dtype": "bfloat16"}),
    "medium": (("medium", "donor"), "model", {}),
    "large": (("large", "donor"), "model", {}),
    "split-sequence": (("base", "sequence"), "model", {}),
    "split-cell": (("base", "cell"), "model", {}),
    # Per-cell annotation (configs/annotate.py is the 'annotate' scale): test metrics per cell. Each ablation
    # takes one part of the annotate recipe back (PREVIOUS_RECIPE: the recipe before gene scaling, time channels
    # and the linear path).
    "anchored": (("annotate", "donor"), "model, anchored (annotate config)", {}),
    "cell-alone": (("annotate", "donor"), "model, each cell alone (no context)", CELL_ALONE),
    "cell-small": (("annotate", "donor"), "model, each cell alone, hidden 32, 1 LSTM layer (annotate_fast config)",
                   annotate_fast.FAST),
    "anchored-linear-start": (("annotate", "donor"), "model, early stopping on accuracy, calibration by NLL",
                              NLL_CALIBRATION),
    "anchored-time": (("annotate", "donor"), "model, no linear start, early stopping on accuracy, calibration by NLL",
                      dict(NLL_CALIBRATION, **{"train.linear_start": False})),
    "anchored-linear-path": (("annotate", "donor"), "model, no time channels, no linear start, early stopping on "
                             "accuracy, calibration by NLL",
                             dict(NLL_CALIBRATION, **{"data.time_channels": False, "train.linear_start": False})),
    "anchored-gene-scaled": (("annotate", "donor"), "model, previous recipe with genes scaled",
                             dict(PREVIOUS_RECIPE, **{"data.input_scaling": "gene"})),
    "seed-recipe": (("annotate", "donor"), "model, previous recipe (sequence z-score, no time, no linear path)",
                    PREVIOUS_RECIPE),
    "anchored-unweighted": (("annotate", "donor"), "model, unweighted loss", {"train.class_weighting": "none"}),
    "anchored-linear-start-small": (("annotate", "donor"), "model, hidden 32, 1 LSTM layer, early stopping on accuracy",
                                    dict(ACCURACY_STOPPING, **SMALL_NETWORK)),
    "anchored-no-smoothing": (("annotate", "donor"), "model, no label smoothing", {"train.label_smoothing": 0.0}),
    "anchored-small": (("annotate", "donor"), "model, hidden 32, 1 LSTM layer", SMALL_NETWORK),
    "anchored-64x1": (("annotate", "donor"), "model, hidden 64, 1 LSTM layer", default_config.network(64, 1)),
    "anchored-seed-network": (("annotate", "donor"), "model, the seed's network (hidden 128, 3 LSTM layers)",
                              SEED_NETWORK),
    # A small reference: the annotation model trained on SMALL_REFERENCE cells of the training donors.
    "small-reference": (("annotate-small", "donor"), "model, anchored (annotate config)", {}),
}
SMALL_REFERENCE = {"split.max_train_cells": 300}


# The rows of the seed's sequence task (the suite's default) and of per-cell annotation.
SEED_ROWS = tuple(r for r, (setting, _, _) in ROWS.items() if not setting[0].startswith("annotate"))
ANNOTATION_ROWS = tuple(r for r in ROWS if r not in SEED_ROWS)

# Model rows are also compared seed by seed with references: for the seed's type sequences the mean-expression
# baseline (the strongest one in every setting measured), for per-cell annotation the per-cell logistic regression
# on the same genes (the bar every annotation model has to clear), the same with the cell's time point (the
# linear model a temporal annotator has to beat) and CellTypist where it is installed.
PAIRED_BASELINE = "mean-expression logistic regression"
PAIRED_CELL_BASELINES = ("per-cell logistic regression", baselines.TIME_LOGREG, "CellTypist (best match)")


def _baselines(config):
  """{name: fn(data, seed) -> test predictions} of the baselines that fit the config's sequence mode."""
  if not MODES[config.data.sequence_mode].per_cell:
    return baselines.BASELINES
  methods = dict(baselines.CELL_BASELINES)
  if not MODES[config.data.sequence_mode].context:
    methods.pop("anchored-mean logistic regression")
  return dict(methods, **celltypist_compare.baselines(config))


def _with(config, overrides):
  return default_config.override(config.copy_and_resolve_references(), overrides)


def _setting(config, scales, scale, unit, seed):
  """The config of a data setting (scale, split unit) and a seed."""
  if scale not in scales:
    raise ConfigError(f"the suite needs the numbers of the {scale!r} scale; given scales: {list(scales)}")
  config = _with(config, dict(scales[scale], **{"split.unit": unit}))
  config.seed = seed
  return config


def _train_row(config, workdir):
  """Trains one run (or finds it finished) and scores its best model's labels as eval.py and annotate.py give
  them (report.test_report); returns its test accuracy, macro-F1, the seed's raw-logit accuracy and the training
  wall time."""
  tables.trained(config, workdir)
  *_, scored = report.test_report(rundir.load(workdir))
  results = rundir.read_results(workdir)
  return {"accuracy": scored["accuracy"], "macro_f1": scored["macro_f1"],
          "raw_logit_accuracy": scored["raw_logit_accuracy"], "val_accuracy": results["val_accuracy"],
          "val_top_class_macro_f1": results.get("val_top_class_macro_f1"), "seconds": results["seconds"]["total"]}


def run(config, workdir, seeds, rows=SEED_ROWS, scales=None):
  """Runs the suite and writes results.json, results.md and results.png into workdir. Returns the summary rows.

  Args:
    config: the config of the 'base' scale; every run starts from it.
    seeds: each seed changes the split, the sequences, the initialisation and dropout.
    rows: ids of ROWS to train; baselines run on every data setting those rows use.
    scales: {scale name: dotted config overrides} (configs/default.py's SCALES, 'annotate' and
      'annotate-small': see commands/suite.py); 'base' alone by default.
  """
  scales = scales or {"base": {}}
  unknown = [r for r in rows if r not in ROWS]
  if unknown:
    raise ConfigError(f"unknown suite rows {unknown}; known: {list(ROWS)}")
  workdir = pathlib.Path(workdir).expanduser()
  workdir.mkdir(parents=True, exist_ok=True)
  started = time.perf_counter()
  order = ["base", "medium", "large", "annotate", "annotate-small"]
  settings = sorted({ROWS[r][0] for r in rows}, key=lambda s: (order.index(s[0]), s[1]))
  runs = []
  for seed in seeds:
    for setting in settings:
      setting_name = f"{setting[0]}, split by {setting[1]}"
      base = _setting(config, scales, *setting, seed)
      data = dataset.prepare(base)
      leakage = data.report["leakage"]["cells_in_more_than_one_split"]
      for name, method in _baselines(base).items():
        logging.info("suite: %s on %s, seed %d", name, setting_name, seed)
        predictions = method(data, seed)
        scores = metrics.classification_report(data.test.labels, predictions, data.encoding.classes)
        runs.append(dict(setting=setting_name, method=name, kind="baseline", seed=seed, accuracy=scores["accuracy"],
                         macro_f1=scores["macro_f1"], leakage=leakage))
      for row in rows:
        row_setting, method, overrides = ROWS[row]
        if row_setting != setting:
          continue
        logging.info("suite: %s on %s, seed %d", method, setting_name, seed)
        result = _train_row(_with(base, overrides), workdir / "runs" / f"{row}_seed{seed}")
        runs.append(dict(setting=setting_name, method=method, kind="model", seed=seed, leakage=leakage, **result))
  summary, pairs = summarize(runs), paired(runs)
  elapsed = time.perf_counter() - started
  output = {"seeds": list(seeds), "wall_seconds": elapsed, "summary": summary, "paired": pairs, "runs": runs}
  integrity.write_atomic(workdir / "results.json", json.dumps(output, indent=2))
  integrity.write_atomic(workdir / "results.md", markdown(summary, seeds, elapsed, pairs))
  plot(summary, workdir / "results.png")
  logging.info("suite: %d runs in %.0f s; table in %s", len(runs), elapsed, workdir / "results.md")
  return summary


def summarize(runs):
  """One row per (setting, method): mean and standard deviation over seeds."""
  keys = list(dict.fromkeys((r["setting"], r["method"]) for r in runs))
  summary = []
  for setting, method in keys:
    group = [r for r in runs if r["setting"] == setting and r["method"] == method]
    accuracy_mean, accuracy_std = tables.mean_sd([r["accuracy"] for r in group])
    macro_f1_mean, macro_f1_std = tables.mean_sd([r["macro_f1"] for r in group])
    summary.append(dict(
        setting=setting, method=method, kind=group[0].get("kind", "model"), n=len(group), accuracy_mean=accuracy_mean, accuracy_std=accuracy_std,
        macro_f1_mean=macro_f1_mean, macro_f1_std=macro_f1_std, leakage=int(np.mean([r["leakage"] for r in group])),
    ))
  return summary


def paired(runs):
  """Each model row against its setting's reference seed by seed: the same split and cells, so differences pair.

  The references are, for per-cell annotation, the per-cell logistic regression and CellTypist (best match) where
  the setting has them, else the mean-expression logistic regression.

  Returns:
    one dict per (setting, model method): the baseline, n seeds, mean and sd over seeds of the model's accuracy
    and macro-F1 minus the baseline's, and in how many seeds the model is ahead on each.
  """
  rows = []
  for setting in dict.fromkeys(r["setting"] for r in runs):
    in_setting = [r for r in runs if r["setting"] == setting]
    per_cell = any(r["method"] == PAIRED_CELL_BASELINES[0] and r.get("kind") == "baseline" for r in in_setting)
    for baseline in PAIRED_CELL_BASELINES if per_cell else (PAIRED_BASELINE,):
      reference = {r["seed"]: r for r in in_setting if r["method"] == baseline}
      models = [r for r in in_setting if r.get("kind", "model") == "model" and r["seed"] in reference]
      for method in dict.fromkeys(r["method"] for r in models):
        row = dict(setting=setting, method=method, baseline=baseline)
        for metric in ("accuracy", "macro_f1"):
          diff = [r[metric] - reference[r["seed"]][metric] for r in models if r["method"] == method]
          mean, sd, wins = tables.differences(diff)
          row.update({"n": len(diff), f"{metric}_difference_mean": mean, f"{metric}_difference_std": sd,
                      f"{metric}_wins": wins})
        rows.append(row)
  return rows


def markdown(summary, seeds, elapsed, pairs=()):
  lines = [
      f"Test accuracy and macro-F1, mean ± sd over seeds {list(seeds)}; suite wall time {elapsed / 60:.1f} min.",
      "",
      "| data (scale, split unit) | method | test accuracy | macro-F1 | cells in >1 split | runs |",
      "|---|---|---|---|---|---|",
  ]
  for r in summary:
    lines.append(
        f"| {r['setting']} | {r['method']} | {r['accuracy_mean']:.4f} ± {r['accuracy_std']:.4f} | "
        f"{r['macro_f1_mean']:.4f} ± {r['macro_f1_std']:.4f} | {r['leakage']:,} | {r['n']} |"
    )
  if pairs:
    lines += [
        "",
        "Seed by seed against a reference (same split, sequences and cells): the row's test accuracy and macro-F1",
        "minus the reference's, mean ± sd over seeds, and the seeds where the row is ahead.",
        "",
        "| data (scale, split unit) | method | reference | accuracy - reference | ahead in | macro-F1 - reference "
        "| ahead in |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in pairs:
      lines.append(
          f"| {r['setting']} | {r['method']} | {r['baseline']} | {r['accuracy_difference_mean']:+.4f} ± "
          f"{r['accuracy_difference_std']:.4f} | {r['accuracy_wins']} of {r['n']} seeds | "
          f"{r['macro_f1_difference_mean']:+.4f} ± {r['macro_f1_difference_std']:.4f} | "
          f"{r['macro_f1_wins']} of {r['n']} seeds |")
  return "\n".join(lines) + "\n"


def plot(summary, path):
  labels = [f"{r['method']}\n[{r['setting']}]" for r in summary]
  fig, ax = plt.subplots(figsize=(9, 0.45 * len(summary) + 1.5))
  y = np.arange(len(summary))[::-1]
  colors = ["tab:gray" if r["kind"] == "baseline" else "tab:blue" for r in summary]
  ax.barh(y, [r["accuracy_mean"] for r in summary], xerr=[r["accuracy_std"] for r in summary], color=colors, capsize=3)
  ax.set_yticks(y, labels, fontsize=7)
  ax.set_xlabel("test accuracy (mean ± sd over seeds); grey = baselines")
  ax.set_xlim(0, 1)
  ax.grid(axis="x", alpha=0.3)
  figures.save(fig, path)
