"""Shared fixtures: one small simulated GSE175634 (and Visium) per test session, the tiny config, and one
finished tiny run that tests read but never change (copy it to damage or extend it)."""

import pytest

from cardiac_jax import cli, dataset, training
from cardiac_jax.configs import tiny


@pytest.fixture(scope="session", autouse=True)
def cache_dir(tmp_path_factory):
  """The session's cache folder: prepared data, and compiled XLA programs (as the entry points keep them), so
  every run of one shape after the first, in this process or a subprocess given this folder, skips most of
  its compile. Set before any test compiles: JAX reads the setting once."""
  path = tmp_path_factory.mktemp("cache")
  cli.use_compilation_cache(path)
  return path


@pytest.fixture(scope="session")
def simulated(cache_dir):
  """(geo_dir, visium_dir) of the tiny config's simulated data, written once."""
  config = tiny.get_config()
  config.data.cache_dir = str(cache_dir)
  return dataset.simulated(config)


@pytest.fixture()
def config(cache_dir, simulated):
  """The tiny config, reading the session's simulated data; every prepare() runs the journey (no reuse)."""
  config = tiny.get_config()
  config.data.cache_dir = str(cache_dir)
  config.data.reuse_prepared = False
  return config


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, cache_dir, simulated):
  """(workdir, config, results) of a finished run of the tiny config (3 epochs, type sequences), trained once
  per session. Read-only for tests: copy the workdir (shutil.copytree) to write into it."""
  config = tiny.get_config()
  config.data.cache_dir = str(cache_dir)
  workdir = tmp_path_factory.mktemp("tiny_run") / "run"
  return workdir, config, training.train_and_evaluate(config, workdir)
