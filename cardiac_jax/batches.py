"""Sequences -> batches of one fixed shape, so that a run compiles its train step once.

A short last batch is filled up with copies of length-1 zero sequences and a per-example `mask` of 0, so that
metrics summed with the mask weigh every real sequence once and padding not at all.
"""

import numpy as np

# The seed's "adaptive (16-64) batch size": by training-set size, (upper bound, batch size), first match wins.
BATCH_SIZE_RULE = ((2_000, 16), (8_000, 32))
LARGEST_BATCH = 64


def adaptive_batch_size(n_train):
  """16 below 2,000 training sequences, 32 below 8,000, else 64."""
  for bound, size in BATCH_SIZE_RULE:
    if n_train < bound:
      return size
  return LARGEST_BATCH


def used_steps(*sequence_sets):
  """The longest sequence of all the sets: the steps a batch needs, however far the data are padded.

  The seed pads every sequence to 100 steps of which at most 7 are valid; batches cut to the used steps give
  the model the same logits (it masks padding) for a fraction of the work, and one shape for the whole run.
  """
  return int(max(int(s.lengths.max()) for s in sequence_sets if len(s)))


def iterate(sequences, batch_size, rng=None, steps=None):
  """Yields batches covering every sequence once, shuffled when `rng` is given.

  Args:
    sequences: a sequences.Sequences.
    batch_size: sequences per batch; a short last batch is filled up to it.
    rng: a numpy Generator to shuffle with, or None for the stored order.
    steps: cut x to its first `steps` time steps (at least the longest length; see `used_steps`), or None
      to keep the stored padding.

  Yields:
    dicts of numpy arrays: x [batch, steps, genes] float32, lengths [batch] int32, labels [batch] int32,
    mask [batch] float32 (1 for real sequences, 0 for the fill of a short last batch).
  """
  n = len(sequences)
  if steps is not None and n and steps < sequences.lengths.max():
    raise ValueError(f"steps={steps} would cut sequences of length {sequences.lengths.max()}")
  order = rng.permutation(n) if rng is not None else np.arange(n)
  for start in range(0, n, batch_size):
    index = order[start : start + batch_size]
    fill = batch_size - len(index)
    batch = {
        "x": sequences.x[index, :steps],
        "lengths": sequences.lengths[index],
        "labels": sequences.labels[index],
        "mask": np.ones(len(index), np.float32),
    }
    if fill:
      batch = {
          "x": np.concatenate([batch["x"], np.zeros((fill,) + batch["x"].shape[1:], np.float32)]),
          "lengths": np.concatenate([batch["lengths"], np.ones(fill, np.int32)]),
          "labels": np.concatenate([batch["labels"], np.zeros(fill, np.int32)]),
          "mask": np.concatenate([batch["mask"], np.zeros(fill, np.float32)]),
      }
    yield batch


def num_batches(n, batch_size):
  return -(-n // batch_size)
