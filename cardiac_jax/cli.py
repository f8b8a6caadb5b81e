"""The command line: the console script `cardiac-jax <command>` (commands/), the one thin `main` every command
runs under, and the process set-up they share (quiet logs, the compilation cache)."""

import importlib
import logging as std_logging
import os
import pathlib
import re
import signal
import sys

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from cardiac_jax import configs
from cardiac_jax.errors import ConfigError, DataError

COMMANDS = {
    "train": "train a model (a config: --config=annotate, large, ... or a file)",
    "eval": "score a run's best model on its test split and write <workdir>/report/",
    "annotate": "label every cell of a new time course (.h5ad or GEO folder)",
    "interpret": "gene attributions and attention by day of a run",
    "trust": "calibration on held-out donors and cells of unseen types (experiments)",
    "suite": "the model, ablations and baselines over seeds (experiments)",
}


def quiet_dependency_logs():
  """Keeps the INFO lines of Orbax and JAX internals out of the run's log; their warnings still show."""
  own = os.sep + "cardiac_jax" + os.sep

  def keep(record):
    return record.levelno >= std_logging.WARNING or own in record.pathname

  logging.get_absl_handler().addFilter(keep)


def use_compilation_cache(cache_dir):
  """Keeps compiled XLA programs in `cache_dir`/xla, so a later run of the same shapes skips most of the compile.

  Set once by the commands that train (it is JAX's process-wide setting); compiles under a second are not kept.
  """
  jax.config.update("jax_compilation_cache_dir", str(pathlib.Path(cache_dir).expanduser() / "xla"))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)


def one_line(error):
  """The `error: <path>: <problem>` line a user sees for an exception a user's mistake or a fault can raise."""
  if isinstance(error, OSError) and error.filename is not None:
    return f"error: {error.filename}: {error.strerror or error}"
  if isinstance(error, KeyboardInterrupt):
    return "error: interrupted"
  text = " ".join(str(error).replace("\\n", "\n").replace("\\", "").split())
  field = re.search(r"'(\w+)'(?:.*Did you mean \"(\w+)\")?", text) if isinstance(error, (KeyError, AttributeError)) else None
  if field:
    hint = f"; did you mean {field[2]!r}?" if field[2] else ""
    return f"error: config field {field[1]!r} does not exist{hint}"
  missing = re.search(r"Failed loading config file.*?No such file or directory: '([^']+)'", text)
  if missing:
    return f"error: {missing[1]}: config file not found"
  return f"error: {text}"


# What a user's input, a damaged run file or the file system can raise; anything else is a bug and keeps its traceback.
USER_ERRORS = (ConfigError, DataError, OSError, KeyboardInterrupt)


def guarded(body):
  """Calls `body()`; a user's mistake, a fault of the file system or Ctrl-C exits with one `error:` line, code 1."""
  try:
    return body()
  except USER_ERRORS as e:
    sys.exit(one_line(e))


def define_config(config_name, help_text):
  """The --config flag of a command, defaulting to the shipped config `config_name` (found from any folder).
  ml_collections applies --config.<field> overrides to a default config as the flag is defined: a misspelt field
  there is one `error:` line too, not a traceback."""
  default = configs.path(config_name)
  try:
    config_flags.DEFINE_config_file("config", str(default), help_text, lock_config=True)
  except (AttributeError, KeyError, ValueError, TypeError) as e:
    sys.exit(one_line(e))


def parse_flags(argv):
  """absl's flag parsing, with a bad flag or config file (a misspelt field, a missing file) as one `error:` line.

  Config files are read lazily by ml_collections; reading every flag's value here makes a missing or broken
  config file fail now, before anything runs.
  """
  try:
    rest = flags.FLAGS(argv)
    for name in flags.FLAGS:
      flags.FLAGS[name].value  # noqa: B018 (loads config files)
  except (flags.Error, AttributeError, KeyError, OSError, ValueError, TypeError) as e:
    sys.exit(one_line(e))
  return rest


def shipped_configs(argv):
  """argv with a --config value that names no file but a shipped config ('annotate', 'configs/large.py' from
  another folder) replaced by that config's file."""
  out = list(argv)
  for i, arg in enumerate(out):
    value, prefix = (arg[len("--config="):], "--config=") if arg.startswith("--config=") else (None, "")
    if arg == "--config" and i + 1 < len(out):
      value, i, prefix = out[i + 1], i + 1, ""
    if value and not pathlib.Path(value).exists() and configs.path(value) is not None:
      out[i] = prefix + str(configs.path(value))
  return out


def run(body):
  """Runs `body()` as an absl program: no stray arguments, quiet dependency logs, and bad input, a bad config, a
  file-system fault or Ctrl-C as one `error: <path>: <problem>` line with exit code 1 instead of a traceback."""

  def main(argv):
    if len(argv) > 1:
      sys.exit(f"error: unexpected arguments: {argv[1:]}")
    quiet_dependency_logs()
    try:
      guarded(body)
    except SystemExit:
      # The error line is out and the program is ending: a second Ctrl-C while JAX and Orbax shut down must not
      # turn exit code 1 into death by signal.
      signal.signal(signal.SIGINT, signal.SIG_IGN)
      raise

  sys.argv = shipped_configs(sys.argv)
  app.run(main, flags_parser=parse_flags)


def main():
  """The console script: `cardiac-jax <command> [flags]`; `cardiac-jax <command> --help` lists a command's flags."""
  name = sys.argv[1] if len(sys.argv) > 1 else ""
  if name not in COMMANDS:
    listing = "\n".join(f"  {n:<10} {what}" for n, what in COMMANDS.items())
    sys.exit(f"usage: cardiac-jax <command> [flags]\n\ncommands:\n{listing}" if name in ("", "-h", "--help")
             else f"error: unknown command {name!r}; known: {list(COMMANDS)}")
  command = importlib.import_module(f"cardiac_jax.commands.{name}")
  sys.argv = [f"cardiac-jax {name}"] + sys.argv[2:]
  run(command.main)
