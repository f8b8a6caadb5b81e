"""Runs the honest-numbers suite (model, ablations, scales, split units, baselines; several seeds):
python suite.py --config=configs/base.py --workdir=runs/suite --seeds=0,1,2
and the per-cell annotation comparison with CellTypist:
python suite.py --workdir=runs/annotation --rows=anchored,anchored-unweighted,cell-alone"""

from absl import flags

from cardiac_jax import checks, cli, suite, use_compilation_cache
from configs import annotate, default

FLAGS = flags.FLAGS
cli.define_config(__file__, "base.py", "Base configuration of every run.")
flags.DEFINE_string("workdir", "runs/suite", "Folder for every run and the results (an interrupted suite resumes).")
flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds; each changes the split, the sequences and the initialisation.")
flags.DEFINE_list("rows", list(suite.SEED_ROWS), "Model rows to run (baselines run for every data setting used): "
                  f"the seed's task {list(suite.SEED_ROWS)} by default, per-cell annotation "
                  f"{list(suite.ANNOTATION_ROWS)} (CellTypist rows need the celltypist extra).")


def main():
  checks.check_fields(FLAGS.config, default.get_config())
  use_compilation_cache(FLAGS.config.data.cache_dir)
  suite.run(
      FLAGS.config, FLAGS.workdir, [int(s) for s in FLAGS.seeds], FLAGS.rows,
      # The given config is the base scale as it stands; medium and large set the seed's numbers on it.
      scales={"base": {}, "medium": default.SCALES["medium"], "large": default.SCALES["large"],
              "annotate": annotate.ANNOTATE},
  )


if __name__ == "__main__":
  cli.run(main)
