"""Exact nearest neighbours (Euclidean) of float32 points: the anchored context's and the novelty score's search.

scikit-learn's brute-force search (distances from matrix products, on every core) finds the `k + EXTRA` nearest
candidates of each query by its own floating-point distances; the candidates are then ranked by their float64
distances, ties to the lower reference row. Those distances are off by at most ROUNDING x (|query| + largest
|reference|)^2 in squares (qq - 2 q.r + rr in float32 errs by about 1e-6 of that in 20-30 dimensions), so a row's
k nearest are certainly among its candidates when the last candidate's distance, less twice that bound, exceeds
the k-th candidate's float64 one; rows where it does not (near-ties) are searched again with GROWTH times the
candidates, up to the whole reference. A point the reference repeats is searched once and its copies ranked after
(`_with_copies`). The result is the exact float64 answer whatever the rounding: the same as a brute-force float64
search with ties to the lower row.

The search costs every query a distance to every reference row, so callers keep references small (the context's
pools are capped at sequences.CONTEXT_POOL cells, the novelty score's at novelty.MAX_REFERENCE).
"""

import numpy as np
from sklearn.neighbors import NearestNeighbors

# Candidates beyond the k nearest that are ranked in float64 (a margin for the search's rounding), and the factor
# the candidates grow by for rows without that margin.
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


def _distinct(reference):
  """(rows [u] of the distinct points of `reference` [m, d], each its lowest row, in increasing order; [m] which of
  them each row repeats)."""
  keys = np.ascontiguousarray(reference).view(np.dtype((np.void, reference.dtype.itemsize * reference.shape[1])))
  _, first, inverse = np.unique(keys.ravel(), return_index=True, return_inverse=True)
  order = np.argsort(first)
  rank = np.empty_like(order)
  rank[order] = np.arange(len(order))
  return first[order], rank[inverse.ravel()]


def _with_copies(rows, squared, repeats, k):
  """The k nearest rows of a reference with repeated points, from the nearest of its distinct points (`rows`
  [n, k] indices into them, `squared` [n, k]) and which distinct point each row repeats (`repeats` [m]).

  A row whose point is not among a query's k nearest distinct points (by distance, then lowest row) has k rows
  before it, so the k nearest rows are copies of those points; a point's copies share its distance, and only its
  k lowest rows can be among them.
  """
  counts = np.bincount(repeats)
  grouped = np.argsort(repeats, kind="stable")  # the rows of each point together, in increasing order
  starts = np.cumsum(counts) - counts  # where each point's rows begin in `grouped`
  width = min(k, int(counts.max()))
  slot = np.arange(width)[None]
  copies = np.where(slot < counts[:, None], grouped[np.minimum(starts[:, None] + slot, len(grouped) - 1)], -1)
  candidates = copies[rows].reshape(len(rows), -1)
  candidate_squared = np.where(candidates >= 0, np.repeat(squared, width, axis=1), np.inf)
  order = np.lexsort((np.where(candidates >= 0, candidates, len(repeats)), candidate_squared), axis=-1)[:, :k]
  return np.take_along_axis(candidates, order, 1), np.take_along_axis(candidate_squared, order, 1)


def nearest(query, reference, k):
  """The k nearest reference rows of each query row, exactly (module docstring). Repeated reference points are
  searched once (a cell repeated many times would tie past any number of candidates), then their copies ranked.

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
  distinct, repeats = _distinct(reference)
  points = reference[distinct]
  index = NearestNeighbors(algorithm="brute").fit(points)
  largest = np.sqrt((points.astype(np.float64) ** 2).sum(1).max())
  for lo in range(0, len(query), QUERY_BLOCK):
    found, found_squared = _certified(index, query[lo : lo + QUERY_BLOCK], points, min(k, len(points)), largest)
    if len(points) < len(reference):  # else the distinct points are the reference, row for row
      found, found_squared = _with_copies(found, found_squared, repeats, k)
    rows[lo : lo + len(found)], squared[lo : lo + len(found)] = found, found_squared
  return rows, np.sqrt(squared)
