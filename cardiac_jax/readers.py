"""Files -> AnnData: GSE175634's GEO files, any .h5ad time course, and Space Ranger Visium folders.

Every reader checks what it reads before the expensive part (a MatrixMarket header before its body) and
raises `DataError(path, problem)` naming the file at fault. Matrices stay sparse: the counts are read once
into a CSR `[cells, genes]` matrix and never densified here.
"""

import gzip
import pathlib

import anndata
import numpy as np
import pandas as pd
import scipy.io
import scipy.sparse as sp

from cardiac_jax.errors import ConfigError, DataError

GEO_CELL_INDICES = "GSE175634_cell_indices.tsv.gz"
GEO_METADATA = "GSE175634_cell_metadata.tsv.gz"
# data.geo_matrix -> (matrix file, gene index file); both matrices are genes x cells.
GEO_MATRICES = {
    "counts": ("GSE175634_cell_counts.mtx.gz", "GSE175634_gene_indices_counts.tsv.gz"),
    "sctransform": (
        "GSE175634_cell_counts_sctransform.mtx.gz",
        "GSE175634_gene_indices_counts_sctransform.tsv.gz",
    ),
}
# Metadata columns read as strings: cell-line ids like 18499 are names, not numbers.
GEO_STRING_COLUMNS = ("cell", "exp.grp", "sample", "diffday", "individual", "type")


def _existing(path):
  path = pathlib.Path(path).expanduser()
  if not path.exists():
    raise DataError(path, "file not found")
  return path


def _read_table(path, columns, **kwargs):
  """Reads a tab-separated (optionally gzipped) table and checks that `columns` are present."""
  path = _existing(path)
  try:
    table = pd.read_csv(path, sep="\t", **kwargs)
  except (OSError, ValueError, EOFError, pd.errors.ParserError) as e:
    raise DataError(path, f"cannot be read as a tab-separated table ({e})") from e
  missing = [c for c in columns if c not in table.columns]
  if missing:
    raise DataError(path, f"missing column(s) {missing}; found {list(table.columns)}")
  return table


# MatrixMarket entries parsed per chunk: about 50 MB of arrays, whatever the size of the file.
MTX_CHUNK_ENTRIES = 4_000_000


def _read_mtx(path, shape, orientation, chunk_entries=MTX_CHUNK_ENTRIES):
  """Reads a coordinate MatrixMarket file whose shape must be `shape`, transposed: CSR float32 `[cols, rows]`.

  GEO and Space Ranger write genes x cells; this returns cells x genes. The body is parsed in chunks of
  `chunk_entries` lines straight into the CSR arrays (int32 indices, float32 values: 8 bytes an entry), so
  the whole GSE175634 matrix (hundreds of millions of entries) never exists as text, float64 or COO triplets.
  Entries in column order, as R's writeMM and Space Ranger write them, need no sort; others are sorted.

  `orientation` names the expected layout (e.g. 'genes x cells') for the error message; a matrix whose shape is
  `shape` reversed is reported as being in the wrong orientation.
  """
  path = _existing(path)
  try:
    rows, cols, nnz, fmt, field, _ = scipy.io.mminfo(str(path))
  except (OSError, ValueError, EOFError) as e:
    raise DataError(path, f"is not a MatrixMarket file ({e})") from e
  if fmt != "coordinate":
    raise DataError(path, f"expected a sparse (coordinate) MatrixMarket matrix, found '{fmt}'")
  if (rows, cols) != tuple(shape):
    if (cols, rows) == tuple(shape):
      raise DataError(
          path, f"matrix is {rows} x {cols}, the transpose of the expected {orientation} ({shape[0]} x {shape[1]})"
      )
    raise DataError(path, f"matrix is {rows} x {cols} but the index files give {orientation} = {shape[0]} x {shape[1]}")
  if field not in ("integer", "real", "pattern"):
    raise DataError(path, f"MatrixMarket field '{field}' is not supported (integer, real or pattern)")
  try:
    return _read_mtx_body(path, rows, cols, nnz, field, chunk_entries)
  except (OSError, ValueError, EOFError, pd.errors.ParserError) as e:
    raise DataError(path, f"MatrixMarket body cannot be read ({e})") from e


def _header_lines(path):
  """Lines before the first entry: '%' comment lines and the size line."""
  opener = gzip.open if path.suffix == ".gz" else open
  with opener(path, "rt") as f:
    for n, line in enumerate(f, start=1):
      if not line.startswith("%"):
        return n
  raise ValueError("no size line")


