"""A trained run on disk: the one module that names a workdir's files, writes them and reads them back.

A workdir holds everything a run writes:
  config.json         the config, so eval.py and a resumed run use the same one
  data.json           format version, label encoding, input genes, time points, batch size, split counts and the
                      leakage audit, the digest of test_sequences.npz
  preprocessing.json  the preprocessing fitted on the training cells (preprocess.Preprocessing)
  test_sequences.npz  the test split's sequences and the names of their cells, for eval.py
  calibration.json    the calibration fitted on the validation split (calibrate.fit)
  novelty.npz         the whole-transcriptome novelty score fitted on the training cells (novelty.py), if any
  metrics.jsonl       one line per epoch
  checkpoints/        Orbax: best/ (parameters of the best validation accuracy) and latest/ (the full state),
                      each with the sha256 of its files beside it
  results.json        final metrics of the best model
  report/, interpret/ what eval.py and interpret.py write about the run; trust.json what trust.py scored
                      (trust_validation.json: its unseen experiment on the validation donors)

`Writer` is what training writes through (process 0 alone writes in a multi-process run); `load` turns a
finished workdir into a `Bundle`, everything prediction needs. Workdirs of earlier versions (format 1: no
format version in data.json) are read through the shims here: model options they lacked, a calibration with a
temperature only.
"""

import contextlib
import dataclasses
import json
import pathlib
import zipfile
from typing import Any, Callable

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
import pandas as pd

from cardiac_jax import calibrate, dataset, integrity, novelty, parallel, preprocess
from cardiac_jax.configs import default as default_config
from cardiac_jax.errors import ConfigError, DataError
from cardiac_jax.model import EARLIER_DEFAULTS, create_model
from cardiac_jax.sequences import Sequences

# 1: workdirs without a format version; 2: data.json records it.
FORMAT_VERSION = 2
CONFIG = "config.json"
DATA = "data.json"
PREPROCESSING = "preprocessing.json"
TEST_SEQUENCES = "test_sequences.npz"
CALIBRATION = "calibration.json"
NOVELTY = "novelty.npz"
METRICS = "metrics.jsonl"
CHECKPOINTS = "checkpoints"
RESULTS = "results.json"
REPORT = "report"
INTERPRET = "interpret"
TRUST = "trust.json"
TRUST_VALIDATION = "trust_validation.json"


def load_config(workdir):
  """The ConfigDict a workdir's run used (fields added since an older run was written get that run's values)."""
  saved = integrity.read_json(pathlib.Path(workdir) / CONFIG)
  for key, value in EARLIER_DEFAULTS.items():
    saved[key] = dict(value, **saved.get(key, {})) if isinstance(value, dict) else saved.get(key, value)
  return ml_collections.ConfigDict(saved)


def finished(workdir):
  """Whether a run finished in workdir (its results.json is written last)."""
  return (pathlib.Path(workdir) / RESULTS).exists()


def read_results(workdir):
  return integrity.read_json(pathlib.Path(workdir) / RESULTS)


def read_metrics(workdir):
  """The records of a workdir's metrics.jsonl, one per epoch ([] when there is none yet)."""
  path = pathlib.Path(workdir) / METRICS
  if not path.exists():
    return []
  records = []
  for number, line in enumerate(path.read_text().splitlines(), 1):
    if line.strip():
      try:
        records.append(json.loads(line))
      except json.JSONDecodeError:
        raise ConfigError(f"{path}: line {number} is truncated or damaged; delete that line (a resumed run writes "
                          "it again)") from None
  return records


def read_data_record(workdir):
  """data.json of a run, refused if a newer version of cardiac_jax wrote it (its format is unknown here)."""
  path = pathlib.Path(workdir) / DATA
  record = integrity.read_json(path)
  if record.get("format_version", 1) > FORMAT_VERSION:
    raise ConfigError(f"{path}: written in workdir format {record['format_version']}, newer than this version of "
                      f"cardiac_jax reads ({FORMAT_VERSION}); upgrade cardiac_jax")
  return record


