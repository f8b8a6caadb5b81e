import numpy as np
import pytest

from cardiac_jax import neighbours


def _float64_nearest(query, reference, k):
  """Brute force in float64 from the float32 points, ties to the lower row."""
  squared = ((query[:, None, :].astype(np.float64) - reference[None].astype(np.float64)) ** 2).sum(-1)
  rows = np.broadcast_to(np.arange(len(reference)), squared.shape)
  order = np.lexsort((rows, squared), axis=-1)[:, :k]
  return order, np.sqrt(np.take_along_axis(squared, order, 1))


def _points(rng):
  """Far from the origin (float32 rounding of qq - 2 q.r + rr is large there), with exact duplicates in the
  reference and queries within float32 resolution of them: ties and near-ties at every rank."""
  reference = (rng.normal(size=(700, 20)) * 3 + 40).astype(np.float32)
  reference[100:108] = reference[5]
  reference[300:303] = reference[7]
  reference[400:440] = reference[9]  # a cell repeated 41 times: ties far past the first candidates
  query = (rng.normal(size=(1200, 20)) * 3 + 40).astype(np.float32)
  query[:40] = reference[5] + np.float32(2e-6)
  query[40:80] = reference[7]
  query[80:120] = reference[9] + np.float32(1e-3)
  return query, reference


@pytest.mark.parametrize("extra", [neighbours.EXTRA, 0])
def test_nearest_is_the_float64_answer_with_ties_to_the_lower_row(monkeypatch, extra):
  """With no extra candidates no row is certified by its first candidates, so every row takes the grown search:
  both paths agree with brute force in float64."""
  monkeypatch.setattr(neighbours, "EXTRA", extra)
  query, reference = _points(np.random.default_rng(0))
  rows, distances = neighbours.nearest(query, reference, 5)
  expected_rows, expected_distances = _float64_nearest(query, reference, 5)
  np.testing.assert_array_equal(rows, expected_rows)
  np.testing.assert_array_equal(distances, expected_distances)
  np.testing.assert_array_equal(rows[:40, :5], [[5, 100, 101, 102, 103]] * 40)  # duplicates: the lower rows first
  np.testing.assert_array_equal(rows[80:120, :5], [[9, 400, 401, 402, 403]] * 40)


def test_nearest_with_few_reference_rows_and_blocks():
  rng = np.random.default_rng(1)
  query, reference = rng.normal(size=(600, 3)).astype(np.float32), rng.normal(size=(2, 3)).astype(np.float32)
  rows, distances = neighbours.nearest(query, reference, 5)
  assert rows.shape == distances.shape == (600, 2)  # k beyond the reference: all of it, nearest first
  np.testing.assert_array_equal(rows, _float64_nearest(query, reference, 2)[0])
  assert neighbours.nearest(query[:0], reference, 3)[0].shape == (0, 2)
