"""Bundle + sequences -> logits, calibrated probabilities and labels: the one prediction path.

Everything that labels cells goes through here, so a cell gets the same label wherever it is labelled: eval.py's
report and results.json, annotate.py, the trust and suite experiments, interpret.py. A label is the most
probable class after the run's calibration (calibrate.apply), or 'Unassigned' where the run's rule says so
(unassigned.py: by default, for per-cell runs, the score below the threshold of the cell's class that keeps 95%
of that class's validation cells assigned; the scores 'novelty' and 'combined' read each cell's whole-transcriptome
novelty score, novelty.py). Each cell also gets its label set (conformal.py). Metrics are elsewhere
(metrics.py); training's own validation uses its eval step.
"""

import concurrent.futures
import dataclasses
from typing import Any

import numpy as np
from absl import logging
from tqdm import tqdm

from cardiac_jax import batches as batching
from cardiac_jax import calibrate, conformal, integrity, parallel, unassigned
from cardiac_jax.dataset import gene_scaling, model_inputs
from cardiac_jax.errors import ConfigError
from cardiac_jax.model import predict_step
from cardiac_jax.sequences import MODES, cell_sequences, context_neighbours, sequences_with_context
from cardiac_jax.workdir import CALIBRATION, best_checkpoint

# Cells whose sequences are built and predicted at a time when labelling a query (bounds memory at atlas
# size), and sequences per forward pass there (the logits of a sequence do not depend on its batch): QUERY_BATCH,
# or for short sequences as many as make QUERY_STEPS steps (one-step sequences go 1,024 at a time: a forward pass
# over 256 of them is too small to keep both cores busy).
QUERY_CHUNK = 20_000
QUERY_BATCH = 256
QUERY_STEPS = 1024
# Chunks whose sequences are built ahead of the one being predicted (on another thread).
PREFETCH = 1


def make_predict_fn(apply_fn, data_parallel=None):
  """predict_step jitted once for a model: (params, batch) -> logits [batch, classes], numpy batches split over
  the devices of `data_parallel` (default: every device, parallel.data_parallel())."""
  data_parallel = data_parallel or parallel.data_parallel()
  step = lambda params, batch: predict_step(params, apply_fn, batch)
  return data_parallel.feeding(data_parallel.jit(step, batch_arg=1), batch_arg=1)


def predict_logits(bundle, sequences, predict_fn=None, batch_size=None):
  """[n, classes] float32 logits of every sequence, in batches (default: the run's batch size, rounded up to a
  multiple of the device count; the fill is masked out); needs no labels."""
  predict_fn = predict_fn or make_predict_fn(bundle.apply_fn)
  if not len(sequences):
    return np.zeros((0, len(bundle.classes)), np.float32)
  outputs = []
  batch_size = parallel.data_parallel().round_batch_size(batch_size or bundle.batch_size)
  for batch in batching.iterate(sequences, batch_size, steps=batching.used_steps(sequences)):
    logits = np.asarray(predict_fn(bundle.params, {"x": batch["x"], "lengths": batch["lengths"]}))
    outputs.append(logits[batch["mask"] > 0])
  logits = np.concatenate(outputs)
  integrity.check_finite_logits(logits, best_checkpoint(bundle.workdir))
  return logits


def default_rule(bundle):
  """The Unassigned rule a run's labels get unless told otherwise: for per-cell runs with validation score
  quantiles, the default score below the threshold that keeps unassigned.KEEP_KNOWN of the validation cells
  assigned; for the seed's type sequences (not an annotation model) and older runs, none."""
  if not MODES[bundle.sequence_mode].per_cell or not (bundle.calibration or {}).get("val_score_quantiles"):
    return unassigned.NO_RULE
  return unassigned.rule(bundle.calibration, where=bundle.workdir / CALIBRATION)


# Why a cell is Unassigned ('' where it is labelled): its score is below the rule's threshold, or it has no counts.
REASONS = ("", "score below threshold", "no counts")