def load_test_sequences(workdir, times=False):
  """(Sequences, [n, max_len] cell names) of a workdir's test split, as training saved them; checked against the
  digest data.json keeps of them. Format 1 kept no per-step times: they are -1 there, or with `times` read from
  the run's data by the cells' names (which reads the whole data set)."""
  workdir = pathlib.Path(workdir)
  path = workdir / TEST_SEQUENCES
  if not path.exists():
    raise ConfigError(f"{path}: not found; a workdir of an earlier version of cardiac_jax? train again")
  record = read_data_record(workdir)
  integrity.check_test_digest(path, record)
  with np.load(path) as saved:
    fields = {f.name: saved[f.name] for f in dataclasses.fields(Sequences) if f.name in saved}
    names = saved["cell_names"]
  if "times" not in fields:
    fields["times"] = (_times_of_cells(load_config(workdir), record, names) if times
                       else np.full(names.shape, -1, np.int32))
  return Sequences(**fields), names


def load_test_novelty(workdir):
  """[n] float32 novelty score of each test sequence's anchor cell (novelty.py), as training saved them, or None
  for a run without a novelty score. Call after load_test_sequences (which checks the file's digest)."""
  with np.load(pathlib.Path(workdir) / TEST_SEQUENCES) as saved:
    return saved["novelty"] if "novelty" in saved.files else None


def _times_of_cells(config, record, names):
  """[n, steps] time-point index of the cells named at each step (-1 where none is), read from the run's data: the
  shim for test splits saved without per-step times."""
  adata, _ = dataset.load(config)
  index = {t: i for i, t in enumerate(record["time_points"])}
  times = adata.obs[config.data.time_key].astype(str).str.strip().map(index)
  lookup = pd.Series(times.to_numpy(), index=adata.obs_names.astype(str))
  lookup = lookup[~lookup.index.duplicated()]
  flat = lookup.reindex(names.ravel()).to_numpy()
  unknown = (names.ravel() != "") & pd.isna(flat)
  if unknown.any():
    raise DataError(adata.uns.get("source_path", config.data.path),
                    f"{int(unknown.sum())} cells of the saved test sequences are not in the run's data (or have no "
                    "known time point); was the data changed since training?")
  return np.where(names.ravel() != "", np.nan_to_num(flat, nan=-1), -1).astype(np.int32).reshape(names.shape)


def upgraded_calibration(record):
  """A calibration record as this version reads it. One from before vector scaling held a temperature T alone: it
  gains method 'temperature' and its map as scale 1/T and bias 0, and its energy quantiles, kept then as
  T x logsumexp(logits / T), are divided by T (the energy is now logsumexp(logits / T))."""
  if record is None or "scale" in record:
    return record
  upgraded = dict(record, method="temperature", scale=[1.0 / record["temperature"]], bias=[0.0])
  if "val_score_quantiles" in record:
    quantiles = dict(record["val_score_quantiles"])
    quantiles["energy"] = (np.asarray(quantiles["energy"]) / record["temperature"]).tolist()
    upgraded["val_score_quantiles"] = quantiles
  return upgraded


def load_calibration(workdir):
  """A workdir's calibration record, or None for a run trained before calibration existed."""
  path = pathlib.Path(workdir) / CALIBRATION
  return upgraded_calibration(integrity.read_json(path)) if path.exists() else None


def best_checkpoint(workdir):
  """The folder of a run's best checkpoint (named in errors about the parameters)."""
  return pathlib.Path(workdir) / CHECKPOINTS / "best"


def _step_dir(manager, epoch):
  return pathlib.Path(manager.directory) / str(epoch)


def _main_process_write(path, content):
  """integrity.write_atomic in process 0; the other processes of a multi-process run write nothing."""
  if parallel.is_main_process():
    integrity.write_atomic(path, content)


