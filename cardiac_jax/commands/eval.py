"""cardiac-jax eval --workdir=runs/large: restores a run's best model and writes <workdir>/report/."""

from absl import flags

from cardiac_jax import report

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "The workdir of a finished run.", required=True)


def main():
  report.evaluate(FLAGS.workdir)
