"""Logits -> calibrated probabilities: calibration methods by name, each an affine map of the logits fitted on
the validation split to minimise the negative log-likelihood (NLL) of its labels (Guo et al., 2017).

`METHODS`:
- 'temperature': logits / T with one number T > 0 (`fit_temperature`); it cannot change which class is most
  probable, only how sure the model says it is;
- 'vector': logits * w + b with a scale and a bias per class (`fit_vector`); it can also change which class is
  most probable, and so the label a cell gets.
`fit` fits every method on the validation cells and chooses vector scaling only where it measurably helps: in
a 2-fold cross-fit (each map fitted on one half of the validation cells, its NLL measured on the other half,
both ways) its NLL must be lower than the temperature's by more than `VECTOR_MARGIN` standard errors of the
per-cell difference. The record keeps the chosen map as `scale` and `bias` [classes] (for a temperature 1/T and
0), and `apply` applies it to every prediction. ECE and reliability tables are in metrics.py.
"""

import dataclasses
from typing import Callable

import numpy as np
import scipy.optimize

from cardiac_jax.metrics import classwise_ece, expected_calibration_error

# The temperature is searched on log T in this range (T from 0.05 to 20).
_LOG_T_RANGE = (np.log(0.05), np.log(20.0))
# Vector scaling is chosen only when its cross-fitted validation NLL is lower than the temperature's by more
# than this many standard errors of the mean per-cell difference (so that noise in the halves does not pick
# the map with more parameters where one temperature is all there is); the cross-fit's halves come from this
# seed.
VECTOR_MARGIN = 2.0
CROSS_FIT_SEED = 0


def log_softmax(logits):
  z = logits - logits.max(-1, keepdims=True)
  return z - np.log(np.exp(z).sum(-1, keepdims=True))


def softmax(logits):
  """[n, classes] float64 softmax of logits [n, classes]."""
  return np.exp(log_softmax(np.asarray(logits, np.float64)))


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


def _fit_temperature_map(logits, labels):
  classes = np.shape(logits)[1]
  return np.full(classes, 1.0 / fit_temperature(logits, labels)), np.zeros(classes)


@dataclasses.dataclass(frozen=True)
class Method:
  """A calibration method: an affine map logits * scale + bias of its own shape.

  Attributes:
    fit: (logits [n, classes], labels [n]) -> (scale, bias) [classes], fitted to minimise the NLL.
    saved: (scale, bias) -> the JSON value the calibration record keeps under the method's name.
    apply: (that JSON value, logits [n, classes] float64) -> calibrated logits.
  """

  fit: Callable
  saved: Callable
  apply: Callable


METHODS = {
    "temperature": Method(_fit_temperature_map, lambda scale, bias: float(1.0 / scale[0]),
                          lambda temperature, logits: logits / temperature),
    "vector": Method(fit_vector, lambda scale, bias: {"scale": scale.tolist(), "bias": bias.tolist()},
                     lambda saved, logits: logits * np.asarray(saved["scale"]) + np.asarray(saved["bias"])),
}


def fit_map(method, logits, labels):
  """(scale, bias) [classes] of calibration `method` (a name in METHODS) fitted on logits [n, classes], labels [n]."""
  return METHODS[method].fit(logits, labels)


def halves(labels, seed=CROSS_FIT_SEED):
  """[n] bool: the first half of a 2-fold split of the cells, stratified by label (each class's cells, in an
  order drawn with `seed`, go to either half in turn)."""
  labels = np.asarray(labels)
  order = np.random.default_rng(seed).permutation(len(labels))
  order = order[np.argsort(labels[order], kind="stable")]
  first = np.zeros(len(labels), bool)
  first[order[::2]] = True
  return first


def cross_fit_nll(method, logits, labels, first):
  """[n] NLL of each cell under `method` fitted on the half (`first` [n] bool, or its complement) it is not in."""
  logits, labels = np.asarray(logits, np.float64), np.asarray(labels)
  out = np.zeros(len(labels))
  for fit_on in (first, ~first):
    scale, bias = fit_map(method, logits[fit_on], labels[fit_on])
    out[~fit_on] = -log_softmax(logits[~fit_on] * scale + bias)[np.arange((~fit_on).sum()), labels[~fit_on]]
  return out


