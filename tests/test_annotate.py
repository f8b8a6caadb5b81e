"""Annotation: a trained workdir labels a new, unlabelled time course (AnnData in, AnnData out)."""

import dataclasses
import errno
import hashlib
import json
import pathlib
import shutil
import signal
import subprocess
import sys
import time

import anndata
import numpy as np
import pandas as pd
import pytest

from cardiac_jax import (annotation, calibrate, cli, conformal, dataset, metrics, predict, readers, report, training,
                         unassigned)
from cardiac_jax import workdir as rundir
from cardiac_jax.experiments import trust
from cardiac_jax.errors import ConfigError, DataError
from cardiac_jax.configs import tiny

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def run(tmp_path_factory, cache_dir, simulated):
  """A tiny anchored run, its Dataset, and a query h5ad of its test cells without labels."""
  root = tmp_path_factory.mktemp("annotate")
  config = tiny.get_config()
  config.data.cache_dir = str(cache_dir)
  config.data.sequence_mode = "anchored"
  config.data.novelty_genes = 100
  config.train.num_epochs = 4
  training.train_and_evaluate(config, root / "run")
  data = dataset.prepare(config)
  adata = readers.read_geo(simulated[0])
  test_names = data.cell_names[data.test.anchor_cells]
  query = adata[test_names].copy()
  del query.obs["type"]
  del query.uns["source_path"]
  query.write_h5ad(root / "query.h5ad")
  return root, config, data, query


def _sha(path):
  return hashlib.sha256(pathlib.Path(path).read_bytes()).hexdigest()


