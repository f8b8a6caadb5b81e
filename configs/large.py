"""Seed stage 3: 3,000 temporal sequences per type, 1,500 spatial, 50 epochs, lr 0.0008."""

from configs import default


def get_config():
  config = default.get_config()
  config.data.n_per_type = 3000
  config.data.n_spatial = 1500
  config.train.num_epochs = 50
  config.train.learning_rate = 0.0008
  return config
