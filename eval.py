"""Restores a run's best model in a new process and writes <workdir>/report/: python eval.py --workdir=runs/large"""

from absl import flags

from cardiac_jax import cli, evaluate

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "The workdir that train.py wrote.", required=True)

if __name__ == "__main__":
  cli.run(lambda: evaluate(FLAGS.workdir))
