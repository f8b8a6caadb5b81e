"""Calibration: temperature and vector scaling fitted on validation logits, the choice between them, and the
measures (ECE, Unassigned thresholds)."""

import numpy as np
import pytest

from cardiac_jax import calibrate, metrics, unassigned
from cardiac_jax import workdir as rundir
from cardiac_jax.errors import ConfigError


def _logits(seed, n=2000, classes=4):
  """(true logits [n, classes], labels [n]): Gaussian classes of equal spread, so that softmax(true) is right."""
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, classes, n)
  return 1.5 * (rng.normal(size=(n, classes)) + 1.5 * np.eye(classes)[labels]), labels


def _follows_the_rule(record):
  choice = record["choice"]
  gain = choice["cross_fit_nll"]["temperature"] - choice["cross_fit_nll"]["vector"]
  return (record["method"] == "vector") == (gain > calibrate.VECTOR_MARGIN * choice["standard_error"])


def test_temperature_scaling_lowers_the_validation_nll_and_keeps_the_labels():
  true, labels = _logits(0)
  overconfident = 4.0 * true
  record = calibrate.fit(overconfident, labels)
  assert record["temperature"] == pytest.approx(4.0 * calibrate.fit_temperature(true, labels), rel=1e-3)
  assert record["val_nll_after"] < record["val_nll_before"] - 0.1
  assert record["val_ece_after"] < record["val_ece_before"]
  calibrated = overconfident / record["temperature"]
  np.testing.assert_array_equal(calibrated.argmax(1), overconfident.argmax(1))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_one_temperature_for_every_class_keeps_temperature_scaling(seed):
  true, labels = _logits(seed)
  record = calibrate.fit(true / 0.25, labels)
  assert _follows_the_rule(record) and record["method"] == "temperature"
  np.testing.assert_allclose(record["scale"], 1.0 / record["temperature"])
  np.testing.assert_array_equal(record["bias"], 0.0)
  calibrated = calibrate.apply(record, true / 0.25)
  np.testing.assert_array_equal(calibrated.argmax(1), true.argmax(1))
  assert record["val_nll_after"] == pytest.approx(calibrate.nll(calibrated, labels))


def test_vector_scaling_is_chosen_where_classes_differ_in_overconfidence():
  true, labels = _logits(1, n=3000)
  skewed = true * np.array([3.0, 1.0, 0.5, 1.0]) + np.array([0.0, 1.0, 0.0, -1.0])  # per-class scale and bias
  record = calibrate.fit(skewed, labels)
  assert _follows_the_rule(record) and record["method"] == "vector"
  assert record["choice"]["cross_fit_nll"]["vector"] < record["choice"]["cross_fit_nll"]["temperature"] - 0.05
  scale, bias = calibrate.fit_vector(skewed, labels)
  np.testing.assert_allclose(record["scale"], scale)
  np.testing.assert_allclose(calibrate.apply(record, skewed), skewed * scale + bias)
  assert record["val_nll_after"] < calibrate.nll(skewed, labels, record["temperature"]) - 0.01
  assert record["val_nll_after"] <= calibrate.nll(true, labels)  # at least as good as undoing the skew
  assert (calibrate.apply(record, skewed).argmax(1) != skewed.argmax(1)).any()  # vector scaling moves labels
  tested = calibrate.test_record(skewed, labels, record)
  assert tested["test_accuracy_before"] == pytest.approx((skewed.argmax(1) == labels).mean())
  # A run that names its map gets it, chosen or not: a temperature keeps every cell's most probable class.
  named = calibrate.fit(skewed, labels, "temperature")
  assert named["method"] == "temperature" and named["choice"]["rule"] == "named in the run's config"
  np.testing.assert_array_equal(calibrate.apply(named, skewed).argmax(1), skewed.argmax(1))
  assert calibrate.fit(skewed, labels, "vector")["scale"] == record["scale"]
  with pytest.raises(ValueError, match="must be one of"):
    calibrate.fit(skewed, labels, "isotonic")
  assert tested["test_accuracy_after"] == pytest.approx((calibrate.apply(record, skewed).argmax(1) == labels).mean())
  assert tested["test_accuracy_after"] > tested["test_accuracy_before"]  # undoing the skew's biases helps
  first = calibrate.halves(labels)
  assert all(abs(2 * first[labels == c].sum() - (labels == c).sum()) <= 1 for c in range(4))


def test_a_record_from_before_vector_scaling_is_a_temperature():
  true, labels = _logits(3)
  logits = 3.0 * true
  t = calibrate.fit_temperature(logits, labels)
  old_energy = t * calibrate.logsumexp(logits / t)  # how the energy score was defined then
  old = {"method": "temperature", "temperature": t, "val_score_quantiles": {
      "probability": np.quantile(calibrate.softmax(logits / t).max(1), unassigned.QUANTILES).tolist(),
      "energy": np.quantile(old_energy, unassigned.QUANTILES).tolist()}}
  read = rundir.upgraded_calibration(old)
  np.testing.assert_allclose(calibrate.apply(read, logits), logits / t)
  np.testing.assert_array_equal(calibrate.apply(None, logits), logits)
  for name in unassigned.LOGIT_SCORES:
    values = unassigned.score(name, calibrate.apply(read, logits))
    assert (values >= unassigned.threshold(read, name, 0.9)).mean() == pytest.approx(0.9, abs=0.002)


