"""Labels for every cell of a new time course: a query AnnData checked against a run, annotated through the one
prediction path (predict.py), and written back as an AnnData.

`annotate(bundle, adata)` returns an `AnnotationResult`; its `to_adata()` is an annotated copy of the query with
obs['cardiac_jax_label'] (categorical; 'Unassigned' where the Unassigned rule says so),
obs['cardiac_jax_confidence'], obs['cardiac_jax_unassigned_score'] (the score that decides 'Unassigned', lower =
less like any training type; unassigned.py), obsm['cardiac_jax_probabilities'] [cells, classes] and
uns['cardiac_jax'], and each cell's label set (conformal.py): obsm['cardiac_jax_label_sets'] [cells, classes] bool
and obs['cardiac_jax_label_set_size'].
`annotate_file` does the same from a file to a file, reading an .h5ad's X in row blocks from disk, so a whole
atlas never has to fit in memory.
"""

import dataclasses
import importlib.metadata
import os
import pathlib
import shutil
import time
from typing import Any

import anndata
import anndata.io
import h5py
import numpy as np
import pandas as pd
from absl import logging

from cardiac_jax import calibrate, conformal, integrity, predict, preprocess, readers, unassigned, workdir
from cardiac_jax.errors import ConfigError, DataError
from cardiac_jax.sequences import MODES

# Which cells the label sets are calibrated on (uns['cardiac_jax']['label_sets']).
CALIBRATION_CELLS = ("the run's validation cells (donors held out from training; the same cells chose the best epoch, "
                     "fitted the calibration map and the Unassigned thresholds)")
LABEL_KEY = "cardiac_jax_label"
CONFIDENCE_KEY = "cardiac_jax_confidence"
REASON_KEY = "cardiac_jax_unassigned_reason"
UNASSIGNED_SCORE_KEY = "cardiac_jax_unassigned_score"
NOVELTY_KEY = "cardiac_jax_novelty"
PROBABILITIES_KEY = "cardiac_jax_probabilities"
LABEL_SETS_KEY = "cardiac_jax_label_sets"
LABEL_SET_SIZE_KEY = "cardiac_jax_label_set_size"
UNS_KEY = "cardiac_jax"


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


@dataclasses.dataclass(frozen=True)
class Query:
  """A query's columns as the model reads them: times [cells] time-point indices, groups [cells] donor codes
  (context from each cell's own donor) or None, and the donor column used ('' for none)."""

  times: np.ndarray
  groups: Any
  donor_key: str


def validate_query(bundle, adata, path, time_key=None, donor_key=None):
  """The one check of a query AnnData against a run, before anything is computed: an AnnData with cells and
  genes, a run that can label new cells, the time column (values among the model's time points) and the donor
  column. Returns the Query; anything wrong is one DataError naming `path` (or a ConfigError for the run)."""
  if not isinstance(adata, anndata.AnnData):
    raise DataError(path, f"expected an AnnData, got {type(adata).__name__}")
  if adata.n_obs == 0 or adata.n_vars == 0:
    raise DataError(path, f"has {adata.n_obs} cells x {adata.n_vars} genes; nothing to annotate")
  predict.check_can_annotate(bundle)
  obs, data = adata.obs, bundle.config.data
  time_key = time_key or data.time_key
  if time_key not in obs.columns:
    raise DataError(path, f"obs has no time column {time_key!r} (set --time_key); columns are {list(obs.columns)}")
  times = time_indices(bundle, obs[time_key].to_numpy(), path, time_key)
  if donor_key is None:  # the training config's donor column, if the query has it
    donor_key = data.donor_key if data.donor_key in obs.columns else ""
  elif donor_key and donor_key not in obs.columns:
    raise DataError(path, f"obs has no donor column {donor_key!r}; columns are {list(obs.columns)}")
  use_groups = donor_key and data.context_by_donor and MODES[bundle.sequence_mode].context
  groups = obs[donor_key].astype(str).to_numpy() if use_groups else None
  return Query(times, groups, donor_key if use_groups else "")