def apply(record, logits, method=None):
  """[n, classes] float64 calibrated logits under a calibration record (`fit`): its chosen map, logits * scale +
  bias, or with `method` the map of that name fitted beside it; no record (None), the logits as they are."""
  logits = np.asarray(logits, np.float64)
  if record is None:
    return logits
  if method is not None:
    return METHODS[method].apply(record[method], logits)
  return logits * np.asarray(record["scale"], np.float64) + np.asarray(record["bias"], np.float64)


def describe(record):
  """The calibration of a record in words, e.g. 'temperature scaling (T = 0.98)'."""
  if record is None:
    return "none"
  if record["method"] == "temperature":
    return f"temperature scaling (T = {record['temperature']:.3g})"
  return "vector scaling"


def choose(logits, labels):
  """(method, how it was chosen): vector scaling where its 2-fold cross-fitted mean NLL on these cells is lower
  than the temperature's by more than VECTOR_MARGIN standard errors of the per-cell difference, else the
  temperature (also when a class has fewer than 2 cells, so that a half would lack it)."""
  rule = (f"vector when its 2-fold cross-fitted validation NLL (stratified halves, seed {CROSS_FIT_SEED}) is "
          f"lower than the temperature's by more than {VECTOR_MARGIN:g} standard errors of the per-cell difference")
  if np.bincount(labels, minlength=np.shape(logits)[1]).min() < 2:
    return "temperature", {"rule": rule, "cross_fit_nll": {}, "why": "a class has fewer than 2 validation cells"}
  first = halves(labels)
  per_cell = {m: cross_fit_nll(m, logits, labels, first) for m in METHODS}
  difference = per_cell["vector"] - per_cell["temperature"]
  standard_error = float(difference.std(ddof=1) / np.sqrt(len(difference)))
  method = "vector" if difference.mean() < -VECTOR_MARGIN * standard_error else "temperature"
  return method, {"rule": rule, "cross_fit_nll": {m: float(v.mean()) for m, v in per_cell.items()},
                  "standard_error": standard_error}


# What a run's calibration map is (config train.calibration_method): 'auto' (`choose`), or a name in METHODS.
CHOICES = ("auto",) + tuple(METHODS)


def fit(val_logits, val_labels, method="auto"):
  """The calibration record of a run: every method in METHODS fitted on all validation cells (under its name),
  the one used ('method', 'scale', 'bias' [classes]: `method`, or with 'auto' the one `choose` picks) and how it
  was chosen ('choice'), and the validation NLL and ECE before and after that map."""
  if method not in CHOICES:
    raise ValueError(f"calibration method must be one of {CHOICES}, not {method!r}")
  logits, labels = np.asarray(val_logits, np.float64), np.asarray(val_labels)
  fits = {m: fit_map(m, logits, labels) for m in METHODS}
  method, choice = choose(logits, labels) if method == "auto" else (method, {"rule": "named in the run's config"})
  scale, bias = fits[method]
  record = {"method": method, "scale": scale.tolist(), "bias": bias.tolist(), "choice": choice,
            **{m: METHODS[m].saved(*fits[m]) for m in METHODS}}
  calibrated = apply(record, logits)
  return dict(
      record,
      val_nll_before=nll(logits, labels),
      val_nll_after=nll(calibrated, labels),
      val_ece_before=expected_calibration_error(softmax(logits), labels),
      val_ece_after=expected_calibration_error(softmax(calibrated), labels),
  )


def test_record(logits, labels, record):
  """Test accuracy, NLL and top-label and class-wise ECE without and with the calibration `record` (None:
  without). The accuracy after it is that of every cell's most probable class after calibration (vector scaling
  can move labels); the labels annotate gives also leave some cells Unassigned."""
  out = {}
  for name, calibrated in (("before", np.asarray(logits, np.float64)), ("after", apply(record, logits))):
    probabilities = softmax(calibrated)
    out[f"test_accuracy_{name}"] = float((probabilities.argmax(1) == np.asarray(labels)).mean())
    out[f"test_nll_{name}"] = nll(calibrated, labels)
    out[f"test_ece_{name}"] = expected_calibration_error(probabilities, labels)
    out[f"test_classwise_ece_{name}"] = classwise_ece(probabilities, labels)
  return out
