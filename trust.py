"""The `cardiac-jax trust` command, run from the repository: python trust.py --help"""

from cardiac_jax import cli
from cardiac_jax.commands import trust

if __name__ == "__main__":
  cli.run(trust.main)
