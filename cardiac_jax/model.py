"""The seed's attention-enhanced bidirectional LSTM for cell-type classification of sequences.

A sequence is one cell (or spot) per time point, `[steps, genes]`, padded at the end to a common
number of steps; `lengths` gives the number of valid steps of each sequence. The model is

  input projection  Dense(genes -> hidden) + LayerNorm + ReLU + Dropout(input_dropout)
  recurrent core    num_layers (bi)LSTM layers, Dropout(dropout) between layers
  attention         masked multi-head self-attention, residual, LayerNorm
  pooling           mean over the valid steps
  head              [Dense(d) + LayerNorm + ReLU + Dropout(dropout) for d in head_dims], Dense(classes)

Every step that is not valid is kept out of the logits: the backward LSTM starts at the last valid
step, attention never looks at padded keys, and pooling averages valid steps only. The logits
therefore do not depend on the padded values or on how far a sequence is padded.

The LSTM layers run `fused_lstm` by default (`lstm_impl='fused'`): the input projections of all steps
outside the scan, both directions in one scan, a hand-written gradient. `lstm_impl='rnn'` runs the
reference, an `nn.RNN` of `nn.OptimizedLSTMCell`s per direction, on the same parameters (rearranged
into the cell's tree); the two give the same logits and gradients to float rounding. A layer keeps
its parameters as three arrays stacked over directions with the gates side by side, rather than the
cell's twelve per direction: the optimizer then updates 33 arrays instead of 96, which shortens the
train step's first compile and the step itself (benchmarks/README.md).

With the defaults and 200 genes the model has 1,383,303 parameters: the seed's PyTorch count of
1,386,375 less PyTorch's second LSTM bias (6 directions x 512), which Flax's cells do not have.
"""

import dataclasses
import math
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from cardiac_jax.checks import closest
from cardiac_jax.errors import ConfigError
from cardiac_jax.sequences import valid_steps


def count_params(params: Any) -> int:
  """Number of scalars in a parameter tree (arrays or `jax.ShapeDtypeStruct`s)."""
  return sum(math.prod(leaf.shape) for leaf in jax.tree_util.tree_leaves(params))


# Scans of at most this many steps (the seed's 7 time points) are unrolled completely, so XLA
# sees straight-line code without a loop; longer scans are unrolled by PARTIAL_UNROLL.
FULL_UNROLL_STEPS = 16
PARTIAL_UNROLL = 4


def reverse_index(lengths, steps):
  """Time indices that reverse each sequence's valid prefix and leave its padding in place.

  The map is its own inverse: gathering with it twice gives back the original order.

  Args:
    lengths: `[batch]` int, number of valid steps of each sequence.
    steps: the padded number of steps.

  Returns:
    `[batch, steps]` int32: `lengths[b] - 1 - t` where `t < lengths[b]`, else `t`.
  """
  t = jnp.arange(steps, dtype=jnp.int32)[None, :]
  lengths = jnp.asarray(lengths, jnp.int32)[:, None]
  return jnp.where(t < lengths, lengths - 1 - t, t)


GATES = 'ifgo'  # nn.OptimizedLSTMCell's gate order: input, forget, cell candidate, output


def gatewise(init):
  """An initializer of `[directions, n, 4 * hidden]` arrays that applies `init` to each `[n, hidden]` gate.

  So a layer's stacked kernels start as `nn.OptimizedLSTMCell`'s do: each gate's recurrent kernel
  orthogonal on its own, not the whole stack.
  """

  def initializer(key, shape, dtype=jnp.float32):
    directions, n, gates = shape
    hidden = gates // len(GATES)
    keys = jax.random.split(key, directions * len(GATES))
    blocks = [init(k, (n, hidden), dtype) for k in keys]
    return jnp.stack([jnp.concatenate(blocks[d * len(GATES):(d + 1) * len(GATES)], axis=-1)
                      for d in range(directions)])

  return initializer


