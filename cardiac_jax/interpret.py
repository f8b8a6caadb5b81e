"""Why a label: which genes and which days a trained model's logits lean on, scored against the simulator's truth.

`explain(workdir)` explains the correctly classified test sequences of a trained run (the split train.py saved)
and writes `<workdir>/interpret/`:

* attributions.csv: per method, class and input gene, the mean attribution of the gene (summed over a sequence's
  steps) to that class's centred logit (the logit minus the mean of the sequence's logits) over the class's
  correctly classified test sequences (the first `MAX_PER_CLASS` of each class), and its rank (1 = most evidence
  for the class). Methods:
  - `integrated_gradients`: the path integral of the logit's gradient from a baseline to the input, times the
    input minus the baseline, by Gauss-Legendre quadrature with `IG_STEPS` points crowded near the baseline
    (`path_points`; `jax.grad` of the batch's logits, `jax.vmap` over the points of the path). Baseline: every gene channel 0, which after the per-sequence
    z-score is the sequence's own mean expression; the anchor channel of anchored sequences and the padding
    are kept as they are, so they get no attribution. Completeness (attributions sum to the logit at the input
    minus the logit at the baseline) is checked per sequence and reported (summary.json).
  - `gradient_x_input`: the gradient at the input times the input (the same baseline), the cheap first-order
    version.
  - `integrated_gradients_own_step` (anchored runs only): the integrated gradients of the anchor's own step alone,
    i.e. the genes of the labelled cell itself, leaving out what its context steps contribute.
  - `gradient_own_step` (anchored runs only): the gradient alone at the anchor's own step, the model's local
    coefficients (how much raising a gene in the labelled cell raises the class's centred logit), the analogue
    of a logistic regression's coefficients; not an attribution (no completeness).
  Padded steps get exactly zero attribution under both.
* top_genes.png: heatmap of each class's top genes by integrated gradients.
* by_day.csv and by_day.png: per class, the model's attention by time point (the weight the pooled queries put
  on each day's key, per head and averaged over heads) and the share of the absolute integrated-gradients
  attribution at each day.
* summary.json: completeness, counts, the wall time, and for anchored sequences the share of each cell's
  attribution that comes from its own step rather than from its context.

`score(workdirs)` ranks genes for each class by those attributions, by scanpy's Wilcoxon `rank_genes_groups`
(training cells, one class against the rest) and by a per-cell logistic regression's standardised
coefficients, and scores each ranking against the simulator's true genes (`simulate.true_genes`): R-precision
(k = the class's true genes among the model's input genes) and precision at 10, per class and averaged, and
the overlap of the top 20 between runs (seeds).
"""

import itertools
import json
import pathlib
import time

import anndata
import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import scanpy as sc
from absl import logging
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler
from tqdm import tqdm

from cardiac_jax import batches as batching
from cardiac_jax import dataset, inference, integrity, simulate
from cardiac_jax import train as train_lib
from cardiac_jax.errors import ConfigError, DataError

# Integrated gradients: 64 Gauss-Legendre points, crowded near the baseline (alpha = u ** 3). Measured on a base run
# (8 sequences): the largest completeness error was 3.2 with 32 plain points, 0.14 with these, against logit
# changes of about 4.
IG_STEPS = 64
PATH_POWER = 3
# Correctly classified test sequences explained per class (the first ones in stored order; None: all).
MAX_PER_CLASS = 50
# Sequences per batch; every batch runs IG_STEPS points of the path at once.
BATCH = 64
# Completeness holds for a sequence when |sum of attributions - (logit(x) - logit(baseline))| is at most
# COMPLETENESS_ATOL + COMPLETENESS_RTOL * |logit(x) - logit(baseline)|.
COMPLETENESS_ATOL = 0.05
COMPLETENESS_RTOL = 0.05
TOP_GENES_PLOTTED = 5
TOP_OVERLAP = 20
PRECISION_AT = 10
OUT_DIR = "interpret"


