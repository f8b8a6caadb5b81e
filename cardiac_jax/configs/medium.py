"""Seed stage 2: 2,000 temporal sequences per type, 1,000 spatial, 40 epochs, lr 0.001."""

from cardiac_jax.configs import default


def get_config():
  return default.with_scale(default.get_config(), "medium")
