"""model.dtype: bfloat16 computation beside float32 parameters (Flax's convention); float32 stays the default."""

import jax
import numpy as np
import pytest

from cardiac_jax import training
from cardiac_jax.configs import tiny


def _states():
  config = tiny.get_config()
  config.model.hidden_dim, config.model.num_heads, config.model.head_dims = 8, 2, (8,)
  config.model.num_layers = 1
  full = training.create_train_state(jax.random.key(0), config, 3, 6, 4)
  config.model.dtype = "bfloat16"
  return full, training.create_train_state(jax.random.key(0), config, 3, 6, 4)


def _batch():
  rng = np.random.default_rng(0)
  return {"x": rng.normal(size=(8, 4, 6)).astype(np.float32), "lengths": rng.integers(1, 5, 8).astype(np.int32),
          "labels": (np.arange(8) % 3).astype(np.int32), "mask": np.ones(8, np.float32)}


def test_bfloat16_computes_in_bfloat16_on_float32_parameters():
  full, half = _states()
  assert {leaf.dtype for leaf in jax.tree.leaves(half.params)} == {np.dtype("float32")}
  jax.tree.map(np.testing.assert_array_equal, full.params, half.params)  # same initialisation
  batch = _batch()
  logits_full = np.asarray(jax.jit(full.apply_fn, static_argnames="train")({"params": full.params}, batch["x"],
                                                                          batch["lengths"], train=False))
  logits_half = np.asarray(jax.jit(half.apply_fn, static_argnames="train")({"params": full.params}, batch["x"],
                                                                          batch["lengths"], train=False))
  assert logits_half.dtype == np.float32
  difference = np.abs(logits_full - logits_half).max()
  assert 0 < difference < 0.1 * np.abs(logits_full).max()  # bfloat16 rounding: about 3 significant digits
  step = jax.jit(lambda state, batch: training.train_step(state, batch, jax.random.key(1), label_smoothing=0.1))
  new_state, sums = step(half, batch)
  assert {leaf.dtype for leaf in jax.tree.leaves(new_state.params)} == {np.dtype("float32")}
  assert np.isfinite(float(sums["loss"]))


def test_an_unknown_dtype_is_refused():
  config = tiny.get_config()
  config.model.dtype = "float16"
  with pytest.raises(ValueError, match="dtype must be one of"):
    training.create_train_state(jax.random.key(0), config, 3, 6, 4)