def gene_channels(x, n_genes):
  """[..., features] -> [..., features] mask: 1 on the first n_genes channels (genes), 0 on the anchor channel."""
  return (jnp.arange(x.shape[-1]) < n_genes).astype(x.dtype)


def make_logit_fn(apply_fn, params):
  """(x [b, steps, features], lengths [b], targets [b]) -> [b] each sequence's centred logit of its target class:
  the logit minus the mean of the sequence's logits (the softmax sees only such differences, so a shift shared by
  every class's logit is no evidence for one class)."""

  def logit(x, lengths, targets):
    logits = apply_fn({"params": params}, x, lengths, train=False)
    logits = logits - logits.mean(-1, keepdims=True)
    return jnp.take_along_axis(logits, targets[:, None], 1)[:, 0]

  return logit


def path_points(steps, power=PATH_POWER):
  """(alphas, weights) [steps] of the path integral over [0, 1]: Gauss-Legendre in u with alpha = u ** power, so
  the points crowd near the baseline, where the input layer's LayerNorm makes the integrand steep."""
  nodes, weights = np.polynomial.legendre.leggauss(steps)
  u = (nodes + 1) / 2
  return jnp.asarray(u ** power, jnp.float32), jnp.asarray(weights / 2 * power * u ** (power - 1), jnp.float32)


def make_attribution_fn(apply_fn, params, n_genes, steps=IG_STEPS, power=None):
  """A jitted (x, lengths, targets) -> dict of attributions of a batch, for a model's parameters.

  Returns dict: integrated_gradients, gradient_x_input and gradient (at the input) [b, steps, features] (zero at
  padded steps and on the anchor channel), logit and baseline_logit [b] (of the target class).
  """
  power = PATH_POWER if power is None else power
  logit = make_logit_fn(apply_fn, params)
  grad = jax.grad(lambda x, lengths, targets: logit(x, lengths, targets).sum())
  alphas, weights = path_points(steps, power)

  def attribute(x, lengths, targets):
    valid = batching_mask(lengths, x.shape[1])[..., None]
    genes = gene_channels(x, n_genes)
    baseline = x * (1.0 - genes)
    delta = x - baseline
    path_grads = jax.vmap(lambda a: grad(baseline + a * delta, lengths, targets))(alphas)  # [steps, b, T, F]
    at_input = grad(x, lengths, targets)
    return {
        "integrated_gradients": jnp.where(valid, delta * jnp.tensordot(weights, path_grads, 1), 0.0),
        "gradient_x_input": jnp.where(valid, delta * at_input, 0.0),
        "gradient": jnp.where(valid, genes * at_input, 0.0),
        "logit": logit(x, lengths, targets),
        "baseline_logit": logit(baseline, lengths, targets),
    }

  return jax.jit(attribute)


def batching_mask(lengths, steps):
  """[b, steps] bool, True at valid steps."""
  return jnp.arange(steps)[None, :] < lengths[:, None]


def make_attention_fn(apply_fn, params):
  """A jitted (x, lengths) -> [b, heads, steps, steps] attention weights of the model (None without attention)."""

  def attention(x, lengths):
    _, state = apply_fn({"params": params}, x, lengths, train=False, mutable=["intermediates"])
    return state["intermediates"]["attention"]["attention_weights"][0]

  return jax.jit(attention)


def pooled_attention(weights, lengths, anchor, pooling):
  """[b, heads, keys] the attention weight each key step gets from the queries that the pooling reads.

  Args:
    weights: [b, heads, queries, keys]; lengths: [b]; anchor: [b] anchor step (anchor pooling).
    pooling: 'mean' (the mean over valid queries) or 'anchor' (the anchor's query).
  """
  weights = np.asarray(weights)
  if pooling == "anchor":
    return weights[np.arange(len(weights)), :, anchor, :]
  valid = (np.arange(weights.shape[2])[None, :] < lengths[:, None]).astype(weights.dtype)
  return np.einsum("bhqk,bq->bhk", weights, valid) / lengths[:, None, None]


