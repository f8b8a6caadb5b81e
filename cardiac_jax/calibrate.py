"""Logits -> calibrated probabilities: temperature scaling fitted on the validation split, and how to measure it.

A network trained with cross-entropy is often over- (or under-) confident: its top softmax probability is
not the frequency with which it is right. Temperature scaling (Guo et al., 2017) divides every logit by one
number T > 0 chosen to minimise the negative log-likelihood of the validation labels; it cannot change which
class is most probable, only how sure the model says it is. `fit_temperature` finds T; the workdir keeps it
in calibration.json and `inference` applies it to every prediction.

Measures: `expected_calibration_error` (top-label ECE over equal-width bins of the top probability) and its
class-wise version, and `reliability` (the per-bin table a reliability diagram draws).
"""

import pathlib

import numpy as np

from cardiac_jax import integrity

# Equal-width bins of the top probability for ECE and reliability diagrams.
ECE_BINS = 15
# The temperature is searched on log T in this range (T from 0.05 to 20).
_LOG_T_RANGE = (np.log(0.05), np.log(20.0))


def log_softmax(logits):
  z = logits - logits.max(-1, keepdims=True)
  return z - np.log(np.exp(z).sum(-1, keepdims=True))


def softmax(logits, temperature=1.0):
  """[n, classes] float64 softmax(logits / temperature)."""
  return np.exp(log_softmax(np.asarray(logits, np.float64) / temperature))


def nll(logits, labels, temperature=1.0):
  """Mean negative log-likelihood of labels [n] under softmax(logits [n, classes] / temperature)."""
  logits = np.asarray(logits, np.float64) / temperature
  return float(-log_softmax(logits)[np.arange(len(labels)), labels].mean())


def fit_temperature(logits, labels, iterations=100):
  """The temperature T minimising `nll(logits, labels, T)`: golden-section search on log T (NLL is convex in
  1/T, so it has one minimum on the range searched)."""
  logits, labels = np.asarray(logits, np.float64), np.asarray(labels)
  lo, hi = _LOG_T_RANGE
  ratio = (np.sqrt(5) - 1) / 2
  a, b = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
  fa, fb = nll(logits, labels, np.exp(a)), nll(logits, labels, np.exp(b))
  for _ in range(iterations):
    if fa < fb:
      hi, b, fb = b, a, fa
      a = hi - ratio * (hi - lo)
      fa = nll(logits, labels, np.exp(a))
    else:
      lo, a, fa = a, b, fb
      b = lo + ratio * (hi - lo)
      fb = nll(logits, labels, np.exp(b))
  return float(np.exp((lo + hi) / 2))


def reliability(confidence, correct, bins=ECE_BINS):
  """Per equal-width bin of `confidence` [n]: (count, mean confidence, accuracy), arrays of length `bins`."""
  confidence, correct = np.asarray(confidence, np.float64), np.asarray(correct, np.float64)
  which = np.minimum((confidence * bins).astype(int), bins - 1)
  count = np.bincount(which, minlength=bins).astype(np.float64)
  safe = np.maximum(count, 1)
  return count, np.bincount(which, confidence, bins) / safe, np.bincount(which, correct, bins) / safe


def expected_calibration_error(probabilities, labels, bins=ECE_BINS):
  """Top-label ECE: sum over bins of the top probability of |accuracy - mean confidence| x share of cells."""
  probabilities = np.asarray(probabilities)
  correct = probabilities.argmax(1) == np.asarray(labels)
  count, confidence, accuracy = reliability(probabilities.max(1), correct, bins)
  return float((count * np.abs(accuracy - confidence)).sum() / max(count.sum(), 1))


def classwise_ece(probabilities, labels, bins=ECE_BINS):
  """Class-wise ECE: for every class, the ECE of its probability against being of that class; their mean."""
  probabilities, labels = np.asarray(probabilities), np.asarray(labels)
  errors = []
  for c in range(probabilities.shape[1]):
    count, confidence, frequency = reliability(probabilities[:, c], labels == c, bins)
    errors.append((count * np.abs(frequency - confidence)).sum() / max(count.sum(), 1))
  return float(np.mean(errors))


def fit(val_logits, val_labels):
  """The calibration record of a run: the temperature and the validation NLL and ECE before and after it."""
  temperature = fit_temperature(val_logits, val_labels)
  before, after = softmax(val_logits), softmax(val_logits, temperature)
  return {
      "method": "temperature",
      "temperature": temperature,
      "val_nll_before": nll(val_logits, val_labels),
      "val_nll_after": nll(val_logits, val_labels, temperature),
      "val_ece_before": expected_calibration_error(before, val_labels),
      "val_ece_after": expected_calibration_error(after, val_labels),
  }


def test_record(logits, labels, temperature):
  """Test NLL and top-label and class-wise ECE without and with the temperature."""
  record = {}
  for name, t in (("before", 1.0), ("after", temperature)):
    probabilities = softmax(logits, t)
    record[f"test_nll_{name}"] = nll(logits, labels, t)
    record[f"test_ece_{name}"] = expected_calibration_error(probabilities, labels)
    record[f"test_classwise_ece_{name}"] = classwise_ece(probabilities, labels)
  return record


def load(workdir):
  """A workdir's calibration record (calibration.json), or None for a run trained before calibration existed."""
  path = pathlib.Path(workdir) / "calibration.json"
  return integrity.read_json(path) if path.exists() else None
