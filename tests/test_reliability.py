"""The catalogue of bad inputs and faults a user can meet (issue 14), one case per class.

Each case asserts what the user gets: one `error: <path>: <problem>` line (exit code 1: `cli.guarded` exits
with the line as its message, which Python prints and exits 1 with) and that nothing was written or
overwritten; or, where the right answer is to go on, that the result is the right one. Most cases call
`cli.guarded` in-process; Ctrl-C and the command line itself need a subprocess of configs/tiny.py.
"""

import dataclasses
import errno
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time

import anndata
import jax
import ml_collections
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from cardiac_jax import checks, cli, dataset, integrity, predict, preprocess, report, simulate, training
from cardiac_jax import model as model_lib
from cardiac_jax import workdir as rundir
from cardiac_jax.configs import default

REPO = pathlib.Path(__file__).resolve().parents[1]


def _error(body):
  """The one `error:` line `body()` exits with under cli.guarded (fails if it returns or prints more)."""
  with pytest.raises(SystemExit) as exit_info:
    cli.guarded(body)
  message = exit_info.value.code
  assert isinstance(message, str) and message.startswith("error: ") and "\n" not in message, message
  return message


def _files(folder):
  folder = pathlib.Path(folder)
  return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _history(workdir):
  return [{k: v for k, v in r.items() if k not in ("sequences_per_second", "seconds")}
          for r in rundir.read_metrics(workdir)]


@pytest.fixture()
def run(tiny_run):
  """(workdir, config, results) of the session's finished tiny run (3 epochs); the config is a copy."""
  workdir, config, results = tiny_run
  return workdir, config.copy_and_resolve_references(), results


@pytest.fixture()
def copy(run, tmp_path):
  """A copy of the finished run's workdir, to damage."""
  return shutil.copytree(run[0], tmp_path / "copy")


# 1. Never a silent wrong result.

def test_a_non_finite_loss_stops_training_naming_epoch_and_step(config, tmp_path):
  config.train.learning_rate = 1e30
  workdir = tmp_path / "run"
  message = _error(lambda: training.train_and_evaluate(config, workdir))
  assert "training stopped" in message and "epoch 1, step" in message and "learning_rate" in message
  assert not (workdir / "results.json").exists() and not (workdir / "metrics.jsonl").exists()
  assert not (workdir / "checkpoints" / "latest.sha256.json").exists()  # no checkpoint of a broken epoch


def test_non_finite_logits_are_refused_and_never_reported(run, copy):
  bundle = rundir.load(copy)
  broken = dataclasses.replace(bundle, params=jax.tree.map(lambda p: p * np.nan, bundle.params))
  test, _ = rundir.load_test_sequences(copy)
  message = _error(lambda: predict.predict_logits(broken, test))
  assert "non-finite logits" in message and "checkpoints/best" in message
  results = copy / "nan.json"
  message = _error(lambda: integrity.check_finite_record({"test_accuracy": float("nan")}, results))
  assert str(results) in message and "test_accuracy is nan" in message
  assert "NaN" not in (run[0] / "results.json").read_text()