def _read_mtx_body(path, rows, cols, nnz, field, chunk_entries):
  """CSR `[cols, rows]` float32 of the file's entries; raises DataError on entries out of range or missing."""
  names = ["row", "col"] if field == "pattern" else ["row", "col", "value"]
  dtypes = {"row": np.int32, "col": np.int32, "value": np.float32}
  chunks = pd.read_csv(
      path, sep=r"\s+", header=None, names=names, skiprows=_header_lines(path),
      dtype={name: dtypes[name] for name in names}, chunksize=chunk_entries, engine="c",
  )
  indices = np.empty(nnz, np.int32)  # the file's row (gene) of every entry
  data = np.ones(nnz, np.float32)
  per_col = np.zeros(cols, np.int64)
  col_of_entry = None  # kept only if the entries are not in column order
  done, last_col, in_order = 0, 0, True
  for chunk in chunks:
    n = len(chunk)
    if done + n > nnz:
      raise DataError(path, f"has more entries than the {nnz} its size line declares")
    row = chunk["row"].to_numpy()
    col = chunk["col"].to_numpy()
    if row.min() < 1 or row.max() > rows or col.min() < 1 or col.max() > cols:
      raise DataError(path, f"an entry near entry {done + 1} lies outside the {rows} x {cols} matrix")
    if field != "pattern":
      value = chunk["value"].to_numpy()
      if not np.isfinite(value).all():
        raise DataError(path, f"entry {done + 1 + int(np.argmin(np.isfinite(value)))} has no finite value")
      data[done : done + n] = value
    indices[done : done + n] = row - 1
    per_col += np.bincount(col - 1, minlength=cols)
    if in_order and (col[0] < last_col or (np.diff(col) < 0).any()):
      in_order = False
      col_of_entry = np.empty(nnz, np.int32)
      col_of_entry[:done] = np.repeat(np.arange(cols, dtype=np.int32), per_col - np.bincount(col - 1, minlength=cols))
    if col_of_entry is not None:
      col_of_entry[done : done + n] = col - 1
    last_col = col[-1]
    done += n
  if done != nnz:
    raise DataError(path, f"has {done} entries but its size line declares {nnz}; is the file truncated?")
  if not in_order:
    return sp.csr_matrix(sp.coo_matrix((data, (col_of_entry, indices)), shape=(cols, rows)))
  indptr = np.concatenate([[0], np.cumsum(per_col)])
  matrix = sp.csr_matrix((data, indices, indptr), shape=(cols, rows))
  matrix.sum_duplicates()
  return matrix


# The metadata columns training needs (time, donor, label); annotating a new data set needs only the time.
GEO_REQUIRED = ("diffday", "individual", "type")


def read_geo(folder, matrix="counts", required=GEO_REQUIRED):
  """Reads a GSE175634 download into AnnData with X [cells, genes] (CSR float32) and GEO's metadata as obs.

  Args:
    folder: the folder holding the GSE175634_* files as GEO names them.
    matrix: 'counts' (raw UMI counts) or 'sctransform' (SCTransform-corrected counts).
    required: metadata columns that must be present (a time course to annotate needs no label column).

  The metadata columns keep their GEO names (`diffday`, `individual`, `type`, ...); `individual` and `sample`
  are strings. Cells are in the order of GSE175634_cell_indices.tsv.gz, which must match the metadata rows.
  """
  folder = _existing(folder)
  if matrix not in GEO_MATRICES:
    raise ConfigError(f"data.geo_matrix must be one of {sorted(GEO_MATRICES)}, got {matrix!r}")
  matrix_file, genes_file = (folder / name for name in GEO_MATRICES[matrix])
  genes = _read_table(genes_file, ["gene_index", "gene_name"])
  cells = _read_table(folder / GEO_CELL_INDICES, ["cell_index", "cell_name"], dtype={"cell_name": str})
  meta_path = folder / GEO_METADATA
  metadata = _read_table(meta_path, list(required), dtype={c: str for c in GEO_STRING_COLUMNS})
  if len(metadata) != len(cells):
    raise DataError(meta_path, f"has {len(metadata)} rows but {GEO_CELL_INDICES} lists {len(cells)} cells")
  if "cell" in metadata.columns and not np.array_equal(metadata["cell"].to_numpy(), cells["cell_name"].to_numpy()):
    first = int(np.argmax(metadata["cell"].to_numpy() != cells["cell_name"].to_numpy()))
    raise DataError(
        meta_path,
        f"row {first + 1} is cell {metadata['cell'].iloc[first]!r} but {GEO_CELL_INDICES} has "
        f"{cells['cell_name'].iloc[first]!r} there; the rows must be in the same order",
    )
  counts = _read_mtx(matrix_file, (len(genes), len(cells)), "genes x cells")  # [cells, genes]
  obs = metadata.set_index(pd.Index(cells["cell_name"].astype(str).to_numpy(), name="cell_name"))
  var = pd.DataFrame(index=pd.Index(genes["gene_name"].astype(str).to_numpy(), name="gene_name"))
  adata = anndata.AnnData(X=counts, obs=obs, var=var)
  adata.var_names_make_unique()
  adata.uns["source_path"] = str(folder)
  adata.uns["matrix_path"] = str(matrix_file)
  return adata