def cell_params(input_kernels, recurrent_kernels, biases, direction):
  """One direction of a layer's parameters as the tree of an `nn.OptimizedLSTMCell`.

  Args:
    input_kernels: `[directions, features, 4 * hidden]`.
    recurrent_kernels: `[directions, hidden, 4 * hidden]`.
    biases: `[directions, 4 * hidden]`.
    direction: 0 (forward) or 1 (backward).

  Returns:
    `{'ii': {'kernel'}, ..., 'hi': {'kernel', 'bias'}, ...}`, gates in `GATES` order.
  """
  split = lambda a: jnp.split(a[direction], len(GATES), axis=-1)
  tree = {}
  for gate, kernel, recurrent, bias in zip(
      GATES, split(input_kernels), split(recurrent_kernels), split(biases)):
    tree[f'i{gate}'] = {'kernel': kernel}
    tree[f'h{gate}'] = {'kernel': recurrent, 'bias': bias}
  return tree


def _unroll(steps):
  return max(steps, 1) if steps <= FULL_UNROLL_STEPS else PARTIAL_UNROLL


def _lstm_step(gates, c):
  """One LSTM update from pre-activation gates `[..., 4 * hidden]` (i, f, g, o) and the cell state.

  Returns:
    (activated gates `[..., 4 * hidden]`, new cell state, new output).
  """
  i, f, g, o = jnp.split(gates, 4, axis=-1)
  i, f, g, o = nn.sigmoid(i), nn.sigmoid(f), jnp.tanh(g), nn.sigmoid(o)
  c = f * c + i * g
  return jnp.concatenate([i, f, g, o], axis=-1), c, o * jnp.tanh(c)


def _recurrence_forward(gates_x, recurrent_kernels):
  """The LSTM recurrence with what its backward pass needs.

  Returns:
    (outputs `[steps, directions, batch, hidden]`, residuals: activated gates `[steps, directions,
    batch, 4 * hidden]`, cell states and outputs `[steps, directions, batch, hidden]`, and
    `recurrent_kernels`).
  """
  steps = gates_x.shape[0]

  def step(carry, gates_x_t):
    c, h = carry  # [directions, batch, hidden]
    gates = gates_x_t + jnp.einsum('dbh,dhg->dbg', h, recurrent_kernels)
    activated, c, h = _lstm_step(gates, c)
    return (c, h), (activated, c, h)

  # The state starts at zero, so the first step needs no recurrent product.
  first = _lstm_step(gates_x[0], jnp.zeros_like(gates_x[0, ..., :recurrent_kernels.shape[1]]))
  _, rest = jax.lax.scan(step, first[1:], gates_x[1:], unroll=_unroll(steps - 1))
  activated, cells, outputs = (
      jnp.concatenate([a[None], b]) for a, b in zip(first, rest))
  return outputs, (activated, cells, outputs, recurrent_kernels)


@jax.custom_vjp
def lstm_recurrence(gates_x, recurrent_kernels):
  """Runs LSTMs from zero state, given the input part of their gates at every step.

  Its gradient is written out so that the recurrent kernels' gradient is one matrix product over
  all steps after the backward scan, rather than one small product per step inside it.

  Args:
    gates_x: `[steps, directions, batch, 4 * hidden]`, input projections plus bias (i, f, g, o).
    recurrent_kernels: `[directions, hidden, 4 * hidden]`.

  Returns:
    `[steps, directions, batch, hidden]` outputs.
  """
  return _recurrence_forward(gates_x, recurrent_kernels)[0]


def _recurrence_backward(residuals, d_outputs):
  """Gradients of `lstm_recurrence` with respect to its two inputs, given those of its outputs."""
  activated, cells, outputs, recurrent_kernels = residuals
  steps = activated.shape[0]
  previous_cells = jnp.concatenate([jnp.zeros_like(cells[:1]), cells[:-1]])
  previous_outputs = jnp.concatenate([jnp.zeros_like(outputs[:1]), outputs[:-1]])

  def step(carry, inputs):
    d_h_next, d_c_next = carry  # from step t + 1, [directions, batch, hidden]
    d_h_t, gates, c, c_prev = inputs
    i, f, g, o = jnp.split(gates, 4, axis=-1)
    tanh_c = jnp.tanh(c)
    d_h = d_h_t + d_h_next
    d_c = d_c_next + d_h * o * (1.0 - tanh_c ** 2)
    d_gates = jnp.concatenate([
        d_c * g * i * (1.0 - i),
        d_c * c_prev * f * (1.0 - f),
        d_c * i * (1.0 - g ** 2),
        d_h * tanh_c * o * (1.0 - o),
    ], axis=-1)
    d_h_prev = jnp.einsum('dbg,dhg->dbh', d_gates, recurrent_kernels)
    return (d_h_prev, d_c * f), d_gates

  zeros = jnp.zeros_like(cells[0])
  _, d_gates = jax.lax.scan(
      step, (zeros, zeros), (d_outputs, activated, cells, previous_cells), reverse=True,
      unroll=_unroll(steps))
  d_kernels = jnp.einsum('tdbh,tdbg->dhg', previous_outputs, d_gates)
  return d_gates, d_kernels


