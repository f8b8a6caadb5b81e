"""The `cardiac-jax eval` command, run from the repository: python eval.py --help"""

from cardiac_jax import cli
from cardiac_jax.commands import eval

if __name__ == "__main__":
  cli.run(eval.main)
