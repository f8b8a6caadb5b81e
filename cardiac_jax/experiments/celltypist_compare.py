"""CellTypist, the field's per-cell annotation tool, fitted and applied as its documentation says, on the very
cells the model is trained and tested on: the reference the suite's per-cell rows are measured against.

CellTypist is an optional extra (`pip install -e ".[celltypist]"`); without it the suite leaves its rows out
and says so. As documented: every gene of the training and test cells, counts normalised to 10,000 per cell
and log1p (`sc.pp.normalize_total(target_sum=1e4)`, `sc.pp.log1p`); `celltypist.train(adata, labels)` with
its defaults; `celltypist.annotate(adata, model)` with best match, and again with majority voting (its own
over-clustering of the test cells).
"""

import importlib.util
import os
import tempfile
import warnings

import numpy as np
import scanpy as sc
from absl import logging

from cardiac_jax import dataset
from cardiac_jax.errors import ConfigError

BEST_MATCH = "CellTypist (best match)"
MAJORITY_VOTING = "CellTypist (majority voting)"
INSTALL = "pip install -e \".[celltypist]\""


def available():
  return importlib.util.find_spec("celltypist") is not None


def _import():
  """The celltypist module; its import writes a model folder, which goes to a temporary folder, not to ~."""
  if not available():
    raise ConfigError(f"CellTypist is not installed; it is an optional extra: {INSTALL}")
  os.environ.setdefault("CELLTYPIST_FOLDER", tempfile.mkdtemp(prefix="celltypist-"))
  import celltypist

  return celltypist


def log_normalised(adata):
  """A copy of adata as CellTypist expects it: counts normalised to 10,000 per cell, then log1p."""
  adata = adata.copy()
  sc.pp.normalize_total(adata, target_sum=1e4)
  sc.pp.log1p(adata)
  return adata


def split_adatas(config, data):
  """(train, val, test) AnnData of all genes, log1p of counts normalised to 10,000, obs['label'] the class name.

  The cells are the Dataset's own training, validation and test cells (by obs name), read again from the config's
  files.
  """
  adata, _ = dataset.load(config)
  adata.obs_names_make_unique()
  label = np.asarray(data.encoding.classes, dtype=object)[data.cell_labels]
  out = []
  for split in (0, 1, 2):
    rows = np.flatnonzero(data.cell_split == split)
    part = log_normalised(adata[data.cell_names[rows]])
    part.obs["label"] = label[rows]
    out.append(part)
  return tuple(out)


def train_model(train, seed):
  """A CellTypist model trained with its defaults on `train` (log-normalised, obs['label'])."""
  celltypist = _import()
  logging.info("CellTypist: training on %d cells x %d genes", train.n_obs, train.n_vars)
  np.random.seed(seed)  # CellTypist draws from numpy's global generator
  with warnings.catch_warnings():
    # celltypist 1.7.1 passes LogisticRegression(multi_class='ovr'), deprecated in scikit-learn 1.7.
    warnings.filterwarnings("ignore", category=FutureWarning, module="sklearn")
    return celltypist.train(train, labels="label", n_jobs=1)


def prob_match(model, query, p_thres=0.5):
  """CellTypist's 'prob match' mode on a log-normalised query: (labels [cells] str, 'Unassigned' where no class
  reaches p_thres, top per-class probability [cells]), in the query's cell order."""
  celltypist = _import()
  predictions = celltypist.annotate(query.copy(), model=model, mode="prob match", p_thres=p_thres)
  order = query.obs_names
  labels = predictions.predicted_labels.loc[order, "predicted_labels"].astype(str).to_numpy()
  return labels, predictions.probability_matrix.loc[order].to_numpy(np.float64).max(1)


def fit_and_annotate(config, data, seed, majority_voting=True):
  """CellTypist trained on the Dataset's training cells, applied to its test cells (and validation cells);
  majority_voting=False leaves its over-clustering out ('majority_voting' is then absent).

  Returns:
    dict: 'best_match' and 'majority_voting' [test cells] int class ids (test cells in `data.test` order),
    'conf_score' [test cells] CellTypist's confidence of the best match, 'probabilities' [test cells, classes]
    (CellTypist's per-class sigmoid scores, in the Dataset's class order), 'val_probabilities' [validation
    cells, classes] the same of the validation cells (in `data.val` order).
  """
  celltypist = _import()
  train, val, test = split_adatas(config, data)
  model = train_model(train, seed)
  # annotate() and to_adata() change the AnnData they are given: each call gets its own copy.
  predictions = celltypist.annotate(test.copy(), model=model, majority_voting=False)
  best = predictions.to_adata()
  index = {name: i for i, name in enumerate(data.encoding.classes)}
  order = test.obs_names
  probabilities = predictions.probability_matrix.loc[order, list(data.encoding.classes)]
  val_probabilities = celltypist.annotate(val.copy(), model=model, majority_voting=False).probability_matrix.loc[
      val.obs_names, list(data.encoding.classes)]
  fitted = {
      "val_probabilities": val_probabilities.to_numpy(np.float32),
      "best_match": np.array([index[v] for v in best.obs.loc[order, "predicted_labels"].astype(str)]),
      "conf_score": best.obs.loc[order, "conf_score"].to_numpy(np.float32),
      "probabilities": probabilities.to_numpy(np.float32),
  }
  if majority_voting:
    voted = celltypist.annotate(test.copy(), model=model, majority_voting=True).predicted_labels
    fitted["majority_voting"] = np.array([index[v] for v in voted.loc[order, "majority_voting"].astype(str)])
  return fitted


def baselines(config):
  """{name: fn(data, seed) -> test predictions} for the suite's per-cell rows; {} (with a warning) without
  CellTypist. One CellTypist fit serves both rows of a data set and seed."""
  if not available():
    logging.warning("CellTypist rows left out: CellTypist is not installed (%s)", INSTALL)
    return {}
  fitted = {}

  def run(data, seed, key):
    if (id(data), seed) not in fitted:
      fitted.clear()
      fitted[id(data), seed] = fit_and_annotate(config, data, seed)
    return fitted[id(data), seed][key]

  return {
      BEST_MATCH: lambda data, seed: run(data, seed, "best_match"),
      MAJORITY_VOTING: lambda data, seed: run(data, seed, "majority_voting"),
  }