def test_expected_calibration_error_by_hand():
  probabilities = np.array([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.3, 0.7]])
  labels = np.array([0, 1, 0, 1])
  # Bins of the top probability: 0.9 (twice, half right), 0.6 (right), 0.7 (right).
  expected = (2 * abs(0.5 - 0.9) + abs(1 - 0.6) + abs(1 - 0.7)) / 4
  assert metrics.expected_calibration_error(probabilities, labels) == pytest.approx(expected)
  perfect = np.eye(2)[labels]
  assert metrics.expected_calibration_error(perfect, labels) == 0
  assert metrics.classwise_ece(perfect, labels) == 0


def test_unassigned_thresholds_keep_the_stated_share_of_validation_cells():
  rng = np.random.default_rng(2)
  labels = rng.integers(0, 3, 1000)
  logits = 2 * rng.normal(size=(1000, 3)) + 2 * np.eye(3)[labels]
  record = calibrate.fit(logits, labels)
  record["val_score_quantiles"] = unassigned.validation_quantiles(calibrate.apply(record, logits))
  for name in unassigned.LOGIT_SCORES:
    values = unassigned.score(name, calibrate.apply(record, logits))
    for keep in (0.8, 0.95):
      assert (values >= unassigned.threshold(record, name, keep)).mean() == pytest.approx(keep, abs=0.006)
  energy = unassigned.score("energy", logits / 2.0)
  np.testing.assert_allclose(energy, np.log(np.exp(logits / 2.0).sum(1)))


def test_per_class_thresholds_keep_the_stated_share_of_each_classs_validation_cells():
  """A rare class with low scores loses most of its cells to one global threshold; one threshold per class
  (Mondrian, chosen on that class's validation cells) keeps the stated share of each class's cells assigned."""
  rng = np.random.default_rng(4)
  labels = np.r_[np.zeros(900, int), np.ones(900, int), np.full(200, 2)]
  logits = rng.normal(size=(2000, 3)) + 4 * np.eye(3)[labels]
  logits[labels == 2] -= 5.0  # the rare class: the same margin, a much lower energy
  record = unassigned.fitted_calibration(logits, labels)
  calibrated = calibrate.apply(record, logits)
  top = calibrated.argmax(1)
  one = unassigned.rule(record, "energy", per_class=False)
  per_class = unassigned.rule(record, "energy")  # the default where the record has per-class quantiles
  assert len(per_class.class_thresholds) == 3 and per_class.class_thresholds[2] < one.threshold
  assert one.unassigned(calibrated)[top == 2].mean() > 0.3  # far more than the 5% it keeps out overall
  for c in range(3):
    right = (top == c) & (labels == c)
    assert per_class.unassigned(calibrated)[right].mean() == pytest.approx(0.05, abs=0.03)
  assert unassigned.rule(record, "energy", per_class=True).record()["class_thresholds"] == list(
      per_class.class_thresholds)
  few = unassigned.validation_quantiles_by_class(calibrated[::100], labels[::100])  # too few cells per class: no own threshold
  assert all(q is None for q in few["energy"])


def test_the_combined_score_keeps_the_stated_share_and_leaves_out_cells_only_novelty_sees():
  """'combined' (the lower of a cell's energy and novelty quantiles among its type's validation cells) keeps 95% of
  each class's validation-like cells assigned, and leaves out cells whose logits look known but whose novelty
  score is lower than any validation cell's; a run without novelty scores has no combined score."""
  rng = np.random.default_rng(5)
  labels = np.r_[np.zeros(1500, int), np.ones(1500, int), np.full(400, 2)]
  logits = rng.normal(size=(len(labels), 3)) + 4 * np.eye(3)[labels]
  novelty = rng.normal(size=len(labels)) - 2.0 * (labels == 2)  # a class whose cells lie further from the others
  record = unassigned.fitted_calibration(logits, labels, val_novelty=novelty)
  rule = unassigned.rule(record, "combined")
  assert len(rule.class_thresholds) == 3 and unassigned.rule(record).score == unassigned.DEFAULT_SCORE == "energy"
  with pytest.raises(ConfigError, match="needs a run with a novelty score"):
    unassigned.rule(unassigned.fitted_calibration(logits, labels), "combined")
  fresh = rng.normal(size=(len(labels), 3)) + 4 * np.eye(3)[labels]  # new cells of the same classes
  fresh_novelty = rng.normal(size=len(labels)) - 2.0 * (labels == 2)
  calibrated = calibrate.apply(record, fresh)
  left_out = rule.unassigned(calibrated, fresh_novelty)
  for c in range(3):
    assert left_out[calibrated.argmax(1) == c].mean() == pytest.approx(0.05, abs=0.03)
  values = rule.values(calibrated, fresh_novelty)
  assert ((values >= 0) & (values <= 1)).all()
  novel = rule.unassigned(calibrated, fresh_novelty - 10.0)  # the same logits, far from every training cell
  assert novel.mean() == 1.0
  with pytest.raises(ConfigError, match="novelty"):
    rule.unassigned(calibrated)
