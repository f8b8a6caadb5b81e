"""A trained workdir -> labels for any time course: the bundle, prediction without labels, and annotation.

`load(workdir)` turns a workdir into a `Bundle`: everything inference needs (parameters, model, classes, time
points, the preprocessing fitted on the training cells, the sequence settings). eval.py, warm starts, the
suite and annotate.py all start from it. `predict_logits` needs no labels; metrics live elsewhere
(report.py). `annotate` labels every cell of an AnnData; `annotate_file` does so from a file to a file,
reading an .h5ad's X in row blocks from disk, so a whole atlas never has to fit in memory.
"""

import dataclasses
import importlib.metadata
import json
import os
import pathlib
import shutil
import time
from typing import Any, Callable

import anndata
import anndata.io
import h5py
import jax
import ml_collections
import numpy as np
import pandas as pd
from absl import logging
from tqdm import tqdm

from cardiac_jax import batches as batching
from cardiac_jax import calibrate, integrity, parallel, preprocess, readers
from cardiac_jax import train as train_lib
from cardiac_jax.errors import ConfigError, DataError
from cardiac_jax.sequences import anchored_sequences, cell_sequences

UNASSIGNED = "Unassigned"
# Cells whose sequences are built and predicted at a time (bounds memory at atlas size), and sequences per
# forward pass when annotating (on this project's 2-core CPU, alternating in one process: 64 -> 1,698,
# 256 -> 1,879, 1,024 -> 1,299 sequences/s; the logits of a sequence do not depend on its batch).
ANNOTATE_CHUNK = 20_000
ANNOTATE_BATCH = 256
# What annotation writes into the AnnData.
LABEL_KEY = "cardiac_jax_label"
CONFIDENCE_KEY = "cardiac_jax_confidence"
PROBABILITIES_KEY = "cardiac_jax_probabilities"
UNS_KEY = "cardiac_jax"


@dataclasses.dataclass(frozen=True)
class Bundle:
  """A trained model with everything needed to apply it to new data.

  Attributes:
    workdir: the run's folder.
    config: the run's ConfigDict.
    params: the best-validation parameters.
    apply_fn: the model's apply function.
    classes: class names, in logit order.
    time_points: the time points the model knows, in order.
    preprocessing: the preprocess.Preprocessing fitted on the training cells.
    record: data.json of the run (batch size, input features, split counts, ...).
    checkpoint: the best checkpoint's metadata (epoch, validation accuracy).
    calibration: calibration.json of the run (the affine map of the logits fitted on validation:
      temperature or vector scaling, calibrate.apply), or None.
  """

  workdir: pathlib.Path
  config: ml_collections.ConfigDict
  params: Any
  apply_fn: Callable
  classes: tuple
  time_points: tuple
  preprocessing: preprocess.Preprocessing
  record: dict
  checkpoint: dict
  calibration: Any = None

  def calibrated(self, logits):
    """[n, classes] float64 calibrated logits (calibrate.apply; unchanged for a run without calibration.json)."""
    return calibrate.apply(self.calibration, logits)

  @property
  def sequence_mode(self):
    return self.config.data.sequence_mode

  @property
  def batch_size(self):
    return self.record["batch_size"]


def load(workdir):
  """The Bundle of a workdir that train.py wrote (its best checkpoint)."""
  workdir = pathlib.Path(workdir).expanduser()
  if not workdir.is_dir():
    raise ConfigError(f"{workdir}: no such workdir")
  config = train_lib.load_config(workdir)
  record = integrity.read_json(workdir / "data.json")
  preprocessing_path = workdir / "preprocessing.json"
  if not preprocessing_path.exists():
    raise ConfigError(f"{preprocessing_path}: not found; a workdir of an earlier version of cardiac_jax? train again")
  preprocessing = preprocess.Preprocessing.from_json(json.dumps(integrity.read_json(preprocessing_path)))
  model = train_lib.create_model(config.model, len(record["classes"]))
  shapes = jax.eval_shape(
      lambda: model.init(jax.random.key(0), np.zeros((1, config.data.max_len, record["n_features"]), np.float32),
                         np.ones(1, np.int32), train=False)["params"])
  params, checkpoint = train_lib.restore_best_params(workdir, parallel.data_parallel().abstract(shapes))
  return Bundle(workdir, config, params, model.apply, tuple(record["classes"]), tuple(record["time_points"]),
                preprocessing, record, checkpoint, calibrate.load(workdir))


