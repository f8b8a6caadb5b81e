"""Seed stage 1: 1,000 temporal sequences per type, 500 spatial, 30 epochs, lr 0.002."""

from configs import default


def get_config():
  config = default.get_config()
  config.data.n_per_type = 1000
  config.data.n_spatial = 500
  config.train.num_epochs = 30
  config.train.learning_rate = 0.002
  return config
