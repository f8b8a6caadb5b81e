"""The whole data journey for a config: counts, leakage by split unit, spatial chains, determinism, h5ad input."""

import os
import pathlib

import numpy as np
import pytest

from cardiac_jax import dataset, readers
from cardiac_jax.errors import ConfigError, DataError


def _assert_same(a, b):
  for name in ("train", "val", "test"):
    for field in ("x", "lengths", "labels", "cell_ids", "spatial"):
      np.testing.assert_array_equal(getattr(a.splits[name], field), getattr(b.splits[name], field))


@pytest.mark.parametrize("unit", ["cell", "donor", "sequence"])
def test_prepare_by_split_unit(config, unit):
  config.split.unit = unit
  data = dataset.prepare(config)
  n_classes = len(data.encoding.classes)
  assert data.encoding.classes == ("CF", "CM", "CMES", "IPSC", "MES", "PROG", "UNK")
  assert len(data.genes) == config.data.n_genes
  temporal = sum(int((~s.spatial).sum()) for s in data.splits.values())
  assert temporal == config.data.n_per_type * n_classes
  assert data.train.spatial.sum() == config.data.n_spatial
  assert not data.val.spatial.any() and not data.test.spatial.any()
  for s in data.splits.values():
    assert s.x.shape[1:] == (config.data.max_len, config.data.n_genes)
    assert set(np.unique(s.labels)) == set(range(n_classes))
  shared = data.report["leakage"]["cells_in_more_than_one_split"]
  if unit == "sequence":
    assert shared > 0  # the seed's split puts the same cells in train and test
  else:
    assert shared == 0
    train_cells = set(data.train.cell_ids[data.train.cell_ids >= 0].tolist())
    test_cells = set(data.test.cell_ids[data.test.cell_ids >= 0].tolist())
    assert not train_cells & test_cells
  assert data.report["sequences"]["train"]["spatial"] == config.data.n_spatial


def test_donor_split_keeps_donors_apart(config):
  data = dataset.prepare(config)
  adata = readers.read_geo(data.report["path"])
  donors = adata.obs["individual"].to_numpy()
  by_split = {name: set(donors[s.cell_ids[s.cell_ids >= 0]]) for name, s in data.splits.items()}
  assert not by_split["train"] & by_split["test"]
  assert not by_split["train"] & by_split["val"]
  assert not by_split["val"] & by_split["test"]


def test_prepare_is_deterministic_and_seeded(config):
  a = dataset.prepare(config)
  b = dataset.prepare(config)
  _assert_same(a, b)
  config.seed = 1
  c = dataset.prepare(config)
  assert not np.array_equal(a.train.cell_ids, c.train.cell_ids)


def test_sequences_follow_the_data(config):
  data = dataset.prepare(config)
  adata = readers.read_geo(data.report["path"])
  types = adata.obs["type"].to_numpy()
  days = adata.obs["diffday"].to_numpy()
  order = {t: i for i, t in enumerate(data.time_points)}
  for s in data.splits.values():
    temporal = s.take(~s.spatial)
    for i in range(0, len(temporal), 7):
      ids = temporal.cell_ids[i, : temporal.lengths[i]]
      assert set(types[ids]) == {data.encoding.classes[temporal.labels[i]]}
      assert np.all(np.diff([order[d] for d in days[ids]]) > 0)


def test_h5ad_source_with_other_column_names(config, simulated, tmp_path):
  adata = readers.read_geo(simulated[0])
  adata.obs = adata.obs.rename(columns={"diffday": "stage", "type": "celltype", "individual": "donor"})
  path = tmp_path / "course.h5ad"
  adata.write_h5ad(path)
  config.data.source = "h5ad"
  config.data.path = str(path)
  config.data.time_key, config.data.label_key, config.data.donor_key = "stage", "celltype", "donor"
  config.data.time_order = ()
  config.data.n_spatial = 0
  data = dataset.prepare(config)
  assert data.time_points == ("day0", "day1", "day3", "day5", "day7", "day11", "day15")
  assert data.report["normalization"] == "counts"
  assert len(data.train) > 0 and data.report["leakage"]["cells_in_more_than_one_split"] == 0