def make_predict_fn(apply_fn, data_parallel=None):
  """train.predict_step jitted once for a model: (params, batch) -> logits [batch, classes], numpy batches split
  over the devices of `data_parallel` (default: every device, parallel.data_parallel())."""
  data_parallel = data_parallel or parallel.data_parallel()
  step = lambda params, batch: train_lib.predict_step(params, apply_fn, batch)
  return data_parallel.feeding(data_parallel.jit(step, batch_arg=1), batch_arg=1)


def predict_logits(bundle, sequences, predict_fn=None, batch_size=None):
  """[n, classes] float32 logits of every sequence, in batches (default: the run's batch size, rounded up to a
  multiple of the device count; the fill is masked out); needs no labels."""
  predict_fn = predict_fn or make_predict_fn(bundle.apply_fn)
  if not len(sequences):
    return np.zeros((0, len(bundle.classes)), np.float32)
  outputs = []
  batch_size = parallel.data_parallel().round_batch_size(batch_size or bundle.batch_size)
  batches = batching.iterate(sequences, batch_size, steps=batching.used_steps(sequences))
  for batch in batches:
    logits = np.asarray(predict_fn(bundle.params, {"x": batch["x"], "lengths": batch["lengths"]}))
    outputs.append(logits[batch["mask"] > 0])
  logits = np.concatenate(outputs)
  integrity.check_finite_logits(logits, bundle.workdir / "checkpoints" / "best")
  return logits


def probabilities(bundle, logits):
  """[n, classes] float32 calibrated class probabilities: softmax of the bundle's calibrated logits [n, classes].
  Under vector scaling the most probable class can differ from the largest raw logit."""
  return calibrate.softmax(bundle.calibrated(logits)).astype(np.float32)


def time_indices(bundle, values, path, time_key):
  """[cells] int indices into the model's time points of a query's time column `values`.

  A missing value or a time point the model never saw is a DataError naming `path` and the column.
  """
  values = pd.Series(np.asarray(values, dtype=object))
  missing = preprocess.missing(values)
  if missing.any():
    raise DataError(path, f"{int(missing.sum())} cells have no value in the time column {time_key!r}")
  names = values.astype(str).str.strip().to_numpy()  # as training reads them (preprocess.quality_control)
  index = {t: i for i, t in enumerate(bundle.time_points)}
  unknown = sorted(set(names.tolist()) - set(index), key=preprocess.natural_key)
  if unknown:
    raise DataError(path, f"time value(s) {unknown[:10]} in column {time_key!r} are not among the model's time "
                          f"points {list(bundle.time_points)}")
  return np.array([index[t] for t in names], np.int32)


def query_sequences(bundle, x, embedding, times, cells, groups=None):
  """The model's sequences for `cells` of a query (per-cell modes only), context from the whole query.

  Args:
    x: [cells, genes] log expression of the query (`Preprocessing.transform`); embedding: its context space.
    times: [cells] time-point indices; cells: rows to build sequences for; groups: [cells] donor, or None.
  """
  data = bundle.config.data
  if bundle.sequence_mode == "cell":
    return cell_sequences(x, cells, max_len=data.max_len)
  everyone = np.arange(len(x))
  return anchored_sequences(x, embedding, times, cells, everyone, n_times=len(bundle.time_points),
                            k=data.context_k, max_len=data.max_len, groups=groups)


def check_can_annotate(bundle):
  if bundle.sequence_mode == "type":
    raise ConfigError(
        f"{bundle.workdir}: this model was trained on the seed's type sequences (data.sequence_mode='type'), "
        "which are built from known labels; train with configs/annotate.py (anchored) or "
        "--config.data.sequence_mode=cell to annotate new cells")


def predict_cell_logits(bundle, x, times, groups=None, progress=True, data_parallel=None):
  """[cells, classes] float32 logits of every cell of a query, `ANNOTATE_CHUNK` cells at a time.

  Args:
    x: [cells, genes] the query's log expression (`Preprocessing.transform`); times: [cells] time indices;
    groups: [cells] donor of each cell (context then comes from the cell's own donor), or None.
    data_parallel: the parallel.DataParallel whose devices share each batch (default: every device).
  """
  check_can_annotate(bundle)
  embedding = bundle.preprocessing.embed(x) if bundle.sequence_mode == "anchored" else None
  if groups is not None:
    groups = np.unique(np.asarray(groups), return_inverse=True)[1]  # codes once, not once per chunk
  predict_fn = make_predict_fn(bundle.apply_fn, data_parallel)
  out = np.zeros((len(x), len(bundle.classes)), np.float32)
  bar = tqdm(total=len(x), desc="annotating", unit="cells", disable=None if progress else True, leave=False)
  for lo in range(0, len(x), ANNOTATE_CHUNK):
    cells = np.arange(lo, min(lo + ANNOTATE_CHUNK, len(x)))
    sequences = query_sequences(bundle, x, embedding, times, cells, groups)
    out[cells] = predict_logits(bundle, sequences, predict_fn, min(ANNOTATE_BATCH, len(x)))
    bar.update(len(cells))
  bar.close()
  return out


