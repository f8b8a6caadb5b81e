"""The one thin `main` of the entry points (train.py, eval.py, annotate.py, suite.py)."""

import sys

from absl import app

from cardiac_jax.errors import ConfigError, DataError
from cardiac_jax.train import quiet_dependency_logs


def run(body):
  """Runs `body()` as an absl program: no stray arguments, quiet dependency logs, and bad input or a bad config
  as one `error: <path>: <problem>` line with exit code 1 instead of a traceback."""

  def main(argv):
    if len(argv) > 1:
      raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    quiet_dependency_logs()
    try:
      body()
    except (ConfigError, DataError) as e:
      sys.exit(f"error: {e}")

  app.run(main)
