"""cardiac-jax train --config=large [--workdir=runs/large]: trains a model; a workdir holding a run resumes it."""

import pathlib

from absl import flags
from ml_collections import config_flags

from cardiac_jax import checks, cli, training
from cardiac_jax.configs import default

FLAGS = flags.FLAGS
cli.define_config("default", "Training configuration: a shipped config's name or a file.")
flags.DEFINE_string("workdir", None, "Folder for checkpoints, metrics and results (resumes a run found there); "
                    "default runs/<config name>.")


def main():
  checks.check_fields(FLAGS.config, default.get_config())
  cli.use_compilation_cache(FLAGS.config.data.cache_dir)
  workdir = FLAGS.workdir or pathlib.Path("runs") / pathlib.Path(config_flags.get_config_filename(FLAGS["config"])).stem
  training.train_and_evaluate(FLAGS.config, workdir)