@dataclasses.dataclass(frozen=True)
class AnnotationResult:
  """What annotation found for each cell of a query, and how.

  Attributes:
    prediction: the predict.Prediction of every cell (logits, calibrated probabilities, labels).
    info: JSON-ready: classes, time points, genes used and missing, settings, the workdir, the version.
    adata: the query as given, for `to_adata` (None for a file annotated from disk).
  """

  prediction: predict.Prediction
  info: dict
  adata: Any = None

  @property
  def labels(self):
    """[cells] str class name, or 'Unassigned'."""
    return self.prediction.labels

  @property
  def confidence(self):
    """[cells] float32 probability of the most probable class (after calibration)."""
    return self.prediction.confidence

  @property
  def probabilities(self):
    """[cells, classes] float32 calibrated probabilities."""
    return self.prediction.probabilities

  @property
  def logits(self):
    """[cells, classes] float32, before calibration."""
    return self.prediction.logits

  def summary(self, seconds):
    counts = pd.Series(self.labels).value_counts()
    per_class = ", ".join(f"{name} {int(counts.get(name, 0)):,}" for name in self.info["classes"])
    rule = self.info["unassigned"]
    return (f"annotated {len(self.labels):,} cells in {seconds:.1f} s: {per_class}; {unassigned.UNASSIGNED} "
            f"{int(counts.get(unassigned.UNASSIGNED, 0)):,} ({float(self.prediction.unassigned.mean()):.1%}): "
            f"{rule['score']} below {rule['threshold']:.4g} ({rule['chosen_by']})")

  def annotated_obs(self, obs):
    """A copy of a query's obs with the label, confidence, Unassigned and novelty columns."""
    obs = obs.copy()
    obs[LABEL_KEY] = pd.Categorical(self.labels, categories=list(self.info["classes"]) + [unassigned.UNASSIGNED])
    obs[CONFIDENCE_KEY] = self.confidence.astype(np.float32)
    obs[REASON_KEY] = pd.Categorical(self.prediction.reasons, categories=list(predict.REASONS))
    if self.prediction.rule.score != "none":
      obs[UNASSIGNED_SCORE_KEY] = self.prediction.unassigned_score.astype(np.float32)
    if self.prediction.novelty is not None:
      obs[NOVELTY_KEY] = np.asarray(self.prediction.novelty, np.float32)
    if self.prediction.label_sets is not None:
      obs[LABEL_SET_SIZE_KEY] = self.prediction.label_sets.sum(1).astype(np.int32)
    return obs

  def obsm(self):
    """{key: [cells, classes] array} the annotated copy's obsm gains: the probabilities and the label sets."""
    out = {PROBABILITIES_KEY: self.probabilities.astype(np.float32)}
    if self.prediction.label_sets is not None:
      out[LABEL_SETS_KEY] = self.prediction.label_sets
    return out

  def to_adata(self):
    """An annotated copy of the query (the query itself is not changed)."""
    if self.adata is None:
      raise ValueError("this result was annotated from a file; its annotated copy is the output file")
    out = self.adata.to_memory() if self.adata.isbacked else self.adata.copy()
    out.obs = self.annotated_obs(out.obs)
    out.obsm.update(self.obsm())
    out.uns[UNS_KEY] = self.info
    return out


def _annotate(bundle, adata, path, *, time_key, donor_key, gene_key, normalization, rule, alpha, progress,
              keep=True):
  """The AnnotationResult of an AnnData (in memory or backed) under an unassigned.Rule; `keep`: the result keeps
  the AnnData for to_adata()."""
  query = validate_query(bundle, adata, path, time_key, donor_key)
  score_novelty = bundle.novelty.score_block if bundle.novelty is not None else None
  x, report = bundle.preprocessing.transform(adata, normalization=normalization, gene_key=gene_key,
                                             also=score_novelty)
  logging.info("query %s: %s cells, values read as %s, %d of the model's %d genes missing%s", path,
               f"{len(x):,}", report["normalization"], len(report["missing_genes"]), len(bundle.preprocessing.genes),
               f" ({report['missing_genes'][:10]})" if report["missing_genes"] else "")
  if report["nonfinite_values_set_to_zero"]:
    logging.warning("%s: %s non-finite values (NaN or inf) in X set to 0, as training's quality control does",
                    preprocess.matrix_path(adata), f"{report['nonfinite_values_set_to_zero']:,}")
  if report["no_counts"].any():
    logging.warning("%s: %s cells have no counts; they are labelled %s", path, f"{report['no_counts'].sum():,}",
                    unassigned.UNASSIGNED)
  logits = predict.predict_cell_logits(bundle, x, query.times, query.groups, progress)
  prediction = predict.from_logits(logits, bundle.calibration, bundle.classes, rule, no_label=report["no_counts"],
                                   alpha=alpha, novelty=report.get("also"))
  info = {
      "classes": list(bundle.classes),
      "time_points": list(bundle.time_points),
      "time_points_in_query": [bundle.time_points[t] for t in np.unique(query.times)],
      "genes_used": [g for g in bundle.preprocessing.genes if g not in set(report["missing_genes"])],
      "genes_missing": report["missing_genes"],
      "normalization": report["normalization"],
      "nonfinite_values_set_to_zero": report["nonfinite_values_set_to_zero"],
      "cells_without_counts": int(report["no_counts"].sum()),
      "sequence_mode": bundle.sequence_mode,
      "context_donor_column": query.donor_key,
      "unassigned": dict(rule.record(), threshold=rule.threshold, meaning=unassigned.MEANINGS.get(rule.score, ""),
                         class_thresholds=np.asarray(rule.class_thresholds, np.float64)),
      "calibration": calibrate.describe(bundle.calibration),
      "workdir": str(bundle.workdir.absolute()),
      "version": importlib.metadata.version("cardiac_jax"),
  }
  if prediction.label_sets is not None:
    sizes = prediction.label_sets.sum(1)
    info["label_sets"] = {"alpha": alpha, "calibration_cells": CALIBRATION_CELLS,
                          "mean_size": float(sizes.mean()) if len(sizes) else 0.0,
                          "cells_with_empty_sets": int((sizes == 0).sum())}
  return AnnotationResult(prediction, info, adata if keep else None)