@dataclasses.dataclass(frozen=True)
class UnassignedRule:
  """When a cell is labelled 'Unassigned': its score (calibrate.SCORES, of its calibrated logits) is below
  threshold.

  Attributes:
    score: a name in calibrate.SCORES, or 'none' (every cell gets its most probable class).
    threshold: the score below which a cell is Unassigned.
    chosen_by: how the threshold was chosen, in words (for the output's uns and the log).
  """

  score: str
  threshold: float
  chosen_by: str

  def unassigned(self, calibrated):
    """[cells] bool: the cells this rule leaves unassigned, from their calibrated logits [cells, classes]."""
    if self.score == "none":
      return np.zeros(len(calibrated), bool)
    return calibrate.score(self.score, calibrated) < self.threshold


UNASSIGNED_SCORES = ("none",) + tuple(calibrate.SCORES)


def unassigned_rule(bundle, score=calibrate.DEFAULT_SCORE, threshold=None, keep_known=calibrate.KEEP_KNOWN):
  """The UnassignedRule of a bundle: `threshold` as given, or else the one that keeps a share `keep_known` of the
  run's validation cells (held-out donors, all of known types) assigned (calibration.json)."""
  if score not in UNASSIGNED_SCORES:
    raise ConfigError(f"unknown unassigned score {score!r}; known: {list(UNASSIGNED_SCORES)}")
  if score == "none":
    return UnassignedRule("none", float("-inf"), "no cell is left unassigned")
  if threshold is not None:
    return UnassignedRule(score, float(threshold), "given")
  if not 0 < keep_known <= 1:
    raise ConfigError(f"keep_known must lie in (0, 1], got {keep_known}")
  if not bundle.calibration or "val_score_quantiles" not in bundle.calibration:
    raise ConfigError(f"{bundle.workdir}: calibration.json has no validation scores (a run of an earlier version); "
                      "give the threshold instead (--threshold)")
  return UnassignedRule(score, calibrate.threshold(bundle.calibration, score, keep_known),
                        f"keeps {keep_known:.0%} of the validation cells (known types) assigned")


def labels_from(probabilities, classes, unassigned):
  """(labels [cells] str, confidence [cells]): the most probable class, `UNASSIGNED` where `unassigned` [cells]."""
  best = probabilities.argmax(1)
  confidence = probabilities.max(1) if len(probabilities) else np.zeros(0, np.float32)
  labels = np.asarray(classes, dtype=object)[best]
  labels[np.asarray(unassigned, bool)] = UNASSIGNED
  return labels, confidence


def _query_columns(bundle, obs, path, time_key, donor_key):
  """(time indices, donor groups or None, the donor column used) from a query's obs, checked."""
  time_key = time_key or bundle.config.data.time_key
  if time_key not in obs.columns:
    raise DataError(path, f"obs has no time column {time_key!r} (set --time_key); columns are {list(obs.columns)}")
  times = time_indices(bundle, obs[time_key].to_numpy(), path, time_key)
  if donor_key is None:  # the training config's donor column, if the query has it
    donor_key = bundle.config.data.donor_key if bundle.config.data.donor_key in obs.columns else ""
  elif donor_key and donor_key not in obs.columns:
    raise DataError(path, f"obs has no donor column {donor_key!r}; columns are {list(obs.columns)}")
  use_groups = donor_key and bundle.config.data.context_by_donor and bundle.sequence_mode == "anchored"
  groups = obs[donor_key].astype(str).to_numpy() if use_groups else None
  return times, groups, donor_key


def _validate(adata, path):
  if not isinstance(adata, anndata.AnnData):
    raise DataError(path, f"expected an AnnData, got {type(adata).__name__}")
  if adata.n_obs == 0 or adata.n_vars == 0:
    raise DataError(path, f"has {adata.n_obs} cells x {adata.n_vars} genes; nothing to annotate")


