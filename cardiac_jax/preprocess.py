"""AnnData -> preprocessed: quality control, normalisation and the choice of genes.

Two steps, split by what they may see. `quality_control` looks at every cell (it only drops unusable ones);
`normalize_and_select` chooses the highly variable genes on the training cells alone, so that no test cell
influences which genes the model sees, and returns a dense `[cells, n_genes]` log-expression matrix.
"""

import re

import numpy as np
import pandas as pd
import scanpy as sc
import scipy.sparse as sp

from cardiac_jax.errors import ConfigError, DataError

NORMALIZATIONS = ("auto", "counts", "linear", "log")


def natural_key(value):
  """Sort key that orders 'day2' before 'day11' (digits compare as numbers)."""
  return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", str(value))]


def _missing(values):
  """[cells] bool: missing or empty entries of an obs column."""
  values = pd.Series(values)
  return values.isna().to_numpy() | (values.astype(str).str.strip().isin(["", "nan", "NaN", "None"])).to_numpy()


def quality_control(adata, *, time_key, label_key, donor_key="", time_order=()):
  """Checks the obs columns, cleans X and drops unusable cells.

  Non-finite entries of X are set to 0 and counted; cells with no counts, no label or no time are dropped and
  counted. A time value outside `time_order` is an error (a typo there would silently drop a whole day).

  Args:
    adata: AnnData with X [cells, genes] and the named obs columns; `uns['source_path']` names its file.
    time_key, label_key, donor_key: obs columns ('' for no donor column).
    time_order: the time points in order; () = natural sort of the values present.

  Returns:
    (adata, time_points, report): the kept cells (a copy), the ordered time points, and a dict of counts.
  """
  path = adata.uns.get("source_path", "<AnnData>")
  for role, key in (("time", time_key), ("label", label_key), ("donor", donor_key)):
    if key and key not in adata.obs.columns:
      raise DataError(path, f"no {role} column {key!r}; columns are {list(adata.obs.columns)}")
  x = adata.X
  values = x.data if sp.issparse(x) else x
  bad = ~np.isfinite(values)
  n_nonfinite = int(bad.sum())
  if n_nonfinite:
    values[bad] = 0
  times = adata.obs[time_key].astype(object)
  no_time = _missing(times)
  present = sorted({str(t) for t in times[~no_time]}, key=natural_key)
  if time_order:
    unknown = [t for t in present if t not in {str(o) for o in time_order}]
    if unknown:
      raise DataError(path, f"time value(s) {unknown} in column {time_key!r} are not in time_order {list(time_order)}")
    time_points = tuple(str(t) for t in time_order)
  else:
    time_points = tuple(present)
  no_label = _missing(adata.obs[label_key])
  no_donor = _missing(adata.obs[donor_key]) if donor_key else np.zeros(adata.n_obs, bool)
  totals = np.asarray(x.sum(axis=1)).ravel()
  no_counts = totals <= 0
  keep = ~(no_time | no_label | no_donor | no_counts)
  report = {
      "cells_read": int(adata.n_obs),
      "genes_read": int(adata.n_vars),
      "nonfinite_values_set_to_zero": n_nonfinite,
      "dropped_no_counts": int(no_counts.sum()),
      "dropped_no_label": int(no_label.sum()),
      "dropped_no_time": int(no_time.sum()),
      "dropped_no_donor": int(no_donor.sum()),
      "cells_kept": int(keep.sum()),
  }
  if not keep.any():
    raise DataError(path, f"no usable cells left after quality control: {report}")
  if not keep.all():  # at GSE175634's full size a copy of X is gigabytes; skip it when nothing is dropped
    adata = adata[keep].copy()
  adata.obs[time_key] = adata.obs[time_key].astype(str)
  adata.obs[label_key] = adata.obs[label_key].astype(str)
  if donor_key:
    adata.obs[donor_key] = adata.obs[donor_key].astype(str)
  adata.uns["source_path"] = path
  return adata, time_points, report


