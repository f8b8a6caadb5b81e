"""cardiac-jax suite --config=base --workdir=runs/suite --seeds=0,1,2: the model, its ablations, the scales and
split units over seeds beside baselines; --rows=anchored,anchored-unweighted,cell-alone compares per-cell
annotation with CellTypist (docs/seed_reproduction.md, docs/annotation.md). An interrupted suite resumes."""

from absl import flags

from cardiac_jax import checks, cli
from cardiac_jax.configs import annotate, default
from cardiac_jax.experiments import suite

FLAGS = flags.FLAGS
cli.define_config("base", "Base configuration of every run.")
flags.DEFINE_string("workdir", "runs/suite", "Folder for every run and the results (an interrupted suite resumes).")
flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds; each changes the split, the sequences and the initialisation.")
flags.DEFINE_list("rows", list(suite.SEED_ROWS), "Model rows to run (baselines run for every data setting used): "
                  f"the seed's task by default, per-cell annotation {list(suite.ANNOTATION_ROWS)}.")


def main():
  checks.check_fields(FLAGS.config, default.get_config())
  cli.use_compilation_cache(FLAGS.config.data.cache_dir)
  suite.run(
      FLAGS.config, FLAGS.workdir, [int(s) for s in FLAGS.seeds], FLAGS.rows,
      # The given config is the base scale as it stands; medium and large set the seed's numbers on it.
      scales={"base": {}, "medium": default.SCALES["medium"], "large": default.SCALES["large"],
              "annotate": annotate.ANNOTATE, "annotate-small": dict(annotate.ANNOTATE, **suite.SMALL_REFERENCE)},
  )
