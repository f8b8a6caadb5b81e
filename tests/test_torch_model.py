"""The model against an independent PyTorch rendering of the seed (benchmarks/torch_model.py): with PyTorch's
LayerNorm epsilon (the default, model.layer_norm_eps=1e-5) both give the same logits from the same parameters.
Needs the `bench` extra (torch); skipped without it."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cardiac_jax import model as model_lib
from cardiac_jax.sequences import valid_steps

torch = pytest.importorskip("torch")
from benchmarks import torch_model  # noqa: E402

SIZES = dict(hidden_dim=16, num_layers=2, num_heads=4, head_dims=(16, 8), num_classes=5)
GENES, STEPS = 12, 7


def _logits(layer_norm_eps):
  """(Flax logits, PyTorch logits) [batch, classes] of one random padded batch, same parameters."""
  flax_model = model_lib.EnhancedCardiacRNN(layer_norm_eps=layer_norm_eps, **SIZES)
  lengths = jnp.array([7, 1, 4, 6, 2], jnp.int32)
  x = jax.random.normal(jax.random.key(0), (5, STEPS, GENES))
  x = jnp.where(valid_steps(lengths, STEPS, jnp)[..., None], x, 0.0)
  params = flax_model.init(jax.random.key(1), x, lengths, train=False)["params"]
  # Larger biases and scales than the initial ones, so LayerNorm and attention are not near the identity.
  params = jax.tree.map(lambda p: p + 0.3 * jax.random.normal(jax.random.key(p.size), p.shape), params)
  ours = np.asarray(flax_model.apply({"params": params}, x, lengths, train=False))
  sizes = dict(SIZES, input_dim=GENES)
  torch_net = torch_model.load_flax_params(torch_model.TorchCardiacRNN(**sizes).eval(), params)
  with torch.no_grad():
    theirs = torch_net(torch.from_numpy(np.array(x)), torch.from_numpy(np.asarray(lengths, np.int64))).numpy()
  return ours, theirs


def test_same_logits_as_pytorch_with_its_layer_norm_epsilon():
  ours, theirs = _logits(1e-5)
  np.testing.assert_allclose(ours, theirs, atol=1e-5, rtol=1e-5)


def test_flax_layer_norm_epsilon_differs():
  """With Flax's own epsilon (1e-6) the logits move: the option matters, and the default is PyTorch's."""
  ours, theirs = _logits(1e-6)
  assert np.abs(ours - theirs).max() > 1e-6
  assert model_lib.EnhancedCardiacRNN().layer_norm_eps == 1e-5
