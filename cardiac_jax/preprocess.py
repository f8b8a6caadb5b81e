"""AnnData -> preprocessed: quality control, normalisation and the choice of genes, as a fit and a transform.

Split by what each step may see. `quality_control` looks at every cell (it only drops unusable ones);
`fit` learns from the training cells alone (the highly variable genes, the normalisation kind, each gene's
mean and spread, and a PCA of the chosen genes that anchored sequences search neighbours in) and returns a
`Preprocessing`; `Preprocessing.transform` applies that to any AnnData, labelled or not, training data or a
new time course, and gives the dense `[cells, n_genes]` log-expression matrix the model reads.
"""

import dataclasses
import json
import re

import anndata
import numpy as np
from absl import logging
import pandas as pd
import scanpy as sc
import scipy.sparse as sp

from cardiac_jax.errors import ConfigError, DataError

NORMALIZATIONS = ("auto", "counts", "linear", "log")


def natural_key(value):
  """Sort key that orders 'day2' before 'day11' (digits compare as numbers)."""
  return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", str(value))]


def source_path(adata):
  """The file an AnnData came from, for error messages: a backed file, uns['source_path'], or '<AnnData>'."""
  if adata.isbacked:
    return str(adata.filename)
  return adata.uns.get("source_path", "<AnnData>")


def matrix_path(adata):
  """The file that holds X, named in errors about X's values: a backed file, uns['matrix_path'] (set by the readers:
  a GEO folder's matrix file), else `source_path`."""
  if adata.isbacked:
    return str(adata.filename)
  return adata.uns.get("matrix_path", source_path(adata))


def missing(values):
  """[cells] bool: missing or empty entries of an obs column."""
  values = pd.Series(values)
  return values.isna().to_numpy() | (values.astype(str).str.strip().isin(["", "nan", "NaN", "None"])).to_numpy()


def quality_control(adata, *, time_key, label_key, donor_key="", time_order=()):
  """Checks the obs columns, cleans X and drops unusable cells.

  Non-finite entries of X are set to 0 and counted; cells with no counts, no label or no time are dropped and
  counted. A time value outside `time_order` is an error (a typo there would silently drop a whole day), and
  so is a negative value in X (`check_not_negative`). Label, time and donor values are read without
  surrounding whitespace: 'CM' and 'CM ' are one class (the values changed are counted in the report).

  Args:
    adata: AnnData with X [cells, genes] and the named obs columns; `uns['source_path']` names its file.
    time_key, label_key, donor_key: obs columns ('' for no donor column).
    time_order: the time points in order; () = natural sort of the values present.

  Returns:
    (adata, time_points, report): the kept cells (a copy if any cell is dropped), the ordered time points, and
    a dict of counts.
  """
  path = source_path(adata)
  for role, key in (("time", time_key), ("label", label_key), ("donor", donor_key)):
    if key and key not in adata.obs.columns:
      raise DataError(path, f"no {role} column {key!r}; columns are {list(adata.obs.columns)}")
  x = adata.X
  n_nonfinite = zero_nonfinite(x)
  check_not_negative(x, matrix_path(adata))
  stripped = 0
  for key in (time_key, label_key, donor_key):
    if key:
      column, changed = _stripped(adata.obs[key])
      adata.obs[key], stripped = column, stripped + changed
  times = adata.obs[time_key].astype(object)
  no_time = missing(times)
  present = sorted({str(t) for t in times[~no_time]}, key=natural_key)
  if time_order:
    unknown = [t for t in present if t not in {str(o) for o in time_order}]
    if unknown:
      raise DataError(path, f"time value(s) {unknown} in column {time_key!r} are not in time_order {list(time_order)}")
    time_points = tuple(str(t) for t in time_order)
  else:
    time_points = tuple(present)
  no_label = missing(adata.obs[label_key])
  no_donor = missing(adata.obs[donor_key]) if donor_key else np.zeros(adata.n_obs, bool)
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
      "values_stripped_of_whitespace": stripped,
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