lstm_recurrence.defvjp(_recurrence_forward, _recurrence_backward)


def fused_lstm(x, lengths, input_kernels, recurrent_kernels, biases):
  """Runs one or two LSTM directions over padded sequences in one scan.

  The input projections of all steps and directions are one matrix product outside the scan;
  each step then does one batched `[hidden, 4 * hidden]` product for all directions. The second
  direction, if any, is the backward one: it runs over each sequence's valid prefix reversed, so
  it starts at the last valid step.

  Args:
    x: `[batch, steps, features]` inputs.
    lengths: `[batch]` int, number of valid steps of each sequence.
    input_kernels: `[directions, features, 4 * hidden]`.
    recurrent_kernels: `[directions, hidden, 4 * hidden]`.
    biases: `[directions, 4 * hidden]`.

  Returns:
    `[batch, steps, directions * hidden]`, forward outputs first; values at padded steps are not
    meaningful.
  """
  batch, steps, _ = x.shape
  directions, hidden, _ = recurrent_kernels.shape
  # [steps, directions, batch, 4 * hidden]
  gates_x = jnp.einsum('btf,dfg->tdbg', x, input_kernels) + biases[None, :, None, :]
  if directions == 2:
    order = reverse_index(lengths, steps).T  # [steps, batch]
    backward = jnp.take_along_axis(gates_x[:, 1], order[..., None], axis=0)
    gates_x = jnp.stack([gates_x[:, 0], backward], axis=1)
  outputs = lstm_recurrence(gates_x, recurrent_kernels)  # [steps, directions, batch, hidden]
  if directions == 2:
    backward = jnp.take_along_axis(outputs[:, 1], order[..., None], axis=0)
    outputs = jnp.stack([outputs[:, 0], backward], axis=1)
  return jnp.transpose(outputs, (2, 0, 1, 3)).reshape(batch, steps, directions * hidden)


class LSTMLayer(nn.Module):
  """One LSTM layer over padded sequences, run in one or both directions.

  The backward direction is given `lengths`, so it reads each sequence from its last valid step
  back to the first, as it would the unpadded sequence. Outputs at padded steps are not zero (the
  forward direction runs on through the padding); callers must mask them.

  Parameters, stacked over directions (forward first) with the gates side by side in `GATES` order
  and initialised per gate as `nn.OptimizedLSTMCell` does (LeCun normal input kernels, orthogonal
  recurrent kernels, zero biases; one bias per gate, as in Flax's cell):
    input_kernel `[directions, features, 4 * hidden_dim]`, recurrent_kernel `[directions,
    hidden_dim, 4 * hidden_dim]`, bias `[directions, 4 * hidden_dim]`.

  Attributes:
    hidden_dim: hidden units per direction.
    bidirectional: run a backward LSTM too and concatenate its outputs to the forward ones.
    impl: 'fused' (`fused_lstm`: both directions in one scan, input projections outside it) or
      'rnn' (the reference: `nn.RNN` of `nn.OptimizedLSTMCell`s on `cell_params`). Both compute
      the same function of the same parameters at valid steps.
  """
  hidden_dim: int
  bidirectional: bool = True
  impl: str = 'fused'
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, lengths):
    """Runs the layer.

    Args:
      x: `[batch, steps, features]` float inputs.
      lengths: `[batch]` int, number of valid steps of each sequence.

    Returns:
      `[batch, steps, hidden_dim]`, or `[batch, steps, 2 * hidden_dim]` when bidirectional
      (forward outputs first); values at padded steps are not meaningful.
    """
    if self.impl not in LSTM_IMPLS:
      raise ValueError(f"LSTM impl must be 'fused' or 'rnn', not {self.impl!r}")
    directions, gates = 2 if self.bidirectional else 1, len(GATES) * self.hidden_dim
    params = (
        self.param('input_kernel', gatewise(nn.initializers.lecun_normal()),
                   (directions, x.shape[-1], gates), jnp.float32),
        self.param('recurrent_kernel', gatewise(nn.initializers.orthogonal()),
                   (directions, self.hidden_dim, gates), jnp.float32),
        self.param('bias', nn.initializers.zeros_init(), (directions, gates), jnp.float32),
    )
    x, params = x.astype(self.dtype), tuple(p.astype(self.dtype) for p in params)
    if self.impl == 'fused':
      return fused_lstm(x, lengths, *params)
    outputs = []
    for direction in range(directions):
      rnn = nn.RNN(nn.OptimizedLSTMCell(self.hidden_dim), reverse=direction == 1, keep_order=True)
      variables = {'params': {'cell': cell_params(*params, direction)}}
      outputs.append(rnn.apply(variables, x, seq_lengths=lengths))
    return jnp.concatenate(outputs, axis=-1)


