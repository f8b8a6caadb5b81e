"""cardiac-jax interpret --workdir=runs/large: gene attributions and attention by day, into <workdir>/interpret/;
with several workdirs and --output, also scored against the simulator's true genes."""

from absl import flags

from cardiac_jax import interpret
from cardiac_jax.experiments import interpret_scores

FLAGS = flags.FLAGS
flags.DEFINE_list("workdir", None, "Workdir(s) of finished runs.", required=True)
flags.DEFINE_string("output", None, "Folder for the scores against the simulator's true genes (built-in simulated "
                    "data only); none: only <workdir>/interpret/ is written.")
flags.DEFINE_integer("steps", interpret.IG_STEPS, "Points of the integrated-gradients path.")


def main():
  for workdir in FLAGS.workdir:
    interpret.explain(workdir, steps=FLAGS.steps)
  if FLAGS.output:
    print(interpret_scores.score(FLAGS.workdir, FLAGS.output, steps=FLAGS.steps))