def test_annotating_the_test_donors_reproduces_the_test_predictions(run):
  """The query is the held-out donors' cells: context comes from the query as it came from the test split."""
  root, _, data, _ = run
  bundle = rundir.load(root / "run")
  test, names = rundir.load_test_sequences(root / "run")
  logits = predict.predict_logits(bundle, test)
  before = _sha(root / "query.h5ad")
  result, _ = annotation.annotate_file(root / "run", root / "query.h5ad", root / "out.h5ad", progress=False)
  assert _sha(root / "query.h5ad") == before  # the input is never modified
  out = anndata.read_h5ad(root / "out.h5ad")
  # the same logits; the probabilities are their calibration (a per-class scale can magnify float32 noise)
  np.testing.assert_allclose(result.logits, logits, atol=1e-5)
  expected = calibrate.softmax(calibrate.apply(bundle.calibration, result.logits))
  np.testing.assert_allclose(out.obsm[annotation.PROBABILITIES_KEY], expected, atol=1e-6)
  np.testing.assert_array_equal(out.obs_names, names[np.arange(len(names)), test.anchor])
  best = np.asarray(bundle.classes)[expected.argmax(1)]
  # the default rule: the energy (logsumexp) of the calibrated logits below the threshold of the cell's class that
  # keeps 95% of that class's validation cells assigned, the energy written as the cell's unassigned score
  energy = calibrate.logsumexp(calibrate.apply(bundle.calibration, result.logits))
  np.testing.assert_allclose(out.obs[annotation.UNASSIGNED_SCORE_KEY], energy, rtol=1e-6)
  limits = np.asarray(unassigned.class_thresholds(bundle.calibration, "energy", 0.95))
  confident = energy >= limits[expected.argmax(1)]
  assert result.info["unassigned"]["chosen_by"].startswith("keeps 95% of each class's validation cells")
  assert result.info["unassigned"]["score"] == unassigned.DEFAULT_SCORE == "energy"
  # the combined score reads the query's novelty scores, those training gave the same cells
  novelty = rundir.load_test_novelty(root / "run")
  np.testing.assert_allclose(result.prediction.novelty, novelty, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(out.obs[annotation.NOVELTY_KEY], novelty, rtol=1e-5, atol=1e-5)  # whatever the rule
  combined = annotation.annotate_file(root / "run", root / "query.h5ad", root / "combined.h5ad",
                                      unassigned_score="combined", progress=False)[0]
  np.testing.assert_allclose(combined.prediction.unassigned_score, unassigned.combined(
      calibrate.apply(bundle.calibration, result.logits), novelty, bundle.calibration), atol=1e-5)
  assert 0 < (~confident).sum() < len(confident)
  labels = out.obs[annotation.LABEL_KEY].astype(str).to_numpy()
  np.testing.assert_array_equal(labels[confident], best[confident])
  assert (labels[~confident] == unassigned.UNASSIGNED).all()
  np.testing.assert_allclose(out.obs[annotation.CONFIDENCE_KEY], expected.max(1), atol=1e-5)
  info = out.uns["cardiac_jax"]
  assert list(info["classes"]) == list(bundle.classes) and list(info["time_points"]) == list(bundle.time_points)
  assert len(info["genes_used"]) == len(bundle.preprocessing.genes) and len(info["genes_missing"]) == 0
  query = anndata.read_h5ad(root / "query.h5ad")
  assert (out.X != query.X).nnz == 0  # the copy keeps the data as they were
  assert list(result.info["classes"]) == list(bundle.classes)


def test_label_sets_are_written_with_their_size_and_cover_the_validation_cells(run, tmp_path):
  """The annotated copy holds each cell's conformal label set (obsm) and its size (obs); built from the run's
  validation nonconformities, the sets of the validation cells themselves cover them at about 1 - alpha."""
  root, _, data, query = run
  bundle = rundir.load(root / "run")
  scores = bundle.calibration["val_nonconformity_by_class"]
  assert [len(s) for s in scores] == list(np.bincount(data.val.labels, minlength=len(bundle.classes)))
  result, _ = annotation.annotate_file(root / "run", root / "query.h5ad", tmp_path / "out.h5ad", alpha=0.2,
                                       progress=False)
  out = anndata.read_h5ad(tmp_path / "out.h5ad")
  sets = out.obsm[annotation.LABEL_SETS_KEY]
  assert sets.dtype == bool and sets.shape == (query.n_obs, len(bundle.classes))
  np.testing.assert_array_equal(sets, result.prediction.label_sets)
  np.testing.assert_array_equal(out.obs[annotation.LABEL_SET_SIZE_KEY], sets.sum(1))
  probabilities = out.obsm[annotation.PROBABILITIES_KEY]
  np.testing.assert_array_equal(sets, 1 - probabilities.astype(np.float64) <= conformal.thresholds(scores, 0.2) + 1e-6)
  assert out.uns["cardiac_jax"]["label_sets"]["alpha"] == 0.2
  in_memory = annotation.annotate(bundle, query, alpha=0.2, progress=False).to_adata()
  np.testing.assert_array_equal(in_memory.obsm[annotation.LABEL_SETS_KEY], sets)
  validation = predict.predict(bundle, data.val, novelty=data.novelty_of(data.val))  # the default alpha, 0.1
  covered = conformal.coverage(validation.label_sets, data.val.labels)
  assert covered["coverage"] >= 0.9 and covered["coverage"] < 0.97


def test_eval_and_annotate_give_every_test_cell_the_same_label(run, tmp_path):
  """One prediction path: eval's report, results.json and annotate.py label the held-out cells alike, Unassigned
  included; the seed's raw-logit accuracy stays beside the labels' own."""
  root, *_ = run
  workdir = tmp_path / "run"
  shutil.copytree(root / "run", workdir)
  report_json = report.evaluate(workdir)
  with np.load(workdir / "report" / "test_predictions.npz") as saved:
    predicted, labels, logits = saved["predicted"], saved["labels"], saved["logits"]
  annotation.annotate_file(workdir, root / "query.h5ad", tmp_path / "out.h5ad", progress=False)
  annotated = anndata.read_h5ad(tmp_path / "out.h5ad")
  bundle = rundir.load(workdir)
  names = np.asarray(list(bundle.classes) + [unassigned.UNASSIGNED], dtype=object)
  given = annotated.obs[annotation.LABEL_KEY].astype(str).to_numpy()
  np.testing.assert_array_equal(names[np.where(predicted >= 0, predicted, len(bundle.classes))], given)
  assert 0 < (predicted < 0).sum() < len(predicted)  # the default rule leaves some cells Unassigned
  assert report_json["accuracy"] == pytest.approx(((predicted == labels) & (predicted >= 0)).mean())
  assert report_json["unassigned"] == pytest.approx((predicted < 0).mean())
  assert report_json["raw_logit_accuracy"] == pytest.approx((logits.argmax(1) == labels).mean())
  assert report_json["top_class_accuracy"] >= report_json["accuracy"]
  results = json.loads((workdir / "results.json").read_text())
  assert results["test_accuracy"] == pytest.approx(report_json["accuracy"])
  assert results["test_macro_f1"] == pytest.approx(report_json["macro_f1"])
  assert results["test_raw_logit_accuracy"] == pytest.approx(report_json["raw_logit_accuracy"])
  val = training_data(bundle).val
  bundle_val = predict.predict(bundle, val, rule=unassigned.NO_RULE)
  assert results["val_top_class_macro_f1"] == pytest.approx(metrics.classification_report(
      val.labels, bundle_val.top_class, bundle.classes)["macro_f1"])


def training_data(bundle):
  return dataset.prepare(bundle.config)


def test_shuffled_genes_and_cells_give_the_same_labels(run):
  root, _, _, query = run
  bundle = rundir.load(root / "run")
  first = annotation.annotate(bundle, query, progress=False).to_adata()
  rng = np.random.default_rng(0)
  cells, genes = rng.permutation(query.n_obs), rng.permutation(query.n_vars)
  shuffled = annotation.annotate(bundle, query[cells][:, genes].copy(), progress=False).to_adata()
  np.testing.assert_allclose(shuffled.obsm[annotation.PROBABILITIES_KEY],
                             first.obsm[annotation.PROBABILITIES_KEY][cells], atol=1e-5)
  assert "cardiac_jax_label" not in query.obs  # annotate returns a copy


@pytest.mark.parametrize("prefetch", [0, 1])
def test_chunks_built_ahead_or_not_give_the_logits_of_one_chunk(run, monkeypatch, prefetch):
  """Each cell's context is found once over the whole query; sequences are then built and predicted a chunk at a
  time (the next chunk's on another thread while one is predicted, with predict.PREFETCH)."""
  root, _, _, query = run
  bundle = rundir.load(root / "run")
  whole = annotation.annotate(bundle, query, progress=False).logits
  monkeypatch.setattr(predict, "QUERY_CHUNK", 37)
  monkeypatch.setattr(predict, "PREFETCH", prefetch)
  assert len(query) > 3 * 37
  np.testing.assert_allclose(annotation.annotate(bundle, query, progress=False).logits, whole, atol=1e-6)


def test_a_query_with_some_time_points_and_missing_genes_works(run):
  root, _, _, query = run
  bundle = rundir.load(root / "run")
  days = bundle.time_points[2:5]
  part = query[query.obs["diffday"].isin(days).to_numpy()]
  dropped = list(bundle.preprocessing.genes[:3])
  part = part[:, ~part.var_names.isin(dropped)].copy()
  result = annotation.annotate(bundle, part, progress=False)
  out = result.to_adata()
  assert out.n_obs == part.n_obs and set(result.info["time_points_in_query"]) == set(days)
  assert result.info["genes_missing"] == dropped
  np.testing.assert_allclose(out.obsm[annotation.PROBABILITIES_KEY].sum(1), 1, atol=1e-5)


def test_the_unassigned_rule(run):
  root, _, data, query = run
  bundle = rundir.load(root / "run")
  # the default threshold leaves 5% of the run's validation cells (known types) unassigned
  val_logits, val_novelty = predict.predict_logits(bundle, data.val), data.novelty_of(data.val)
  for score in unassigned.SCORES:
    rule = unassigned.rule(bundle.calibration, score, per_class=False)
    share = rule.unassigned(bundle.calibrated(val_logits), val_novelty).mean()
    if score == "novelty":  # its count of raised genes ties many cells: at most the share, never more
      assert 0.02 <= share <= 0.06
    else:
      assert share == pytest.approx(0.05, abs=0.01), score
    per_class = unassigned.rule(bundle.calibration, score)  # the default: each class's own threshold
    assert len(per_class.class_thresholds) == len(bundle.classes)
  given = annotation.annotate(bundle, query, unassigned_score="energy", threshold=1.5, progress=False)
  energy = unassigned.score("energy", bundle.calibrated(given.logits))
  np.testing.assert_array_equal(given.labels == unassigned.UNASSIGNED, energy < 1.5)
  none = annotation.annotate(bundle, query, unassigned_score="none", progress=False)
  assert unassigned.UNASSIGNED not in none.labels.tolist()
  np.testing.assert_array_equal(none.labels, np.asarray(bundle.classes)[given.probabilities.argmax(1)])
  with pytest.raises(ConfigError, match="unknown unassigned score 'entropy'"):
    annotation.annotate(bundle, query, unassigned_score="entropy", progress=False)


def test_labels_are_the_most_probable_class_after_vector_scaling(run):
  root, _, _, query = run
  bundle = rundir.load(root / "run")
  classes = len(bundle.classes)
  scale, bias = np.linspace(0.5, 2.0, classes), np.linspace(-1.0, 1.0, classes)
  vector = dataclasses.replace(bundle, calibration=dict(bundle.calibration, method="vector", scale=scale.tolist(),
                                                        bias=bias.tolist()))
  result = annotation.annotate(vector, query, unassigned_score="none", progress=False)
  expected = calibrate.softmax(result.logits * scale + bias)
  np.testing.assert_allclose(result.probabilities, expected, atol=1e-6)
  np.testing.assert_array_equal(result.labels, np.asarray(bundle.classes)[expected.argmax(1)])
  assert (expected.argmax(1) != result.logits.argmax(1)).any()  # the calibration moved some labels
  assert result.info["calibration"] == "vector scaling"


def test_refitting_the_calibration_of_an_earlier_run(run, tmp_path):
  """trust.py refits (trust.refit_calibration) a run whose calibration.json has only a temperature."""
  root, config, *_ = run
  workdir = tmp_path / "run"
  shutil.copytree(root / "run", workdir)
  fitted = json.loads((workdir / "calibration.json").read_text())
  old = {k: fitted[k] for k in ("temperature", "val_nll_before", "val_nll_after", "val_score_quantiles")}
  (workdir / "calibration.json").write_text(json.dumps(old))
  (workdir / "trust.json").write_text("{}")  # scores under the old calibration
  assert rundir.load(workdir).calibrated(np.ones((1, 2))) == pytest.approx(1.0 / old["temperature"])
  trust.trained(config, workdir)
  assert not (workdir / "trust.json").exists()
  again = json.loads((workdir / "calibration.json").read_text())
  assert again["method"] == fitted["method"] and again["choice"]["rule"] == fitted["choice"]["rule"]
  np.testing.assert_allclose(again["scale"], fitted["scale"], rtol=1e-4)
  refitted = json.loads((workdir / "results.json").read_text())["calibration"]
  assert {k: refitted[k] for k in again} == again
  assert refitted["test_ece_after"] == pytest.approx(
      json.loads((root / "run" / "results.json").read_text())["calibration"]["test_ece_after"], abs=1e-4)
  results = json.loads((workdir / "results.json").read_text())
  (workdir / "results.json").write_text(json.dumps(dict(results, val_accuracy=results["val_accuracy"] - 0.01)))
  with pytest.raises(ConfigError, match="results.json: validation accuracy"):
    trust.refit_calibration(workdir)
  assert json.loads((workdir / "calibration.json").read_text()) == again


def test_labels_are_the_top_class_unless_the_rule_leaves_a_cell_unassigned():
  logits = np.log(np.array([[0.6, 0.3, 0.1], [0.4, 0.35, 0.25], [0.2, 0.2, 0.6]]))
  rule = unassigned.Rule("probability", 0.5, "given")
  prediction = predict.from_logits(logits, None, ("a", "b", "c"), rule)
  assert prediction.labels.tolist() == ["a", unassigned.UNASSIGNED, "c"]
  assert prediction.label_ids.tolist() == [0, -1, 2] and prediction.top_class.tolist() == [0, 0, 2]
  np.testing.assert_allclose(prediction.confidence, [0.6, 0.4, 0.6], atol=1e-6)
  assert predict.from_logits(logits, None, ("a", "b", "c")).labels.tolist() == ["a", "a", "c"]


def _annotate_cli(root, query, output, *flags):
  return subprocess.run(
      [sys.executable, "annotate.py", f"--workdir={root / 'run'}", f"--input={query}", f"--output={output}", *flags],
      cwd=REPO, capture_output=True, text=True)


def test_the_command_writes_an_annotated_copy_and_a_summary(run, tmp_path):
  root, *_ = run
  result = _annotate_cli(root, root / "query.h5ad", tmp_path / "out.h5ad", "--unassigned_score=probability",
                        "--threshold=1.0")
  assert result.returncode == 0, result.stderr
  assert "annotated" in result.stderr and "Unassigned" in result.stderr
  out = anndata.read_h5ad(tmp_path / "out.h5ad")
  assert (out.obs[annotation.LABEL_KEY] == unassigned.UNASSIGNED).all()  # no probability reaches 1


def _broken(query, tmp_path, change):
  broken = query.copy()
  change(broken)
  path = tmp_path / "broken.h5ad"
  broken.write_h5ad(path)
  return path


def _set_obs(column, values):
  def change(adata):
    adata.obs[column] = values(adata)
  return change


@pytest.mark.parametrize("case, change, expected", [
    ("no time column", lambda a: a.obs.drop(columns="diffday", inplace=True), "no time column 'diffday'"),
    ("unknown time", _set_obs("diffday", lambda a: ["day99"] * a.n_obs), "['day99'] in column 'diffday'"),
    ("missing time", _set_obs("diffday", lambda a: [None] + a.obs["diffday"].tolist()[1:]), "no value in the time"),
    ("genes renamed", lambda a: setattr(a, "var_names", [f"g{i}" for i in range(a.n_vars)]), "genes are missing"),
])
def test_bad_queries_are_one_clear_error_and_write_nothing(run, tmp_path, case, change, expected):
  root, _, _, query = run
  path = _broken(query, tmp_path, change)
  before = _sha(path)
  with pytest.raises(DataError, match=expected.replace("[", r"\[").replace("]", r"\]")) as error:
    annotation.annotate_file(root / "run", path, tmp_path / "out.h5ad", progress=False)
  assert str(error.value).startswith(str(path))
  assert _sha(path) == before
  assert [p.name for p in tmp_path.iterdir()] == ["broken.h5ad"]  # no output, no temporary file left behind


def test_non_finite_values_are_zeroed_and_counted_and_cells_without_counts_are_unassigned(run, tmp_path, caplog):
  """Training's quality-control rule applied to a query: NaN and inf set to 0 with a warning naming the file and
  the count (kept in uns); a cell with no counts is Unassigned, and says why."""
  root, _, _, query = run
  damaged = query.copy()
  x = damaged.X.toarray() if hasattr(damaged.X, "toarray") else np.array(damaged.X)
  x[0, :3] = np.nan
  x[1, 0] = np.inf
  x[2, :] = 0  # no counts at all
  damaged.X = x
  path = tmp_path / "damaged.h5ad"
  damaged.write_h5ad(path)
  result, _ = annotation.annotate_file(root / "run", path, tmp_path / "out.h5ad", progress=False)
  out = anndata.read_h5ad(tmp_path / "out.h5ad")
  assert any(str(path) in r.getMessage() and "4 non-finite values" in r.getMessage() for r in caplog.records)
  assert out.uns["cardiac_jax"]["nonfinite_values_set_to_zero"] == 4
  assert out.uns["cardiac_jax"]["cells_without_counts"] == 1
  assert np.isfinite(out.obsm[annotation.PROBABILITIES_KEY]).all()
  labels = out.obs[annotation.LABEL_KEY].astype(str).to_numpy()
  reasons = out.obs[annotation.REASON_KEY].astype(str).to_numpy()
  assert labels[2] == unassigned.UNASSIGNED and reasons[2] == "no counts"
  assert out.obs[annotation.LABEL_SET_SIZE_KEY].iloc[2] == 0  # nothing explains a cell without counts
  assert set(reasons[labels != unassigned.UNASSIGNED]) == {""}
  assert set(reasons[labels == unassigned.UNASSIGNED]) <= {"no counts", "score below threshold"}
  # the cleaned cells are labelled as if their non-finite values had been 0
  zeroed = query.copy()
  zeroed.X = np.nan_to_num(x, nan=0.0, posinf=0.0)
  expected = annotation.annotate(rundir.load(root / "run"), zeroed, progress=False)
  np.testing.assert_allclose(result.probabilities, expected.probabilities, atol=1e-6)
  assert (np.asarray(query.X[:3].sum(1)) > 0).all()  # the caller's query is unchanged


@pytest.mark.parametrize("threshold", [float("nan"), float("inf"), float("-inf")])
def test_a_non_finite_threshold_is_refused(run, tmp_path, threshold):
  root, _, _, query = run
  with pytest.raises(ConfigError, match="threshold must be a finite number"):
    annotation.annotate_file(root / "run", root / "query.h5ad", tmp_path / "out.h5ad", threshold=threshold,
                             progress=False)
  assert not (tmp_path / "out.h5ad").exists()


def test_the_command_says_what_is_wrong_in_one_line(run, tmp_path):
  root, _, _, query = run
  path = _broken(query, tmp_path, lambda a: a.obs.drop(columns="diffday", inplace=True))
  result = _annotate_cli(root, path, tmp_path / "out.h5ad")
  assert result.returncode == 1
  last = result.stderr.strip().splitlines()[-1]
  assert last.startswith(f"error: {path}: obs has no time column 'diffday'"), last
  assert "Traceback" not in result.stderr
  assert not (tmp_path / "out.h5ad").exists()


# annotate.py with its output write slowed down at a point the child marks: the copy is written, the marker file
# appears, and the child waits there for the test's signal.
_SLOW_WRITE = """
import pathlib, runpy, signal, sys, time
signal.signal(signal.SIGINT, signal.default_int_handler)
from cardiac_jax import annotation
marker, real = pathlib.Path(sys.argv.pop(1)), annotation._write_annotated_copy
def slow(source, target, obs, result):
  real(source, target, obs, result)
  marker.write_text(str(target))
  time.sleep(120)
annotation._write_annotated_copy = slow
sys.argv[0] = "annotate.py"
runpy.run_path("annotate.py", run_name="__main__")
"""


@pytest.mark.parametrize("signal_sent", [signal.SIGKILL, signal.SIGINT], ids=["kill_9", "ctrl_c"])
def test_a_write_cut_short_leaves_the_previous_output_and_the_next_run_clears_its_temporary(run, tmp_path,
                                                                                              signal_sent):
  root, *_ = run
  output = tmp_path / "out.h5ad"
  output.write_bytes(b"the previous complete file")
  marker = tmp_path / "writing"
  child = subprocess.Popen(
      [sys.executable, "-c", _SLOW_WRITE, str(marker), f"--workdir={root / 'run'}", f"--input={root / 'query.h5ad'}",
       f"--output={output}"], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  deadline = time.monotonic() + 120
  while not marker.exists() and child.poll() is None and time.monotonic() < deadline:
    time.sleep(0.02)
  temporary = pathlib.Path(marker.read_text())
  assert temporary.exists() and temporary.name.startswith(".out.h5ad.tmp-")  # named as temporary
  child.send_signal(signal_sent)
  _, stderr = child.communicate(timeout=60)
  assert output.read_bytes() == b"the previous complete file"  # never a partial output
  if signal_sent == signal.SIGINT:
    assert child.returncode == 1 and stderr.strip().splitlines()[-1] == "error: interrupted"
    assert "Traceback" not in stderr and not temporary.exists()
  else:
    assert temporary.exists()  # kill -9 gave it no chance to clean up ...
    annotation.annotate_file(root / "run", root / "query.h5ad", output, progress=False)
    assert not temporary.exists()  # ... the next run removes it
    assert anndata.read_h5ad(output).n_obs == anndata.read_h5ad(root / "query.h5ad").n_obs
  assert sorted(p.name for p in tmp_path.iterdir()) == ["out.h5ad", "writing"]


@pytest.mark.parametrize("problem", [(errno.ENOSPC, "No space left on device"), (errno.EROFS, "Read-only file system")])
def test_a_full_or_read_only_destination_is_one_line_and_keeps_the_previous_output(run, tmp_path, monkeypatch,
                                                                                  problem):
  """Injected (CI runs as root, which no permission bit stops, and a full disk cannot be made here)."""
  root, *_ = run
  output = tmp_path / "out.h5ad"
  output.write_bytes(b"the previous complete file")

  def refuse(source, target, *args, **kwargs):
    raise OSError(problem[0], problem[1])  # as a write that fails after its file was opened

  monkeypatch.setattr(annotation.shutil, "copyfile", refuse)
  with pytest.raises(SystemExit) as exit_info:
    cli.guarded(lambda: annotation.annotate_file(root / "run", root / "query.h5ad", output, progress=False))
  assert exit_info.value.code == f"error: {output}: {problem[1]}"
  assert output.read_bytes() == b"the previous complete file"
  assert sorted(p.name for p in tmp_path.iterdir()) == ["out.h5ad"]


def test_refusals(run, tiny_run, tmp_path):
  root, _, _, query = run
  with pytest.raises(ConfigError, match="would overwrite the input"):
    annotation.annotate_file(root / "run", root / "query.h5ad", root / "query.h5ad")
  with pytest.raises(ConfigError, match="type sequences"):
    annotation.annotate(rundir.load(tiny_run[0]), query)
  with pytest.raises(ConfigError, match="no such workdir"):
    rundir.load(tmp_path / "absent")
  with pytest.raises(DataError, match="no donor column 'batch'"):
    annotation.annotate(rundir.load(root / "run"), query, donor_key="batch")


def test_a_geo_folder_without_labels_is_annotated(run, simulated, tmp_path):
  root, *_ = run
  geo = tmp_path / "geo"
  geo.mkdir()
  for source in pathlib.Path(simulated[0]).iterdir():
    (geo / source.name).symlink_to(source)
  meta = geo / readers.GEO_METADATA
  table = pd.read_csv(meta, sep="\t", dtype=str)
  meta.unlink()
  table.drop(columns="type").to_csv(meta, sep="\t", index=False)
  result, _ = annotation.annotate_file(root / "run", geo, tmp_path / "out.h5ad", progress=False)
  out = anndata.read_h5ad(tmp_path / "out.h5ad")
  assert out.n_obs == len(result.labels) and annotation.LABEL_KEY in out.obs


def test_normalised_input_is_read_as_such(run):
  """A query already normalised and log-transformed (scanpy's usual steps) gives the counts' probabilities."""
  import scanpy as sc

  root, _, _, query = run
  bundle = rundir.load(root / "run")
  counts_result = annotation.annotate(bundle, query, progress=False)
  from_counts = counts_result.to_adata()
  logged = query.copy()
  sc.pp.normalize_total(logged, target_sum=bundle.preprocessing.target_sum)
  sc.pp.log1p(logged)
  log_result = annotation.annotate(bundle, logged, progress=False)
  from_log = log_result.to_adata()
  assert (counts_result.info["normalization"], log_result.info["normalization"]) == ("counts", "log")
  np.testing.assert_allclose(from_log.obsm[annotation.PROBABILITIES_KEY],
                             from_counts.obsm[annotation.PROBABILITIES_KEY], atol=1e-5)
  forced = annotation.annotate(bundle, logged, normalization="counts", progress=False).to_adata()
  assert not np.allclose(forced.obsm[annotation.PROBABILITIES_KEY], from_counts.obsm[annotation.PROBABILITIES_KEY])
