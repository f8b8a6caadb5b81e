"""The `cardiac-jax annotate` command, run from the repository: python annotate.py --help"""

from cardiac_jax import cli
from cardiac_jax.commands import annotate

if __name__ == "__main__":
  cli.run(annotate.main)