def test_a_time_course_of_one_time_point_is_said_to_be_one(config, simulated, tmp_path, caplog):
  adata = readers.read_geo(simulated[0])
  adata = adata[adata.obs["diffday"] == "day7"].copy()
  path = tmp_path / "one_day.h5ad"
  adata.write_h5ad(path)
  config.data.source, config.data.path, config.data.time_order = "h5ad", str(path), ()
  config.data.n_spatial = 0
  data = dataset.prepare(config)
  assert data.time_points == ("day7",) and (data.train.lengths == 1).all()
  assert f"{path}: the data have one time point (day7)" in caplog.text


def test_unknown_time_point_in_geo_data(config, simulated):
  config.data.source = "geo"
  config.data.path = str(simulated[0])
  config.data.time_order = ("day0", "day1", "day3", "day5", "day7", "day11")
  with pytest.raises(DataError, match=r"GSE175634.*\['day15'\].*not in time_order"):
    dataset.prepare(config)


def test_too_few_donors(config, simulated, tmp_path):
  adata = readers.read_geo(simulated[0])
  adata.obs["individual"] = np.where(adata.obs["individual"] == adata.obs["individual"].iloc[0], "A", "B")
  path = tmp_path / "two_donors.h5ad"
  adata.write_h5ad(path)
  config.data.source, config.data.path, config.data.n_spatial = "h5ad", str(path), 0
  with pytest.raises(DataError, match="two_donors.h5ad.*at least 3 donors, found 2"):
    dataset.prepare(config)


def test_prepared_data_are_reused_until_config_or_input_changes(config, tmp_path, monkeypatch):
  config.data.reuse_prepared = True
  config.data.cache_dir = str(tmp_path / "cache")
  config.sim.seed = 7  # this test's own simulated data, so it may touch the files
  first = dataset.prepare(config)
  saved = list((tmp_path / "cache" / "prepared").glob("*.npz"))
  assert len(saved) == 1 and not list((tmp_path / "cache" / "prepared").glob("*.tmp*"))

  def no_reading(*args, **kwargs):
    raise AssertionError("prepared data should come from the cache")

  monkeypatch.setattr(dataset, "_prepare", no_reading)
  again = dataset.prepare(config)
  _assert_same(first, again)
  assert again.encoding == first.encoding and again.genes == first.genes and again.report == first.report
  np.testing.assert_array_equal(again.cell_x, first.cell_x)
  np.testing.assert_array_equal(again.cell_labels, first.cell_labels)

  other = config.copy_and_resolve_references()
  other.seed = config.seed + 1
  assert dataset.cache_key(other) != dataset.cache_key(config)
  key = dataset.cache_key(config)
  with monkeypatch.context() as patch:  # as if the preprocessing code had been edited
    patch.setattr(dataset, "code_digest", lambda: "edited")
    assert dataset.cache_key(config) != key
  assert dataset.cache_key(config) == key
  metadata = pathlib.Path(dataset.input_files(config)[0]) / readers.GEO_METADATA
  metadata.write_bytes(metadata.read_bytes())  # same content, new modification time
  os.utime(metadata, ns=(metadata.stat().st_atime_ns, metadata.stat().st_mtime_ns + 1))
  assert dataset.cache_key(config) != key
  with pytest.raises(AssertionError, match="from the cache"):
    dataset.prepare(config)


