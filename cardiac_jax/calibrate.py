"""Logits -> calibrated probabilities: temperature scaling fitted on the validation split, and how to measure it.

A network trained with cross-entropy is often over- (or under-) confident: its top softmax probability is
not the frequency with which it is right. Temperature scaling (Guo et al., 2017) divides every logit by one
number T > 0 chosen to minimise the negative log-likelihood of the validation labels; it cannot change which
class is most probable, only how sure the model says it is. `fit_temperature` finds T; the workdir keeps it
in calibration.json and `inference` applies it to every prediction.

Measures: `expected_calibration_error` (top-label ECE over equal-width bins of the top probability) and its
class-wise version, and `reliability` (the per-bin table a reliability diagram draws).

Cells of a type the model never saw: `SCORES` are per-cell numbers that are high for cells like the training
types (the calibrated top probability; the negative free energy of the logits, Liu et al. 2020). The
calibration record keeps the quantiles of each score on the validation cells (all of known types), so a
threshold can be chosen that keeps a stated share of known cells assigned (`threshold`).
"""

import pathlib

import numpy as np
import scipy.optimize

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


def logsumexp(logits):
  logits = np.asarray(logits, np.float64)
  top = logits.max(-1)
  return top + np.log(np.exp(logits - top[..., None]).sum(-1))


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


def top_label_ece(confidence, correct, bins=ECE_BINS):
  """ECE of any confidence [n] in a label against whether the label is right [n]: sum over equal-width bins of
  |accuracy - mean confidence| x share of cells (for tools whose confidence is not a softmax, e.g. CellTypist)."""
  count, confidence, accuracy = reliability(confidence, correct, bins)
  return float((count * np.abs(accuracy - confidence)).sum() / max(count.sum(), 1))


def expected_calibration_error(probabilities, labels, bins=ECE_BINS):
  """Top-label ECE: sum over bins of the top probability of |accuracy - mean confidence| x share of cells."""
  probabilities = np.asarray(probabilities)
  return top_label_ece(probabilities.max(1), probabilities.argmax(1) == np.asarray(labels), bins)


def fit_vector(logits, labels):
  """Vector scaling (Guo et al., 2017): per-class scale w and bias b [classes] minimising the NLL of
  softmax(logits * w + b), by L-BFGS from the temperature's solution. Unlike a temperature it can change the
  most probable class. Returns (w, b)."""
  logits, labels = np.asarray(logits, np.float64), np.asarray(labels)
  n, classes = logits.shape
  onehot = np.eye(classes)[labels]

  def loss_and_grad(theta):
    w, b = theta[:classes], theta[classes:]
    z = logits * w + b
    log_p = log_softmax(z)
    g = (np.exp(log_p) - onehot) / n
    return -(log_p * onehot).sum() / n, np.concatenate([(g * logits).sum(0), g.sum(0)])

  start = np.concatenate([np.full(classes, 1.0 / fit_temperature(logits, labels)), np.zeros(classes)])
  theta = scipy.optimize.minimize(loss_and_grad, start, jac=True, method="L-BFGS-B").x
  return theta[:classes], theta[classes:]


def classwise_ece(probabilities, labels, bins=ECE_BINS):
  """Class-wise ECE: for every class, the ECE of its probability against being of that class; their mean."""
  probabilities, labels = np.asarray(probabilities), np.asarray(labels)
  errors = []
  for c in range(probabilities.shape[1]):
    count, confidence, frequency = reliability(probabilities[:, c], labels == c, bins)
    errors.append((count * np.abs(frequency - confidence)).sum() / max(count.sum(), 1))
  return float(np.mean(errors))


# Scores of how much a cell looks like the training types, from its logits [n, classes] and the temperature;
# higher = more like them. 'probability': the calibrated top probability. 'energy': T * logsumexp(logits / T),
# the negative free energy, which keeps the logits' scale that the softmax throws away.
SCORES = {
    "probability": lambda logits, t: softmax(logits, t).max(-1),
    "energy": lambda logits, t: t * logsumexp(np.asarray(logits, np.float64) / t),
}
# The validation quantiles of every score kept in calibration.json: 0%, 0.5%, ..., 100%.
QUANTILES = np.linspace(0.0, 1.0, 201)
# The score annotation uses for 'Unassigned' unless told otherwise (trust.py measures which separates cells of
# unseen types better).
DEFAULT_SCORE = "probability"
# The share of known cells (validation) that annotation keeps assigned by default.
KEEP_KNOWN = 0.95


def score(name, logits, temperature=1.0):
  """[n] float64 score `name` (one of SCORES) of each row of logits."""
  if name not in SCORES:
    raise ValueError(f"unknown score {name!r}; known: {list(SCORES)}")
  return np.asarray(SCORES[name](logits, temperature), np.float64)


def threshold(record, name, keep=KEEP_KNOWN):
  """The score `name` below which a cell is 'Unassigned', chosen so that a share `keep` of the validation cells
  (all of types the model knows) stay assigned: the (1 - keep) quantile of their scores."""
  if not 0 < keep <= 1:
    raise ValueError(f"the share of known cells to keep must lie in (0, 1], got {keep}")
  return float(np.interp(1.0 - keep, QUANTILES, record["val_score_quantiles"][name]))


def fit(val_logits, val_labels):
  """The calibration record of a run: the temperature, the validation NLL and ECE before and after it, and the
  validation quantiles of every score in SCORES (with that temperature)."""
  temperature = fit_temperature(val_logits, val_labels)
  before, after = softmax(val_logits), softmax(val_logits, temperature)
  return {
      "method": "temperature",
      "temperature": temperature,
      "val_nll_before": nll(val_logits, val_labels),
      "val_nll_after": nll(val_logits, val_labels, temperature),
      "val_ece_before": expected_calibration_error(before, val_labels),
      "val_ece_after": expected_calibration_error(after, val_labels),
      "val_score_quantiles": {name: np.quantile(score(name, val_logits, temperature), QUANTILES).tolist()
                              for name in SCORES},
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
