"""The one thin `main` of the entry points (train.py, eval.py, annotate.py, suite.py)."""

import pathlib
import re
import signal
import sys

from absl import app, flags
from ml_collections import config_flags

from cardiac_jax.errors import ConfigError, DataError
from cardiac_jax.train import quiet_dependency_logs


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


def define_config(script, config_name, help_text):
  """The --config flag of an entry point, defaulting to configs/<config_name> beside `script`, so it is found
  from any folder. ml_collections applies --config.<field> overrides to a default config as the flag is
  defined: a misspelt field there is one `error:` line too, not a traceback."""
  default = pathlib.Path(script).resolve().parent / "configs" / config_name
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

  app.run(main, flags_parser=parse_flags)