def _stripped(column):
  """(column with surrounding whitespace removed from its string values, how many values changed)."""
  text = column.astype(object)
  strings = text.map(lambda v: isinstance(v, str))
  if not strings.any():
    return column, 0
  clean = text.where(~strings, text[strings].str.strip())
  changed = int((clean[strings] != text[strings]).sum())
  return (clean if changed else column), changed


def zero_nonfinite(x):
  """Sets the NaN and infinite entries of X (an array, or a sparse matrix's stored values) to 0 in place, as
  quality control does; returns how many there were."""
  values = x.data if sp.issparse(x) else x
  bad = ~np.isfinite(values)
  values[bad] = 0
  return int(bad.sum())


def check_not_negative(values, path):
  """Raises DataError naming `path` if X holds negative values (scaled or z-scored data): cardiac_jax expects
  raw counts, linear (FPKM/TPM-like) or log(1 + x) values, all >= 0; scaled data would lose their cells as
  'no counts' and their meaning in the log transform."""
  values = values.data if sp.issparse(values) else np.asarray(values)
  negative = values < 0
  if negative.any():
    raise DataError(path, f"X holds {int(negative.sum()):,} negative values (min {float(values.min()):.3g}): scaled "
                          "or z-scored data? cardiac_jax needs raw counts, FPKM/TPM-like or log(1 + x) values (>= 0); "
                          "give it the unscaled matrix (e.g. adata.raw or the counts layer)")


# detect_normalization's rule, on up to SAMPLE non-zero values: counts if at most MAX_NON_INTEGER of them are
# not whole numbers; otherwise linear (FPKM/TPM-like) if more than MAX_LARGE of them exceed LOG_MAX (log1p of
# counts normalised to 1e4 stays below 10), else log. Shares, not the single largest or odd value, decide.
SAMPLE = 1_000_000
MAX_NON_INTEGER = 0.01
MAX_LARGE = 0.01
LOG_MAX = 30


def normalization_evidence(x):
  """(kind, why): what X holds, 'counts', 'linear' (FPKM/TPM-like) or 'log', and the shares that decided it."""
  values = x.data if sp.issparse(x) else np.asarray(x).ravel()
  values = values[values != 0][:SAMPLE]
  if values.size == 0:
    return "log", "X has no non-zero values"
  non_integer = float(np.mean(np.abs(values - np.round(values)) > 1e-6))
  large = float(np.mean(values > LOG_MAX))
  shares = (f"{non_integer:.2%} of {values.size:,} non-zero values are not whole numbers, {large:.2%} exceed "
            f"{LOG_MAX}")
  if non_integer <= MAX_NON_INTEGER:
    return "counts", f"{shares} (counts: at most {MAX_NON_INTEGER:.0%} not whole)"
  if large > MAX_LARGE:
    return "linear", f"{shares} (linear: more than {MAX_LARGE:.0%} above {LOG_MAX})"
  return "log", f"{shares} (log: at most {MAX_LARGE:.0%} above {LOG_MAX})"


def detect_normalization(x):
  """Guesses what X holds from its non-zero values: 'counts', 'linear' (FPKM/TPM-like) or 'log' (see
  `normalization_evidence` for the rule)."""
  return normalization_evidence(x)[0]


def log_columns(x, columns, kind, target_sum, dense=True):
  """`[cells, len(columns)]` float32 log expression of `columns` of CSR `x` [cells, genes] holding `kind` values.

  counts: each cell scaled to `target_sum` by its total over all genes, then log1p; the values equal scanpy's
  `sc.pp.normalize_total(target_sum)` then `sc.pp.log1p` on the whole matrix, to the bit (the totals of
  integer counts are exact in float64, and the scaling and log1p are the same float32 operations), but only
  the chosen columns are scaled, so at GSE175634's full size no second copy of the counts is made.
  linear (FPKM/TPM-like): log1p. log: as they are. Dense unless `dense=False` (then CSR).
  """
  part = x[:, np.asarray(columns)].tocsr().astype(np.float32)
  if kind == "counts":
    totals = np.asarray(x.sum(axis=1, dtype=np.float64)).ravel().astype(np.float32)
    factors = totals / np.float32(target_sum)
    factors = factors + (factors == 0)  # cells without counts are left as they are, as scanpy does
    part.data = part.data / np.repeat(factors, np.diff(part.indptr))
  if kind in ("counts", "linear"):
    part.data = np.log1p(part.data)
  return part.toarray() if dense else part


