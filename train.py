"""Trains the seed's attention-enhanced BiLSTM: python train.py --config=configs/large.py [--workdir=runs/large]"""

import pathlib

from absl import flags
from ml_collections import config_flags

from cardiac_jax import checks, cli, train_and_evaluate, use_compilation_cache
from configs import default

FLAGS = flags.FLAGS
# The default config file is found beside this script, from whatever folder train.py is run.
cli.define_config(__file__, "default.py", "Training configuration file.")
flags.DEFINE_string(
    "workdir", None, "Folder for checkpoints, metrics and results (resumes a run found there); default runs/<config name>."
)


def main():
  checks.check_fields(FLAGS.config, default.get_config())
  use_compilation_cache(FLAGS.config.data.cache_dir)
  workdir = FLAGS.workdir or pathlib.Path("runs") / pathlib.Path(config_flags.get_config_filename(FLAGS["config"])).stem
  train_and_evaluate(FLAGS.config, workdir)


if __name__ == "__main__":
  cli.run(main)