@dataclasses.dataclass(frozen=True)
class Annotation:
  """What annotation found for each cell of a query, and how.

  Attributes:
    labels: [cells] str class name, or UNASSIGNED where the unassigned rule says so.
    confidence: [cells] float32 probability of the most probable class.
    probabilities: [cells, classes] float32 calibrated probabilities (the label is their most probable class).
    logits: [cells, classes] float32, before calibration (Unassigned scores are computed from
      `Bundle.calibrated` of them).
    info: JSON-ready: classes, time points, genes used and missing, settings, the workdir, the version.
  """

  labels: np.ndarray
  confidence: np.ndarray
  probabilities: np.ndarray
  logits: np.ndarray
  info: dict

  def summary(self, seconds):
    counts = pd.Series(self.labels).value_counts()
    per_class = ", ".join(f"{name} {int(counts.get(name, 0)):,}" for name in self.info["classes"])
    rule = self.info["unassigned"]
    return (f"annotated {len(self.labels):,} cells in {seconds:.1f} s: {per_class}; {UNASSIGNED} "
            f"{int(counts.get(UNASSIGNED, 0)):,} ({float((self.labels == UNASSIGNED).mean()):.1%}): {rule['score']} "
            f"below {rule['threshold']:.4g} ({rule['chosen_by']})")


def _annotation(bundle, adata, path, *, time_key, donor_key, gene_key, normalization, rule, progress):
  """The Annotation of an AnnData (in memory or backed) with an UnassignedRule."""
  _validate(adata, path)
  check_can_annotate(bundle)
  times, groups, donor_key = _query_columns(bundle, adata.obs, path, time_key, donor_key)
  x, report = bundle.preprocessing.transform(adata, normalization=normalization, gene_key=gene_key)
  logging.info("query %s: %s cells, values read as %s, %d of the model's %d genes missing%s", path,
               f"{len(x):,}", report["normalization"], len(report["missing_genes"]), len(bundle.preprocessing.genes),
               f" ({report['missing_genes'][:10]})" if report["missing_genes"] else "")
  logits = predict_cell_logits(bundle, x, times, groups, progress)
  calibrated = bundle.calibrated(logits)
  probabilities = calibrate.softmax(calibrated).astype(np.float32)
  labels, confidence = labels_from(probabilities, bundle.classes, rule.unassigned(calibrated))
  info = {
      "classes": list(bundle.classes),
      "time_points": list(bundle.time_points),
      "time_points_in_query": [bundle.time_points[t] for t in np.unique(times)],
      "genes_used": [g for g in bundle.preprocessing.genes if g not in set(report["missing_genes"])],
      "genes_missing": report["missing_genes"],
      "normalization": report["normalization"],
      "sequence_mode": bundle.sequence_mode,
      "context_donor_column": donor_key if groups is not None else "",
      "unassigned": dataclasses.asdict(rule),
      "calibration": calibrate.describe(bundle.calibration),
      "workdir": str(bundle.workdir.absolute()),
      "version": importlib.metadata.version("cardiac_jax"),
  }
  return Annotation(labels, confidence, probabilities, logits, info)


def annotate(bundle, adata, *, time_key=None, donor_key=None, gene_key=None, normalization="auto",
             unassigned_score=calibrate.DEFAULT_SCORE, threshold=None, keep_known=calibrate.KEEP_KNOWN, progress=True):
  """Labels every cell of an AnnData; returns an annotated copy (the input is not changed).

  The copy gains obs['cardiac_jax_label'] (categorical; 'Unassigned' where the unassigned rule says so),
  obs['cardiac_jax_confidence'], obsm['cardiac_jax_probabilities'] [cells, classes] and uns['cardiac_jax'].
  Probabilities are calibrated with the run's calibration.json (temperature or vector scaling, chosen on the
  validation cells); the label is the most probable class after calibration, which under vector scaling can
  differ from the largest raw logit.

  Args:
    bundle: `load(workdir)` of a model trained with a per-cell sequence mode (anchored or cell).
    adata: the query; X raw counts or normalised values, obs with a time column.
    time_key: obs column of the time points (default: the training config's data.time_key).
    donor_key: obs column of the donor (context comes from each cell's own donor); None: the training
      config's, if present; '' for none.
    gene_key: var column of gene names (default var_names); normalization: 'auto' or what X holds.
    unassigned_score, threshold, keep_known: a cell is 'Unassigned' when its score (calibrate.SCORES; 'none':
      never) is below `threshold`, by default the one that keeps a share `keep_known` of the run's validation
      cells assigned (`unassigned_rule`).
  """
  rule = unassigned_rule(bundle, unassigned_score, threshold, keep_known)
  return _annotated_copy(bundle, adata, rule=rule, time_key=time_key, donor_key=donor_key, gene_key=gene_key,
                         normalization=normalization, progress=progress)


