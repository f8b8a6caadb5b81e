"""Runs the honest-numbers suite (model, ablations, scales, split units, baselines; several seeds):
python suite.py --config=configs/base.py --workdir=runs/suite --seeds=0,1,2"""

import sys

from absl import app, flags
from ml_collections import config_flags

from cardiac_jax import ConfigError, DataError, quiet_dependency_logs, use_compilation_cache
from cardiac_jax import suite
from configs import default

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", "configs/base.py", "Base configuration of every run.", lock_config=True)
flags.DEFINE_string("workdir", "runs/suite", "Folder for every run and the results (an interrupted suite resumes).")
flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds; each changes the split, the sequences and the initialisation.")
flags.DEFINE_list("rows", list(suite.ROWS), "Model rows to run (baselines run for every data setting used).")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  quiet_dependency_logs()
  use_compilation_cache(FLAGS.config.data.cache_dir)
  try:
    suite.run(
        FLAGS.config, FLAGS.workdir, [int(s) for s in FLAGS.seeds], FLAGS.rows,
        # The given config is the base scale as it stands; medium and large set the seed's numbers on it.
        scales={"base": {}, "medium": default.SCALES["medium"], "large": default.SCALES["large"]},
    )
  except (ConfigError, DataError) as e:
    sys.exit(f"error: {e}")


if __name__ == "__main__":
  app.run(main)