POOLINGS = ('mean', 'anchor')
LSTM_IMPLS = ('fused', 'rnn')
# Computation dtypes by name; parameters stay float32 whatever the computation (Flax's param_dtype default).
DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}


class EnhancedCardiacRNN(nn.Module):
  """The seed's classifier of padded gene-expression sequences.

  Attributes:
    num_classes: number of cell types.
    hidden_dim: width of the input projection and LSTM hidden units per direction.
    num_layers: stacked LSTM layers.
    num_heads: attention heads; must divide the LSTM output width.
    dropout: dropout rate between LSTM layers, on attention weights, and in the head.
    input_dropout: dropout rate after the input projection.
    head_dims: widths of the hidden layers of the classification head.
    use_attention: put masked self-attention (residual + LayerNorm) after the LSTM.
    bidirectional: run each LSTM layer in both directions.
    lstm_impl: 'fused' (fast) or 'rnn' (the `nn.RNN` reference); see `LSTMLayer.impl`.
    pooling: 'mean' (the seed's: the mean over valid steps) or 'anchor' (the state at the step whose last
      input channel is 1: the labelled cell of an anchored sequence, read after the LSTM and attention have
      mixed in its context).
    layer_norm_eps: epsilon of every LayerNorm; PyTorch's 1e-5 (the seed's), Flax's own default is 1e-6.
    attention_dropout_per_sequence: draw the attention-weight dropout mask for each sequence and head, as
      PyTorch's nn.MultiheadAttention does; False shares one mask across the batch (Flax's default).
    dtype: computation dtype, a name in DTYPES: 'float32' (default) or 'bfloat16' (activations and matrix
      products in bfloat16, float32 parameters and logits).
    linear_path: add a linear map of the pooled input (the same steps the pooling reads, before any layer) to
      the logits, so the network contains a logistic regression on the labelled cell's own inputs.
  """
  num_classes: int = 7
  hidden_dim: int = 128
  num_layers: int = 3
  num_heads: int = 8
  dropout: float = 0.3
  input_dropout: float = 0.15
  head_dims: Sequence[int] = (128, 64)
  use_attention: bool = True
  bidirectional: bool = True
  lstm_impl: str = 'fused'
  pooling: str = 'mean'
  layer_norm_eps: float = 1e-5
  attention_dropout_per_sequence: bool = True
  dtype: str = 'float32'
  linear_path: bool = False

  @nn.compact
  def __call__(self, x, lengths, *, train: bool):
    """Classifies a batch of padded sequences.

    Args:
      x: `[batch, steps, genes]` float32 expression, padded at the end of each sequence.
      lengths: `[batch]` int32, number of valid steps of each sequence, 1 <= length <= steps.
      train: apply dropout (needs the 'dropout' rng) if True; deterministic if False.

    Returns:
      `[batch, num_classes]` logits.
    """
    mask = valid_steps(lengths, x.shape[1], jnp)  # [batch, steps]
    if self.dtype not in DTYPES:
      raise ValueError(f"dtype must be one of {tuple(DTYPES)}, not {self.dtype!r}")
    dtype = DTYPES[self.dtype]

    h = nn.Dense(self.hidden_dim, dtype=dtype, name='input_proj')(x)
    h = nn.LayerNorm(epsilon=self.layer_norm_eps, dtype=dtype, name='input_norm')(h)
    h = nn.relu(h)
    h = nn.Dropout(self.input_dropout, deterministic=not train)(h)

    for layer in range(self.num_layers):
      if layer > 0:
        h = nn.Dropout(self.dropout, deterministic=not train)(h)
      h = LSTMLayer(
          self.hidden_dim, self.bidirectional, self.lstm_impl, dtype, name=f'lstm_{layer}')(h, lengths)
    # [batch, steps, features]; zero the padded steps, which the forward LSTM ran on through.
    h = jnp.where(mask[..., None], h, 0.0)

    if self.use_attention:
      # Valid queries attend to valid keys only. A padded query sees no key; Flax then gives it
      # uniform (finite) weights, and its output is dropped by the pooling below. The weights
      # `[batch, heads, queries, keys]` are sown into 'intermediates' ('attention', 'attention_weights')
      # when that collection is mutable (interpret.py); otherwise nothing is kept.
      attended = nn.MultiHeadDotProductAttention(
          num_heads=self.num_heads,
          qkv_features=h.shape[-1],
          dropout_rate=self.dropout,
          broadcast_dropout=not self.attention_dropout_per_sequence,
          deterministic=not train,
          dtype=dtype,
          name='attention')(h, mask=nn.make_attention_mask(mask, mask), sow_weights=True)
      h = nn.LayerNorm(epsilon=self.layer_norm_eps, dtype=dtype, name='attention_norm')(h + attended)

    # Mean over valid steps, or the anchor's step; the denominator is at least 1 so that an all-padding
    # row (as a filler row of a last batch might be) pools to zeros rather than NaN.
    if self.pooling not in POOLINGS:
      raise ValueError(f"pooling must be one of {POOLINGS}, not {self.pooling!r}")
    weights = mask if self.pooling == 'mean' else mask & (x[..., -1] == 1)  # [batch, steps]
    counts = jnp.maximum(jnp.sum(weights, axis=1, keepdims=True), 1).astype(h.dtype)
    h = jnp.sum(jnp.where(weights[..., None], h, 0.0), axis=1) / counts  # [batch, features]

    for i, dim in enumerate(self.head_dims):
      h = nn.Dense(dim, dtype=dtype, name=f'head_{i}')(h)
      h = nn.LayerNorm(epsilon=self.layer_norm_eps, dtype=dtype, name=f'head_norm_{i}')(h)
      h = nn.relu(h)
      h = nn.Dropout(self.dropout, deterministic=not train)(h)
    logits = nn.Dense(self.num_classes, dtype=dtype, name='classifier')(h)
    if self.linear_path:
      pooled_input = jnp.sum(jnp.where(weights[..., None], x, 0.0), axis=1) / counts.astype(x.dtype)
      logits = logits + nn.Dense(self.num_classes, dtype=dtype, name='linear_path')(pooled_input)
    return logits.astype(jnp.float32)