def gene_columns(genes, names):
  """[len(genes)] int64 position of each of `genes` among a matrix's gene `names` (-1 where absent; a duplicated
  name: its first column, as scanpy's var_names_make_unique keeps)."""
  index = {}
  for i, name in enumerate(np.asarray(names).astype(str)):
    index.setdefault(name, i)
  return np.array([index.get(g, -1) for g in genes], np.int64)


def log_columns_or_mean(x, columns, kind, target_sum, mean):
  """`[cells, len(columns)]` float32 log expression (log_columns) of CSR `x`'s `columns`, where a column of -1 (a
  gene the data lack) is filled with that gene's training `mean` [len(columns)]."""
  columns = np.asarray(columns)
  present = columns >= 0
  out = np.empty((x.shape[0], len(columns)), np.float32)
  out[:, present] = log_columns(x, columns[present], kind, target_sum)
  out[:, ~present] = np.asarray(mean)[~present]
  return out


def log_normalized_columns(x, columns, target_sum):
  """`[cells, len(columns)]` float32: `columns` of CSR counts `x` as normalize_total + log1p would give them."""
  return log_columns(x, columns, "counts", target_sum)


def _row_blocks(x, rows, block):
  """Yields the CSR row blocks of `x` restricted to `rows`, `block` rows of x at a time (small copies only)."""
  chosen = np.zeros(x.shape[0], bool)
  chosen[np.asarray(rows)] = True
  for lo in range(0, x.shape[0], block):
    yield x[lo : lo + block][chosen[lo : lo + block]]


def detected_in(x, rows, block=20_000):
  """[genes] int64: in how many of `rows` each gene is non-zero, for CSR `x` [cells, genes], `block` rows at a time.

  Never copies x: at GSE175634's full size even a boolean copy is gigabytes.
  """
  counts = np.zeros(x.shape[1], np.int64)
  for part in _row_blocks(x, rows, block):
    counts += np.bincount(part.indices[part.data != 0], minlength=x.shape[1])
  return counts


def seurat_v3_ranking(x, rows, genes, n_top, *, span=0.3, block=20_000):
  """The `n_top` most variable of `genes` among `rows` by Seurat v3's variance-stabilising rule, block by block.

  The rule (Stuart et al. 2019, as scanpy's flavor='seurat_v3' computes it for one batch): fit a loess of
  log10 variance on log10 mean over the genes; standardise each gene by the fitted deviation, after clipping
  counts at mean + sqrt(cells) * that deviation; rank by the variance of the clipped standardised counts.
  Computed from per-gene sums over row blocks of `x`, so no copy of the (gigabytes of) training counts is made.

  Args:
    x: CSR [cells, all genes] raw counts.
    rows: [n] int, the cells that inform the choice (training cells).
    genes: [g] int, the genes to rank (e.g. those detected in enough training cells).
    n_top: how many genes to return.

  Returns:
    [n_top] int indices into x's genes, in increasing order.
  """
  from skmisc.loess import loess

  genes = np.asarray(genes)
  n = len(rows)
  width = x.shape[1]
  total, squares = np.zeros(width), np.zeros(width)
  for part in _row_blocks(x, rows, block):
    values = part.data.astype(np.float64)
    total += np.bincount(part.indices, weights=values, minlength=width)
    squares += np.bincount(part.indices, weights=values**2, minlength=width)
  mean = total[genes] / n
  var = (squares[genes] - n * mean**2) / (n - 1)
  varies = var > 0
  fitted = np.zeros(len(genes))
  model = loess(np.log10(mean[varies]), np.log10(var[varies]), span=span, degree=2)
  model.fit()
  fitted[varies] = model.outputs.fitted_values
  reg_std = np.sqrt(10**fitted)
  clip = np.full(width, np.inf)
  clip[genes] = reg_std * np.sqrt(n) + mean
  clipped_total, clipped_squares = np.zeros(width), np.zeros(width)
  for part in _row_blocks(x, rows, block):
    values = np.minimum(part.data.astype(np.float64), clip[part.indices])
    clipped_total += np.bincount(part.indices, weights=values, minlength=width)
    clipped_squares += np.bincount(part.indices, weights=values**2, minlength=width)
  norm_var = (n * mean**2 + clipped_squares[genes] - 2 * clipped_total[genes] * mean) / ((n - 1) * reg_std**2)
  return np.sort(genes[np.argsort(-norm_var, kind="stable")[:n_top]])


