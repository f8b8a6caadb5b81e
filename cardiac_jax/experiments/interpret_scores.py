"""How well gene rankings find the simulator's true genes: the model's attributions (interpret.explain) beside
scanpy's Wilcoxon rank_genes_groups (training cells, one class against the rest) and a per-cell logistic
regression's standardised coefficients, each scored against `simulate.true_genes`: R-precision (k = the class's
true genes among the model's input genes) and precision at 10, per class and averaged, and the overlap of the top
20 between runs (seeds).
"""

import itertools
import pathlib
import time

import anndata
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import scanpy as sc
from absl import logging
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from cardiac_jax import dataset, figures, integrity, interpret, simulate
from cardiac_jax import workdir as rundir
from cardiac_jax.errors import ConfigError
from cardiac_jax.experiments import tables

TOP_OVERLAP = 20
PRECISION_AT = 10


def ground_truth(config):
  """{class: true genes} of the simulator that wrote the run's data (`simulate.true_genes`)."""
  if config.data.source != "simulated":
    raise ConfigError(f"data.source={config.data.source!r}: true genes are known only for the built-in simulated "
                      "data (data.source='simulated')")
  return simulate.true_genes(config.sim.n_genes, config.sim.seed)


def reference_scores(bundle):
  """{method: [classes, genes] scores} of the references, fitted on the run's training cells and its input genes:
  scanpy's Wilcoxon rank_genes_groups (one class against the rest; its z-scores) and a per-cell logistic
  regression's coefficients on standardised genes (multinomial)."""
  data = dataset.prepare(bundle.config)
  genes, classes = list(bundle.record["genes"]), list(bundle.classes)
  if list(data.genes) != genes:
    raise ConfigError(f"{bundle.workdir}: the data prepared now have other input genes than the run; was the data "
                      "or the code of the data's journey changed since training?")
  train_cells = data.cell_split == 0
  x, labels = data.cell_x[train_cells], data.cell_labels[train_cells]
  adata = anndata.AnnData(X=x, obs=pd.DataFrame({"label": pd.Categorical(np.asarray(classes)[labels])}))
  adata.var_names = genes
  adata.obs_names = [str(i) for i in range(len(x))]
  sc.tl.rank_genes_groups(adata, "label", method="wilcoxon", reference="rest", n_genes=len(genes), use_raw=False)
  result = adata.uns["rank_genes_groups"]
  column = {g: i for i, g in enumerate(genes)}
  wilcoxon = np.full((len(classes), len(genes)), np.nan)
  for c, name in enumerate(classes):
    if name in result["names"].dtype.names:
      wilcoxon[c, [column[g] for g in result["names"][name]]] = result["scores"][name]
  model = LogisticRegression(max_iter=1000, random_state=bundle.config.seed)
  model.fit(StandardScaler().fit_transform(x), labels)
  coefficients = np.full((len(classes), len(genes)), np.nan)
  coefficients[model.classes_] = model.coef_
  return {"wilcoxon": wilcoxon, "logistic_regression": coefficients}


def rankings(table):
  """{method: {class: genes, rank 1 first}} of a long (method, class, gene, score, rank) table."""
  ordered = table.sort_values(["method", "class", "rank"], kind="stable")
  return {m: {c: list(g.gene) for c, g in part.groupby("class", sort=False)}
          for m, part in ordered.groupby("method", sort=False)}


def precision_table(ranked, truth, genes, at=PRECISION_AT):
  """Rows (method, class, k, r_precision, precision_at_10): k = the class's true genes among `genes`; classes
  without any are left out."""
  inputs = set(genes)
  rows = []
  for method, by_class in ranked.items():
    for name, order in by_class.items():
      true = set(truth.get(name, ())) & inputs
      if not true:
        continue
      k = len(true)
      rows.append({"method": method, "class": name, "k": k, "r_precision": len(true & set(order[:k])) / k,
                   f"precision_at_{at}": len(true & set(order[:at])) / at})
  return pd.DataFrame(rows)


def top_overlap(runs, top=TOP_OVERLAP):
  """Rows (method, class, overlap): mean over pairs of runs of |top genes of a ∩ top genes of b| / top."""
  rows = []
  for method in runs[0]:
    for name in runs[0][method]:
      pairs = [len(set(a[method][name][:top]) & set(b[method][name][:top])) / top
               for a, b in itertools.combinations(runs, 2) if name in a[method] and name in b[method]]
      if pairs:
        rows.append({"method": method, "class": name, f"top{top}_overlap": float(np.mean(pairs))})
  return pd.DataFrame(rows)


def score_run(workdir, steps=interpret.IG_STEPS, progress=True):
  """One run's gene rankings (its interpret/attributions.csv, written first if missing, and the references) and
  their precision against the simulator's true genes. Returns (rankings, precision rows with the run's seed)."""
  bundle = rundir.load(workdir)
  truth = ground_truth(bundle.config)
  path = bundle.workdir / rundir.INTERPRET / interpret.ATTRIBUTIONS
  if not path.exists():
    interpret.explain(workdir, steps=steps, progress=progress)
  table = pd.read_csv(path)
  genes, classes = list(bundle.record["genes"]), list(bundle.classes)
  references = pd.concat([interpret.ranking_table(m, s, classes, genes) for m, s in reference_scores(bundle).items()])
  ranked = rankings(pd.concat([table, references], ignore_index=True))
  rows = precision_table(ranked, truth, genes)
  rows.insert(0, "seed", bundle.config.seed)
  rows.insert(0, "workdir", str(bundle.workdir))
  return ranked, rows


