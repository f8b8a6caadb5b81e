"""Baselines on the model's own sequences, and the suite's table: seeds, spread, leakage column, resuming."""

import json
import types

import numpy as np
import pytest

from cardiac_jax import dataset, sequences
from cardiac_jax.experiments import baselines, suite
from cardiac_jax.errors import ConfigError


@pytest.fixture(scope="module")
def data(cache_dir, simulated):
  from cardiac_jax.configs import tiny

  config = tiny.get_config()
  config.data.cache_dir = str(cache_dir)
  config.data.n_per_type = 60
  return dataset.prepare(config)


def test_baselines_predict_every_test_sequence(data):
  chance = 1 / len(data.encoding.classes)
  for name, method in baselines.BASELINES.items():
    predictions = method(data, seed=0)
    assert predictions.shape == (len(data.test),), name
    assert set(np.unique(predictions)) <= set(range(len(data.encoding.classes)))
    accuracy = (predictions == data.test.labels).mean()
    if name != "majority class":
      assert accuracy > 2 * chance, name  # the simulated types are learnable from expression
  majority = baselines.majority(data, 0)
  train_labels = data.train.labels[~data.train.spatial]
  assert (majority == np.bincount(train_labels).argmax()).all()


def test_sequence_means_average_the_cells(data):
  means = baselines.sequence_means(data, data.test)
  i = 3
  ids = data.test.cell_ids[i, : data.test.lengths[i]]
  np.testing.assert_allclose(means[i], data.cell_x[ids].mean(0), rtol=1e-5)


def test_the_time_aware_regression_reads_the_time_point_the_plain_one_cannot():
  """Types that differ only by the day a cell was sampled on: the regression with the time point finds them."""
  rng = np.random.default_rng(0)
  times = rng.integers(0, 3, 600)
  labels = (times == 2).astype(np.int32)  # the type is the day; the genes are noise
  x = rng.normal(size=(600, 5)).astype(np.float32)
  split = [sequences.cell_sequences(x, times, rows, labels, max_len=3) for rows in (np.arange(400), np.arange(400, 600))]
  data = types.SimpleNamespace(cell_x=x, cell_labels=labels, time_points=("d0", "d1", "d2"), train=split[0],
                               test=split[1])
  assert (baselines.cell_time_logreg(data, 0) == labels[400:]).mean() == 1.0
  assert (baselines.cell_logreg(data, 0) == labels[400:]).mean() < 0.8


def test_summary_and_table():
  runs = [
      dict(setting="base, split by donor", method="model", seed=s, accuracy=a, macro_f1=a - 0.1, leakage=0)
      for s, a in enumerate([0.8, 0.9, 1.0])
  ]
  (row,) = suite.summarize(runs)
  assert row["n"] == 3
  assert row["accuracy_mean"] == pytest.approx(0.9)
  assert row["accuracy_std"] == pytest.approx(0.1)
  table = suite.markdown([row], [0, 1, 2], 60.0)
  assert "| base, split by donor | model | 0.9000 ± 0.1000 | 0.8000 ± 0.1000 | 0 | 3 |" in table


def test_paired_differences_follow_the_seeds():
  """Differences pair a model run with the baseline of the same setting and seed, not with the mean."""
  runs = []
  for seed, (model, base) in enumerate([(0.9, 0.8), (0.7, 0.9), (1.0, 0.7)]):
    runs.append(dict(setting="base, split by donor", method="model", seed=seed, accuracy=model, macro_f1=model))
    runs.append(dict(setting="base, split by donor", method=suite.PAIRED_BASELINE, kind="baseline", seed=seed,
                     accuracy=base, macro_f1=base - 0.3))
    runs.append(dict(setting="base, split by cell", method=suite.PAIRED_BASELINE, kind="baseline", seed=seed,
                     accuracy=0.0, macro_f1=0.0))
  (row,) = suite.paired(runs)
  assert (row["setting"], row["method"], row["n"], row["accuracy_wins"]) == ("base, split by donor", "model", 3, 2)
  assert row["baseline"] == suite.PAIRED_BASELINE and row["macro_f1_wins"] == 3
  assert row["accuracy_difference_mean"] == pytest.approx(0.2 / 3)
  assert row["accuracy_difference_std"] == pytest.approx(np.std([0.1, -0.2, 0.3], ddof=1))
  assert row["macro_f1_difference_mean"] == pytest.approx(0.2 / 3 + 0.3)
  table = suite.markdown([], [0, 1, 2], 60.0, [row])
  assert (f"| base, split by donor | model | {suite.PAIRED_BASELINE} | +0.0667 ± 0.2517 | 2 of 3 seeds | "
          "+0.3667 ± 0.2517 | 3 of 3 seeds |") in table


def test_per_cell_settings_pair_with_the_logistic_regression_and_celltypist():
  runs = [dict(setting="annotate, split by donor", method=m, kind=k, seed=0, accuracy=a, macro_f1=a)
          for m, k, a in [("model, anchored", "model", 0.9), ("CellTypist (best match)", "baseline", 0.8),
                          (suite.PAIRED_BASELINE, "baseline", 0.1), ("per-cell logistic regression", "baseline", 0.5),
                          ("per-cell logistic regression with the time point", "baseline", 0.6)]]
  rows = suite.paired(runs)
  assert [r["baseline"] for r in rows] == list(suite.PAIRED_CELL_BASELINES)
  assert [r["accuracy_difference_mean"] for r in rows] == pytest.approx([0.4, 0.3, 0.1])
  without_celltypist = suite.paired([r for r in runs if not r["method"].startswith("CellTypist")])
  assert [r["baseline"] for r in without_celltypist] == list(suite.PAIRED_CELL_BASELINES[:2])


def test_suite_runs_resumes_and_refuses_unknown_rows(config, tmp_path):
  config.train.num_epochs = 1
  summary = suite.run(config, tmp_path, seeds=[0, 1], rows=["model"])
  methods = [r["method"] for r in summary]
  assert methods == list(baselines.BASELINES) + ["model"]
  assert all(r["n"] == 2 and r["leakage"] == 0 for r in summary)
  written = json.loads((tmp_path / "results.json").read_text())
  assert len(written["runs"]) == 2 * 4
  assert (tmp_path / "results.png").read_bytes()[:4] == b"\x89PNG"
  assert "| base, split by donor | model |" in (tmp_path / "results.md").read_text()
  assert [(p["method"], p["n"]) for p in written["paired"]] == [("model", 2)]
  result_file = tmp_path / "runs" / "model_seed0" / "results.json"
  stamp = result_file.stat().st_mtime_ns
  again = suite.run(config, tmp_path, seeds=[0, 1], rows=["model"])
  assert result_file.stat().st_mtime_ns == stamp  # finished runs are read back, not retrained
  assert again == summary
  config.model.dropout = 0.1  # a row whose recipe changed is not read back from a run of the old one
  with pytest.raises(ConfigError, match="holds a run with another config"):
    suite.run(config, tmp_path, seeds=[0, 1], rows=["model"])
  with pytest.raises(ConfigError, match="unknown suite rows"):
    suite.run(config, tmp_path, seeds=[0], rows=["bogus"])