@dataclasses.dataclass(frozen=True)
class Prediction:
  """What the model says of each of n cells (or sequences).

  Attributes:
    logits: [n, classes] float32, before calibration.
    probabilities: [n, classes] float32 calibrated probabilities.
    label_ids: [n] int class id of the label, -1 where Unassigned.
    top_class: [n] int most probable class after calibration (every cell labelled).
    confidence: [n] float32 probability of the most probable class.
    classes: class names, in logit order.
    rule: the unassigned.Rule that decided Unassigned.
    reason_ids: [n] int index into REASONS of why a cell is Unassigned (0 where it is labelled).
    label_sets: [n, classes] bool label set of each cell for error rate `alpha` (conformal.py; empty for a cell
      without counts), or None for a run without validation nonconformities (an earlier version's).
    alpha: the error rate the label sets are built for.
    unassigned_score: [n] float64 the rule's score of each cell (unassigned.Rule.values; NaN under no rule).
    novelty: [n] float32 each cell's novelty score (novelty.py), or None where none was given.
  """

  logits: np.ndarray
  probabilities: np.ndarray
  label_ids: np.ndarray
  top_class: np.ndarray
  confidence: np.ndarray
  classes: tuple
  rule: unassigned.Rule
  reason_ids: np.ndarray
  label_sets: Any = None
  alpha: float = conformal.ALPHA
  unassigned_score: Any = None
  novelty: Any = None

  @property
  def labels(self):
    """[n] object array of class names, 'Unassigned' where the rule says so."""
    names = np.asarray(list(self.classes) + [unassigned.UNASSIGNED], dtype=object)
    return names[np.where(self.label_ids >= 0, self.label_ids, len(self.classes))]

  @property
  def unassigned(self):
    return self.label_ids < 0

  @property
  def reasons(self):
    """[n] object array: why each cell is Unassigned (REASONS; '' where it is labelled)."""
    return np.asarray(REASONS, dtype=object)[self.reason_ids]


def from_logits(logits, calibration, classes, rule=unassigned.NO_RULE, no_label=None, alpha=conformal.ALPHA,
                novelty=None):
  """The Prediction of logits [n, classes] under a calibration record, an Unassigned rule and the label sets'
  error rate alpha; `novelty` [n]: the cells' novelty scores (for the rules that read them); cells where
  `no_label` [n] bool is set (no counts) are Unassigned whatever their score."""
  calibrated = calibrate.apply(calibration, logits)
  exact = calibrate.softmax(calibrated)  # float64, as the validation nonconformities were computed
  probabilities = exact.astype(np.float32)
  top = probabilities.argmax(1) if len(probabilities) else np.zeros(0, np.int64)
  confidence = probabilities.max(1) if len(probabilities) else np.zeros(0, np.float32)
  values = rule.values(calibrated, novelty)
  reason_ids = np.where(rule.unassigned(calibrated, novelty), REASONS.index("score below threshold"), 0)
  if no_label is not None:
    reason_ids = np.where(no_label, REASONS.index("no counts"), reason_ids)
  label_ids = np.where(reason_ids > 0, -1, top)
  sets = None
  if "val_nonconformity_by_class" in (calibration or {}):
    sets = conformal.label_sets(exact, conformal.thresholds(calibration["val_nonconformity_by_class"], alpha))
    if no_label is not None:
      sets &= ~np.asarray(no_label, bool)[:, None]
  return Prediction(np.asarray(logits, np.float32), probabilities, label_ids, top, confidence, tuple(classes), rule,
                    reason_ids, sets, alpha, values, novelty)


def predict(bundle, sequences, rule=None, novelty=None):
  """The Prediction of a bundle for Sequences (default rule: `default_rule(bundle)`); `novelty` [n]: the novelty
  scores of the sequences' anchor cells, for runs with a novelty score (workdir.load_test_novelty for the test
  split)."""
  logits = predict_logits(bundle, sequences)
  return from_logits(logits, bundle.calibration, bundle.classes, default_rule(bundle) if rule is None else rule,
                     novelty=novelty)