def annotate(bundle, adata, *, time_key=None, donor_key=None, gene_key=None, normalization="auto",
             unassigned_score=None, threshold=None, keep_known=unassigned.KEEP_KNOWN,
             per_class=None, alpha=conformal.ALPHA, progress=True):
  """Labels every cell of an AnnData; returns an AnnotationResult (`.to_adata()`: the annotated copy).

  Probabilities are calibrated with the run's calibration (temperature or vector scaling, chosen on the
  validation cells); the label is the most probable class after calibration.

  Args:
    bundle: `workdir.load(path)` of a model trained with a per-cell sequence mode (anchored or cell).
    adata: the query; X raw counts or normalised values, obs with a time column.
    time_key: obs column of the time points (default: the training config's data.time_key).
    donor_key: obs column of the donor (context comes from each cell's own donor); None: the training
      config's, if present; '' for none.
    gene_key: var column of gene names (default var_names); normalization: 'auto' or what X holds.
    unassigned_score, threshold, keep_known, per_class: a cell is 'Unassigned' when its score
      (unassigned.SCORES; None: unassigned.DEFAULT_SCORE, the energy; 'none': never) is below `threshold`, by
      default the threshold of its class that keeps a share `keep_known` of that class's validation cells assigned
      (per_class=False: one threshold for all cells; unassigned.rule).
    alpha: the label sets' error rate: each cell's set holds its type with probability 1 - alpha, for every
      class, where the query's cells are exchangeable with the run's validation cells (conformal.py).
  """
  rule = unassigned.rule(bundle.calibration, unassigned_score, threshold, keep_known,
                         where=bundle.workdir / workdir.CALIBRATION, per_class=per_class)
  path = preprocess.source_path(adata) if isinstance(adata, anndata.AnnData) else "<AnnData>"
  return _annotate(bundle, adata, path, time_key=time_key, donor_key=donor_key, gene_key=gene_key,
                   normalization=normalization, rule=rule, alpha=alpha, progress=progress)


def annotate_file(run, input_path, output_path, *, time_key=None, donor_key=None, gene_key=None,
                  normalization="auto", unassigned_score=None, threshold=None,
                  keep_known=unassigned.KEEP_KNOWN, per_class=None, alpha=conformal.ALPHA, geo_matrix="counts",
                  progress=True):
  """Annotates an .h5ad file or a GSE175634-layout GEO folder into a new .h5ad at output_path.

  `run` is a workdir (or its loaded Bundle). The output is written completely or not at all (a temporary file
  beside it, renamed at the end); the input is never modified. An .h5ad input is read in row blocks from disk
  and copied byte for byte, then the copy gains the annotation, so memory stays small whatever the size of X.
  Returns (AnnotationResult, seconds).
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
  bundle = run if isinstance(run, workdir.Bundle) else workdir.load(run)
  predict.check_can_annotate(bundle)  # before a GEO folder's matrix is read
  rule = unassigned.rule(bundle.calibration, unassigned_score, threshold, keep_known,
                         where=bundle.workdir / workdir.CALIBRATION, per_class=per_class)
  settings = dict(time_key=time_key, donor_key=donor_key, gene_key=gene_key, normalization=normalization, rule=rule,
                  alpha=alpha, progress=progress)
  if input_path.is_dir():
    adata = readers.read_geo(input_path, geo_matrix, required=(time_key or bundle.config.data.time_key,))
    result = _annotate(bundle, adata, str(input_path), **settings)
    annotated = result.to_adata()
    integrity.write_atomic(output_path, lambda tmp: annotated.write_h5ad(tmp))
  else:
    adata = readers.read_h5ad(input_path, time_key="", backed=True)
    try:
      result = _annotate(bundle, adata, str(input_path), keep=False, **settings)
      obs = adata.obs
    finally:
      adata.file.close()
    integrity.write_atomic(output_path, lambda tmp: _write_annotated_copy(input_path, tmp, obs, result))
  seconds = time.perf_counter() - started
  logging.info("%s; written to %s", result.summary(seconds), output_path)
  return result, seconds


def _write_annotated_copy(source, target, obs, result):
  """Copies the .h5ad `source` to `target` byte for byte, then writes the annotation into the copy."""
  shutil.copyfile(source, target)
  with h5py.File(target, "r+") as f:
    del f["obs"]
    anndata.io.write_elem(f, "obs", result.annotated_obs(obs))
    for group in ("obsm", "uns"):
      if group not in f:
        anndata.io.write_elem(f, group, {})
    entries = [("obsm", key, value) for key, value in result.obsm().items()] + [("uns", UNS_KEY, result.info)]
    for group, key, value in entries:
      if key in f[group]:
        del f[group][key]
      anndata.io.write_elem(f[group], key, value)
  os.chmod(target, 0o644)
