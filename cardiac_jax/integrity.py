"""What keeps a run's record true: digests of what was written (checkpoints, the test split) checked when it is
read back, a lock so that one workdir has one writer, and finite numbers only.

Orbax commits a checkpoint atomically but cannot tell that its bytes changed later; `record_checkpoint` keeps
the sha256 of every file of a saved step beside the checkpoints and `verify_checkpoint` compares them on restore.
"""

import contextlib
import fcntl
import glob
import hashlib
import json
import math
import os
import pathlib
import shutil
import signal
import tempfile
import threading

import numpy as np
from absl import logging

from cardiac_jax.errors import ConfigError, DataError

LOCK_NAME = ".lock"
CHUNK = 1 << 20


def file_digest(path):
  """sha256 hex digest of a file's bytes."""
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(CHUNK), b""):
      digest.update(block)
  return digest.hexdigest()


def folder_digests(folder):
  """{path relative to folder: sha256} of every file under folder."""
  folder = pathlib.Path(folder)
  return {str(p.relative_to(folder)): file_digest(p) for p in sorted(folder.rglob("*")) if p.is_file()}


@contextlib.contextmanager
def interrupts_held():
  """Ctrl-C is ignored inside (main thread only; the handler before is restored after): the clean-up after a
  first Ctrl-C (waiting for a checkpoint to commit) is not cut short by a second press."""
  if threading.current_thread() is not threading.main_thread():
    yield
    return
  previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
  try:
    yield
  finally:
    signal.signal(signal.SIGINT, previous)


@contextlib.contextmanager
def interrupts_deferred():
  """Ctrl-C inside is held until the block has ended, then raised as KeyboardInterrupt (main thread only): a
  checkpoint being committed is finished, not torn apart mid-write with the library's traceback in the log."""
  if threading.current_thread() is not threading.main_thread():
    yield
    return
  pressed = []
  previous = signal.signal(signal.SIGINT, lambda *_: pressed.append(True))
  try:
    yield
  finally:
    signal.signal(signal.SIGINT, previous)
  if pressed:
    raise KeyboardInterrupt


@contextlib.contextmanager
def errors_name(path, temporary):
  """OSErrors raised inside that name no file (a write to a full disk: the file was opened, writing failed) or
  name `temporary` (the temporary file or folder being written in place of `path`) are raised again naming
  `path`, or the file under it: the user is told of the file they asked for, not a temporary one."""
  try:
    yield
  except OSError as e:
    if e.filename is None:
      raise OSError(e.errno, e.strerror or str(e), str(path)) from e
    try:
      inside = pathlib.Path(e.filename).relative_to(temporary)
    except ValueError:
      raise e from None
    raise OSError(e.errno, e.strerror, str(pathlib.Path(path) / inside)) from e


@contextlib.contextmanager
def staged_folder(out):
  """Yields a new temporary folder beside `out` to write an output folder into; when the block ends normally it
  replaces `out` (an older `out` is moved aside first and deleted last), so `out` is the old folder or the
  complete new one, never half of either. On any error or Ctrl-C the temporary folder is deleted and the error,
  naming the file under `out` the user asked for (errors_name), goes on."""
  out = pathlib.Path(out)
  staging = pathlib.Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
  old = staging.with_name(staging.name + ".old")
  try:
    with errors_name(out, staging):
      yield staging
      if out.exists():
        out.rename(old)
      staging.rename(out)
  except BaseException:
    shutil.rmtree(staging, ignore_errors=True)
    if old.exists() and not out.exists():
      old.rename(out)  # the new folder could not take its place: the old one goes back
    raise
  shutil.rmtree(old, ignore_errors=True)


def process_alive(pid):
  """Whether a process with this id exists (one of another user counts)."""
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True
  return True


def _temporary_prefix(path):
  return f".{path.name}.tmp-"


def remove_stale_temporaries(path):
  """Removes the temporary files beside `path` that a write killed outright left (kill -9 leaves no chance to clean
  up): `.{name}.tmp-{pid}...` whose process is gone. A live writer's file is left alone."""
  path = pathlib.Path(path)
  prefix = _temporary_prefix(path)
  for tmp in path.parent.glob(glob.escape(prefix) + "*"):
    pid = tmp.name[len(prefix):].split(".")[0]
    if pid.isdigit() and int(pid) != os.getpid() and not process_alive(int(pid)):
      tmp.unlink(missing_ok=True)
      logging.warning("%s: removed %s, the temporary file of a write that was killed", path, tmp.name)


