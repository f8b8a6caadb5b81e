"""Seed stage 1: 1,000 temporal sequences per type, 500 spatial, 30 epochs, lr 0.002."""

from cardiac_jax.configs import default


def get_config():
  return default.with_scale(default.get_config(), "base")
