"""A few-second run for tests: a small simulated data set and a small model."""

from cardiac_jax.configs import default


def get_config():
  config = default.get_config()
  config.data.n_genes = 24
  config.data.n_per_type = 40
  config.data.n_spatial = 20
  config.sim.n_cells = 1500
  config.sim.n_genes = 300
  config.sim.n_donors = 6
  config.sim.n_spots = 300
  config.sim.n_spot_genes = 150
  config.model.hidden_dim = 16
  config.model.num_layers = 2
  config.model.num_heads = 2
  config.model.head_dims = (16, 8)
  config.train.num_epochs = 3
  config.train.batch_size = 16
  return config