def read_h5ad(path, *, time_key, label_key="", donor_key="", backed=False):
  """Reads a user's .h5ad time course and checks that its obs has the named time, label and donor columns.

  '' skips a column (a time course to annotate has no labels). With `backed`, X stays on disk (read-only;
  slices of rows are read on demand) and is returned as stored.
  """
  path = _existing(path)
  if path.is_dir():
    raise DataError(path, "is a folder, not an .h5ad file")
  try:
    adata = anndata.read_h5ad(path, backed="r" if backed else None)
  except (OSError, ValueError, KeyError) as e:
    raise DataError(path, f"cannot be read as .h5ad ({e})") from e
  for role, key in (("time", time_key), ("label", label_key), ("donor", donor_key)):
    if key and key not in adata.obs.columns:
      raise DataError(path, f"obs has no {role} column {key!r}; columns are {list(adata.obs.columns)}")
  if backed:
    return adata
  if not sp.issparse(adata.X):
    adata.X = sp.csr_matrix(adata.X, dtype=np.float32)
  adata.uns["source_path"] = str(path)
  adata.uns["matrix_path"] = str(path)  # X is in this file, whatever an earlier uns said
  return adata


def read_visium(folder):
  """Reads a Space Ranger output folder into AnnData: X [spots, genes] (CSR float32), obs with array_row/col.

  Expects `filtered_feature_bc_matrix/{matrix.mtx.gz,features.tsv.gz,barcodes.tsv.gz}` (features x barcodes)
  and `spatial/tissue_positions.csv` (Space Ranger 2.0+, with a header) or `tissue_positions_list.csv`.
  """
  folder = _existing(folder)
  mtx_dir = folder / "filtered_feature_bc_matrix"
  features = _read_table(mtx_dir / "features.tsv.gz", [], header=None, dtype=str)
  barcodes = _read_table(mtx_dir / "barcodes.tsv.gz", [], header=None, dtype=str)
  if features.shape[1] < 2:
    raise DataError(mtx_dir / "features.tsv.gz", "expected gene id and gene name columns")
  positions_path = folder / "spatial" / "tissue_positions.csv"
  names = ["barcode", "in_tissue", "array_row", "array_col", "pxl_row_in_fullres", "pxl_col_in_fullres"]
  if positions_path.exists():
    positions = pd.read_csv(positions_path)
  else:
    positions_path = _existing(folder / "spatial" / "tissue_positions_list.csv")
    positions = pd.read_csv(positions_path, header=None, names=names)
  missing = [c for c in names[:4] if c not in positions.columns]
  if missing:
    raise DataError(positions_path, f"missing column(s) {missing}")
  counts = _read_mtx(mtx_dir / "matrix.mtx.gz", (len(features), len(barcodes)), "features x barcodes")  # [spots, genes]
  barcode_list = barcodes[0].to_numpy()
  positions = positions.set_index("barcode")
  absent = ~pd.Index(barcode_list).isin(positions.index)
  if absent.any():
    raise DataError(positions_path, f"{int(absent.sum())} barcodes of the matrix have no position, e.g. {barcode_list[absent][0]!r}")
  obs = positions.loc[barcode_list, ["in_tissue", "array_row", "array_col"]].astype(int)
  obs.index.name = "barcode"
  var = pd.DataFrame({"gene_id": features[0].to_numpy()}, index=pd.Index(features[1].to_numpy(), name="gene_name"))
  adata = anndata.AnnData(X=counts, obs=obs, var=var)
  adata.var_names_make_unique()
  adata.uns["source_path"] = str(folder)
  return adata
