"""Restores a run's best model in a new process and writes <workdir>/report/: python eval.py --workdir=runs/large"""

import sys

from absl import app, flags

from cardiac_jax import ConfigError, DataError, quiet_dependency_logs, evaluate

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "The workdir that train.py wrote.", required=True)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  quiet_dependency_logs()
  try:
    evaluate(FLAGS.workdir)
  except (ConfigError, DataError) as e:
    sys.exit(f"error: {e}")


if __name__ == "__main__":
  app.run(main)
