"""Seed stage 3: 3,000 temporal sequences per type, 1,500 spatial, 50 epochs, lr 0.0008."""

from cardiac_jax.configs import default


def get_config():
  return default.with_scale(default.get_config(), "large")
