"""Label sets: class-conditional split-conformal coverage on exchangeable data, and the edge cases."""

import numpy as np
import pytest

from cardiac_jax import calibrate, conformal


def _cells(rng, n, weights=(0.6, 0.3, 0.1)):
  """Probabilities [n, 3] of a noisy classifier and the true labels, a rare third class among them."""
  labels = rng.choice(3, n, p=weights)
  logits = rng.normal(size=(n, 3)) * 1.5 + 1.2 * np.eye(3)[labels]
  return calibrate.softmax(logits), labels


def test_sets_cover_each_class_at_the_stated_rate_on_exchangeable_cells():
  rng = np.random.default_rng(0)
  probabilities, labels = _cells(rng, 6000)
  scores = conformal.calibration_scores(probabilities, labels, 3)
  assert [len(s) for s in scores] == list(np.bincount(labels, minlength=3)) and scores[0] == sorted(scores[0])
  test_probabilities, test_labels = _cells(rng, 20000)
  for alpha in (0.1, 0.2):
    sets = conformal.label_sets(test_probabilities, conformal.thresholds(scores, alpha))
    covered = conformal.coverage(sets, test_labels)
    assert covered["coverage"] == pytest.approx(1 - alpha, abs=0.015)
    for c in range(3):  # each class within its sampling range (the calibration cells' own noise adds a little)
      low, high = conformal.binomial_interval(int((test_labels == c).sum()), alpha)
      assert low - 0.02 <= covered["per_class"][c] <= high + 0.02
  # A plain (not class-conditional) threshold would under-cover the rare class; these sets do not.
  assert conformal.coverage(conformal.label_sets(test_probabilities, conformal.thresholds(scores)), test_labels)[
      "per_class"][2] > 0.87
  assert 1 < covered["mean_size"] < 3


def test_a_class_with_too_few_calibration_cells_is_in_every_set():
  probabilities = np.array([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7]])
  scores = conformal.calibration_scores(probabilities, np.array([0, 0, 1]), 2)
  limits = conformal.thresholds(scores, 0.1)  # ceil(3 * 0.9) = 3 > 2 cells of class 0: no finite threshold
  assert np.isinf(limits).all() and conformal.label_sets(probabilities, limits).all()
  limits = conformal.thresholds(scores, 0.5)  # class 0: the 2nd smallest of (0.1, 0.2); class 1: the 1st of (0.3,)
  np.testing.assert_allclose(limits, [0.2, 0.3])
  np.testing.assert_array_equal(conformal.label_sets(probabilities, limits), [[True, False], [True, False],
                                                                              [False, True]])
  assert conformal.coverage(np.zeros((2, 2), bool), np.array([0, 1]))["empty"] == 1.0
  with pytest.raises(ValueError, match="alpha must lie in"):
    conformal.thresholds(scores, 1.0)
