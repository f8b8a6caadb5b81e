"""Readers on files in GSE175634's real GEO layout (written by the simulator), and every bad-input case."""

import gzip
import shutil

import numpy as np
import pandas as pd
import pytest
import scipy.io

from cardiac_jax import readers
from cardiac_jax.errors import DataError
from cardiac_jax.preprocess import quality_control

META = readers.GEO_METADATA
COUNTS, GENES = readers.GEO_MATRICES["counts"]


@pytest.fixture()
def geo_copy(simulated, tmp_path):
  """A private copy of the simulated GEO folder that a test may damage."""
  return shutil.copytree(simulated[0], tmp_path / "geo")


def _rewrite_table(path, edit):
  table = pd.read_csv(path, sep="\t", dtype=str)
  edit(table).to_csv(path, sep="\t", index=False, compression="gzip")


def test_read_geo_round_trip(simulated):
  geo_dir = simulated[0]
  adata = readers.read_geo(geo_dir)
  genes = pd.read_csv(geo_dir / GENES, sep="\t")
  meta = pd.read_csv(geo_dir / META, sep="\t", dtype={"individual": str})
  raw = scipy.io.mmread(str(geo_dir / COUNTS)).tocsr()
  assert raw.shape == (len(genes), len(meta))  # the file is genes x cells
  assert adata.shape == (len(meta), len(genes))  # AnnData is cells x genes
  assert list(adata.var_names) == list(genes["gene_name"])
  assert list(adata.obs_names) == list(meta["cell"])
  assert list(adata.obs.columns) == list(meta.columns)  # GEO's names, all kept
  assert adata.obs["individual"].map(type).eq(str).all()
  assert list(adata.obs["individual"]) == list(meta["individual"])
  assert (adata.X != raw.T.tocsr()).nnz == 0
  assert adata.X.dtype == np.float32


def test_read_geo_relative_folder(simulated, monkeypatch):
  monkeypatch.chdir(simulated[0].parent)
  adata = readers.read_geo(simulated[0].name)
  assert adata.n_obs == len(pd.read_csv(simulated[0] / META, sep="\t"))


def test_read_geo_sctransform(tmp_path):
  from cardiac_jax import simulate

  folder = simulate.write_gse175634(tmp_path / "sct", n_cells=300, n_genes=150, n_donors=3, seed=1, sctransform=True)
  adata = readers.read_geo(folder, "sctransform")
  genes = pd.read_csv(folder / readers.GEO_MATRICES["sctransform"][1], sep="\t")
  assert adata.shape == (300, len(genes))
  assert list(adata.var_names) == list(genes["gene_name"])


@pytest.mark.parametrize("name", [COUNTS, GENES, readers.GEO_CELL_INDICES, META])
def test_missing_file(geo_copy, name):
  (geo_copy / name).unlink()
  with pytest.raises(DataError, match="file not found") as error:
    readers.read_geo(geo_copy)
  assert name in str(error.value)


def test_metadata_rows_must_match(geo_copy):
  _rewrite_table(geo_copy / META, lambda t: t.iloc[:-1])
  with pytest.raises(DataError, match="rows") as error:
    readers.read_geo(geo_copy)
  assert META in str(error.value)


def test_metadata_order_must_match(geo_copy):
  _rewrite_table(geo_copy / META, lambda t: t.iloc[::-1])
  with pytest.raises(DataError, match="same order") as error:
    readers.read_geo(geo_copy)
  assert META in str(error.value)


def test_matrix_in_wrong_orientation(geo_copy):
  path = geo_copy / COUNTS
  matrix = scipy.io.mmread(str(path))
  scipy.io.mmwrite(str(geo_copy / "t.mtx"), matrix.T, field="integer")
  with open(geo_copy / "t.mtx", "rb") as src, gzip.open(path, "wb") as dst:
    shutil.copyfileobj(src, dst)
  with pytest.raises(DataError, match="transpose") as error:
    readers.read_geo(geo_copy)
  assert COUNTS in str(error.value)


def test_negative_counts_in_a_geo_folder_name_the_matrix_file(geo_copy):
  path = geo_copy / COUNTS
  matrix = scipy.io.mmread(str(path)).tocoo()
  matrix.data = matrix.data.astype(float)
  matrix.data[:3] = -1.0
  scipy.io.mmwrite(str(geo_copy / "t.mtx"), matrix, field="real")
  with open(geo_copy / "t.mtx", "rb") as src, gzip.open(path, "wb") as dst:
    shutil.copyfileobj(src, dst)
  adata = readers.read_geo(geo_copy)
  with pytest.raises(DataError, match="3 negative values") as error:
    quality_control(adata, time_key="diffday", label_key="type", donor_key="individual")
  assert error.value.path == str(path)


