"""Shared fixtures: one small simulated GSE175634 (and Visium) per test session, and the tiny config."""

import pytest

from cardiac_jax import dataset
from configs import tiny


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory):
  return tmp_path_factory.mktemp("cache")


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