def write_atomic(path, content):
  """Writes content (str, bytes, or a function that writes to a path it is given) to path through a temporary
  file beside it (`.{name}.tmp-{pid}{suffix}`) and a rename, so the file is complete or absent; the temporary file
  never outlives a failure, and one that a killed writer left is removed by the next write."""
  path = pathlib.Path(path)
  if path.parent.is_dir():
    remove_stale_temporaries(path)
  tmp = path.with_name(f"{_temporary_prefix(path)}{os.getpid()}{path.suffix}")
  try:
    with errors_name(path, tmp):
      if callable(content):
        content(tmp)
      elif isinstance(content, bytes):
        tmp.write_bytes(content)
      else:
        tmp.write_text(content)
      os.replace(tmp, path)
  finally:
    tmp.unlink(missing_ok=True)


def read_json(path):
  """The JSON value of a run file; a missing, truncated or damaged one is a ConfigError naming it."""
  path = pathlib.Path(path)
  if not path.exists():
    raise ConfigError(f"{path}: not found; is {path.parent} the workdir of a cardiac_jax run?")
  try:
    return json.loads(path.read_text())
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise ConfigError(f"{path}: truncated or damaged ({e}); train again in a new --workdir") from None


def _record_path(step_dir):
  """checkpoints/<name>.sha256.json beside the manager folder checkpoints/<name>/<step>/."""
  manager_dir = pathlib.Path(step_dir).parent
  return manager_dir.with_name(f"{manager_dir.name}.sha256.json")


def record_checkpoint(step_dir, write):
  """Writes the digests of a committed checkpoint step (`write(path, text)`: an atomic writer)."""
  step_dir = pathlib.Path(step_dir)
  write(_record_path(step_dir), json.dumps({"step": step_dir.name, "files": folder_digests(step_dir)}, indent=1))


def verify_checkpoint(step_dir, write):
  """Raises ConfigError naming the checkpoint folder if a file of it changed, went missing or was added.

  A step without a record is the one a run was stopped in the middle of saving (Orbax had committed it, the
  digests were not yet written): it is recorded now, with a warning.
  """
  step_dir = pathlib.Path(step_dir)
  path = _record_path(step_dir)
  record = json.loads(path.read_text()) if path.exists() else None
  if record is None or record.get("step") != step_dir.name:
    logging.warning("%s: no checksums recorded for this checkpoint (a run stopped while saving it?); recording them",
                    step_dir)
    record_checkpoint(step_dir, write)
    return
  found = folder_digests(step_dir)
  expected = record["files"]
  missing = sorted(set(expected) - set(found))
  changed = sorted(name for name in set(expected) & set(found) if expected[name] != found[name])
  added = sorted(set(found) - set(expected))
  if missing or changed or added:
    what = "; ".join(f"{kind} {names[:3]}" for kind, names in
                     (("missing", missing), ("changed", changed), ("unexpected", added)) if names)
    raise ConfigError(f"{step_dir}: checkpoint damaged since it was saved ({what}); train again in a new --workdir")


def check_test_digest(path, record):
  """Raises DataError if the test split file differs from the one the run saved (its digest in data.json)."""
  expected = record.get("test_sequences_sha256")
  if expected is None:
    logging.warning("%s: data.json records no digest of the test split (an older run); not checked", path)
    return
  if file_digest(path) != expected:
    raise DataError(path, "changed since training (its sha256 differs from data.json's); the run's test split "
                          "is gone, so scoring it would not score the data the model was trained against")


def check_finite_logits(logits, where):
  """Raises ConfigError if any logit is NaN or infinite: no prediction or metric is made from them."""
  bad = ~np.isfinite(logits)
  if bad.any():
    rows = int(bad.any(axis=-1).sum())
    raise ConfigError(f"{where}: the model gives non-finite logits for {rows} of {len(logits)} inputs (damaged "
                      "parameters or inputs?); no result is reported from them")


def check_finite_record(record, path):
  """Raises ConfigError naming `path` if a number of a JSON-ready record is NaN or infinite."""
  def walk(value, key):
    if isinstance(value, dict):
      for k, v in value.items():
        walk(v, f"{key}.{k}" if key else k)
    elif isinstance(value, (list, tuple)):
      for i, v in enumerate(value):
        walk(v, f"{key}[{i}]")
    elif isinstance(value, float) and not math.isfinite(value):
      raise ConfigError(f"{path}: not written: {key} is {value}")
  walk(record, "")


@contextlib.contextmanager
def workdir_lock(workdir):
  """Holds an exclusive lock on workdir/.lock while a run writes there; a second run is refused at once.

  The kernel drops the lock when its process ends, however it ends (kill -9 included), so no stale lock remains.
  """
  path = pathlib.Path(workdir) / LOCK_NAME
  fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
  try:
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      raise ConfigError(f"{workdir}: another run is writing to this workdir; wait for it or use another --workdir") \
          from None
    yield
  finally:
    os.close(fd)