def attribute(bundle, sequences, *, steps=IG_STEPS, batch_size=BATCH, progress=True):
  """Attributions of each sequence to its label's logit (integrated gradients and gradient x input).

  Args:
    bundle: inference.Bundle of the run; sequences: Sequences with labels (the class explained).

  Returns:
    dict of numpy arrays: integrated_gradients, gradient_x_input and gradient [n, steps_used, features] (zero at
    padded steps and on the anchor channel), logit and baseline_logit [n], and attention [n, heads, steps_used] (the
    weights of `pooled_attention`; absent for a model without attention).
  """
  n_genes = len(bundle.record["genes"])
  attribute_fn = make_attribution_fn(bundle.apply_fn, bundle.params, n_genes, steps)
  use_attention = bundle.config.model.use_attention
  attention_fn = make_attention_fn(bundle.apply_fn, bundle.params) if use_attention else None
  used = batching.used_steps(sequences)
  outputs = []
  bar = tqdm(total=len(sequences), desc="attributing", unit="seq", disable=None if progress else True, leave=False)
  for lo in range(0, len(sequences), batch_size):
    part = sequences.take(np.arange(lo, min(lo + batch_size, len(sequences))))
    batch = next(batching.iterate(part, batch_size, steps=used))
    keep = batch["mask"] > 0
    out = {k: np.asarray(v)[keep] for k, v in attribute_fn(batch["x"], batch["lengths"], batch["labels"]).items()}
    if attention_fn is not None:
      weights = attention_fn(batch["x"], batch["lengths"])
      out["attention"] = pooled_attention(weights, batch["lengths"], np.maximum(part.anchor, 0).tolist()
                                          + [0] * (batch_size - len(part)), bundle.config.model.pooling)[keep]
    outputs.append(out)
    bar.update(len(part))
  bar.close()
  return {k: np.concatenate([o[k] for o in outputs]) for k in outputs[0]}


def completeness(result):
  """Completeness of integrated gradients: per-sequence error of the attributions' sum against the logit change."""
  total = result["integrated_gradients"].sum((1, 2))
  delta = result["logit"] - result["baseline_logit"]
  error = np.abs(total - delta)
  within = error <= COMPLETENESS_ATOL + COMPLETENESS_RTOL * np.abs(delta)
  return {
      "steps": int(result.get("steps", IG_STEPS)),
      "path": f"Gauss-Legendre in u, alpha = u ** {PATH_POWER}",
      "tolerance": f"|sum - delta| <= {COMPLETENESS_ATOL} + {COMPLETENESS_RTOL} * |delta|",
      "sequences": int(len(error)),
      "fraction_within_tolerance": float(within.mean()) if len(error) else float("nan"),
      "median_abs_error": float(np.median(error)) if len(error) else float("nan"),
      "max_abs_error": float(error.max()) if len(error) else float("nan"),
      "median_abs_delta": float(np.median(np.abs(delta))) if len(error) else float("nan"),
  }


def gene_scores(attributions, labels, n_classes, n_genes):
  """[classes, genes] mean over each class's sequences of the genes' attributions summed over steps (NaN rows for
  a class without sequences)."""
  per_sequence = attributions[..., :n_genes].sum(1)  # [n, genes]
  scores = np.full((n_classes, n_genes), np.nan)
  for c in range(n_classes):
    if (labels == c).any():
      scores[c] = per_sequence[labels == c].mean(0)
  return scores


