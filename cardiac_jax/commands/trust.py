"""cardiac-jax trust --experiment=donors|unseen --workdir=runs/trust: how far to trust a label (docs/trust.md).

donors: a leave-donors-out loop (--folds runs, every donor held out once): accuracy and macro-F1 per donor and
calibration, beside CellTypist and a per-cell logistic regression. unseen: one run per cell type with that type
never seen: how well each Unassigned score separates its cells. Interrupted loops resume.
"""

from absl import flags

from cardiac_jax import checks, cli
from cardiac_jax.configs import default
from cardiac_jax.experiments import trust

FLAGS = flags.FLAGS
cli.define_config("annotate", "The annotation model's configuration.")
flags.DEFINE_string("workdir", "runs/trust", "Folder for every run and the results.")
flags.DEFINE_enum("experiment", "donors", trust.EXPERIMENTS, "donors: leave-donors-out loop and calibration; "
                  "unseen: each cell type left out in turn.")
flags.DEFINE_integer("folds", trust.FOLDS, "donors: folds of the loop (runs); every donor is held out once.")
flags.DEFINE_list("types", [], "unseen: the types to leave out (default: every type of the data).")
flags.DEFINE_enum("donors", "test", trust.UNSEEN_DONORS, "unseen: annotate each run's held-out test donors, or its "
                  "validation donors (to choose a setting without the test donors).")


def main():
  checks.check_fields(FLAGS.config, default.get_config())
  cli.use_compilation_cache(FLAGS.config.data.cache_dir)
  if FLAGS.experiment == "donors":
    trust.donor_loop(FLAGS.config, FLAGS.workdir, FLAGS.folds)
  else:
    trust.unseen_types(FLAGS.config, FLAGS.workdir, FLAGS.types, FLAGS.donors)