@pytest.mark.parametrize("mode", ["anchored", "cell"])
def test_per_cell_modes_label_every_cell_of_a_split_with_context_from_it(config, mode):
  config.data.sequence_mode = mode
  data = dataset.prepare(config)
  n_genes = config.data.n_genes
  for split, name in enumerate(("train", "val", "test")):
    sequences = data.splits[name]
    cells = np.flatnonzero(data.cell_split == split)
    np.testing.assert_array_equal(sequences.anchor_cells, cells)  # every cell once, in order
    np.testing.assert_array_equal(sequences.labels, data.cell_labels[cells])
    used = sequences.cell_ids[sequences.cell_ids >= 0]
    assert set(used.tolist()) <= set(cells.tolist())  # context from the split's own cells
  width = n_genes + 1 if mode == "anchored" else n_genes
  assert data.train.x.shape[1:] == (config.data.max_len, width)
  assert not data.train.spatial.any() and data.report["leakage"]["cells_in_more_than_one_split"] == 0
  if mode == "anchored":
    assert (data.test.lengths == len(data.time_points)).mean() > 0.9  # most cells see every day of their donor
    donors = readers.read_geo(data.report["path"]).obs["individual"].to_numpy()
    ids = data.test.cell_ids
    same = donors[np.where(ids >= 0, ids, 0)] == donors[data.test.anchor_cells][:, None]
    assert same[ids >= 0].all()  # context from the anchor's own donor
  else:
    assert (data.test.lengths == 1).all()


def test_per_cell_settings_that_cannot_work_are_refused(config):
  config.data.sequence_mode = "anchored"
  config.split.unit = "sequence"
  with pytest.raises(ConfigError, match="split.unit must be 'cell' or 'donor'"):
    dataset.prepare(config)
  config.split.unit = "donor"
  config.data.sequence_mode = "cell"
  config.model.pooling = "anchor"
  with pytest.raises(ConfigError, match="model.pooling='anchor'"):
    dataset.prepare(config)
  config.model.pooling = "mean"
  config.data.time_channels = True
  config.data.sequence_mode = "type"
  with pytest.raises(ConfigError, match="data.time_channels is for per-cell sequences"):
    dataset.prepare(config)
  config.data.time_channels = False
  config.data.sequence_mode = "anchored"
  config.model.linear_path = config.train.linear_start = True  # the mean over steps is not the cell's own input
  with pytest.raises(ConfigError, match="train.linear_start starts the linear path"):
    dataset.prepare(config)
  config.model.pooling = "anchor"
  config.init_from = "runs/other"
  with pytest.raises(ConfigError, match="train.linear_start and init_from"):
    dataset.prepare(config)
  config.data.sequence_mode = "sideways"
  with pytest.raises(ConfigError, match="data.sequence_mode must be one of"):
    dataset.prepare(config)


def test_the_fitted_preprocessing_transforms_the_data_it_was_fitted_on(config):
  data = dataset.prepare(config)
  adata = readers.read_geo(data.report["path"])[data.cell_names]
  x, report = data.preprocessing.transform(adata)
  np.testing.assert_array_equal(x, data.cell_x)
  no_counts = report.pop("no_counts")
  assert report == {"normalization": "counts", "missing_genes": [], "nonfinite_values_set_to_zero": 0}
  assert not no_counts.any() and len(no_counts) == len(x)  # quality control kept only cells with counts
  assert data.preprocessing.embed(x).shape == (len(x), min(20, config.data.n_genes))


def test_a_type_left_out_is_in_no_split_and_no_class(config, simulated):
  config.data.sequence_mode = "cell"
  config.data.exclude_types = ("CMES",)
  data = dataset.prepare(config)
  assert data.encoding.classes == ("CF", "CM", "IPSC", "MES", "PROG", "UNK")
  adata = readers.read_geo(simulated[0])
  left_out = set(adata.obs_names[adata.obs["type"] == "CMES"])
  assert left_out and left_out.isdisjoint(data.cell_names)
  assert len(data.cell_names) == adata.n_obs - len(left_out)
  config.data.exclude_types = ("Endothelial",)
  with pytest.raises(ConfigError, match=r"data.exclude_types \['Endothelial'\]: no such type"):
    dataset.prepare(config)
