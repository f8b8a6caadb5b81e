"""The `cardiac-jax train` command, run from the repository: python train.py --help"""

from cardiac_jax import cli
from cardiac_jax.commands import train

if __name__ == "__main__":
  cli.run(train.main)