# data.gene_selection: 'hvg' (the seed's highly variable genes, unsupervised) or 'anova' (the genes whose log
# expression differs most between the training cells' types).
GENE_SELECTIONS = ("hvg", "anova")


def anova_ranking(x, rows, labels, genes, n_top, kind, target_sum, block=20_000):
  """The `n_top` of `genes` whose log expression differs most between the classes of `rows` (one-way ANOVA F).

  Computed from per-class sums and sums of squares of the log-normalised values over row blocks of `x`, so no
  dense copy of the training cells is made.

  Args:
    x: CSR [cells, all genes] holding `kind` values; rows: [n] training cells; labels: [n] their class ids.
    genes: [g] int candidate genes; n_top: how many to return.

  Returns:
    [n_top] int indices into x's genes, in increasing order.
  """
  rows, labels, genes = np.asarray(rows), np.asarray(labels), np.asarray(genes)
  n_classes = int(labels.max()) + 1
  sums = np.zeros((n_classes, len(genes)))
  squares = np.zeros(len(genes))
  for lo in range(0, len(rows), block):
    part = log_columns(x[rows[lo : lo + block]], genes, kind, target_sum, dense=False).astype(np.float64)
    members = sp.csr_matrix((np.ones(part.shape[0]), (labels[lo : lo + block], np.arange(part.shape[0]))),
                            shape=(n_classes, part.shape[0]))
    sums += (members @ part).toarray()
    squares += np.asarray(part.multiply(part).sum(0)).ravel()
  counts = np.bincount(labels, minlength=n_classes).astype(np.float64)[:, None]
  present = counts[:, 0] > 0
  means = sums[present] / counts[present]
  grand = sums.sum(0) / len(rows)
  between = (counts[present] * (means - grand) ** 2).sum(0) / max(present.sum() - 1, 1)
  within = (squares - (counts[present] * means**2).sum(0)) / max(len(rows) - present.sum(), 1)
  f = np.where(within > 1e-12, between / np.maximum(within, 1e-12), 0.0)
  return np.sort(genes[np.argsort(-f, kind="stable")[:n_top]])