def _annotated_copy(bundle, adata, **settings):
  """(annotated copy, Annotation) of an AnnData: `annotate` with an UnassignedRule already chosen."""
  path = preprocess.source_path(adata) if isinstance(adata, anndata.AnnData) else "<AnnData>"
  result = _annotation(bundle, adata, path, **settings)
  out = adata.to_memory() if adata.isbacked else adata.copy()
  obs, obsm, uns = _outputs(out.obs, result)
  out.obs = obs
  out.obsm[PROBABILITIES_KEY] = obsm
  out.uns[UNS_KEY] = uns
  return out, result


def _outputs(obs, result):
  """(new obs, probabilities, uns entry) for an annotated copy."""
  obs = obs.copy()
  obs[LABEL_KEY] = pd.Categorical(result.labels, categories=list(result.info["classes"]) + [UNASSIGNED])
  obs[CONFIDENCE_KEY] = result.confidence.astype(np.float32)
  return obs, result.probabilities.astype(np.float32), result.info


def annotate_file(workdir, input_path, output_path, *, time_key=None, donor_key=None, gene_key=None,
                  normalization="auto", unassigned_score=calibrate.DEFAULT_SCORE, threshold=None,
                  keep_known=calibrate.KEEP_KNOWN, geo_matrix="counts", progress=True):
  """Annotates an .h5ad file or a GSE175634-layout GEO folder into a new .h5ad at output_path.

  The output is written completely or not at all (a temporary file beside it, renamed at the end); the input
  is never modified. An .h5ad input is read in row blocks from disk and copied byte for byte, then the copy
  gains the annotation, so memory stays small whatever the size of X. Returns (Annotation, seconds).
  """
  started = time.perf_counter()
  input_path, output_path = pathlib.Path(input_path).expanduser(), pathlib.Path(output_path).expanduser()
  if not input_path.exists():
    raise DataError(input_path, "file not found")
  if output_path.suffix != ".h5ad":
    raise ConfigError(f"{output_path}: the output must be an .h5ad file")
  if output_path.exists() and output_path.resolve() == input_path.resolve():
    raise ConfigError(f"{output_path}: the output would overwrite the input; name another file")
  if not output_path.parent.is_dir():
    raise ConfigError(f"{output_path.parent}: the output's folder does not exist")
  bundle = load(workdir)
  check_can_annotate(bundle)
  rule = unassigned_rule(bundle, unassigned_score, threshold, keep_known)
  settings = dict(time_key=time_key, donor_key=donor_key, gene_key=gene_key, normalization=normalization, rule=rule,
                  progress=progress)
  if input_path.is_dir():
    adata = readers.read_geo(input_path, geo_matrix, required=(time_key or bundle.config.data.time_key,))
    annotated, result = _annotated_copy(bundle, adata, **settings)
    train_lib.write_atomic(output_path, lambda tmp: annotated.write_h5ad(tmp))
  else:
    adata = readers.read_h5ad(input_path, time_key="", backed=True)
    try:
      result = _annotation(bundle, adata, str(input_path), **settings)
      obs = adata.obs
    finally:
      adata.file.close()
    train_lib.write_atomic(output_path, lambda tmp: _write_annotated_copy(input_path, tmp, obs, result))
  seconds = time.perf_counter() - started
  logging.info("%s; written to %s", result.summary(seconds), output_path)
  return result, seconds


def _write_annotated_copy(source, target, obs, result):
  """Copies the .h5ad `source` to `target` byte for byte, then writes the annotation into the copy."""
  shutil.copyfile(source, target)
  obs, probabilities, uns = _outputs(obs, result)
  with h5py.File(target, "r+") as f:
    del f["obs"]
    anndata.io.write_elem(f, "obs", obs)
    for group in ("obsm", "uns"):
      if group not in f:
        anndata.io.write_elem(f, group, {})
    for group, key in (("obsm", PROBABILITIES_KEY), ("uns", UNS_KEY)):
      if key in f[group]:
        del f[group][key]
    anndata.io.write_elem(f["obsm"], PROBABILITIES_KEY, probabilities)
    anndata.io.write_elem(f["uns"], UNS_KEY, uns)
  os.chmod(target, 0o644)