def _restore(manager, epoch, args):
  """manager.restore(epoch), with a checkpoint whose tree or shapes do not fit the target as one ConfigError.

  That happens with a workdir written by an earlier version of cardiac_jax whose parameter layout differed.
  """
  integrity.verify_checkpoint(_step_dir(manager, epoch), _main_process_write)
  try:
    return manager.restore(epoch, args=args)
  except ValueError as error:
    first_line = str(error).strip().splitlines()[0]
    raise ConfigError(
        f"{manager.directory}: the checkpoint of epoch {epoch} does not fit this model's parameters (written by "
        f"another version of cardiac_jax?); train again in a new --workdir. Orbax: {first_line}"
    ) from error


def _saved(state):
  return {"step": state.step, "params": state.params, "opt_state": state.opt_state, "plateau": state.plateau}


def _best_score(meta):
  """What the best checkpoint is chosen by: the epoch's early-stopping score (runs before it had one: accuracy)."""
  return meta.get("val_score", meta["val_accuracy"])


class Checkpoints:
  """Orbax managers for a workdir: `best` keeps the parameters of the best epoch, `latest` the full state."""

  def __init__(self, workdir):
    root = pathlib.Path(workdir).absolute() / CHECKPOINTS
    self.best = ocp.CheckpointManager(
        root / "best",
        options=ocp.CheckpointManagerOptions(
            max_to_keep=1, best_fn=_best_score, best_mode="max", create=True
        ),
        item_names=("params", "meta"),
    )
    self.latest = ocp.CheckpointManager(
        root / "latest", options=ocp.CheckpointManagerOptions(max_to_keep=1, create=True), item_names=("state", "meta")
    )

  def save(self, epoch, state, meta, improved):
    """Saves the latest state, and the parameters too when the epoch improved on the best; then records the
    digests of what was saved (integrity.record_checkpoint)."""
    if improved:
      self.best.save(epoch, args=ocp.args.Composite(params=ocp.args.StandardSave(state.params),
                                                    meta=ocp.args.JsonSave(meta)), metrics=meta)
    self.latest.save(epoch, args=ocp.args.Composite(state=ocp.args.StandardSave(_saved(state)),
                                                    meta=ocp.args.JsonSave(meta)))
    for manager in (self.best, self.latest) if improved else (self.latest,):
      manager.wait_until_finished()
      if parallel.is_main_process():  # the one process that writes files records the digests
        integrity.record_checkpoint(_step_dir(manager, epoch), integrity.write_atomic)

  def restore_latest(self, state):
    """(state, meta) of the latest epoch, or (state, None) when there is none."""
    epoch = self.latest.latest_step()
    if epoch is None:
      return state, None
    target = jax.tree.map(ocp.utils.to_shape_dtype_struct, _saved(state))
    restored = _restore(
        self.latest, epoch, ocp.args.Composite(state=ocp.args.StandardRestore(target), meta=ocp.args.JsonRestore())
    )
    meta = restored["meta"]
    meta.setdefault("best_val_score", meta.get("best_val_accuracy"))  # runs that watched accuracy only
    return state.replace(**restored["state"]), meta

  def close(self):
    for manager in (self.best, self.latest):
      manager.wait_until_finished()
      manager.close()


def restore_best_params(workdir, params_like):
  """The best-validation parameters saved in workdir, shaped like `params_like`. Also returns their meta."""
  manager = ocp.CheckpointManager(best_checkpoint(workdir).absolute(), item_names=("params", "meta"))
  epoch = manager.latest_step()
  if epoch is None:
    raise ConfigError(f"{best_checkpoint(workdir)}: no checkpoint; train first")
  target = jax.tree.map(ocp.utils.to_shape_dtype_struct, params_like)
  try:
    restored = _restore(
        manager, epoch, ocp.args.Composite(params=ocp.args.StandardRestore(target), meta=ocp.args.JsonRestore())
    )
  finally:
    manager.close()
  return restored["params"], restored["meta"]


