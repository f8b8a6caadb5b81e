"""The `cardiac-jax suite` command, run from the repository: python suite.py --help"""

from cardiac_jax import cli
from cardiac_jax.commands import suite

if __name__ == "__main__":
  cli.run(suite.main)
