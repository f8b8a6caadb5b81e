"""Exact nearest neighbours (Euclidean) of float32 points: the anchored context's and the novelty score's search.

Squared distances to every reference row are computed in float32 by XLA, a block of queries at a time, and the
`k + EXTRA` smallest kept (`jax.lax.top_k`); those candidates are then ranked by their float64 distances, ties
to the lower reference row. The float32 distances are off by at most ROUNDING x (|query| + largest |reference|)^2
(qq - 2 q.r + rr in 20-30 dimensions errs by about 1e-6 of that), so a row's k nearest are certainly among its
candidates when the last candidate's float32 distance, less that bound, exceeds the k-th candidate's float64 one;
the rare rows where it does not are searched again in float64 over the whole reference. The result is the exact
float64 answer whatever the rounding: the same as a brute-force float64 search with ties to the lower row.

The search costs every query a distance to every reference row, so callers keep references small (the context's
pools are capped at sequences.CONTEXT_POOL cells, the novelty score's at novelty.MAX_REFERENCE).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np

# Candidates beyond the k nearest that are ranked in float64 (a margin for float32 rounding).
EXTRA = 4
# Relative bound on a float32 squared distance's error, a tenfold margin over qq - 2 q.r + rr's in 30 dimensions.
ROUNDING = 1e-5
# Queries per XLA call: at most this, at least MIN_BLOCK, a power of two (few shapes to compile).
QUERY_BLOCK = 4096
MIN_BLOCK = 256
# References are padded to a multiple of this many rows (few shapes to compile).
REFERENCE_BUCKET = 512


@functools.partial(jax.jit, static_argnums=3)
def _candidates(query, reference, valid, m):
  """([q, m] float32 squared distances, [q, m] int32 rows) of the m nearest valid reference rows, by float32."""
  squared = (jnp.sum(query * query, 1)[:, None] - 2 * query @ reference.T + jnp.sum(reference * reference, 1)[None])
  negative, rows = jax.lax.top_k(jnp.where(valid[None], -squared, -jnp.inf), m)
  return -negative, rows


def _padded(points, rows):
  out = np.zeros((rows, points.shape[1]), np.float32)
  out[: len(points)] = points
  return out


def _ranked(query, reference, rows):
  """(rows sorted by float64 squared distance to each query row, ties to the lower row; their distances)."""
  squared = ((query[:, None, :].astype(np.float64) - reference[rows].astype(np.float64)) ** 2).sum(-1)
  order = np.lexsort((rows, squared), axis=-1)
  return np.take_along_axis(rows, order, 1), np.take_along_axis(squared, order, 1)


def nearest(query, reference, k):
  """The k nearest reference rows of each query row, exactly (module docstring).

  Args:
    query: [n, d] and reference: [m, d] points (read as float32); k >= 1.

  Returns:
    (rows [n, min(k, m)] int64, nearest first, ties to the lower row; distances [n, min(k, m)] float64 Euclidean).
  """
  query = np.ascontiguousarray(query, np.float32)
  reference = np.ascontiguousarray(reference, np.float32)
  k = min(k, len(reference))
  m = min(k + EXTRA, len(reference))
  size = -(-len(reference) // REFERENCE_BUCKET) * REFERENCE_BUCKET
  padded_reference = jnp.asarray(_padded(reference, size))
  valid = jnp.asarray(np.arange(size) < len(reference))
  largest = float(np.sqrt((reference.astype(np.float64) ** 2).sum(1).max())) if len(reference) else 0.0
  rows = np.zeros((len(query), k), np.int64)
  squared = np.zeros((len(query), k), np.float64)
  block = min(QUERY_BLOCK, max(MIN_BLOCK, 1 << max(len(query) - 1, 0).bit_length()))
  for lo in range(0, len(query), block):
    part = query[lo : lo + block]
    bound, candidates = (np.asarray(a)[: len(part)] for a in _candidates(jnp.asarray(_padded(part, block)),
                                                                       padded_reference, valid, m))
    found, found_squared = _ranked(part, reference, candidates.astype(np.int64))
    error = ROUNDING * (np.sqrt((part.astype(np.float64) ** 2).sum(1)) + largest) ** 2
    unsure = np.flatnonzero(bound[:, -1] - error <= found_squared[:, k - 1]) if m < len(reference) else []
    for i in unsure:  # the k nearest may lie beyond the candidates: rank the whole reference in float64
      found[i], found_squared[i] = (a[0, :m] for a in _ranked(part[i : i + 1], reference,
                                                              np.arange(len(reference))[None]))
    rows[lo : lo + len(part)] = found[:, :k]
    squared[lo : lo + len(part)] = found_squared[:, :k]
  return rows, np.sqrt(squared)