# Networks by name (config.model_name): each a Flax module class taking num_classes and the fields of
# config.model.
MODELS = {'enhanced_rnn': EnhancedCardiacRNN}
# Config fields added after runs were written without them: a saved config lacking one gets the value those
# runs were trained with (Flax's LayerNorm epsilon and shared attention-dropout mask; the one network there was;
# the inputs, calibration choice and training cells there were).
EARLIER_DEFAULTS = {'model_name': 'enhanced_rnn',
                    'model': {'layer_norm_eps': 1e-6, 'attention_dropout_per_sequence': False, 'linear_path': False},
                    'data': {'input_scaling': 'sequence', 'time_channels': False, 'novelty_genes': 0},
                    'train': {'calibration_method': 'auto', 'linear_start': False, 'early_stopping_metric': 'accuracy'},
                    'split': {'max_train_cells': 0}}


def create_model(config, num_classes):
  """The network config.model_name names, built with the fields of config.model; unknown names are ConfigErrors."""
  if config.model_name not in MODELS:
    raise ConfigError(f"config: model_name={config.model_name!r} must be one of {list(MODELS)}")
  module = MODELS[config.model_name]
  fields = config.model.to_dict()
  known = {f.name for f in dataclasses.fields(module)} - {'parent', 'name', 'num_classes'}
  for field in fields:
    if field not in known:
      raise ConfigError(f"config: unknown config field 'model.{field}'{closest(field, known)}")
  return module(num_classes=num_classes, **fields)


def predict_step(params, apply_fn, batch):
  """Logits [batch, classes] of a batch (x [batch, steps, features], lengths [batch]), without dropout; no labels."""
  return apply_fn({'params': params}, batch['x'], batch['lengths'], train=False)
