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

With the defaults and 200 genes the model has 1,383,303 parameters: the seed's PyTorch count of
1,386,375 less PyTorch's second LSTM bias (6 directions x 512), which Flax's cells do not have.
"""

import math
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp


def valid_mask(lengths, steps):
  """Which steps of each sequence are real rather than padding.

  Args:
    lengths: `[batch]` int, number of valid steps of each sequence (padding is at the end).
    steps: the padded number of steps.

  Returns:
    `[batch, steps]` bool, True at the first `lengths[b]` steps of row `b`.
  """
  return jnp.arange(steps)[None, :] < jnp.asarray(lengths)[:, None]


def count_params(params: Any) -> int:
  """Number of scalars in a parameter tree (arrays or `jax.ShapeDtypeStruct`s)."""
  return sum(math.prod(leaf.shape) for leaf in jax.tree_util.tree_leaves(params))


class LSTMLayer(nn.Module):
  """One LSTM layer over padded sequences, run in one or both directions.

  The backward direction is given `lengths`, so it reads each sequence from its last valid step
  back to the first, as it would the unpadded sequence. Outputs at padded steps are not zero (the
  forward direction runs on through the padding); callers must mask them.

  Attributes:
    hidden_dim: hidden units per direction.
    bidirectional: run a backward LSTM too and concatenate its outputs to the forward ones.
  """
  hidden_dim: int
  bidirectional: bool = True

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
    forward = nn.RNN(nn.OptimizedLSTMCell(self.hidden_dim, name='forward'))
    outputs = forward(x, seq_lengths=lengths)
    if not self.bidirectional:
      return outputs
    backward = nn.RNN(
        nn.OptimizedLSTMCell(self.hidden_dim, name='backward'), reverse=True, keep_order=True)
    return jnp.concatenate([outputs, backward(x, seq_lengths=lengths)], axis=-1)


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
    mask = valid_mask(lengths, x.shape[1])  # [batch, steps]

    h = nn.Dense(self.hidden_dim, name='input_proj')(x)
    h = nn.LayerNorm(name='input_norm')(h)
    h = nn.relu(h)
    h = nn.Dropout(self.input_dropout, deterministic=not train)(h)

    for layer in range(self.num_layers):
      if layer > 0:
        h = nn.Dropout(self.dropout, deterministic=not train)(h)
      h = LSTMLayer(self.hidden_dim, self.bidirectional, name=f'lstm_{layer}')(h, lengths)
    # [batch, steps, features]; zero the padded steps, which the forward LSTM ran on through.
    h = jnp.where(mask[..., None], h, 0.0)

    if self.use_attention:
      # Valid queries attend to valid keys only. A padded query sees no key; Flax then gives it
      # uniform (finite) weights, and its output is dropped by the pooling below.
      attended = nn.MultiHeadDotProductAttention(
          num_heads=self.num_heads,
          qkv_features=h.shape[-1],
          dropout_rate=self.dropout,
          deterministic=not train,
          name='attention')(h, mask=nn.make_attention_mask(mask, mask))
      h = nn.LayerNorm(name='attention_norm')(h + attended)

    # Mean over valid steps; the denominator is at least 1 so that an all-padding row (as a
    # filler row of a last batch might be) pools to zeros rather than NaN.
    counts = jnp.maximum(jnp.sum(mask, axis=1, keepdims=True), 1).astype(h.dtype)
    h = jnp.sum(jnp.where(mask[..., None], h, 0.0), axis=1) / counts  # [batch, features]

    for i, dim in enumerate(self.head_dims):
      h = nn.Dense(dim, name=f'head_{i}')(h)
      h = nn.LayerNorm(name=f'head_norm_{i}')(h)
      h = nn.relu(h)
      h = nn.Dropout(self.dropout, deterministic=not train)(h)
    return nn.Dense(self.num_classes, name='classifier')(h)