def normalize_and_select(adata, train_cells, *, n_genes, normalization="auto", hvg_flavor="seurat_v3", target_sum=1e4,
                         min_cells=3, selection="hvg", labels=None):
  """Normalises every cell and selects `n_genes` genes on the training cells only: highly variable genes, or
  with selection='anova' the genes that differ most between the training cells' types (`anova_ranking`).

  seurat_v3 ranks genes on raw counts, so with count data the genes are chosen before normalisation; other
  data (or flavours) are log-normalised first and ranked with 'seurat'. Only genes detected in at least
  `min_cells` training cells are ranked (scanpy's usual `filter_genes(min_cells=3)`): at GSE175634's size
  tens of thousands of genes are seen in a cell or two, and their identical (mean, variance) points make
  seurat_v3's loess fit singular.

  Args:
    adata: quality-controlled AnnData, X [cells, genes] (not changed).
    train_cells: [n_train] int indices of the cells that may inform the gene choice.
    n_genes: genes to keep (at most the number of genes).
    normalization: one of NORMALIZATIONS.
    selection: one of GENE_SELECTIONS; labels: [cells] int class ids (for 'anova').

  Returns:
    (x, genes, kind): x [cells, n_genes] float32 log expression, the chosen gene names (in adata's order),
    and the normalisation kind used.
  """
  path = source_path(adata)
  if normalization not in NORMALIZATIONS:
    raise ConfigError(f"data.normalization must be one of {NORMALIZATIONS}, got {normalization!r}")
  kind, why = normalization_evidence(adata.X) if normalization == "auto" else (normalization, "data.normalization")
  logging.info("%s: values read as %s: %s", path, kind, why)
  if n_genes > adata.n_vars:
    raise DataError(path, f"data.n_genes={n_genes} but the data have only {adata.n_vars} genes")
  on_counts = kind == "counts" and hvg_flavor == "seurat_v3"
  x = adata.X.tocsr() if sp.issparse(adata.X) else sp.csr_matrix(adata.X)
  ranked = np.flatnonzero((detected_in(x, train_cells) >= min_cells) & first_of_each_name(adata.var_names, path))
  if len(ranked) < n_genes:
    raise DataError(path, f"only {len(ranked)} genes are detected in >= {min_cells} training cells; "
                          f"data.n_genes={n_genes} cannot be chosen")
  if selection not in GENE_SELECTIONS:
    raise ConfigError(f"data.gene_selection must be one of {GENE_SELECTIONS}, got {selection!r}")
  if selection == "anova":
    train_cells = np.asarray(train_cells)
    chosen = anova_ranking(x, train_cells, np.asarray(labels)[train_cells], ranked, n_genes, kind, target_sum)
  elif on_counts:
    chosen = seurat_v3_ranking(x, train_cells, ranked, n_genes)
  else:
    train_log = anndata.AnnData(log_columns(x[np.asarray(train_cells)], ranked, kind, target_sum, dense=False))
    ranking = sc.pp.highly_variable_genes(train_log, flavor="seurat", n_top_genes=n_genes, inplace=False)
    chosen = ranked[np.flatnonzero(ranking["highly_variable"].to_numpy())]
  return log_columns(x, chosen, kind, target_sum), tuple(adata.var_names[chosen]), kind


# Principal components of the context space (anchored sequences find neighbours there), and the most training
# cells the PCA is fitted on (a seeded sample beyond that; the components settle long before).
N_COMPONENTS = 20
PCA_MAX_CELLS = 50_000
# A query may lack at most this share of the model's genes.
MAX_MISSING_GENES = 0.2
# Rows of X transformed at a time (bounds memory for backed, on-disk AnnData).
TRANSFORM_BLOCK = 20_000


