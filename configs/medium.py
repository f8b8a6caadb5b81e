"""Seed stage 2: 2,000 temporal sequences per type, 1,000 spatial, 40 epochs, lr 0.001."""

from configs import default


def get_config():
  config = default.get_config()
  config.data.n_per_type = 2000
  config.data.n_spatial = 1000
  config.train.num_epochs = 40
  config.train.learning_rate = 0.001
  return config
