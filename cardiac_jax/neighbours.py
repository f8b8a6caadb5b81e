"""Exact nearest neighbours (Euclidean) of float32 points: the anchored context's and the novelty score's search.

scikit-learn's brute-force search (distances from matrix products, on every core) finds the `k + EXTRA` nearest
candidates of each query by its own floating-point distances; the candidates are then ranked by their float64
distances, ties to the lower reference row. Those distances are off by at most ROUNDING x (|query| + largest
|reference|)^2 in squares (qq - 2 q.r + rr in float32 errs by about 1e-6 of that in 20-30 dimensions), so a row's
k nearest are certainly among its candidates when the last candidate's distance, less twice that bound, exceeds
the k-th candidate's float64 one; rows where it does not (near-ties, and exact duplicates: a cell repeated many
times) are searched again with GROWTH times the candidates, up to the whole reference. The result is the exact
float64 answer whatever the rounding: the same as a brute-force float64 search with ties to the lower row.

The search costs every query a distance to every reference row, so callers keep references small (the context's
pools are capped at sequences.CONTEXT_POOL cells, the novelty score's at novelty.MAX_REFERENCE).
"""

import numpy as np
from sklearn.neighbors import NearestNeighbors

# Candidates beyond the k nearest that are ranked in float64 (a margin for the search's rounding), and the factor
# the candidates grow by for rows without that margin (exact duplicates: a cell repeated many times ties at its
# distance, and the candidates must reach past every copy).
EXTRA = 4
GROWTH = 4
# Relative bound on a squared distance's rounding error, a tenfold margin over qq - 2 q.r + rr's in float32.
ROUNDING = 1e-5
# Queries searched at a time, and float64 differences held at a time when ranking candidates (bounds memory).
QUERY_BLOCK = 16_384
RANKED_VALUES = 1 << 24


def _ranked(query, reference, rows):
  """(rows [n, r] sorted by float64 squared distance to each query row, ties to the lower row; their squares), a
  few query rows at a time."""
  out_rows, out_squared = np.empty_like(rows), np.empty(rows.shape, np.float64)
  step = max(1, RANKED_VALUES // max(rows.shape[1] * query.shape[1], 1))
  for lo in range(0, len(rows), step):
    part = rows[lo : lo + step]
    squared = ((query[lo : lo + step, None, :].astype(np.float64) - reference[part].astype(np.float64)) ** 2).sum(-1)
    order = np.lexsort((part, squared), axis=-1)
    out_rows[lo : lo + step] = np.take_along_axis(part, order, 1)
    out_squared[lo : lo + step] = np.take_along_axis(squared, order, 1)
  return out_rows, out_squared


def _certified(index, query, reference, k, largest):
  """(rows [n, k], squares [n, k]) of `nearest` for query rows [n, d]: candidates from `index`, grown by GROWTH
  for the rows they do not certify, up to the whole reference (then the float64 ranking is the answer)."""
  rows, squared = np.zeros((len(query), k), np.int64), np.zeros((len(query), k), np.float64)
  error = ROUNDING * (np.sqrt((query.astype(np.float64) ** 2).sum(1)) + largest) ** 2
  todo, m = np.arange(len(query)), min(k + EXTRA, len(reference))
  while len(todo):
    searched, candidates = index.kneighbors(query[todo], n_neighbors=m)
    found, found_squared = _ranked(query[todo], reference, candidates.astype(np.int64))
    sure = (searched[:, -1].astype(np.float64) ** 2 - 2 * error[todo] > found_squared[:, k - 1]
            if m < len(reference) else np.ones(len(todo), bool))
    rows[todo[sure]], squared[todo[sure]] = found[sure, :k], found_squared[sure, :k]
    todo, m = todo[~sure], min(m * GROWTH, len(reference))
  return rows, squared


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
  rows, squared = np.zeros((len(query), k), np.int64), np.zeros((len(query), k), np.float64)
  if not len(query) or not k:
    return rows, squared
  index = NearestNeighbors(algorithm="brute").fit(reference)
  largest = np.sqrt((reference.astype(np.float64) ** 2).sum(1).max())
  for lo in range(0, len(query), QUERY_BLOCK):
    rows[lo : lo + QUERY_BLOCK], squared[lo : lo + QUERY_BLOCK] = _certified(
        index, query[lo : lo + QUERY_BLOCK], reference, k, largest)
  return rows, np.sqrt(squared)
