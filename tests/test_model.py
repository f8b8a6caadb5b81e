"""Tests of cardiac_jax.model: parameter count, shapes, masking invariances, dropout, fused LSTM.

All but the parameter-count test use a small model (12 genes, hidden 8, 2 heads, 2 layers) and few
input shapes, since every new shape is an XLA compile.
"""

import functools

from absl.testing import absltest
from absl.testing import parameterized
import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from cardiac_jax import model as model_lib
from cardiac_jax.sequences import valid_steps

GENES = 12
SMALL = dict(num_classes=3, hidden_dim=8, num_layers=2, num_heads=2, head_dims=(8, 4))


def _inputs(seed, batch, steps, lengths):
  """Random `[batch, steps, GENES]` inputs whose padded steps are zero, and `[batch]` lengths."""
  lengths = jnp.asarray(lengths, jnp.int32)
  x = jax.random.normal(jax.random.key(seed), (batch, steps, GENES))
  return jnp.where(valid_steps(lengths, steps, jnp)[..., None], x, 0.0), lengths


def _perturbed(params, seed):
  """params plus N(0, 0.1) noise on every leaf, so that zero-initialised biases matter too."""
  leaves, tree = jax.tree_util.tree_flatten(params)
  keys = jax.random.split(jax.random.key(seed), len(leaves))
  return jax.tree_util.tree_unflatten(
      tree, [leaf + 0.1 * jax.random.normal(k, leaf.shape) for leaf, k in zip(leaves, keys)])


def _assert_trees_close(actual, expected, atol):
  chex.assert_trees_all_equal_structs(actual, expected)
  for a, e in zip(jax.tree_util.tree_leaves(actual), jax.tree_util.tree_leaves(expected)):
    np.testing.assert_allclose(a, e, rtol=0, atol=atol)


class HelpersTest(absltest.TestCase):

  def test_valid_mask(self):
    for xp in (jnp, np):  # one rule for the model's masks and the data's
      mask = valid_steps(xp.array([3, 1, 4]), 4, xp)
      np.testing.assert_array_equal(
          mask, [[1, 1, 1, 0], [1, 0, 0, 0], [1, 1, 1, 1]])
      self.assertEqual(mask.dtype, xp.bool_)

  def test_count_params(self):
    tree = {'a': {'kernel': jnp.zeros((3, 4)), 'bias': jnp.zeros(4)},
            'b': jax.ShapeDtypeStruct((2, 5), jnp.float32)}
    self.assertEqual(model_lib.count_params(tree), 26)

  def test_reverse_index(self):
    order = model_lib.reverse_index(jnp.array([3, 1, 4]), 4)
    np.testing.assert_array_equal(order, [[2, 1, 0, 3], [0, 1, 2, 3], [3, 2, 1, 0]])
    rows = jnp.arange(3)[:, None]
    np.testing.assert_array_equal(order[rows, order], jnp.broadcast_to(jnp.arange(4), (3, 4)))


class ParamCountTest(absltest.TestCase):

  def test_default_model_on_200_genes(self):
    """The seed's model: 1,386,375 PyTorch parameters less 6 x 512 second LSTM biases."""
    model = model_lib.EnhancedCardiacRNN()
    variables = jax.eval_shape(
        lambda: model.init(jax.random.key(0), jnp.zeros((2, 7, 200)),
                           jnp.ones(2, jnp.int32), train=False))
    self.assertEqual(set(variables), {'params'})
    params = variables['params']
    self.assertEqual(model_lib.count_params(params), 1_383_303)
    self.assertEqual(
        set(params),
        {'input_proj', 'input_norm', 'lstm_0', 'lstm_1', 'lstm_2', 'attention',
         'attention_norm', 'head_0', 'head_norm_0', 'head_1', 'head_norm_1', 'classifier'})
    # The blocks of the seed-notes table, with Flax's single LSTM bias per gate.
    count = lambda *names: sum(model_lib.count_params(params[n]) for n in names)
    self.assertEqual(count('input_proj', 'input_norm'), 25_984)
    self.assertEqual(count('lstm_0', 'lstm_1', 'lstm_2'), 1_054_720 - 6 * 512)
    self.assertEqual(count('attention', 'attention_norm'), 263_680)
    self.assertEqual(
        count('head_0', 'head_norm_0', 'head_1', 'head_norm_1', 'classifier'), 41_991)
    for layer, features in (('lstm_0', 128), ('lstm_1', 256), ('lstm_2', 256)):
      self.assertEqual(
          jax.tree_util.tree_map(lambda leaf: leaf.shape, params[layer]),
          {'input_kernel': (2, features, 512), 'recurrent_kernel': (2, 128, 512), 'bias': (2, 512)})