def ranking_table(method, scores, classes, genes):
  """Long table (method, class, gene, score, rank) of a [classes, genes] score matrix; rank 1 = highest score."""
  rows = []
  for c, name in enumerate(classes):
    if np.isnan(scores[c]).all():
      continue
    order = np.argsort(-scores[c], kind="stable")
    rank = np.empty(len(genes), np.int64)
    rank[order] = np.arange(1, len(genes) + 1)
    rows.append(pd.DataFrame({"method": method, "class": name, "gene": list(genes), "score": scores[c], "rank": rank}))
  return pd.concat(rows, ignore_index=True).sort_values(["method", "class", "rank"], kind="stable")


def by_day(values, times, labels, n_classes, n_times):
  """[classes, n_times] mean over each class's sequences of `values` [n, steps] summed by the steps' time point."""
  n, steps = values.shape
  per_sequence = np.zeros((n, n_times))
  valid = times >= 0
  np.add.at(per_sequence, (np.repeat(np.arange(n), steps).reshape(n, steps)[valid], times[valid]), values[valid])
  out = np.full((n_classes, n_times), np.nan)
  for c in range(n_classes):
    if (labels == c).any():
      out[c] = per_sequence[labels == c].mean(0)
  return out


def day_table(result, labels, times, classes, time_points):
  """Long table (class, time_point, quantity, value): attention per head and averaged, and the share of the
  absolute integrated-gradients attribution, by time point. times: [n, steps] of `step_times`."""
  used = result["integrated_gradients"].shape[1]
  times = times[:, :used]
  magnitude = np.abs(result["integrated_gradients"]).sum(-1)
  share = magnitude / np.maximum(magnitude.sum(1, keepdims=True), 1e-12)
  quantities = {"attribution_share": share}
  if "attention" in result:
    attention = result["attention"][..., :used]
    quantities["attention_mean"] = attention.mean(1)
    quantities.update({f"attention_head{h}": attention[:, h] for h in range(attention.shape[1])})
  rows = []
  for quantity, values in quantities.items():
    table = by_day(values, times, labels, len(classes), len(time_points))
    for c, t in itertools.product(range(len(classes)), range(len(time_points))):
      rows.append({"class": classes[c], "time_point": time_points[t], "quantity": quantity, "value": table[c, t]})
  return pd.DataFrame(rows)


def own_step(attributions, anchor):
  """[n, 1, features] the attributions [n, steps, features] at each sequence's anchor step (anchor: [n])."""
  return attributions[np.arange(len(attributions)), anchor][:, None]


def own_step_share(result, sequences):
  """Anchored sequences: per sequence, the share of |integrated gradients| at the anchor's own step, and the signed
  attribution at the own step and at the context steps."""
  ig = result["integrated_gradients"]
  magnitude = np.abs(ig).sum(-1)  # [n, steps]
  rows = np.arange(len(ig))
  own = magnitude[rows, sequences.anchor]
  signed = ig.sum(-1)
  return {
      "own_share": own / np.maximum(magnitude.sum(1), 1e-12),
      "own_signed": signed[rows, sequences.anchor],
      "context_signed": signed.sum(1) - signed[rows, sequences.anchor],
  }


