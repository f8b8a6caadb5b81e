"""Exact nearest neighbours (Euclidean) of float32 points: the anchored context's and the novelty score's search.

scikit-learn's brute-force search (distances from matrix products, on every core) finds the `k + EXTRA` nearest
candidates of each query by its own floating-point distances; the candidates are then ranked by their float64
distances, ties to the lower reference row. Those distances are off by at most ROUNDING x (|query| + largest
|reference|)^2 in squares (qq - 2 q.r + rr in float32 errs by about 1e-6 of that in 20-30 dimensions), so a row's
k nearest are certainly among its candidates when the last candidate's distance, less twice that bound, exceeds
the k-th candidate's float64 one; the rare rows where it does not are ranked again in float64 over the whole
reference. The result is the exact float64 answer whatever the rounding: the same as a brute-force float64 search
with ties to the lower row.

The search costs every query a distance to every reference row, so callers keep references small (the context's
pools are capped at sequences.CONTEXT_POOL cells, the novelty score's at novelty.MAX_REFERENCE).
"""

import numpy as np
from sklearn.neighbors import NearestNeighbors

# Candidates beyond the k nearest that are ranked in float64 (a margin for the search's rounding).
EXTRA = 4
# Relative bound on a squared distance's rounding error, a tenfold margin over qq - 2 q.r + rr's in float32.
ROUNDING = 1e-5
# Queries ranked at a time (bounds the float64 differences' memory: QUERY_BLOCK x (k + EXTRA) x dimensions).
QUERY_BLOCK = 16_384


def _ranked(query, reference, rows):
  """(rows [n, r] sorted by float64 squared distance to each query row, ties to the lower row; their squares)."""
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
  rows, squared = np.zeros((len(query), k), np.int64), np.zeros((len(query), k), np.float64)
  if not len(query) or not k:
    return rows, squared
  index = NearestNeighbors(n_neighbors=m, algorithm="brute").fit(reference)
  largest = np.sqrt((reference.astype(np.float64) ** 2).sum(1).max())
  everything = np.arange(len(reference))[None]
  for lo in range(0, len(query), QUERY_BLOCK):
    part = query[lo : lo + QUERY_BLOCK]
    searched, candidates = index.kneighbors(part)
    found, found_squared = _ranked(part, reference, candidates.astype(np.int64))
    if m < len(reference):
      error = ROUNDING * (np.sqrt((part.astype(np.float64) ** 2).sum(1)) + largest) ** 2
      last = searched[:, -1].astype(np.float64) ** 2
      for i in np.flatnonzero(last - 2 * error <= found_squared[:, k - 1]):  # the k nearest may lie beyond
        found[i], found_squared[i] = (a[0, :m] for a in _ranked(part[i : i + 1], reference, everything))
    rows[lo : lo + len(part)] = found[:, :k]
    squared[lo : lo + len(part)] = found_squared[:, :k]
  return rows, np.sqrt(squared)
