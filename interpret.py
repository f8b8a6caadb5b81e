"""The `cardiac-jax interpret` command, run from the repository: python interpret.py --help"""

from cardiac_jax import cli
from cardiac_jax.commands import interpret

if __name__ == "__main__":
  cli.run(interpret.main)