def plot_top_genes(table, classes, path, top=TOP_GENES_PLOTTED):
  """Heatmap: classes x the union of every class's top genes by integrated gradients, each row scaled to its max."""
  ig = table[table.method == "integrated_gradients"]
  present = [c for c in classes if (ig["class"] == c).any()]
  genes = list(dict.fromkeys(ig[ig["rank"] <= top].sort_values(["class", "rank"]).gene))
  matrix = ig.pivot(index="class", columns="gene", values="score").loc[present, genes].to_numpy()
  matrix = matrix / np.maximum(np.abs(matrix).max(1, keepdims=True), 1e-12)
  fig, ax = plt.subplots(figsize=(max(6, 0.32 * len(genes) + 2), 0.45 * len(present) + 1.8))
  image = ax.imshow(matrix, cmap="RdBu_r", vmin=-1, vmax=1, aspect="auto")
  ax.set_xticks(range(len(genes)), genes, rotation=90, fontsize=8)
  ax.set_yticks(range(len(present)), present)
  ax.set_title(f"integrated gradients: top {top} genes per class (row-scaled mean attribution)")
  fig.colorbar(image, ax=ax, fraction=0.03)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def plot_by_day(days, classes, time_points, path):
  """Per class: attention (mean over heads) and attribution share by time point."""
  quantities = [q for q in ("attention_mean", "attribution_share") if (days.quantity == q).any()]
  fig, axes = plt.subplots(1, len(quantities), figsize=(5.5 * len(quantities), 4), squeeze=False)
  for ax, quantity in zip(axes[0], quantities):
    part = days[days.quantity == quantity].pivot(index="class", columns="time_point", values="value")
    part = part.loc[[c for c in classes if c in part.index], list(time_points)]
    image = ax.imshow(part.to_numpy(), cmap="viridis", aspect="auto", vmin=0)
    ax.set_xticks(range(len(time_points)), time_points, rotation=45)
    ax.set_yticks(range(len(part)), part.index)
    ax.set_title({"attention_mean": "attention by day (mean of heads)",
                  "attribution_share": "share of |integrated gradients| by day"}[quantity])
    fig.colorbar(image, ax=ax, fraction=0.04)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def step_times(bundle, names):
  """[n, steps] time-point index of the cell at each step of the test sequences (-1 at padding).

  names: [n, max_len] obs names of those cells ("" at padding), as train.py saved them. The times are read from
  the run's data (its time column), since the sequences keep the cells' names, not their days.
  """
  adata, _ = dataset.load(bundle.config)
  index = {t: i for i, t in enumerate(bundle.time_points)}
  times = adata.obs[bundle.config.data.time_key].astype(str).map(index)
  lookup = pd.Series(times.to_numpy(), index=adata.obs_names.astype(str))
  lookup = lookup[~lookup.index.duplicated()]
  flat = lookup.reindex(names.ravel()).to_numpy()
  unknown = (names.ravel() != "") & pd.isna(flat)
  if unknown.any():
    raise DataError(adata.uns.get("source_path", bundle.config.data.path),
                    f"{int(unknown.sum())} cells of the saved test sequences are not in the run's data (or have no "
                    "known time point); was the data changed since training?")
  return np.where(names.ravel() != "", np.nan_to_num(flat, nan=-1), -1).astype(np.int64).reshape(names.shape)


def first_per_class(keep, labels, limit):
  """[n] bool: `keep`, restricted to the first `limit` kept sequences of each class (all with limit None)."""
  if limit is None:
    return keep
  seen = np.zeros_like(labels)
  for c in np.unique(labels):
    rows = np.flatnonzero(keep & (labels == c))
    seen[rows[:limit]] = 1
  return seen.astype(bool)