@dataclasses.dataclass(frozen=True)
class Preprocessing:
  """What is learned from the training cells, to be applied unchanged to any AnnData (`transform`).

  Attributes:
    genes: the model's input genes, in input order.
    kind: what the training data's X held ('counts', 'linear' or 'log'; see `detect_normalization`).
    target_sum: counts are scaled to this total per cell before log1p.
    mean, scale: [genes] float32 mean and standard deviation of the training cells' log expression; a gene
      the query lacks is given its training mean.
    components: [N_COMPONENTS, genes] float32 principal axes of the training cells' standardised log
      expression: the low-dimensional space where anchored sequences look for neighbours.
  """

  genes: tuple
  kind: str
  target_sum: float
  mean: np.ndarray
  scale: np.ndarray
  components: np.ndarray

  def embed(self, x):
    """[cells, N_COMPONENTS] float32 coordinates of log expression x [cells, genes] in the context space."""
    return project(x, self.mean, self.scale, self.components)

  def match_genes(self, names, path, max_missing=MAX_MISSING_GENES):
    """Positions of the model's genes among a query's gene `names` (-1 where absent), and the absent genes.

    Raises DataError naming `path` if more than `max_missing` of the model's genes are absent.
    """
    columns = gene_columns(self.genes, names)
    missing = [g for g, c in zip(self.genes, columns) if c < 0]
    if len(missing) > max_missing * len(self.genes):
      raise DataError(
          path, f"{len(missing)} of the model's {len(self.genes)} genes are missing (more than "
                f"{max_missing:.0%}), e.g. {missing[:8]}; are the genes named as in training (symbols, not ids)?")
    return columns, missing

  def transform_blocks(self, blocks, columns, kind):
    """Log expression [cells, genes] of a matrix given as CSR row blocks [rows, query genes], X holding `kind`.

    `columns` are the model's genes' positions in the query (-1 where absent: the training mean is used).
    """
    out = [log_columns_or_mean(block, columns, kind, self.target_sum, self.mean) for block in blocks]
    return np.concatenate(out) if out else np.zeros((0, len(self.genes)), np.float32)

  def transform(self, adata, *, normalization="auto", gene_key=None, also=None):
    """The model's input for any AnnData: [cells, genes] float32 log expression, and a report.

    X is cleaned as training's quality control cleans it: non-finite values are set to 0 and counted, negative
    values are an error naming the file.

    Args:
      adata: AnnData [cells, genes] (in memory or backed); X raw counts, FPKM/TPM-like or log values.
      normalization: 'auto' (detect from X) or the kind X holds (NORMALIZATIONS).
      gene_key: a var column holding gene names, or None for var_names.
      also: None, or a function (CSR row block of X [rows, query genes], the query's gene names, the kind of its
        values) -> [rows] array, applied to each block in the same pass (e.g. novelty.Novelty.score_block).

    Returns:
      (x, report): report has 'normalization' (the kind used), 'missing_genes' (model genes the data lack),
      'nonfinite_values_set_to_zero', 'no_counts' ([cells] bool: cells whose X row has nothing above 0) and,
      with `also`, 'also' ([cells] its values).
    """
    path, matrix = source_path(adata), matrix_path(adata)
    names = _gene_names(adata, gene_key, path)
    columns, missing = self.match_genes(names, path)

    def cleaned(lo):
      """(CSR row block of X from row lo, its non-finite values set to 0 in a copy, how many there were)."""
      block = as_csr(adata.X[lo : lo + TRANSFORM_BLOCK]).copy()  # the caller's X is never changed
      nonfinite = zero_nonfinite(block)
      check_not_negative(block, matrix)
      return block, nonfinite

    kind = check_kind(cleaned(0)[0], normalization, matrix) if adata.n_obs else "counts"
    nonfinite, no_counts, extra = [], [], []

    def blocks():
      for lo in range(0, adata.n_obs, TRANSFORM_BLOCK):
        block, count = cleaned(lo)
        nonfinite.append(count)
        no_counts.append(np.asarray(block.sum(axis=1)).ravel() <= 0)
        if also is not None:
          extra.append(also(block, names, kind))
        yield block

    x = self.transform_blocks(blocks(), columns, kind)
    report = {"normalization": kind, "missing_genes": missing, "nonfinite_values_set_to_zero": sum(nonfinite),
              "no_counts": np.concatenate(no_counts) if no_counts else np.zeros(0, bool)}
    if also is not None:
      report["also"] = np.concatenate(extra) if extra else np.zeros(0, np.float32)
    return x, report

  def to_json(self):
    fields = dataclasses.asdict(self)
    for name in ("mean", "scale", "components"):
      fields[name] = np.asarray(fields[name]).tolist()
    return json.dumps(fields)

  @classmethod
  def from_json(cls, text):
    fields = json.loads(text)
    fields["genes"] = tuple(fields["genes"])
    for name in ("mean", "scale", "components"):
      fields[name] = np.asarray(fields[name], np.float32)
    return cls(**fields)


def first_of_each_name(names, path):
  """[genes] bool: True at the first column of each gene name. A duplicated name's other columns are never
  chosen (the model's gene list names each gene once, and a query is read by name: its first column)."""
  first = ~pd.Index(names).duplicated(keep="first")
  if not first.all():
    logging.warning("%s: %d duplicated gene names (e.g. %s); only the first column of each can be chosen", path,
                    int((~first).sum()), list(pd.Index(names)[~first][:5]))
  return first


def as_csr(x):
  return x.tocsr() if sp.issparse(x) else sp.csr_matrix(np.asarray(x))


def _gene_names(adata, gene_key, path):
  if not gene_key:
    return adata.var_names.to_numpy()
  if gene_key not in adata.var.columns:
    raise DataError(path, f"var has no gene-name column {gene_key!r}; columns are {list(adata.var.columns)}")
  return adata.var[gene_key].to_numpy()