def data_record(data, batch_size, test_digest):
  """What data.json keeps of a Dataset: enough to decode labels and to check a restored run's inputs (the
  sha256 of test_sequences.npz, which eval.py scores, included)."""
  return {
      "format_version": FORMAT_VERSION,
      "test_sequences_sha256": test_digest,
      "classes": list(data.encoding.classes),
      "genes": list(data.genes),
      "time_points": list(data.time_points),
      "n_features": int(data.train.x.shape[-1]),
      "batch_size": batch_size,
      "report": data.report,
  }


class Writer:
  """What a training run writes into its workdir, each file atomically; only process 0 writes."""

  def __init__(self, workdir):
    self.workdir = pathlib.Path(workdir)

  def _write(self, name, content):
    _main_process_write(self.workdir / name, content)

  def start(self, config, data, batch_size):
    """config.json, the test split, data.json (with the test split's digest) and preprocessing.json."""
    test = data.test
    fields = {f.name: getattr(test, f.name) for f in dataclasses.fields(test)}
    names = np.where(test.cell_ids >= 0, data.cell_names[np.maximum(test.cell_ids, 0)], "")
    if data.novelty is not None:
      fields["novelty"] = data.cell_novelty[test.anchor_cells]
      self._write(NOVELTY, lambda tmp: np.savez(tmp, **data.novelty.arrays()))
    self._write(TEST_SEQUENCES, lambda tmp: np.savez(tmp, cell_names=names.astype(str), **fields))
    digest = integrity.file_digest(self.workdir / TEST_SEQUENCES) if parallel.is_main_process() else None
    self._write(CONFIG, default_config.to_json(config))
    self._write(DATA, json.dumps(data_record(data, batch_size, digest), indent=2))
    self._write(PREPROCESSING, data.preprocessing.to_json())

  def metrics(self, history):
    self._write(METRICS, "".join(json.dumps(r) + "\n" for r in history))

  def calibration(self, record):
    integrity.check_finite_record(record, self.workdir / CALIBRATION)
    self._write(CALIBRATION, json.dumps(record, indent=2))

  def results(self, results):
    integrity.check_finite_record(results, self.workdir / RESULTS)
    self._write(RESULTS, json.dumps(results, indent=2))


def check_same_config(config, workdir):
  """Raises ConfigError if workdir holds a run of another config (train.num_epochs and the parallel settings may
  differ: a finished run can be continued, and a checkpoint restores on any devices)."""
  saved = pathlib.Path(workdir) / CONFIG
  if not saved.exists():
    return
  before = json.loads(default_config.to_json(load_config(workdir)))
  now = json.loads(default_config.to_json(config))
  for record in (before, now):
    record["train"].pop("num_epochs", None)
    record.pop("parallel", None)
  if before != now:
    raise ConfigError(f"{saved}: this workdir holds a run with another config; use a new --workdir")


@contextlib.contextmanager
def claimed(config, workdir):
  """Creates workdir, or checks that an existing one was made with this config (to resume or extend it), and
  holds its lock while the run writes (integrity.workdir_lock; in a multi-process run, process 0 holds it).
  Done before any data preparation.

  Only train.num_epochs may differ, so that a finished run can be continued for more epochs. A workdir this
  call created is removed again if the run fails before writing anything into it.
  """
  workdir = pathlib.Path(workdir)
  if workdir.exists() and not workdir.is_dir():
    raise ConfigError(f"{workdir}: is a file, not a workdir folder; name another --workdir")
  check_same_config(config, workdir)
  created = not workdir.exists()
  workdir.mkdir(parents=True, exist_ok=True)
  # The processes of one multi-process run share the workdir: process 0, the one that writes, holds the lock.
  lock = integrity.workdir_lock(workdir) if parallel.is_main_process() else contextlib.nullcontext()
  try:
    with lock:
      yield
  except BaseException:
    if created and [p.name for p in workdir.iterdir()] == [integrity.LOCK_NAME]:
      (workdir / integrity.LOCK_NAME).unlink()
      workdir.rmdir()
    raise