class EnhancedCardiacRNNTest(chex.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.model = model_lib.EnhancedCardiacRNN(**SMALL)
    # staticmethod: a jitted function set on a class would otherwise bind `self` like a method.
    cls.apply = staticmethod(jax.jit(cls.model.apply, static_argnames='train'))
    x, lengths = _inputs(0, 3, 5, [5, 2, 1])
    cls.variables = jax.jit(cls.model.init, static_argnames='train')(
        jax.random.key(0), x, lengths, train=False)

  def _logits(self, x, lengths, train=False, seed=0):
    return self.apply(self.variables, x, lengths, train=train,
                      rngs={'dropout': jax.random.key(seed)})

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.named_parameters(
      ('one_step_eval', 1, 1, [1], False),
      ('mixed_lengths_train', 4, 6, [6, 3, 1, 2], True),
  )
  def test_logits_shape(self, batch, steps, lengths, train):
    x, lengths = _inputs(1, batch, steps, lengths)
    apply = self.variant(
        lambda v, x, lengths, rng: self.model.apply(
            v, x, lengths, train=train, rngs={'dropout': rng}))
    logits = apply(self.variables, x, lengths, jax.random.key(2))
    chex.assert_shape(logits, (batch, SMALL['num_classes']))
    chex.assert_tree_all_finite(logits)

  @parameterized.named_parameters(
      ('no_attention', dict(use_attention=False), {'attention', 'attention_norm'}),
      ('unidirectional', dict(bidirectional=False), set()),
      ('one_layer', dict(num_layers=1), {'lstm_1'}),
      ('no_head_layers', dict(head_dims=()),
       {'head_0', 'head_norm_0', 'head_1', 'head_norm_1'}),
  )
  def test_ablation(self, overrides, missing):
    """Each switch runs, gives logits of the right shape and drops exactly its parameters."""
    model = model_lib.EnhancedCardiacRNN(**{**SMALL, **overrides})
    x, lengths = _inputs(3, 3, 5, [5, 2, 1])
    logits, variables = jax.jit(model.init_with_output, static_argnames='train')(
        jax.random.key(0), x, lengths, train=False)
    chex.assert_shape(logits, (3, SMALL['num_classes']))
    chex.assert_tree_all_finite(logits)
    params, full = variables['params'], self.variables['params']
    self.assertEqual(set(params), set(full) - missing)
    directions = 2 if model.bidirectional else 1
    for layer in range(model.num_layers):
      for leaf in jax.tree_util.tree_leaves(params[f'lstm_{layer}']):
        self.assertEqual(leaf.shape[0], directions)
    self.assertLess(model_lib.count_params(params), model_lib.count_params(full))

  def test_padded_values_do_not_matter(self):
    x, lengths = _inputs(4, 3, 5, [5, 2, 1])
    noise = 100.0 * jax.random.normal(jax.random.key(5), x.shape)
    noisy = jnp.where(valid_steps(lengths, 5, jnp)[..., None], x, noise)
    self.assertGreater(float(jnp.abs(noisy - x).max()), 1.0)
    np.testing.assert_allclose(
        self._logits(noisy, lengths), self._logits(x, lengths), atol=1e-5)

  def test_padding_length_does_not_matter(self):
    x, lengths = _inputs(6, 3, 5, [5, 2, 1])
    longer = jnp.concatenate(
        [x, jax.random.normal(jax.random.key(7), (3, 4, GENES))], axis=1)
    np.testing.assert_allclose(
        self._logits(longer, lengths), self._logits(x, lengths), atol=1e-5)

  def test_backward_direction_starts_at_last_valid_step(self):
    """Each padded row's outputs at valid steps equal those of the row run unpadded."""
    layer = model_lib.LSTMLayer(hidden_dim=8, bidirectional=True)
    apply = jax.jit(layer.apply)
    x, lengths = _inputs(8, 2, 6, [4, 2])
    x = x + jnp.where(valid_steps(lengths, 6, jnp)[..., None], 0.0, 3.0)
    variables = jax.jit(layer.init)(jax.random.key(9), x, lengths)
    padded = apply(variables, x, lengths)
    chex.assert_shape(padded, (2, 6, 16))
    for row, length in enumerate([4, 2]):
      alone = apply(variables, x[row:row + 1, :length], lengths[row:row + 1])
      np.testing.assert_allclose(padded[row:row + 1, :length], alone, atol=1e-5)

  def test_dropout(self):
    x, lengths = _inputs(10, 3, 5, [5, 2, 1])
    train_a = self._logits(x, lengths, train=True, seed=1)
    train_b = self._logits(x, lengths, train=True, seed=2)
    eval_a = self._logits(x, lengths, train=False, seed=1)
    eval_b = self._logits(x, lengths, train=False, seed=2)
    self.assertGreater(float(jnp.abs(train_a - train_b).max()), 1e-3)
    self.assertGreater(float(jnp.abs(train_a - eval_a).max()), 1e-3)
    np.testing.assert_array_equal(eval_a, eval_b)
    np.testing.assert_array_equal(eval_a, self._logits(x, lengths, train=False, seed=1))

  def test_length_one(self):
    """Rows of one valid step give finite logits and gradients in both modes."""
    x, lengths = _inputs(11, 3, 5, [1, 1, 1])
    for train in (False, True):
      chex.assert_tree_all_finite(self._logits(x, lengths, train=train))

    def loss(params):
      logits = self.model.apply(
          {'params': params}, x, lengths, train=True,
          rngs={'dropout': jax.random.key(0)})
      return jnp.sum(logits ** 2)

    grads = jax.jit(jax.grad(loss))(self.variables['params'])
    chex.assert_tree_all_finite(grads)
    self.assertGreater(
        float(sum(jnp.abs(g).sum() for g in jax.tree_util.tree_leaves(grads))), 0.0)


class AnchorPoolingTest(absltest.TestCase):

  def _anchored(self, anchors, lengths, seed=12):
    """Inputs whose last channel is 1 at each row's anchor step."""
    x, lengths = _inputs(seed, len(lengths), 5, lengths)
    flag = jax.nn.one_hot(jnp.asarray(anchors), 5)
    return x.at[..., -1].set(flag), lengths

  def test_pools_the_anchor_step(self):
    mean_model = model_lib.EnhancedCardiacRNN(**SMALL)
    anchor_model = model_lib.EnhancedCardiacRNN(**SMALL, pooling='anchor')
    mean = jax.jit(functools.partial(mean_model.apply, train=False))
    anchor = jax.jit(functools.partial(anchor_model.apply, train=False))
    x, lengths = self._anchored([0, 0, 0], [1, 1, 1])
    params = jax.jit(functools.partial(mean_model.init, train=False))(jax.random.key(0), x, lengths)
    # One valid step: the anchor's state is the mean, and the parameters are the same.
    np.testing.assert_allclose(anchor(params, x, lengths), mean(params, x, lengths), atol=1e-6)
    x, lengths = self._anchored([0, 2, 4], [5, 5, 5])
    moved, _ = self._anchored([3, 2, 1], [5, 5, 5])
    moved = x.at[..., -1].set(moved[..., -1])
    a = anchor(params, x, lengths)
    b = anchor(params, moved, lengths)
    self.assertGreater(float(jnp.abs(a[0] - b[0]).max()), 1e-4)  # another anchor, another readout
    np.testing.assert_allclose(a[1], b[1], atol=1e-6)  # same anchor, same everything
    padded = x.at[:, 3:].set(jnp.where(jnp.arange(5)[3:, None] >= 3, 50.0, 0.0))
    shorter = jnp.asarray([3, 3, 3])
    np.testing.assert_allclose(anchor(params, padded[:2], shorter[:2]),
                               anchor(params, x[:2].at[:, 3:].set(0.0), shorter[:2]),
                               atol=1e-5)  # padding does not matter

  def test_the_linear_path_adds_a_linear_map_of_the_anchor_steps_input(self):
    model = model_lib.EnhancedCardiacRNN(**SMALL, pooling='anchor', linear_path=True)
    x, lengths = self._anchored([0, 2, 4], [5, 5, 5])
    params = model.init(jax.random.key(0), x, lengths, train=False)['params']
    linear = params['linear_path']
    self.assertEqual(linear['kernel'].shape, (x.shape[-1], SMALL['num_classes']))
    without = dict(params, linear_path=jax.tree.map(jnp.zeros_like, linear))
    apply = functools.partial(model.apply, train=False)
    anchor_input = x[jnp.arange(3), jnp.asarray([0, 2, 4])]
    np.testing.assert_allclose(
        apply({'params': params}, x, lengths) - apply({'params': without}, x, lengths),
        anchor_input @ linear['kernel'] + linear['bias'], atol=1e-5)

  def test_unknown_pooling(self):
    x, lengths = _inputs(0, 1, 2, [2])
    with self.assertRaisesRegex(ValueError, "pooling must be one of"):
      model_lib.EnhancedCardiacRNN(**SMALL, pooling='max').init(jax.random.key(0), x, lengths, train=False)


class FusedLSTMTest(parameterized.TestCase):
  """The fused LSTM (the default) computes what the nn.RNN reference does, on the same parameters."""

  @parameterized.named_parameters(('bidirectional', True), ('unidirectional', False))
  def test_cell_params_are_the_cells_tree(self, bidirectional):
    """Each direction, rearranged by cell_params, has exactly nn.OptimizedLSTMCell's tree and shapes."""
    x, lengths = _inputs(0, 3, 5, [5, 2, 1])
    params = model_lib.LSTMLayer(8, bidirectional).init(jax.random.key(0), x, lengths)['params']
    cell = jax.eval_shape(lambda: nn.RNN(nn.OptimizedLSTMCell(8)).init(
        jax.random.key(0), x, seq_lengths=lengths))['params']['cell']
    shape_of = lambda tree: jax.tree_util.tree_map(lambda leaf: leaf.shape, tree)
    for direction in range(2 if bidirectional else 1):
      tree = model_lib.cell_params(
          params['input_kernel'], params['recurrent_kernel'], params['bias'], direction)
      self.assertEqual(shape_of(tree), shape_of(cell))

  def test_initialised_per_gate(self):
    """Every gate's recurrent kernel is orthogonal on its own (an orthogonal `[32, 128]` stack would
    not have orthogonal blocks); input kernels have LeCun scale."""
    x = jnp.zeros((1, 2, 64))
    params = model_lib.LSTMLayer(32).init(jax.random.key(1), x, jnp.ones(1, jnp.int32))['params']
    recurrent = params['recurrent_kernel']  # [2, 32, 128]
    for direction in range(2):
      for gate in range(4):
        block = recurrent[direction, :, gate * 32:(gate + 1) * 32]
        np.testing.assert_allclose(block.T @ block, jnp.eye(32), atol=1e-5)
    # Truncated normal with variance 1 / fan_in, fan_in = 64 input features.
    self.assertAlmostEqual(float(jnp.std(params['input_kernel'])), 64 ** -0.5, delta=0.01)
    np.testing.assert_array_equal(params['bias'], 0.0)

  @parameterized.named_parameters(
      ('bidirectional', dict(bidirectional=True), [6, 3, 1, 2, 5]),
      # Attention and head are the same code under both impls: left out to save compile time.
      ('unidirectional', dict(bidirectional=False, use_attention=False, head_dims=()),
       [1, 6, 4, 2, 6]),
  )
  def test_model_same_logits_and_gradients(self, overrides, lengths):
    """Two layers, lengths from 1 to all steps; the gradients of every parameter agree."""
    x, lengths = _inputs(12, len(lengths), 6, lengths)
    labels = jnp.arange(len(lengths)) % SMALL['num_classes']
    model = lambda impl: model_lib.EnhancedCardiacRNN(**{**SMALL, **overrides}, lstm_impl=impl)

    def loss(params, impl):
      logits = model(impl).apply({'params': params}, x, lengths, train=False)
      one_hot = jax.nn.one_hot(labels, SMALL['num_classes'])
      return -jnp.mean(jnp.sum(one_hot * jax.nn.log_softmax(logits), -1)), logits

    params = _perturbed(jax.jit(model('fused').init, static_argnames='train')(
        jax.random.key(13), x, lengths, train=False)['params'], seed=14)
    grad = jax.jit(jax.grad(loss, has_aux=True), static_argnums=1)
    fused_grads, fused_logits = grad(params, 'fused')
    grads, logits = grad(params, 'rnn')
    np.testing.assert_allclose(fused_logits, logits, rtol=0, atol=1e-5)
    _assert_trees_close(fused_grads, grads, atol=1e-5)
    for layer in range(SMALL['num_layers']):
      for leaf in jax.tree_util.tree_leaves(grads[f'lstm_{layer}']):
        self.assertGreater(float(jnp.abs(leaf).max()), 0.0)

  def test_long_scan_same_outputs_and_gradients(self):
    """Longer than FULL_UNROLL_STEPS (a partly unrolled scan that the unroll does not divide)."""
    steps = model_lib.FULL_UNROLL_STEPS + 3
    x, lengths = _inputs(15, 4, steps, [steps, 1, 11, steps - 1])
    mask = valid_steps(lengths, steps, jnp)[..., None]
    weights = jax.random.normal(jax.random.key(16), (4, steps, 16))

    def loss(variables, impl):
      outputs = model_lib.LSTMLayer(8, True, impl).apply(variables, x, lengths)
      outputs = jnp.where(mask, outputs, 0.0)
      return jnp.sum(outputs * weights), outputs

    variables = _perturbed(model_lib.LSTMLayer(8).init(jax.random.key(17), x, lengths), seed=18)
    grad = jax.jit(jax.grad(loss, has_aux=True), static_argnums=1)
    _assert_trees_close(grad(variables, 'fused'), grad(variables, 'rnn'), atol=1e-5)

  def test_unknown_impl(self):
    x, lengths = _inputs(0, 1, 2, [2])
    with self.assertRaisesRegex(ValueError, 'fused'):
      model_lib.LSTMLayer(4, impl='cudnn').init(jax.random.key(0), x, lengths)


if __name__ == '__main__':
  absltest.main()
