"""Tests of the simulated GSE175634 and Visium data: layout, content, reproducibility, atomicity."""

import gzip
import os

import numpy as np
import pandas as pd
import pytest
import scipy.io

from cardiac_jax import simulate
from cardiac_jax.errors import DataError

N_CELLS, N_GENES, N_DONORS = 1500, 300, 6
N_SPOTS, N_SPOT_GENES = 300, 150
GEO_FILES = {
  "GSE175634_cell_counts.mtx.gz",
  "GSE175634_gene_indices_counts.tsv.gz",
  "GSE175634_cell_indices.tsv.gz",
  "GSE175634_cell_metadata.tsv.gz",
}
SCT_FILES = {
  "GSE175634_cell_counts_sctransform.mtx.gz",
  "GSE175634_gene_indices_counts_sctransform.tsv.gz",
}
METADATA_COLUMNS = ["cell", "exp.grp", "sample", "diffday", "individual", "S.Score", "G2M.Score",
                    "CC.Difference", "demux.dbl.prb", "leiden", "type", "dpt_pseudotime"]


def _files(folder):
  """Relative paths of all files under folder."""
  return {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def geo(tmp_path_factory):
  """One small GSE175634 look-alike with the SCTransform files; read back as the tests need it."""
  folder = simulate.write_gse175634(tmp_path_factory.mktemp("geo") / "GSE175634", n_cells=N_CELLS,
                                    n_genes=N_GENES, n_donors=N_DONORS, seed=0, sctransform=True)
  counts = scipy.io.mmread(folder / "GSE175634_cell_counts.mtx.gz").tocsc()
  genes = pd.read_csv(folder / "GSE175634_gene_indices_counts.tsv.gz", sep="\t")
  cells = pd.read_csv(folder / "GSE175634_cell_indices.tsv.gz", sep="\t")
  meta = pd.read_csv(folder / "GSE175634_cell_metadata.tsv.gz", sep="\t",
                     dtype={"individual": str, "sample": str})
  return {"dir": folder, "counts": counts, "genes": genes, "cells": cells, "meta": meta}


@pytest.fixture(scope="module")
def visium(tmp_path_factory):
  return simulate.write_visium(tmp_path_factory.mktemp("visium") / "slide", n_spots=N_SPOTS,
                               n_genes=N_SPOT_GENES, sc_n_genes=N_GENES, seed=0)


def _gene(geo, name):
  """(cells,) counts of one gene."""
  index = geo["genes"].gene_name.tolist().index(name)
  return geo["counts"][index].toarray().ravel()


def test_geo_file_names_are_exact(geo):
  assert _files(geo["dir"]) == GEO_FILES | SCT_FILES


def test_counts_are_genes_by_cells_like_writemm(geo):
  with gzip.open(geo["dir"] / "GSE175634_cell_counts.mtx.gz", "rt") as f:
    header, size = f.readline(), f.readline().split()
  assert header == "%%MatrixMarket matrix coordinate integer general\n"
  assert [int(v) for v in size] == [N_GENES, N_CELLS, geo["counts"].nnz]
  assert geo["counts"].shape == (len(geo["genes"]), len(geo["cells"])) == (N_GENES, N_CELLS)
  assert np.issubdtype(geo["counts"].dtype, np.integer)
  assert list(geo["genes"].columns) == ["gene_index", "gene_name"]
  assert list(geo["cells"].columns) == ["cell_index", "cell_name"]
  np.testing.assert_array_equal(geo["genes"].gene_index, np.arange(1, N_GENES + 1))
  np.testing.assert_array_equal(geo["cells"].cell_index, np.arange(1, N_CELLS + 1))
  assert geo["genes"].gene_name.is_unique
  assert (np.diff(geo["counts"].indptr) > 0).all()  # every cell has counts


def test_metadata_columns_and_rows_match_cell_indices(geo):
  meta = geo["meta"]
  assert list(meta.columns) == METADATA_COLUMNS
  np.testing.assert_array_equal(meta.cell, geo["cells"].cell_name)
  assert meta.cell.is_unique
  assert meta.cell.str.fullmatch(r"[ACGT]{16}-1_\d+").all()


def test_days_types_donors_and_samples(geo):
  meta = geo["meta"]
  assert set(meta.diffday) == set(simulate.DAYS)
  assert set(meta.type) == set(simulate.TYPES)
  assert meta.individual.str.fullmatch(r"\d{5}").all()
  assert meta.individual.nunique() == N_DONORS
  day_number = meta.diffday.str.removeprefix("day")
  assert (meta["sample"] == meta.individual + "_" + day_number).all()
  assert meta["exp.grp"].nunique() > 1
  # Every type is seen on at least two days (so temporal sequences have more than one step).
  assert (meta.groupby("type").diffday.nunique() >= 2).all()


def test_metadata_values(geo):
  meta = geo["meta"]
  np.testing.assert_allclose(meta["CC.Difference"], meta["S.Score"] - meta["G2M.Score"], atol=1e-3)
  assert meta["demux.dbl.prb"].between(0, 1).all() and meta["demux.dbl.prb"].median() < 0.05
  pt = meta.dpt_pseudotime
  assert 0 < pt.isna().sum() < 0.05 * N_CELLS
  assert pt.dropna().between(0, 1).all()
  by_day = pt.groupby(meta.diffday).mean()[list(simulate.DAYS)]
  assert (np.diff(by_day) > 0).all()
  # Leiden clusters follow the type closely, but not perfectly.
  assert pd.api.types.is_integer_dtype(meta.leiden)
  purity = meta.groupby("leiden").type.agg(lambda t: t.value_counts().iloc[0]).sum() / N_CELLS
  assert 0.85 < purity < 1.0


def test_markers_are_higher_in_their_type_but_not_separating(geo):
  types = geo["meta"].type.to_numpy()
  names = set(geo["genes"].gene_name)
  assert {g for genes in simulate.MARKERS.values() for g in genes} <= names
  tnnt2, cm = _gene(geo, "TNNT2"), types == "CM"
  assert tnnt2[cm].mean() > 3 * tnnt2[~cm].mean()
  assert (tnnt2[cm] == 0).any() and (tnnt2[~cm] > 0).any()
  for cell_type, markers in simulate.MARKERS.items():
    own = types == cell_type
    total = sum(_gene(geo, g) for g in markers)
    assert total[own].mean() > 2 * total[~own].mean(), cell_type


def test_composition_depends_on_day(geo):
  share = pd.crosstab(geo["meta"].diffday, geo["meta"].type, normalize="index")
  assert share.loc["day0", "IPSC"] > 0.5
  assert share.loc["day0", "CM"] < 0.02
  assert share.loc["day15"].idxmax() == "CM"
  assert share.loc["day1"].idxmax() == "MES"
  assert (share["UNK"] > 0).all()
  # The day does not give the type away: several types on every day from day1 on.
  assert (share.loc[list(simulate.DAYS[1:])].gt(0.05).sum(axis=1) >= 2).all()


def test_sctransform_matrix(geo):
  folder = geo["dir"]
  sct = scipy.io.mmread(folder / "GSE175634_cell_counts_sctransform.mtx.gz").tocsr()
  sct_genes = pd.read_csv(folder / "GSE175634_gene_indices_counts_sctransform.tsv.gz", sep="\t")
  assert list(sct_genes.columns) == ["gene_index", "gene_name"]
  np.testing.assert_array_equal(sct_genes.gene_index, np.arange(1, len(sct_genes) + 1))
  raw_names = geo["genes"].gene_name.tolist()
  kept = np.array([raw_names.index(g) for g in sct_genes.gene_name])
  assert (np.diff(kept) > 0).all()  # original order
  detected = np.diff(geo["counts"].tocsr().indptr)
  np.testing.assert_array_equal(kept, np.flatnonzero(detected >= 3))
  assert sct.shape == (len(kept), N_CELLS)
  raw = geo["counts"].tocsr()[kept].toarray()
  sct = sct.toarray()
  assert (sct <= raw).all() and (sct != raw).any()
  library = np.asarray(geo["counts"].sum(0)).ravel()
  target = np.median(library)
  small = library <= target
  np.testing.assert_array_equal(sct[:, small], raw[:, small])
  assert abs(np.median(sct[:, ~small].sum(0)) / target - 1) < 0.05


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
  kwargs = dict(n_cells=300, n_genes=120, n_donors=3, sctransform=True)
  a = simulate.write_gse175634(tmp_path / "a", seed=5, **kwargs)
  b = simulate.write_gse175634(tmp_path / "b", seed=5, **kwargs)
  c = simulate.write_gse175634(tmp_path / "c", seed=6, **kwargs)
  for name in GEO_FILES | SCT_FILES:
    assert (a / name).read_bytes() == (b / name).read_bytes(), name
  assert (a / "GSE175634_cell_counts.mtx.gz").read_bytes() != (
    c / "GSE175634_cell_counts.mtx.gz").read_bytes()
  assert (a / "GSE175634_cell_metadata.tsv.gz").read_bytes() != (
    c / "GSE175634_cell_metadata.tsv.gz").read_bytes()
  v1 = simulate.write_visium(tmp_path / "v1", n_spots=50, n_genes=60, sc_n_genes=120, seed=5)
  v2 = simulate.write_visium(tmp_path / "v2", n_spots=50, n_genes=60, sc_n_genes=120, seed=5)
  for name in _files(v1):
    assert (v1 / name).read_bytes() == (v2 / name).read_bytes(), name


def test_gene_names_and_sparsity_at_real_size(tmp_path):
  small = simulate.write_gse175634(tmp_path / "small", n_cells=49, n_genes=100)
  names = pd.read_csv(small / "GSE175634_gene_indices_counts.tsv.gz", sep="\t").gene_name
  assert {g for genes in simulate.MARKERS.values() for g in genes} <= set(names)
  real = simulate.write_gse175634(tmp_path / "real", n_cells=49, n_genes=38847)
  names = pd.read_csv(real / "GSE175634_gene_indices_counts.tsv.gz", sep="\t").gene_name
  assert len(names) == 38847 and names.is_unique and names.str.startswith("SIMG").sum() > 38000
  counts = scipy.io.mmread(real / "GSE175634_cell_counts.mtx.gz").tocsc()
  assert 1000 < np.median(np.diff(counts.indptr)) < 3000  # genes detected per cell
  assert 4000 < np.median(np.asarray(counts.sum(0))) < 16000  # UMIs per cell


def test_rejects_nonsense_arguments(tmp_path):
  with pytest.raises(ValueError, match="n_cells"):
    simulate.write_gse175634(tmp_path / "x", n_cells=48)
  with pytest.raises(ValueError, match="n_genes"):
    simulate.write_gse175634(tmp_path / "x", n_genes=10)
  with pytest.raises(ValueError, match="n_donors"):
    simulate.write_gse175634(tmp_path / "x", n_donors=0)
  with pytest.raises(ValueError, match="n_spots"):
    simulate.write_visium(tmp_path / "x", n_spots=5000)
  with pytest.raises(ValueError, match="n_genes"):
    simulate.write_visium(tmp_path / "x", n_genes=500, sc_n_genes=400)
  assert not (tmp_path / "x").exists()


def test_refuses_to_overwrite_and_writes_atomically(tmp_path, monkeypatch):
  kwargs = dict(n_cells=100, n_genes=60, n_donors=2)
  (tmp_path / "empty").mkdir()
  out = simulate.write_gse175634(tmp_path / "empty", **kwargs)  # an empty folder is fine
  assert _files(out) == GEO_FILES
  before = {name: (out / name).read_bytes() for name in GEO_FILES}
  with pytest.raises(FileExistsError):
    simulate.write_gse175634(out, **kwargs)
  assert {name: (out / name).read_bytes() for name in GEO_FILES} == before

  def fail(*args, **kwargs):
    raise RuntimeError("interrupted")

  monkeypatch.setattr(simulate, "_write_table", fail)
  with pytest.raises(RuntimeError):
    simulate.write_gse175634(tmp_path / "broken", **kwargs)
  with pytest.raises(RuntimeError):
    simulate.write_visium(tmp_path / "broken_visium", n_spots=20, n_genes=30, sc_n_genes=60)
  assert sorted(p.name for p in tmp_path.iterdir()) == ["empty"]  # no half-written folders


def test_visium_layout(visium):
  assert _files(visium) == {
    "filtered_feature_bc_matrix/matrix.mtx.gz", "filtered_feature_bc_matrix/features.tsv.gz",
    "filtered_feature_bc_matrix/barcodes.tsv.gz", "spatial/tissue_positions.csv"}
  matrix = scipy.io.mmread(visium / "filtered_feature_bc_matrix/matrix.mtx.gz")
  features = pd.read_csv(visium / "filtered_feature_bc_matrix/features.tsv.gz", sep="\t",
                         header=None)
  barcodes = pd.read_csv(visium / "filtered_feature_bc_matrix/barcodes.tsv.gz", sep="\t",
                         header=None)[0]
  assert matrix.shape == (len(features), len(barcodes)) == (N_SPOT_GENES, N_SPOTS)
  assert features.shape[1] == 3 and (features[2] == "Gene Expression").all()
  assert features[0].str.fullmatch(r"ENSG\d{11}").all() and features[0].is_unique
  assert barcodes.str.fullmatch(r"[ACGT]{16}-1").all() and barcodes.is_unique
  assert (np.asarray(matrix.tocsc().sum(0)).ravel() > 0).all()

  positions = pd.read_csv(visium / "spatial/tissue_positions.csv")
  assert list(positions.columns) == ["barcode", "in_tissue", "array_row", "array_col",
                                     "pxl_row_in_fullres", "pxl_col_in_fullres"]
  assert len(positions) == 4992 and positions.barcode.is_unique
  assert positions.array_row.between(0, 77).all() and positions.array_col.between(0, 127).all()
  assert ((positions.array_row + positions.array_col) % 2 == 0).all()
  assert len(positions[["array_row", "array_col"]].drop_duplicates()) == 4992
  assert set(positions.in_tissue) == {0, 1}
  assert set(positions.barcode[positions.in_tissue == 1]) == set(barcodes)
  # Pixel coordinates grow with array coordinates.
  assert positions[["array_row", "pxl_row_in_fullres"]].corr().iloc[0, 1] > 0.99
  assert positions[["array_col", "pxl_col_in_fullres"]].corr().iloc[0, 1] > 0.99


def test_visium_genes_are_scrna_genes(geo, visium):
  names = pd.read_csv(visium / "filtered_feature_bc_matrix/features.tsv.gz", sep="\t",
                      header=None)[1]
  sc_names = geo["genes"].gene_name.tolist()
  assert set(names) <= set(sc_names)
  assert {g for genes in simulate.MARKERS.values() for g in genes} <= set(names)
  assert (np.diff([sc_names.index(g) for g in names]) > 0).all()  # same order as the scRNA genes


def test_visium_spots_form_spatial_domains(visium):
  matrix = scipy.io.mmread(visium / "filtered_feature_bc_matrix/matrix.mtx.gz").tocsr()
  names = pd.read_csv(visium / "filtered_feature_bc_matrix/features.tsv.gz", sep="\t",
                      header=None)[1].tolist()
  barcodes = pd.read_csv(visium / "filtered_feature_bc_matrix/barcodes.tsv.gz", sep="\t",
                         header=None)[0]
  positions = pd.read_csv(visium / "spatial/tissue_positions.csv").set_index("barcode")
  xy = positions.loc[barcodes, ["pxl_row_in_fullres", "pxl_col_in_fullres"]].to_numpy(float)
  library = np.asarray(matrix.sum(0)).ravel()
  cm = sum(matrix[names.index(g)].toarray().ravel() for g in simulate.MARKERS["CM"]) / library
  dist = np.linalg.norm(xy[:, None] - xy[None], axis=-1)
  np.fill_diagonal(dist, np.inf)
  near = dist < 1.2 * dist.min()  # the (up to six) hexagonal neighbours
  neighbour_mean = (near * cm).sum(1) / near.sum(1)
  assert np.corrcoef(cm, neighbour_mean)[0, 1] > 0.4
  assert cm.max() > 5 * np.median(cm)  # CM-rich and CM-poor regions


def test_ensure_simulated_writes_once(tmp_path, monkeypatch, capsys):
  monkeypatch.setenv("HOME", str(tmp_path))
  kwargs = dict(n_cells=200, n_genes=80, n_donors=3, n_spots=40, n_spot_genes=50, seed=2)
  geo_dir, visium_dir = simulate.ensure_simulated("~/cache", **kwargs)
  assert geo_dir == tmp_path / "cache/simulated/c200_g80_d3_s40_sg50_seed2_signal1/GSE175634"
  assert visium_dir.parent == geo_dir.parent
  assert _files(geo_dir) == GEO_FILES | SCT_FILES
  assert "simulating GSE175634" in capsys.readouterr().err
  stamps = {p: os.stat(p).st_mtime_ns for p in geo_dir.parent.rglob("*")}
  assert simulate.ensure_simulated(tmp_path / "cache", **kwargs) == (geo_dir, visium_dir)
  assert {p: os.stat(p).st_mtime_ns for p in geo_dir.parent.rglob("*")} == stamps
  assert capsys.readouterr().err == ""
  (geo_dir / "GSE175634_cell_metadata.tsv.gz").unlink()
  with pytest.raises(DataError, match="incomplete"):
    simulate.ensure_simulated(tmp_path / "cache", **kwargs)