METHOD_NAMES = {
    "integrated_gradients": "model, integrated gradients",
    "integrated_gradients_own_step": "model, integrated gradients, own step only",
    "gradient_x_input": "model, gradient x input",
    "gradient_own_step": "model, gradient, own step only",
    "wilcoxon": "Wilcoxon rank_genes_groups",
    "logistic_regression": "per-cell logistic regression coefficients",
}


def _class_order(names):
  """The simulator's type order (then any other class, sorted)."""
  order = {t: i for i, t in enumerate(simulate.TYPES)}
  return sorted(set(names), key=lambda c: (order.get(c, len(order)), c))


def markdown(per_run, overlap, n_runs):
  """The score table: per method, R-precision and precision at 10 (class mean, then mean ± sd over runs) and the
  top-20 overlap between runs; then R-precision per class (mean over runs)."""
  by_run = per_run.groupby(["method", "workdir"])[["r_precision", f"precision_at_{PRECISION_AT}"]].mean()
  lines = [f"| method | R-precision | precision@{PRECISION_AT} | top-{TOP_OVERLAP} overlap between runs | runs |",
           "|---|---|---|---|---|"]
  for method, name in METHOD_NAMES.items():
    if method not in by_run.index.get_level_values(0):
      continue
    part = by_run.loc[method]
    stable = overlap[overlap.method == method][f"top{TOP_OVERLAP}_overlap"].mean() if len(overlap) else float("nan")
    cells = [tables.pm(part[col], 3) for col in ("r_precision", f"precision_at_{PRECISION_AT}")]
    lines.append(f"| {name} | {cells[0]} | {cells[1]} | {stable:.3f} | {len(part)} |")
  classes = _class_order(per_run["class"])
  per_class = per_run.groupby(["method", "class"])["r_precision"].mean()
  ks = per_run.groupby("class")["k"].agg(lambda k: f"{k.min()}-{k.max()}" if k.min() != k.max() else str(k.min()))
  lines += ["", "| method | " + " | ".join(f"{c} (k={ks[c]})" for c in classes) + " |",
            "|---|" + "---|" * len(classes)]
  for method, name in METHOD_NAMES.items():
    if method in per_class.index.get_level_values(0):
      lines.append(f"| {name} | " + " | ".join(f"{per_class[method].get(c, float('nan')):.2f}" for c in classes) + " |")
  lines.append(f"\nR-precision per class, mean over {n_runs} runs; k = true genes among the model's input genes.")
  return "\n".join(lines) + "\n"


def plot_scores(per_run, path):
  """Bars: R-precision per class and method (mean over runs), with the runs' spread."""
  classes = _class_order(per_run["class"])
  methods = [m for m in METHOD_NAMES if (per_run.method == m).any()]
  width = 0.8 / len(methods)
  fig, ax = plt.subplots(figsize=(9, 4))
  for i, method in enumerate(methods):
    part = per_run[per_run.method == method].groupby("class")["r_precision"]
    mean, sd = part.mean().reindex(classes), part.std(ddof=0).reindex(classes).fillna(0)
    ax.bar(np.arange(len(classes)) + i * width, mean, width, yerr=sd, label=METHOD_NAMES[method], capsize=2)
  ax.set_xticks(np.arange(len(classes)) + 0.4 - width / 2, classes)
  ax.set_ylabel("R-precision against the simulator's true genes")
  ax.set_ylim(0, 1)
  ax.legend(fontsize=8)
  figures.save(fig, path)


def score(workdirs, output, steps=interpret.IG_STEPS, progress=True):
  """Scores every run's rankings against the simulator's true genes and the runs against each other (seeds); writes
  output/scores.csv (per run, method and class), stability.csv, scores.md and scores.png. Returns scores.md."""
  started = time.perf_counter()
  if not workdirs:
    raise ConfigError("score needs at least one workdir")
  scored = [score_run(w, steps, progress) for w in workdirs]
  per_run = pd.concat([rows for _, rows in scored], ignore_index=True)
  overlap = top_overlap([ranked for ranked, _ in scored]) if len(scored) > 1 else pd.DataFrame()
  text = markdown(per_run, overlap, len(scored))
  output = pathlib.Path(output).expanduser()
  output.mkdir(parents=True, exist_ok=True)
  integrity.write_atomic(output / "scores.csv", per_run.to_csv(index=False, float_format="%.6g"))
  integrity.write_atomic(output / "stability.csv", overlap.to_csv(index=False, float_format="%.6g"))
  integrity.write_atomic(output / "scores.png", lambda tmp: plot_scores(per_run, tmp))
  integrity.write_atomic(output / "scores.md", text)
  logging.info("interpret: %d runs scored in %.0f s; table in %s", len(scored), time.perf_counter() - started,
               output / "scores.md")
  return text