def check_can_annotate(bundle):
  """Raises unless the run builds its sequences without labels (per-cell modes), as labelling new cells needs."""
  if not MODES[bundle.sequence_mode].per_cell:
    raise ConfigError(
        f"{bundle.workdir}: this model was trained on the seed's type sequences (data.sequence_mode='type'), "
        "which are built from known labels; train with configs/annotate.py (anchored) or "
        "--config.data.sequence_mode=cell to annotate new cells")


def query_context(bundle, x, times, groups=None):
  """[cells, n_times, k] int32 context cells of every cell of a query (`sequences.context_neighbours`, the whole
  query as the pool: each cell's own donor where `groups` [cells] is given), or None for a run without context."""
  if not MODES[bundle.sequence_mode].context:
    return None
  logging.info("context: the %d nearest cells of each of %s cells at every other day%s", bundle.config.data.context_k,
               f"{len(x):,}", " of its donor" if groups is not None else "")
  return context_neighbours(bundle.preprocessing.embed(x), times, np.arange(len(x)), np.arange(len(x)),
                            n_times=len(bundle.time_points), k=bundle.config.data.context_k, groups=groups)


def query_sequences(bundle, x, times, cells, context=None):
  """The model's sequences for `cells` of a query (per-cell modes only).

  Args:
    x: [cells, genes] log expression of the query (`Preprocessing.transform`); times: [cells] time-point indices;
    cells: rows to build sequences for; context: the query's `query_context` (None for a run without context).
  """
  data, n_times = bundle.config.data, len(bundle.time_points)
  scaling = gene_scaling(bundle.config, bundle.preprocessing)
  if context is None:  # one step each: no padding to build and carry
    sequences = cell_sequences(x, times, cells, max_len=1, gene_scaling=scaling)
  else:
    sequences = sequences_with_context(x, times, cells, context[cells], max_len=data.max_len, gene_scaling=scaling)
  return model_inputs(bundle.config, sequences, x.shape[1], n_times)


def predict_cell_logits(bundle, x, times, groups=None, progress=True, data_parallel=None):
  """[cells, classes] float32 logits of every cell of a query (a per-cell run: check_can_annotate): each cell's
  context found once (`query_context`), then sequences built and predicted `QUERY_CHUNK` cells at a time.

  Args:
    x: [cells, genes] the query's log expression (`Preprocessing.transform`); times: [cells] time indices;
    groups: [cells] donor of each cell (context then comes from the cell's own donor), or None.
    data_parallel: the parallel.DataParallel whose devices share each batch (default: every device).
  """
  context = query_context(bundle, x, times, groups)
  predict_fn = make_predict_fn(bundle.apply_fn, data_parallel)
  out = np.zeros((len(x), len(bundle.classes)), np.float32)
  chunks = [np.arange(lo, min(lo + QUERY_CHUNK, len(x))) for lo in range(0, len(x), QUERY_CHUNK)]
  bar = tqdm(total=len(x), desc="annotating", unit="cells", disable=None if progress else True, leave=False)
  with concurrent.futures.ThreadPoolExecutor(1) as builder:  # the next chunk's sequences while XLA predicts
    built = [builder.submit(query_sequences, bundle, x, times, cells, context) for cells in chunks[:PREFETCH]]
    for i, cells in enumerate(chunks):
      if i + PREFETCH < len(chunks):
        built.append(builder.submit(query_sequences, bundle, x, times, chunks[i + PREFETCH], context))
      sequences = built[i].result()
      built[i] = None
      batch_size = max(QUERY_BATCH, QUERY_STEPS // batching.used_steps(sequences))
      out[cells] = predict_logits(bundle, sequences, predict_fn, min(batch_size, len(x)))
      bar.update(len(cells))
  bar.close()
  return out
