"""Why a label: which genes and which days a trained model's logits lean on, scored against the simulator's truth.

`explain(workdir)` explains the correctly labelled test sequences of a trained run (the split training saved;
labels from the one prediction path, predict.py)
and writes `<workdir>/interpret/`:

* attributions.csv: per method, class and input gene, the mean attribution of the gene (summed over a sequence's
  steps) to that class's centred logit (the logit minus the mean of the sequence's logits) over the class's
  correctly classified test sequences (the first `MAX_PER_CLASS` of each class), and its rank (1 = most evidence
  for the class). Methods:
  - `integrated_gradients`: the path integral of the logit's gradient from a baseline to the input, times the
    input minus the baseline, by Gauss-Legendre quadrature with `IG_STEPS` points crowded near the baseline
    (`path_points`; `jax.grad` of the batch's logits, `jax.vmap` over the points of the path). Baseline: every gene channel 0, which after the per-sequence
    z-score is the sequence's own mean expression; the time and anchor channels of per-cell sequences and the
    padding are kept as they are, so they get no attribution. Completeness (attributions sum to the logit at the input
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

How well these rankings find the simulator's true genes is scored in experiments/interpret_scores.py.
"""

import itertools
import json
import time

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from absl import logging
from tqdm import tqdm

from cardiac_jax import batches as batching
from cardiac_jax import figures, integrity, predict
from cardiac_jax import workdir as rundir
from cardiac_jax.errors import ConfigError
from cardiac_jax.sequences import MODES, valid_steps

# Integrated gradients: 64 Gauss-Legendre points, crowded near the baseline (alpha = u ** 3), where the logit
# changes fastest, so the attributions sum to the logit change far more closely than with evenly spaced points
# (docs/interpret.md).
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
# The file of interpret/ that holds the rankings.
ATTRIBUTIONS = "attributions.csv"


def gene_channels(x, n_genes):
  """[..., features] -> [..., features] mask: 1 on the first n_genes channels (genes), 0 on the time and anchor
  channels after them."""
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
    valid = valid_steps(lengths, x.shape[1], jnp)[..., None]
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
  valid = valid_steps(lengths, weights.shape[2]).astype(weights.dtype)
  return np.einsum("bhqk,bq->bhk", weights, valid) / lengths[:, None, None]


def attribute(bundle, sequences, *, steps=IG_STEPS, batch_size=BATCH, progress=True):
  """Attributions of each sequence to its label's logit (integrated gradients and gradient x input).

  Args:
    bundle: workdir.Bundle of the run; sequences: Sequences with labels (the class explained).

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
  absolute integrated-gradients attribution, by time point. times: [n, steps] time-point index of each step (Sequences.times)."""
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
  figures.save(fig, path)


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
  figures.save(fig, path)


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
  bundle = rundir.load(workdir)
  test, _ = rundir.load_test_sequences(bundle.workdir, times=True)
  prediction = predict.predict(bundle, test, novelty=rundir.load_test_novelty(bundle.workdir))
  labelled_right = prediction.label_ids == test.labels
  right = first_per_class(labelled_right, test.labels, max_per_class)
  correct = test.take(right)
  logging.info("interpret: %d of %d test sequences correctly labelled; explaining %d", labelled_right.sum(),
               len(test), len(correct))
  if not len(correct):
    raise ConfigError(f"{bundle.workdir}: no test sequence is correctly classified; nothing to explain")
  result = attribute(bundle, correct, steps=steps, batch_size=batch_size, progress=progress)
  result["steps"] = steps
  classes, genes = list(bundle.classes), list(bundle.record["genes"])
  attributions = {method: result[method] for method in ("integrated_gradients", "gradient_x_input")}
  if MODES[bundle.sequence_mode].context:
    attributions["integrated_gradients_own_step"] = own_step(result["integrated_gradients"], correct.anchor)
    attributions["gradient_own_step"] = own_step(result["gradient"], correct.anchor)
  table = pd.concat([
      ranking_table(method, gene_scores(values, correct.labels, len(classes), len(genes)), classes, genes)
      for method, values in attributions.items()], ignore_index=True)
  days = day_table(result, correct.labels, correct.times, classes, bundle.time_points)
  summary = {
      "workdir": str(bundle.workdir),
      "baseline": "gene channels 0 (each sequence's own mean after the per-sequence z-score); time and anchor "
                  "channels and padding as in the input",
      "completeness": completeness(result),
      "test_sequences": int(len(test)),
      "correctly_classified": int(labelled_right.sum()),
      "explained_sequences": int(len(correct)),
      "max_per_class": max_per_class,
      "explained_per_class": {c: int((correct.labels == i).sum()) for i, c in enumerate(classes)},
  }
  if MODES[bundle.sequence_mode].context:
    shares = own_step_share(result, correct)
    summary["anchored"] = {
        "own_step_share_of_abs_attribution": float(shares["own_share"].mean()),
        "own_step_signed_attribution": float(shares["own_signed"].mean()),
        "context_steps_signed_attribution": float(shares["context_signed"].mean()),
        "own_step_share_per_class": {c: float(shares["own_share"][correct.labels == i].mean())
                                     for i, c in enumerate(classes) if (correct.labels == i).any()},
    }
  summary["seconds"] = time.perf_counter() - started
  with integrity.staged_folder(bundle.workdir / rundir.INTERPRET) as staging:
    table.to_csv(staging / ATTRIBUTIONS, index=False, float_format="%.6g")
    days.to_csv(staging / "by_day.csv", index=False, float_format="%.6g")
    plot_top_genes(table, classes, staging / "top_genes.png")
    plot_by_day(days, classes, bundle.time_points, staging / "by_day.png")
    (staging / "summary.json").write_text(json.dumps(summary, indent=2))
  logging.info("interpret: completeness within tolerance for %.1f%% of sequences; %.0f s; written to %s",
               100 * summary["completeness"]["fraction_within_tolerance"], summary["seconds"],
               bundle.workdir / rundir.INTERPRET)
  return summary
