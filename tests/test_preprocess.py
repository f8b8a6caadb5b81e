"""Quality control, normalisation detection and gene choice on training cells only."""

import warnings

import anndata
import numpy as np
import pandas as pd
import pytest
import scanpy as sc
import scipy.sparse as sp

from cardiac_jax import preprocess
from cardiac_jax.errors import ConfigError, DataError


def _adata(x, days, labels, donors=None):
  obs = pd.DataFrame({"day": days, "label": labels}, index=[f"c{i}" for i in range(len(days))])
  if donors is not None:
    obs["donor"] = donors
  adata = anndata.AnnData(X=sp.csr_matrix(np.asarray(x, np.float32)), obs=obs)
  adata.uns["source_path"] = "fake.h5ad"
  return adata


def test_quality_control_counts_and_drops():
  x = np.array([[1, 2, 0], [0, 0, 0], [np.nan, 3, 1], [4, np.inf, 1], [1, 1, 1], [2, 0, 1]])
  adata = _adata(x, ["d2", "d2", "d10", None, "d1", "d1"], ["A", "B", "A", "B", "", "B"])
  kept, times, report = preprocess.quality_control(adata, time_key="day", label_key="label", time_order=())
  assert report["nonfinite_values_set_to_zero"] == 2
  assert report["dropped_no_counts"] == 1
  assert report["dropped_no_time"] == 1
  assert report["dropped_no_label"] == 1
  assert report["cells_kept"] == 3 == kept.n_obs
  assert list(kept.obs_names) == ["c0", "c2", "c5"]
  assert times == ("d1", "d2", "d10")  # natural order, not 'd1' < 'd10' < 'd2'
  assert np.isfinite(kept.X.data).all()


def test_quality_control_time_order_and_missing_column():
  adata = _adata(np.ones((3, 2)), ["d0", "d1", "d7"], ["A", "B", "A"])
  _, times, _ = preprocess.quality_control(adata, time_key="day", label_key="label", time_order=("d0", "d1", "d3", "d7"))
  assert times == ("d0", "d1", "d3", "d7")
  with pytest.raises(DataError, match=r"fake.h5ad.*\['d7'\].*not in time_order"):
    preprocess.quality_control(adata, time_key="day", label_key="label", time_order=("d0", "d1"))
  with pytest.raises(DataError, match="fake.h5ad.*no donor column 'donor'"):
    preprocess.quality_control(adata, time_key="day", label_key="label", donor_key="donor")


@pytest.mark.parametrize(
    "values, kind",
    [([0, 1, 5, 200], "counts"), ([0, 0.5, 12.25, 900.5], "linear"), ([0, 0.69, 2.3, 5.1], "log"), ([-1.2, 0.3, 2.0], "log")],
)
def test_detect_normalization(values, kind):
  assert preprocess.detect_normalization(sp.csr_matrix(np.array([values], np.float32))) == kind


def test_genes_are_chosen_on_training_cells_only():
  rng = np.random.default_rng(0)
  n_cells, n_genes = 400, 300
  means = rng.permutation(np.linspace(1, 20, n_genes))
  means[[3, 7]] = 10
  x = rng.poisson(means, size=(n_cells, n_genes)).astype(np.float32)
  train = np.arange(200)
  x[:200, 3] = rng.choice([0, 20], size=200)  # variable among training cells
  x[200:, 7] = rng.choice([0, 20], size=200)  # variable among the other cells only
  for flavor in ("seurat_v3", "seurat"):
    adata = _adata(x, ["d0"] * n_cells, ["A"] * n_cells)
    out, genes, kind = preprocess.normalize_and_select(adata, train, n_genes=5, hvg_flavor=flavor)
    assert kind == "counts"
    assert out.shape == (n_cells, 5) and out.dtype == np.float32
    assert adata.var_names[3] in genes
    assert adata.var_names[7] not in genes
    column = list(adata.var_names).index(genes[0])
    totals = x.sum(1)
    np.testing.assert_allclose(out[:, 0], np.log1p(x[:, column] / totals * 1e4), rtol=1e-4)


def test_too_many_genes_requested():
  adata = _adata(np.ones((4, 3)), ["d0"] * 4, ["A"] * 4)
  with pytest.raises(DataError, match="n_genes=10 but the data have only 3 genes"):
    preprocess.normalize_and_select(adata, np.arange(4), n_genes=10)


def test_detected_in_counts_training_rows_only():
  rng = np.random.default_rng(0)
  x = (rng.random((50, 8)) < 0.3) * rng.integers(1, 5, (50, 8))
  rows = rng.choice(50, 20, replace=False)
  expected = (x[rows] > 0).sum(0)
  for block in (1, 7, 1000):
    np.testing.assert_array_equal(preprocess.detected_in(sp.csr_matrix(x), rows, block=block), expected)