def check_kind(x, normalization, path):
  """The kind of values X holds: `normalization` if given, else detected from x (a CSR block of X)."""
  if normalization not in NORMALIZATIONS:
    raise ConfigError(f"normalization must be one of {NORMALIZATIONS}, got {normalization!r}")
  check_not_negative(x, path)
  return detect_normalization(x) if normalization == "auto" else normalization


def fit(adata, train_cells, *, n_genes, normalization="auto", hvg_flavor="seurat_v3", target_sum=1e4, min_cells=3,
        seed=0, selection="hvg", labels=None):
  """Fits the preprocessing on the training cells of a quality-controlled AnnData.

  Returns:
    (Preprocessing, x): the fit, and x [cells, n_genes] float32, the log expression of every cell of adata
    (equal to `Preprocessing.transform(adata)`).
  """
  x, genes, kind = normalize_and_select(
      adata, train_cells, n_genes=n_genes, normalization=normalization, hvg_flavor=hvg_flavor,
      target_sum=target_sum, min_cells=min_cells, selection=selection, labels=labels)
  train_x = x[np.asarray(train_cells)]
  if len(train_x) > PCA_MAX_CELLS:
    train_x = train_x[np.sort(np.random.default_rng([seed, 4]).choice(len(train_x), PCA_MAX_CELLS, replace=False))]
  mean, scale, axes = principal_axes(train_x, N_COMPONENTS)
  return Preprocessing(genes, kind, float(target_sum), mean, scale, axes), x


# Standardised values are clipped to this many standard deviations before a projection (scanpy's pp.scale max_value).
PROJECTION_CLIP = 10


def project(log_x, mean, scale, axes):
  """[cells, axes] float32 coordinates of log expression [cells, genes] standardised by `mean` and `scale` (clipped at
  +-PROJECTION_CLIP) on principal `axes` [axes, genes] (principal_axes)."""
  return (np.clip((log_x - mean) / scale, -PROJECTION_CLIP, PROJECTION_CLIP) @ axes.T).astype(np.float32)


def project_sparse(log_x, genes, mean, scale, axes):
  """`project` of CSR log expression [cells, len(genes)] of the `genes` (positions among mean's); every other gene
  reads as its mean (standardised 0). Only the non-zero values are touched: a zero's standardised value is the same
  for every cell, so it enters once, through a constant row."""
  zero = np.clip(-mean[genes] / scale[genes], -PROJECTION_CLIP, PROJECTION_CLIP)  # [len(genes)]
  column = log_x.indices
  shifted = log_x.copy()
  shifted.data = (np.clip((log_x.data - mean[genes][column]) / scale[genes][column], -PROJECTION_CLIP,
                          PROJECTION_CLIP) - zero[column]).astype(np.float32)
  sub_axes = np.ascontiguousarray(axes[:, genes].T)  # [len(genes), axes]
  return (np.asarray(shifted @ sub_axes) + zero @ sub_axes).astype(np.float32)


def principal_axes(log_x, n_components):
  """(mean, scale, axes) of log expression [cells, genes]: each gene's float32 mean and standard deviation (1 for a
  constant gene), and the float32 [n_components, genes] principal axes of the standardised values (clipped at
  +-PROJECTION_CLIP), each axis with a fixed sign (its largest entry positive)."""
  mean = log_x.mean(0, dtype=np.float64).astype(np.float32)
  scale = log_x.std(0, dtype=np.float64).astype(np.float32)
  scale[scale == 0] = 1
  standardised = np.clip((log_x - mean) / scale, -PROJECTION_CLIP, PROJECTION_CLIP).astype(np.float64)
  _, _, axes = np.linalg.svd(standardised - standardised.mean(0), full_matrices=False)
  axes = axes[: min(n_components, log_x.shape[1], len(log_x))]
  axes *= np.sign(axes[np.arange(len(axes)), np.abs(axes).argmax(1)])[:, None]
  return mean, scale, axes.astype(np.float32)