def explain(workdir, *, steps=IG_STEPS, batch_size=BATCH, max_per_class=MAX_PER_CLASS, progress=True):
  """Explains a trained run's correctly classified test sequences and writes workdir/interpret/ (see the module
  docstring). Returns the summary (also summary.json)."""
  started = time.perf_counter()
  bundle = inference.load(workdir)
  test, names = train_lib.load_test_sequences(bundle.workdir)
  logits = inference.predict_logits(bundle, test)
  right = first_per_class(logits.argmax(1) == test.labels, test.labels, max_per_class)
  correct = test.take(right)
  logging.info("interpret: %d of %d test sequences correctly classified; explaining %d", (logits.argmax(1) == test.labels).sum(),
               len(test), len(correct))
  if not len(correct):
    raise ConfigError(f"{bundle.workdir}: no test sequence is correctly classified; nothing to explain")
  result = attribute(bundle, correct, steps=steps, batch_size=batch_size, progress=progress)
  result["steps"] = steps
  classes, genes = list(bundle.classes), list(bundle.record["genes"])
  attributions = {method: result[method] for method in ("integrated_gradients", "gradient_x_input")}
  if bundle.sequence_mode == "anchored":
    attributions["integrated_gradients_own_step"] = own_step(result["integrated_gradients"], correct.anchor)
    attributions["gradient_own_step"] = own_step(result["gradient"], correct.anchor)
  table = pd.concat([
      ranking_table(method, gene_scores(values, correct.labels, len(classes), len(genes)), classes, genes)
      for method, values in attributions.items()], ignore_index=True)
  days = day_table(result, correct.labels, step_times(bundle, names[right]), classes, bundle.time_points)
  summary = {
      "workdir": str(bundle.workdir),
      "baseline": "gene channels 0 (each sequence's own mean after the per-sequence z-score); anchor channel and "
                  "padding as in the input",
      "completeness": completeness(result),
      "test_sequences": int(len(test)),
      "correctly_classified": int((logits.argmax(1) == test.labels).sum()),
      "explained_sequences": int(len(correct)),
      "max_per_class": max_per_class,
      "explained_per_class": {c: int((correct.labels == i).sum()) for i, c in enumerate(classes)},
  }
  if bundle.sequence_mode == "anchored":
    shares = own_step_share(result, correct)
    summary["anchored"] = {
        "own_step_share_of_abs_attribution": float(shares["own_share"].mean()),
        "own_step_signed_attribution": float(shares["own_signed"].mean()),
        "context_steps_signed_attribution": float(shares["context_signed"].mean()),
        "own_step_share_per_class": {c: float(shares["own_share"][correct.labels == i].mean())
                                     for i, c in enumerate(classes) if (correct.labels == i).any()},
    }
  summary["seconds"] = time.perf_counter() - started
  with integrity.staged_folder(bundle.workdir / OUT_DIR) as staging:
    table.to_csv(staging / "attributions.csv", index=False, float_format="%.6g")
    days.to_csv(staging / "by_day.csv", index=False, float_format="%.6g")
    plot_top_genes(table, classes, staging / "top_genes.png")
    plot_by_day(days, classes, bundle.time_points, staging / "by_day.png")
    (staging / "summary.json").write_text(json.dumps(summary, indent=2))
  logging.info("interpret: completeness within tolerance for %.1f%% of sequences; %.0f s; written to %s",
               100 * summary["completeness"]["fraction_within_tolerance"], summary["seconds"],
               bundle.workdir / OUT_DIR)
  return summary


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


def score_run(workdir, steps=IG_STEPS, progress=True):
  """One run's gene rankings (its interpret/attributions.csv, written first if missing, and the references) and
  their precision against the simulator's true genes. Returns (rankings, precision rows with the run's seed)."""
  bundle = inference.load(workdir)
  truth = ground_truth(bundle.config)
  path = bundle.workdir / OUT_DIR / "attributions.csv"
  if not path.exists():
    explain(workdir, steps=steps, progress=progress)
  table = pd.read_csv(path)
  genes, classes = list(bundle.record["genes"]), list(bundle.classes)
  references = pd.concat([ranking_table(m, s, classes, genes) for m, s in reference_scores(bundle).items()])
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
    cells = [f"{part[col].mean():.3f} ± {part[col].std(ddof=1) if len(part) > 1 else 0.0:.3f}"
             for col in ("r_precision", f"precision_at_{PRECISION_AT}")]
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
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def score(workdirs, output, steps=IG_STEPS, progress=True):
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
  train_lib.write_atomic(output / "scores.csv", per_run.to_csv(index=False, float_format="%.6g"))
  train_lib.write_atomic(output / "stability.csv", overlap.to_csv(index=False, float_format="%.6g"))
  train_lib.write_atomic(output / "scores.png", lambda tmp: plot_scores(per_run, tmp))
  train_lib.write_atomic(output / "scores.md", text)
  logging.info("interpret: %d runs scored in %.0f s; table in %s", len(scored), time.perf_counter() - started,
               output / "scores.md")
  return text