def test_rare_genes_are_not_ranked():
  rng = np.random.default_rng(1)
  x = rng.poisson(5, size=(100, 30)).astype(np.float32)
  x[:, :4] = 0
  x[:2, :4] = 50  # very variable, but seen in 2 cells only
  adata = _adata(x, ["d0"] * 100, ["A"] * 100)
  _, genes, _ = preprocess.normalize_and_select(adata.copy(), np.arange(100), n_genes=6, min_cells=3)
  assert not set(genes) & set(adata.var_names[:4])
  with pytest.raises(DataError, match="only 26 genes are detected in >= 3 training cells"):
    preprocess.normalize_and_select(adata.copy(), np.arange(100), n_genes=27, min_cells=3)
  _, genes, _ = preprocess.normalize_and_select(adata.copy(), np.arange(100), n_genes=27, min_cells=0)
  assert set(adata.var_names[:4]) & set(genes)  # 27 of 30 genes: without the filter some rare ones are in


@pytest.mark.parametrize("block", [37, 100_000])
def test_seurat_v3_ranking_equals_scanpy(simulated, block):
  import scanpy as sc

  from cardiac_jax import readers

  adata = readers.read_geo(simulated[0])
  rows = np.random.default_rng(0).choice(adata.n_obs, adata.n_obs * 2 // 3, replace=False)
  genes = np.flatnonzero(preprocess.detected_in(adata.X, rows) >= 3)
  expected = sc.pp.highly_variable_genes(adata[rows][:, genes], flavor="seurat_v3", n_top_genes=50, inplace=False)
  expected = genes[np.flatnonzero(expected["highly_variable"].to_numpy())]
  np.testing.assert_array_equal(preprocess.seurat_v3_ranking(adata.X, rows, genes, 50, block=block), expected)


def test_log_normalized_columns_equal_scanpys_whole_matrix():
  """Bit for bit what sc.pp.normalize_total + sc.pp.log1p give on all genes, for the chosen columns only."""
  rng = np.random.default_rng(2)
  x = rng.poisson(rng.gamma(0.3, 4, size=500), size=(300, 500)).astype(np.float32)
  x[5] = 0  # a cell without counts is left at zero, as scanpy leaves it
  columns = np.sort(rng.choice(500, 40, replace=False))
  adata = anndata.AnnData(sp.csr_matrix(x))
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", UserWarning)  # scanpy warns about the empty cell
    sc.pp.normalize_total(adata, target_sum=1e4)
  sc.pp.log1p(adata)
  out = preprocess.log_normalized_columns(sp.csr_matrix(x), columns, 1e4)
  assert out.dtype == np.float32 and out.shape == (300, 40)
  np.testing.assert_array_equal(out, adata.X[:, columns].toarray())
  assert np.abs(out).sum() > 0 and not out[5].any()


def test_anova_ranking_equals_sklearns_f_statistic():
  """Genes ranked by the one-way ANOVA F of their log-normalised values among training cells, block by block."""
  from sklearn.feature_selection import f_classif

  rng = np.random.default_rng(0)
  counts = rng.poisson(2.0, size=(300, 40)).astype(np.float32)
  labels = rng.integers(0, 3, 300)
  counts[labels == 1, 5] = counts[labels == 1, 5] * 4 + 3  # gene 5 marks class 1
  x = sp.csr_matrix(counts)
  rows = np.arange(0, 300, 2)
  genes = np.arange(2, 40)
  chosen = preprocess.anova_ranking(x, rows, labels[rows], genes, 10, "counts", 1e4, block=37)
  f, _ = f_classif(preprocess.log_columns(x[rows], genes, "counts", 1e4), labels[rows])
  np.testing.assert_array_equal(chosen, np.sort(genes[np.argsort(-f)[:10]]))
  assert 5 in chosen and not set(chosen) & {0, 1}  # only candidate genes
  adata = anndata.AnnData(x)
  out, names, _ = preprocess.normalize_and_select(adata, rows, n_genes=10, selection="anova", labels=labels)
  assert list(names) == [adata.var_names[g] for g in preprocess.anova_ranking(
      x, rows, labels[rows], np.flatnonzero(preprocess.detected_in(x, rows) >= 3), 10, "counts", 1e4)]
  with pytest.raises(ConfigError, match="gene_selection"):
    preprocess.normalize_and_select(adata, rows, n_genes=10, selection="lasso", labels=labels)