def detect_normalization(x):
  """Guesses what X holds from its non-zero values: 'counts', 'linear' (FPKM/TPM-like) or 'log'."""
  values = x.data if sp.issparse(x) else np.asarray(x).ravel()
  values = values[values != 0][:1_000_000]
  if values.size == 0 or values.min() < 0:
    return "log"
  if np.allclose(values, np.round(values)):
    return "counts"
  return "linear" if values.max() > 30 else "log"


def _log_normalize(adata, kind, target_sum):
  """In place: counts -> per-cell scaling to target_sum then log1p; linear -> log1p; log -> unchanged."""
  if kind == "counts":
    sc.pp.normalize_total(adata, target_sum=target_sum)
  if kind in ("counts", "linear"):
    sc.pp.log1p(adata)


def detected_in(x, rows, block=20_000):
  """[genes] int64: in how many of `rows` each gene is non-zero, for CSR `x` [cells, genes], `block` rows at a time.

  Never copies x: at GSE175634's full size even a boolean copy is gigabytes.
  """
  chosen = np.zeros(x.shape[0], bool)
  chosen[np.asarray(rows)] = True
  counts = np.zeros(x.shape[1], np.int64)
  for lo in range(0, x.shape[0], block):
    part = x[lo : lo + block]
    entry_rows = np.repeat(chosen[lo : lo + block], np.diff(part.indptr))
    counts += np.bincount(part.indices[entry_rows & (part.data != 0)], minlength=x.shape[1])
  return counts


def normalize_and_select(adata, train_cells, *, n_genes, normalization="auto", hvg_flavor="seurat_v3", target_sum=1e4,
                         min_cells=3):
  """Normalises every cell and selects `n_genes` highly variable genes on the training cells only.

  seurat_v3 ranks genes on raw counts, so with count data the genes are chosen before normalisation; other
  data (or flavours) are log-normalised first and ranked with 'seurat'. Only genes detected in at least
  `min_cells` training cells are ranked (scanpy's usual `filter_genes(min_cells=3)`): at GSE175634's size
  tens of thousands of genes are seen in a cell or two, and their identical (mean, variance) points make
  seurat_v3's loess fit singular.

  Args:
    adata: quality-controlled AnnData, X [cells, genes]; modified in place (normalised).
    train_cells: [n_train] int indices of the cells that may inform the gene choice.
    n_genes: genes to keep (at most the number of genes).
    normalization: one of NORMALIZATIONS.

  Returns:
    (x, genes, kind): x [cells, n_genes] float32 log expression, the chosen gene names (in adata's order),
    and the normalisation kind used.
  """
  path = adata.uns.get("source_path", "<AnnData>")
  if normalization not in NORMALIZATIONS:
    raise ConfigError(f"data.normalization must be one of {NORMALIZATIONS}, got {normalization!r}")
  kind = detect_normalization(adata.X) if normalization == "auto" else normalization
  if n_genes > adata.n_vars:
    raise DataError(path, f"data.n_genes={n_genes} but the data have only {adata.n_vars} genes")
  on_counts = kind == "counts" and hvg_flavor == "seurat_v3"
  if not on_counts:
    _log_normalize(adata, kind, target_sum)
  x = adata.X if sp.issparse(adata.X) else sp.csr_matrix(adata.X)
  ranked = np.flatnonzero(detected_in(x.tocsr(), train_cells) >= min_cells)
  if len(ranked) < n_genes:
    raise DataError(path, f"only {len(ranked)} genes are detected in >= {min_cells} training cells; "
                          f"data.n_genes={n_genes} cannot be chosen")
  train = adata[np.asarray(train_cells)]
  if len(ranked) < adata.n_vars:
    train = train[:, ranked]
  flavor = hvg_flavor if on_counts else "seurat"
  ranking = sc.pp.highly_variable_genes(train, flavor=flavor, n_top_genes=n_genes, inplace=False)
  chosen = ranked[np.flatnonzero(ranking["highly_variable"].to_numpy())]
  if on_counts:
    _log_normalize(adata, kind, target_sum)
  x = adata.X[:, chosen]
  x = x.toarray() if sp.issparse(x) else np.asarray(x)
  return x.astype(np.float32), tuple(adata.var_names[chosen]), kind