def test_truncated_matrix(geo_copy):
  path = geo_copy / COUNTS
  data = path.read_bytes()
  path.write_bytes(data[: len(data) // 2])
  with pytest.raises(DataError) as error:
    readers.read_geo(geo_copy)
  assert COUNTS in str(error.value)


def _write_entries(path, shape, entries, field="integer", declared=None):
  """A gzipped coordinate MatrixMarket file with the given 1-based (row, col[, value]) lines, in that order."""
  lines = [f"%%MatrixMarket matrix coordinate {field} general", "% a comment", f"{shape[0]} {shape[1]} {declared or len(entries)}"]
  lines += [" ".join(str(v) for v in entry) for entry in entries]
  with gzip.open(path, "wt") as f:
    f.write("\n".join(lines) + "\n")


@pytest.mark.parametrize("chunk_entries", [1, 3, 1000])
@pytest.mark.parametrize("order", ["by column", "shuffled"])
def test_chunked_mtx_reader_equals_scipy(tmp_path, chunk_entries, order):
  rng = np.random.default_rng(0)
  dense = rng.integers(0, 4, (6, 9)) * (rng.random((6, 9)) < 0.4)
  cols, rows = np.nonzero(dense.T)  # column order, as writeMM writes
  entries = [(r + 1, c + 1, int(dense[r, c])) for r, c in zip(rows, cols)]
  if order == "shuffled":
    entries = [entries[i] for i in rng.permutation(len(entries))]
  path = tmp_path / "m.mtx.gz"
  _write_entries(path, dense.shape, entries)
  matrix = readers._read_mtx(path, dense.shape, "genes x cells", chunk_entries=chunk_entries)
  assert matrix.shape == (9, 6) and matrix.dtype == np.float32 and matrix.has_canonical_format
  np.testing.assert_array_equal(matrix.toarray(), scipy.io.mmread(str(path)).toarray().T)


@pytest.mark.parametrize("entries, declared, problem", [
    ([(1, 1, 2), (7, 1, 1)], None, "outside the 6 x 9 matrix"),
    ([(1, 1, 2), (2, 10, 1)], None, "outside the 6 x 9 matrix"),
    ([(1, 1, 2), (2, 2, "nan")], None, "entry 2 has no finite value"),
    ([(1, 1, 2), (2, 2, 1)], 5, "has 2 entries but its size line declares 5"),
    ([(1, 1, 2), (2, 2, 1), (3, 3, 1)], 2, "more entries than the 2"),
    ([(1, 1, 2), (2, "x", 1)], None, "cannot be read"),
])
def test_chunked_mtx_reader_bad_entries(tmp_path, entries, declared, problem):
  path = tmp_path / "m.mtx.gz"
  _write_entries(path, (6, 9), entries, declared=declared)
  with pytest.raises(DataError, match=problem) as error:
    readers._read_mtx(path, (6, 9), "genes x cells", chunk_entries=1)
  assert "m.mtx.gz" in str(error.value)


@pytest.mark.parametrize("column", ["type", "diffday", "individual"])
def test_missing_metadata_column(geo_copy, column):
  _rewrite_table(geo_copy / META, lambda t: t.drop(columns=[column]))
  with pytest.raises(DataError, match=f"missing column.*{column}") as error:
    readers.read_geo(geo_copy)
  assert META in str(error.value)


def test_h5ad_missing_columns_and_unknown_time(simulated, tmp_path):
  adata = readers.read_geo(simulated[0])
  adata.obs = adata.obs.rename(columns={"diffday": "day", "type": "celltype"})
  path = tmp_path / "course.h5ad"
  adata.write_h5ad(path)
  read = readers.read_h5ad(path, time_key="day", label_key="celltype", donor_key="individual")
  assert read.shape == adata.shape
  for keys, missing in (
      (dict(time_key="diffday", label_key="celltype"), "time"),
      (dict(time_key="day", label_key="type"), "label"),
      (dict(time_key="day", label_key="celltype", donor_key="donor"), "donor"),
  ):
    with pytest.raises(DataError, match=f"no {missing} column") as error:
      readers.read_h5ad(path, **keys)
    assert "course.h5ad" in str(error.value)
  with pytest.raises(DataError, match=r"day15.*not in time_order") as error:
    quality_control(read, time_key="day", label_key="celltype", time_order=("day0", "day1", "day3", "day5", "day7", "day11"))
  assert "course.h5ad" in str(error.value)


def test_read_visium(simulated):
  visium_dir = simulated[1]
  spots = readers.read_visium(visium_dir)
  positions = pd.read_csv(visium_dir / "spatial" / "tissue_positions.csv")
  assert spots.n_obs == len(pd.read_csv(visium_dir / "filtered_feature_bc_matrix" / "barcodes.tsv.gz", header=None))
  assert set(spots.obs_names) <= set(positions["barcode"])
  assert {"array_row", "array_col"} <= set(spots.obs.columns)
  assert spots.X.sum() > 0


def test_visium_missing_positions(simulated, tmp_path):
  folder = shutil.copytree(simulated[1], tmp_path / "visium")
  (folder / "spatial" / "tissue_positions.csv").unlink()
  with pytest.raises(DataError, match="file not found") as error:
    readers.read_visium(folder)
  assert "tissue_positions" in str(error.value)