def _flip_a_byte(path):
  data = bytearray(path.read_bytes())
  data[len(data) // 2] ^= 0xFF
  path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", [
    _flip_a_byte,
    lambda path: path.write_bytes(path.read_bytes()[: path.stat().st_size // 2]),
    pathlib.Path.unlink,
], ids=["bytes-changed", "truncated", "deleted"])
def test_a_damaged_checkpoint_is_one_error_naming_its_folder(copy, damage):
  best = next((copy / "checkpoints" / "best").iterdir())
  arrays = max((p for p in best.rglob("*") if p.is_file() and "ocdbt.process_0" in str(p)), key=lambda p: p.stat().st_size)
  damage(arrays)
  message = _error(lambda: report.evaluate(copy))
  assert str(best) in message and "damaged" in message
  assert not (copy / "report").exists()


def test_evaluation_refuses_test_data_other_than_the_trained_run_saved(copy):
  path = copy / "test_sequences.npz"
  with np.load(path) as saved:
    arrays = dict(saved)
  arrays["labels"] = np.roll(arrays["labels"], 1)
  np.savez(path, **arrays)
  message = _error(lambda: report.evaluate(copy))
  assert "test_sequences.npz" in message and "changed since training" in message
  assert not (copy / "report").exists()


def _adata(x, labels, genes=None, path="course.h5ad"):
  n = len(labels)
  obs = pd.DataFrame({"day": ["d0", "d1"] * (n // 2), "type": labels},
                     index=[f"c{i}" for i in range(n)])
  adata = anndata.AnnData(sp.csr_matrix(np.asarray(x, np.float32)), obs=obs)
  if genes is not None:
    adata.var_names = genes
  adata.uns["source_path"] = path
  return adata


def test_labels_differing_only_by_surrounding_whitespace_are_one_class():
  labels = ["CM", "CM ", " CF", "CF"] * 5
  adata, _, qc = preprocess.quality_control(_adata(np.ones((20, 4)), labels), time_key="day", label_key="type")
  assert sorted(set(adata.obs["type"])) == ["CF", "CM"]
  assert qc["values_stripped_of_whitespace"] == 10


def test_the_counts_rule_takes_shares_not_single_values():
  rng = np.random.default_rng(0)
  counts = rng.poisson(3, size=(200, 50)).astype(np.float32)
  odd = counts.copy()
  odd[:2, :5] += 0.37  # a handful of odd values
  log = np.log1p(counts / np.maximum(counts.sum(1, keepdims=True), 1) * 1e4)
  with_outlier = log.copy()
  with_outlier[0, 0] = 500.0  # one huge value does not make log values linear
  tpm = counts * 37.13 + 0.5
  assert preprocess.detect_normalization(sp.csr_matrix(odd)) == "counts"
  assert preprocess.detect_normalization(sp.csr_matrix(with_outlier)) == "log"
  assert preprocess.detect_normalization(sp.csr_matrix(tpm)) == "linear"
  kind, why = preprocess.normalization_evidence(sp.csr_matrix(odd))
  assert "not whole numbers" in why
  forced = preprocess.normalize_and_select(_adata(counts, ["a", "b"] * 100), np.arange(200), n_genes=5,
                                           normalization="log", hvg_flavor="seurat")
  assert forced[2] == "log"  # data.normalization forces the kind


def test_negative_values_are_one_error_naming_the_file():
  x = np.random.default_rng(0).normal(size=(20, 6))
  with pytest.raises(preprocess.DataError, match="negative values.*z-scored") as info:
    preprocess.quality_control(_adata(x, ["a", "b"] * 10, path="scaled.h5ad"), time_key="day", label_key="type")
  assert info.value.path == "scaled.h5ad"


def test_duplicated_gene_names_reach_the_gene_list_once():
  rng = np.random.default_rng(1)
  x = rng.poisson(rng.uniform(0.5, 20, size=40), size=(300, 40)).astype(np.float32)
  genes = [f"g{i // 2}" for i in range(40)]  # every name twice
  _, chosen, _ = preprocess.normalize_and_select(_adata(x, ["a", "b"] * 150, genes), np.arange(300), n_genes=15)
  assert len(chosen) == 15 and len(set(chosen)) == 15


@pytest.mark.parametrize("fractions", [(0.7, 0.3), (0.7, 0.3, 0.0), (0.5, 0.2, 0.1)])
def test_split_fractions_must_be_three_positive_summing_to_one(config, tmp_path, fractions):
  config.split.fractions = fractions
  message = _error(lambda: training.train_and_evaluate(config, tmp_path / "run"))
  assert "split.fractions" in message
  assert not (tmp_path / "run").exists()


# 2. Never a traceback for a user's mistake.

def test_a_lost_epoch_record_that_the_checkpoints_cover_is_named_not_hidden(run, copy, caplog):
  """A finished run that lost its last metrics.jsonl line and results.json, run again: the last checkpoint is past
  that epoch, so its line cannot be recomputed; the log and results.json say which epoch is missing."""
  _, config, _ = run
  lines = (copy / "metrics.jsonl").read_text().splitlines(keepends=True)
  (copy / "metrics.jsonl").write_text("".join(lines[:-1]))
  (copy / "results.json").unlink()
  results = training.train_and_evaluate(config, copy)
  assert results["metrics_missing_epochs"] == [len(lines)]
  assert f"no line for epoch(s) [{len(lines)}]" in caplog.text and str(copy / "metrics.jsonl") in caplog.text
  assert json.loads((copy / "results.json").read_text())["metrics_missing_epochs"] == [len(lines)]


def test_eval_without_epoch_records_says_so_and_draws_no_learning_curves(copy, caplog):
  (copy / "metrics.jsonl").unlink()
  scored = report.evaluate(copy)
  assert scored["learning_curves"] == "not drawn: no epoch records"
  assert "no epoch records" in caplog.text and str(copy / "metrics.jsonl") in caplog.text
  assert (copy / "report" / "confusion.png").exists() and not (copy / "report" / "learning_curves.png").exists()


def test_a_test_split_saved_without_per_step_times_reads_them_from_the_data(copy):
  """Format 1 kept no per-step times with the test split: on request the shim reads each named cell's time point."""
  test, names = rundir.load_test_sequences(copy)
  assert (test.times[test.mask] >= 0).all() and (test.times[~test.mask] == -1).all()
  path = copy / "test_sequences.npz"
  with np.load(path) as saved:
    older = {key: saved[key] for key in saved.files if key != "times"}
  np.savez(path, **older)
  record = json.loads((copy / "data.json").read_text())
  record["test_sequences_sha256"] = integrity.file_digest(path)
  del record["format_version"]
  (copy / "data.json").write_text(json.dumps(record))
  assert (rundir.load_test_sequences(copy)[0].times == -1).all()  # not read unless asked for (eval, suite)
  again, _ = rundir.load_test_sequences(copy, times=True)  # as interpret asks
  np.testing.assert_array_equal(again.times, test.times)


def test_a_workdir_from_before_the_pytorch_layer_norm_default_keeps_its_model(copy):
  saved = json.loads((copy / "config.json").read_text())
  for field in model_lib.EARLIER_DEFAULTS["model"]:
    del saved["model"][field]
  del saved["model_name"]
  (copy / "config.json").write_text(json.dumps(saved))
  assert rundir.load_config(copy).model.layer_norm_eps == 1e-6
  assert not rundir.load_config(copy).model.attention_dropout_per_sequence
  assert rundir.load_config(copy).model_name == "enhanced_rnn"


def test_a_misspelt_field_in_a_config_file_names_the_closest(config):
  config = ml_collections.ConfigDict(config.to_dict())
  config.model.hiden_dim = 64
  message = _error(lambda: checks.check_fields(config, default.get_config()))
  assert "'model.hiden_dim'" in message and "did you mean 'hidden_dim'" in message
  saved = ml_collections.ConfigDict({"model_name": "enhanced_rnn", "model": {"hiden_dim": 3}})
  assert "did you mean 'hidden_dim'" in _error(lambda: model_lib.create_model(saved, 7))
  saved.model_name = "transformer"
  assert "model_name='transformer' must be one of ['enhanced_rnn']" in _error(lambda: model_lib.create_model(saved, 7))


def _command(args, cwd=REPO, **kwargs):
  return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, **kwargs)


def _python_with(setup, *args):
  """The command line of Python running `args` after `setup` (a line of Python, with os, resource, signal and
  sys imported) ran in a process of its own that then execs it: the limits and signal dispositions that setup
  sets are inherited, and no forked copy of this multithreaded (JAX) test process runs Python before exec, as
  a preexec_fn would."""
  return [sys.executable, "-c", f"import os, resource, signal, sys; {setup}; "
          "os.execv(sys.executable, [sys.executable] + sys.argv[1:])", *args]


# SIGINT's default action for a child, as in a terminal: a shell that starts the tests in the background (no job
# control) passes SIGINT on ignored, and Python then never raises KeyboardInterrupt.
CTRL_C_AS_IN_A_TERMINAL = "signal.signal(signal.SIGINT, signal.SIG_DFL)"


def _one_error_line(result):
  assert result.returncode == 1, result.stderr[-2000:]
  assert "Traceback" not in result.stderr
  lines = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
  assert len(lines) == 1 and result.stderr.strip().splitlines()[-1] == lines[0], result.stderr[-2000:]
  return lines[0]


def test_the_command_line_names_bad_flags_and_config_files(tmp_path):
  """One process per case: a misspelt flag field, a missing config file, and train.py run from another folder
  with its default config (found beside train.py: the run gets as far as checking the values)."""
  workdir = tmp_path / "run"
  line = _one_error_line(_command(["train.py", "--config=configs/tiny.py", "--config.model.hiden_dim=3",
                                   f"--workdir={workdir}"]))
  assert line == "error: config field 'hiden_dim' does not exist; did you mean 'hidden_dim'?"
  line = _one_error_line(_command(["train.py", "--config=configs/nope.py", f"--workdir={workdir}"]))
  assert line == "error: configs/nope.py: config file not found"
  line = _one_error_line(_command([str(REPO / "train.py"), "--config.train.num_epochs=0", f"--workdir={workdir}"],
                                  cwd=tmp_path))
  assert "train.num_epochs=0 must be >= 1" in line
  # ml_collections applies overrides to a default config as the flag is defined, before any main runs
  line = _one_error_line(_command([str(REPO / "train.py"), "--config.train.num_epoch=3", f"--workdir={workdir}"],
                                  cwd=tmp_path))
  assert line == "error: config field 'num_epoch' does not exist; did you mean 'num_epochs'?"
  assert not workdir.exists()


@pytest.mark.parametrize("field, value, expected", [
    ("model.num_heads", 3, "divisor of the attention width"),
    ("seed", -1, "seed=-1"),
    ("data.n_per_type", 0, "data.n_per_type=0"),
    ("train.num_epochs", 0, "train.num_epochs=0"),
    ("split.max_train_cells", -5, "split.max_train_cells=-5"),
])
def test_values_the_model_cannot_take(config, tmp_path, field, value, expected):
  default.override(config, {field: value}) if "." in field else setattr(config, field, value)
  message = _error(lambda: training.train_and_evaluate(config, tmp_path / "run"))
  assert expected in message
  assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("field, value", [
    ("model.pooling", "max"), ("model.dtype", "float16"), ("model.lstm_impl", "cudnn"), ("model_name", "gru"),
    ("data.sequence_mode", "anchor"), ("split.unit", "batch"), ("train.calibration_method", "isotonic"),
    ("train.early_stopping_metric", "loss"),
])
def test_a_choice_the_config_does_not_offer_is_refused_before_any_data_are_read(config, tmp_path, monkeypatch, field,
                                                                                value):
  monkeypatch.setattr(dataset, "prepare", lambda config: pytest.fail("the data were read"))
  default.override(config, {field: value})
  message = _error(lambda: training.train_and_evaluate(config, tmp_path / "run"))
  assert message.startswith(f"error: config: {field}={value!r} must be one of [")
  assert not (tmp_path / "run").exists()


def test_a_workdir_that_is_a_file(config, tmp_path):
  path = tmp_path / "run"
  path.write_text("notes")
  assert _error(lambda: training.train_and_evaluate(config, path)) == f"error: {path}: is a file, not a workdir " \
                                                                    "folder; name another --workdir"
  assert path.read_text() == "notes"


@pytest.mark.parametrize("name, damage, expected", [
    ("config.json", pathlib.Path.unlink, "config.json: not found"),
    ("config.json", lambda p: p.write_text(p.read_text()[:40]), "config.json: truncated or damaged"),
    ("data.json", lambda p: p.write_text(p.read_text()[:40]), "data.json: truncated or damaged"),
    ("metrics.jsonl", lambda p: p.write_text(p.read_text()[:-30]), "metrics.jsonl: line 3 is truncated"),
    ("calibration.json", lambda p: p.write_text("{"), "calibration.json: truncated or damaged"),
])
def test_missing_or_truncated_run_files(copy, name, damage, expected):
  damage(copy / name)
  message = _error(lambda: report.evaluate(copy))
  assert expected in message
  assert not (copy / "report").exists()


def test_a_damaged_prepared_data_cache_is_rebuilt(config, caplog):
  config.data.reuse_prepared = True
  first = dataset.prepare(config)
  path = pathlib.Path(config.data.cache_dir) / "prepared" / f"{dataset.cache_key(config)}.npz"
  path.write_bytes(path.read_bytes()[:1000])
  again = dataset.prepare(config)
  assert "is damaged" in caplog.text and "preparing the data again" in caplog.text
  np.testing.assert_array_equal(again.train.x, first.train.x)
  assert dataset.prepare(config).genes == first.genes  # the rewritten cache reads back


@pytest.mark.parametrize("problem", [(errno.ENOSPC, "No space left on device"), (errno.EROFS, "Read-only file system")])
def test_a_full_disk_or_read_only_folder_is_one_line_and_leaves_no_half_report(copy, monkeypatch, problem):
  target = copy / "report" / "test_predictions.npz"

  def refuse(path, *args, **kwargs):
    raise OSError(problem[0], problem[1], str(target))

  monkeypatch.setattr(np, "savez", refuse)
  assert _error(lambda: report.evaluate(copy)) == f"error: {target}: {problem[1]}"
  assert not (copy / "report").exists() and not list(copy.glob(".report-*"))


@pytest.mark.parametrize("fault", [OSError(errno.ENOSPC, "No space left on device"), KeyboardInterrupt()])
def test_an_output_folder_is_the_old_one_or_the_complete_new_one(tmp_path, fault):
  """integrity.staged_folder, which report/ and interpret/ are written through: a failed rewrite keeps the old
  folder as it was and leaves nothing beside it; a finished one replaces it whole."""
  out = tmp_path / "interpret"
  out.mkdir()
  (out / "summary.json").write_text("old")
  with pytest.raises(type(fault)) as raised:
    with integrity.staged_folder(out) as staging:
      (staging / "attributions.csv").write_text("half")
      raise fault
  if isinstance(fault, OSError):
    assert raised.value.filename == str(out)  # the folder asked for, never the temporary one
  assert _files(tmp_path) == {"interpret/summary.json": b"old"}
  with integrity.staged_folder(out) as staging:
    (staging / "attributions.csv").write_text("new")
  assert _files(tmp_path) == {"interpret/attributions.csv": b"new"}
  assert sorted(p.name for p in tmp_path.iterdir()) == ["interpret"]


def test_an_output_folder_that_cannot_take_the_old_ones_place_gives_it_back(tmp_path, monkeypatch):
  out = tmp_path / "report"
  out.mkdir()
  (out / "report.json").write_text("old")
  rename = pathlib.Path.rename

  def refuse_the_new_folder(self, target):
    if self.name.startswith(".report-") and not self.name.endswith(".old"):
      raise OSError(errno.EXDEV, "Invalid cross-device link", str(self))
    return rename(self, target)

  monkeypatch.setattr(pathlib.Path, "rename", refuse_the_new_folder)
  with pytest.raises(OSError) as raised:
    with integrity.staged_folder(out) as staging:
      (staging / "report.json").write_text("new")
  assert raised.value.filename == str(out)
  assert _files(tmp_path) == {"report/report.json": b"old"}
  assert sorted(p.name for p in tmp_path.iterdir()) == ["report"]


def test_a_real_write_refusal_of_the_kernel_is_one_line_and_leaves_no_half_report(copy):
  """Not a mock: eval.py under a 2 KB file-size limit (RLIMIT_FSIZE; root ignores read-only permission bits, and
  a full disk cannot be made here), where the kernel refuses the report's writes as a full disk would."""
  def unlocked():
    return {k: v for k, v in _files(copy).items() if k != integrity.LOCK_NAME}

  before = unlocked()
  command = _python_with("resource.setrlimit(resource.RLIMIT_FSIZE, (2048, 2048))", "eval.py", f"--workdir={copy}")
  result = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
  assert _one_error_line(result) == f"error: {copy / 'report'}: File too large"
  assert unlocked() == before
  assert not list(copy.glob(".report-*"))


# 3. Nothing lost, nothing half-written.

def test_a_second_run_on_one_workdir_is_refused_at_start(run, monkeypatch):
  workdir, config, _ = run
  before = _files(workdir)
  monkeypatch.setattr(dataset, "prepare", lambda config: pytest.fail("prepared data for a refused run"))
  with integrity.workdir_lock(workdir):
    message = _error(lambda: training.train_and_evaluate(config, workdir))
  assert "another run is writing to this workdir" in message
  assert _files(workdir) == before


def test_the_lock_holds_across_processes_and_dies_with_a_killed_run(tmp_path):
  holder = subprocess.Popen(
      [sys.executable, "-c", "import sys, time\nfrom cardiac_jax import integrity\n"
       f"with integrity.workdir_lock({str(tmp_path)!r}):\n  print('locked', flush=True)\n  time.sleep(600)"],
      cwd=REPO, stdout=subprocess.PIPE, text=True)
  try:
    assert holder.stdout.readline().strip() == "locked"
    with pytest.raises(integrity.ConfigError, match="another run is writing"):
      with integrity.workdir_lock(tmp_path):
        pass
  finally:
    holder.kill()  # SIGKILL: no chance to clean up
    holder.wait()
  with integrity.workdir_lock(tmp_path):  # no stale lock
    pass


def test_a_workdir_of_another_config_is_refused_before_data_preparation(copy, run, monkeypatch):
  config = run[1].copy_and_resolve_references()
  config.seed = 5
  before = _files(copy)
  monkeypatch.setattr(dataset, "prepare", lambda config: pytest.fail("prepared data for a refused run"))
  assert "another config" in _error(lambda: training.train_and_evaluate(config, copy))
  assert _files(copy) == before


def test_interrupted_simulations_leave_no_partial_folders(tmp_path, monkeypatch):
  stale = tmp_path / f".GSE175634.{2**22 + 7}.abc.partial"  # a pid above Linux's maximum: its writer is gone
  live = tmp_path / f".GSE175634.{os.getpid()}.def.partial"
  stale.mkdir()
  live.mkdir()
  simulate.remove_stale_partials(tmp_path / "GSE175634")
  assert not stale.exists() and live.exists()
  live.rmdir()

  def interrupted(*args, **kwargs):
    raise KeyboardInterrupt

  monkeypatch.setattr(simulate, "_write_mtx", interrupted)
  with pytest.raises(KeyboardInterrupt):
    simulate.write_gse175634(tmp_path / "GSE175634", n_cells=60, n_genes=50, n_donors=3)
  assert list(tmp_path.iterdir()) == []


def test_ctrl_c_says_where_to_resume_and_keeps_every_saved_epochs_line(run, cache_dir, tmp_path):
  """SIGINT once the child has saved its first checkpoint: one line naming the workdir and the last saved epoch,
  no traceback, and a metrics.jsonl with a line for every saved epoch (at most one
  more: the epoch whose checkpoint was being saved, which a resumed run drops and writes again), with the
  uninterrupted run's numbers. That a resumed run ends with the same files is test_train.py's
  test_runs_are_deterministic_and_resume_exactly."""
  full, _, _ = run
  workdir = tmp_path / "interrupted"
  checksums = workdir / "checkpoints" / "latest.sha256.json"
  process = subprocess.Popen(
      _python_with(CTRL_C_AS_IN_A_TERMINAL, "train.py", "--config=configs/tiny.py",
                   f"--config.data.cache_dir={cache_dir}", "--config.train.num_epochs=30", f"--workdir={workdir}"),
      cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  deadline = time.monotonic() + 300
  while not checksums.exists() and process.poll() is None and time.monotonic() < deadline:
    time.sleep(0.05)
  # A SIGINT that lands inside some native calls (seen once in a full suite run) can be lost, as a first
  # Ctrl-C sometimes is: press it again, as a user would, until the run ends.
  for _ in range(20):
    process.send_signal(signal.SIGINT)
    try:
      _, stderr = process.communicate(timeout=3)
      break
    except subprocess.TimeoutExpired:
      continue
  else:
    _, stderr = process.communicate(timeout=120)
  line = _one_error_line(subprocess.CompletedProcess(process.args, process.returncode, "", stderr))
  latest = int(json.loads(checksums.read_text())["step"])
  assert line.startswith(f"error: {workdir}: interrupted in epoch {latest + 1}; epochs up to {latest} are saved")
  assert line.endswith("run the same command again to resume")
  saved = _history(workdir)
  assert [r["epoch"] for r in saved] in (list(range(1, latest + 1)), list(range(1, latest + 2)))
  reference = _history(full)
  assert saved[: len(reference)] == reference[: len(saved)]


def test_ctrl_c_while_a_checkpoint_is_written_finishes_it_then_stops(run, tmp_path, monkeypatch):
  """A SIGINT that arrives while an epoch's checkpoint is being committed waits for the commit (an interrupted
  Orbax save logs its own traceback and leaves the step half-written); the run then stops with that epoch saved."""
  _, config, _ = run
  real_save = rundir.Checkpoints.save

  def save_interrupted_midway(self, epoch, state, meta, improved):
    if epoch == 2:
      os.kill(os.getpid(), signal.SIGINT)  # lands here, inside the save
    real_save(self, epoch, state, meta, improved)

  monkeypatch.setattr(rundir.Checkpoints, "save", save_interrupted_midway)
  config.train.num_epochs = 5
  message = _error(lambda: training.train_and_evaluate(config, tmp_path / "run"))
  assert message == (f"error: {tmp_path / 'run'}: interrupted in epoch 3; epochs up to 2 are saved: run the same "
                     "command again to resume")
  assert json.loads((tmp_path / "run" / "checkpoints" / "latest.sha256.json").read_text())["step"] == "2"
  assert [r["epoch"] for r in rundir.read_metrics(tmp_path / "run")] == [1, 2]


def test_kill_9_mid_run_resumes_to_the_files_of_an_uninterrupted_run(run, cache_dir, tmp_path):
  """SIGKILL (no handler runs) as soon as the first epoch's metrics line is written, which is before its
  checkpoint is committed; the same run started again ends with the uninterrupted run's metrics.jsonl,
  results, calibration and best parameters."""
  full, config, expected = run
  workdir = tmp_path / "killed"
  process = subprocess.Popen(
      [sys.executable, "train.py", "--config=configs/tiny.py", f"--config.data.cache_dir={cache_dir}",
       f"--workdir={workdir}"], cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  deadline = time.monotonic() + 300
  while not (workdir / "metrics.jsonl").exists() and process.poll() is None and time.monotonic() < deadline:
    time.sleep(0.01)
  process.kill()
  assert process.wait(timeout=60) == -signal.SIGKILL  # killed mid-run, not finished
  assert not (workdir / "results.json").exists()
  resumed = training.train_and_evaluate(config, workdir)
  assert _history(workdir) == _history(full)
  assert {k: v for k, v in resumed.items() if k != "seconds"} == {k: v for k, v in expected.items() if k != "seconds"}
  for name in ("calibration.json", "data.json", "preprocessing.json", "test_sequences.npz"):
    assert (workdir / name).read_bytes() == (full / name).read_bytes(), name
  state = training.initial_state(config, dataset.prepare(config))
  jax.tree.map(np.testing.assert_array_equal, rundir.restore_best_params(workdir, state.params)[0],
               rundir.restore_best_params(full, state.params)[0])
