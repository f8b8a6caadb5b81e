"""Why a label: gene attributions and attention by day of a trained run, scored against the simulator's truth.

python interpret.py --workdir=runs/large                  # writes runs/large/interpret/
python interpret.py --workdir=runs/s/runs/model_seed0,runs/s/runs/model_seed1,runs/s/runs/model_seed2 \
  --output=runs/s/interpret                              # and scores the runs against the true genes
"""

from absl import flags

from cardiac_jax import cli, interpret

FLAGS = flags.FLAGS
flags.DEFINE_list("workdir", None, "Workdir(s) that train.py wrote.", required=True)
flags.DEFINE_string("output", None, "Folder for the scores against the simulator's true genes (built-in simulated "
                    "data only); none: only <workdir>/interpret/ is written.")
flags.DEFINE_integer("steps", interpret.IG_STEPS, "Points of the integrated-gradients path (Gauss-Legendre, crowded near the baseline).")


def main():
  for workdir in FLAGS.workdir:
    interpret.explain(workdir, steps=FLAGS.steps)
  if FLAGS.output:
    print(interpret.score(FLAGS.workdir, FLAGS.output, steps=FLAGS.steps))


if __name__ == "__main__":
  cli.run(main)