@dataclasses.dataclass(frozen=True)
class Bundle:
  """A trained model with everything needed to apply it to new data.

  Attributes:
    workdir: the run's folder.
    config: the run's ConfigDict.
    params: the best-validation parameters.
    apply_fn: the model's apply function.
    classes: class names, in logit order.
    time_points: the time points the model knows, in order.
    preprocessing: the preprocess.Preprocessing fitted on the training cells.
    record: data.json of the run (batch size, input features, split counts, ...).
    checkpoint: the best checkpoint's metadata (epoch, validation accuracy).
    calibration: calibration.json of the run (calibrate.fit's record), or None.
    novelty: the run's novelty.Novelty, or None.
  """

  workdir: pathlib.Path
  config: ml_collections.ConfigDict
  params: Any
  apply_fn: Callable
  classes: tuple
  time_points: tuple
  preprocessing: preprocess.Preprocessing
  record: dict
  checkpoint: dict
  calibration: Any = None
  novelty: Any = None

  def calibrated(self, logits):
    """[n, classes] float64 calibrated logits (calibrate.apply; unchanged for a run without calibration.json)."""
    return calibrate.apply(self.calibration, logits)

  @property
  def sequence_mode(self):
    return self.config.data.sequence_mode

  @property
  def batch_size(self):
    return self.record["batch_size"]

  def check_same_inputs(self, data):
    """Raises if `data` (a Dataset) has other classes, genes or input features than this run."""
    where = self.workdir / DATA
    if list(data.encoding.classes) != list(self.classes):
      raise ConfigError(f"{where}: classes {list(self.classes)} differ from this data's {list(data.encoding.classes)}")
    if list(data.genes) != self.record["genes"]:
      raise ConfigError(f"{where}: the input genes differ from this data's genes")
    if self.record["n_features"] != data.train.x.shape[-1]:
      raise ConfigError(f"{where}: that model reads {self.record['n_features']} input features, these sequences "
                        f"have {data.train.x.shape[-1]} (another data.sequence_mode?)")


def load(workdir):
  """The Bundle of a workdir that training wrote (its best checkpoint)."""
  workdir = pathlib.Path(workdir).expanduser()
  if not workdir.is_dir():
    raise ConfigError(f"{workdir}: no such workdir")
  config = load_config(workdir)
  record = read_data_record(workdir)
  preprocessing_path = workdir / PREPROCESSING
  if not preprocessing_path.exists():
    raise ConfigError(f"{preprocessing_path}: not found; a workdir of an earlier version of cardiac_jax? train again")
  preprocessing = preprocess.Preprocessing.from_json(json.dumps(integrity.read_json(preprocessing_path)))
  model = create_model(config, len(record["classes"]))
  shapes = jax.eval_shape(
      lambda: model.init(jax.random.key(0), np.zeros((1, config.data.max_len, record["n_features"]), np.float32),
                         np.ones(1, np.int32), train=False)["params"])
  params, checkpoint = restore_best_params(workdir, parallel.data_parallel().abstract(shapes))
  return Bundle(workdir, config, params, model.apply, tuple(record["classes"]), tuple(record["time_points"]),
                preprocessing, record, checkpoint, load_calibration(workdir), load_novelty(workdir))


def load_novelty(workdir):
  """A run's novelty.Novelty, or None for a run without one."""
  path = pathlib.Path(workdir) / NOVELTY
  if not path.exists():
    return None
  try:
    with np.load(path) as saved:
      return novelty.Novelty.from_arrays({name: saved[name] for name in saved.files})
  except (OSError, ValueError, KeyError, zipfile.BadZipFile) as error:
    raise ConfigError(f"{path}: damaged ({type(error).__name__}: {error}); train again in a new --workdir") from None
