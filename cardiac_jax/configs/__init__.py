"""The shipped configs, by name: default (every number the seed names), base, medium and large (its three
stages), annotate (the recommended annotation model), annotate_fast (each cell alone, a small network: CellTypist's
speed) and tiny (a seconds-long run for tests)."""

import importlib
import pathlib

from cardiac_jax.errors import ConfigError

FOLDER = pathlib.Path(__file__).parent
NAMES = ("default", "base", "medium", "large", "annotate", "annotate_fast", "tiny")


def path(name):
  """The file of the shipped config `name` ('annotate', 'annotate.py' or 'configs/annotate.py'), or None for
  anything else (a path in another folder is the user's own file)."""
  given = pathlib.PurePath(str(name))
  if given.suffix not in ("", ".py") or given.parent not in (pathlib.PurePath("."), pathlib.PurePath("configs")):
    return None
  if given.suffix == "" and given.parent != pathlib.PurePath("."):
    return None
  return FOLDER / f"{given.stem}.py" if given.stem in NAMES else None


def get(name):
  """A fresh ConfigDict of the shipped config `name`."""
  if path(name) is None:
    raise ConfigError(f"config: no shipped config named {name!r}; known: {list(NAMES)}")
  return importlib.import_module(f"cardiac_jax.configs.{path(name).stem}").get_config()
