"""How far to trust a label, measured on held-out donors (cardiac_jax/trust.py):

  python trust.py --experiment=donors --workdir=runs/trust
      a leave-donors-out loop (--folds runs, every donor held out once): accuracy and macro-F1 per donor, the
      worst donor, and calibration (ECE) beside CellTypist's conf_score and a per-cell logistic regression;
  python trust.py --experiment=unseen --workdir=runs/trust --config.train.num_epochs=12
      one run per cell type with that type never seen: how well each Unassigned score separates its cells from
      the known types' (AUROC), and the shares marked Unassigned, beside CellTypist's 'prob match' mode.

Writes <workdir>/donors.{json,md}, donors.png, reliability.png and unseen.{json,md}, unseen.png. CellTypist
columns need the celltypist extra (pip install -e ".[celltypist]"). Interrupted loops resume.
"""


from absl import flags

from cardiac_jax import checks, cli, trust, use_compilation_cache
from configs import default

FLAGS = flags.FLAGS
cli.define_config(__file__, "annotate.py", "The annotation model's configuration.")
flags.DEFINE_string("workdir", "runs/trust", "Folder for every run and the results.")
flags.DEFINE_enum("experiment", "donors", trust.EXPERIMENTS, "donors: leave-donors-out loop and calibration; "
                  "unseen: each cell type left out in turn.")
flags.DEFINE_integer("folds", trust.FOLDS, "donors: folds of the loop (runs); every donor is held out once.")
flags.DEFINE_list("types", [], "unseen: the types to leave out (default: every type of the data).")


def main():
  checks.check_fields(FLAGS.config, default.get_config())
  use_compilation_cache(FLAGS.config.data.cache_dir)
  if FLAGS.experiment == "donors":
    trust.donor_loop(FLAGS.config, FLAGS.workdir, FLAGS.folds)
  else:
    trust.unseen_types(FLAGS.config, FLAGS.workdir, FLAGS.types)


if __name__ == "__main__":
  cli.run(main)
