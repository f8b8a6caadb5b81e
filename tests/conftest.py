"""Shared fixtures: one small simulated GSE175634 (and Visium) per test session, and the tiny config."""

import pytest

from cardiac_jax import simulate
from configs import tiny


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory):
  return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="session")
def simulated(cache_dir):
  """(geo_dir, visium_dir) of the tiny config's simulated data, written once."""
  sim = tiny.get_config().sim
  return simulate.ensure_simulated(
      cache_dir,
      n_cells=sim.n_cells,
      n_genes=sim.n_genes,
      n_donors=sim.n_donors,
      n_spots=sim.n_spots,
      n_spot_genes=sim.n_spot_genes,
      seed=sim.seed,
      signal=sim.signal,
  )


@pytest.fixture()
def config(cache_dir, simulated):
  """The tiny config, reading the session's simulated data."""
  config = tiny.get_config()
  config.data.cache_dir = str(cache_dir)
  return config
