"""Logits -> calibrated probabilities: an affine map of the logits fitted on the validation split, and how to
measure it.

A network trained with cross-entropy is often over- (or under-) confident: its top softmax probability is
not the frequency with which it is right. Two maps of the logits are fitted to minimise the negative
log-likelihood (NLL) of the validation labels (Guo et al., 2017):
- temperature scaling, logits / T with one number T > 0 (`fit_temperature`): it cannot change which class is
  most probable, only how sure the model says it is;
- vector scaling, logits * w + b with a scale and a bias per class (`fit_vector`): it can also change which
  class is most probable, and so the label a cell gets.
`fit` fits both on the validation cells and chooses vector scaling only where it measurably helps there: in a
2-fold cross-fit (each map fitted on one half of the validation cells and its NLL measured on the other half,
both ways) its NLL must be lower than the temperature's by more than `VECTOR_MARGIN` standard errors of the
per-cell difference. The workdir keeps the
chosen map, refitted on all validation cells, in calibration.json as `scale` and `bias` [classes] (for a
temperature 1/T and 0), and `apply` applies it to every prediction.

Measures: `expected_calibration_error` (top-label ECE over equal-width bins of the top probability) and its
class-wise version, and `reliability` (the per-bin table a reliability diagram draws).

Cells of a type the model never saw: `SCORES` are per-cell numbers of the calibrated logits that are high for
cells like the training types (the top probability; the negative free energy, Liu et al. 2020). The
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
# Vector scaling is chosen only when its cross-fitted validation NLL is lower than the temperature's by more
# than this many standard errors of the mean per-cell difference (so that noise in the halves does not pick
# the map with more parameters where one temperature is all there is); the cross-fit's halves come from this
# seed.
VECTOR_MARGIN = 2.0
CROSS_FIT_SEED = 0
METHODS = ("temperature", "vector")


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


def fit_map(method, logits, labels):
  """(scale, bias) [classes] of calibration `method` (one of METHODS) fitted on logits [n, classes], labels [n]."""
  if method == "vector":
    return fit_vector(logits, labels)
  classes = np.shape(logits)[1]
  return np.full(classes, 1.0 / fit_temperature(logits, labels)), np.zeros(classes)


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


def apply(record, logits):
  """[n, classes] float64 calibrated logits: logits * scale + bias of a calibration record (`fit`). A record
  from before vector scaling, with only a temperature T, means logits / T; no record (None), the logits as
  they are."""
  logits = np.asarray(logits, np.float64)
  if record is None:
    return logits
  if "scale" not in record:
    return logits / record["temperature"]
  return logits * np.asarray(record["scale"], np.float64) + np.asarray(record["bias"], np.float64)


def describe(record):
  """The calibration of a record in words, e.g. 'temperature scaling (T = 0.98)'."""
  if record is None:
    return "none"
  if record.get("method", "temperature") == "temperature":
    return f"temperature scaling (T = {record['temperature']:.3g})"
  return "vector scaling"


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


def classwise_ece(probabilities, labels, bins=ECE_BINS):
  """Class-wise ECE: for every class, the ECE of its probability against being of that class; their mean."""
  probabilities, labels = np.asarray(probabilities), np.asarray(labels)
  errors = []
  for c in range(probabilities.shape[1]):
    count, confidence, frequency = reliability(probabilities[:, c], labels == c, bins)
    errors.append((count * np.abs(frequency - confidence)).sum() / max(count.sum(), 1))
  return float(np.mean(errors))


# Scores of how much a cell looks like the training types, from its calibrated logits [n, classes] (`apply`);
# higher = more like them. 'probability': the top probability. 'energy': logsumexp of the calibrated logits,
# the negative free energy, which keeps the logits' scale that the softmax throws away.
SCORES = {
    "probability": lambda calibrated: softmax(calibrated).max(-1),
    "energy": logsumexp,
}
# The validation quantiles of every score kept in calibration.json: 0%, 0.5%, ..., 100%.
QUANTILES = np.linspace(0.0, 1.0, 201)
# The score annotation uses for 'Unassigned' unless told otherwise: the one that separated cells of unseen types
# from known ones better in trust.py's leave-one-type-out runs (README, "How far to trust a label": mean AUROC
# 0.726 for the energy against 0.700 for the top probability over the 7 types, ahead on 4 of them; 2026-11-25).
DEFAULT_SCORE = "energy"
# The share of known cells (validation) that annotation keeps assigned by default.
KEEP_KNOWN = 0.95


def score(name, calibrated):
  """[n] float64 score `name` (one of SCORES) of each row of calibrated logits [n, classes] (`apply`)."""
  if name not in SCORES:
    raise ValueError(f"unknown score {name!r}; known: {list(SCORES)}")
  return np.asarray(SCORES[name](np.asarray(calibrated, np.float64)), np.float64)


def threshold(record, name, keep=KEEP_KNOWN):
  """The score `name` below which a cell is 'Unassigned', chosen so that a share `keep` of the validation cells
  (all of types the model knows) stay assigned: the (1 - keep) quantile of their scores."""
  if not 0 < keep <= 1:
    raise ValueError(f"the share of known cells to keep must lie in (0, 1], got {keep}")
  return float(np.interp(1.0 - keep, QUANTILES, record["val_score_quantiles"][name]))


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


def fit(val_logits, val_labels):
  """The calibration record of a run: both maps fitted on all validation cells ('temperature'; 'vector': scale
  and bias), the chosen one ('method', 'scale', 'bias' [classes]) and how it was chosen ('choice'), the
  validation NLL and ECE before and after the chosen map, and the validation quantiles of every score in
  SCORES (of the calibrated logits)."""
  logits, labels = np.asarray(val_logits, np.float64), np.asarray(val_labels)
  fits = {m: fit_map(m, logits, labels) for m in METHODS}
  method, choice = choose(logits, labels)
  scale, bias = fits[method]
  record = {"method": method, "scale": scale.tolist(), "bias": bias.tolist(), "choice": choice,
            "temperature": float(1.0 / fits["temperature"][0][0]),
            "vector": {"scale": fits["vector"][0].tolist(), "bias": fits["vector"][1].tolist()}}
  calibrated = apply(record, logits)
  return dict(
      record,
      val_nll_before=nll(logits, labels),
      val_nll_after=nll(calibrated, labels),
      val_ece_before=expected_calibration_error(softmax(logits), labels),
      val_ece_after=expected_calibration_error(softmax(calibrated), labels),
      val_score_quantiles={name: np.quantile(score(name, calibrated), QUANTILES).tolist() for name in SCORES},
  )


def test_record(logits, labels, record):
  """Test accuracy, NLL and top-label and class-wise ECE without and with the calibration `record` (None:
  without). The accuracy after it is that of the labels annotate.py gives (vector scaling can move labels)."""
  out = {}
  for name, calibrated in (("before", np.asarray(logits, np.float64)), ("after", apply(record, logits))):
    probabilities = softmax(calibrated)
    out[f"test_accuracy_{name}"] = float((probabilities.argmax(1) == np.asarray(labels)).mean())
    out[f"test_nll_{name}"] = nll(calibrated, labels)
    out[f"test_ece_{name}"] = expected_calibration_error(probabilities, labels)
    out[f"test_classwise_ece_{name}"] = classwise_ece(probabilities, labels)
  return out


def upgraded(record):
  """A calibration record as this version reads it: one from before vector scaling kept its energy quantiles as
  T x logsumexp(logits / T); the energy is now logsumexp(logits / T), so they are divided by T."""
  if record is None or "scale" in record or "val_score_quantiles" not in record:
    return record
  quantiles = dict(record["val_score_quantiles"])
  quantiles["energy"] = (np.asarray(quantiles["energy"]) / record["temperature"]).tolist()
  return dict(record, val_score_quantiles=quantiles)


def load(workdir):
  """A workdir's calibration record (calibration.json, `upgraded`), or None for a run trained before calibration
  existed."""
  path = pathlib.Path(workdir) / "calibration.json"
  return upgraded(integrity.read_json(path)) if path.exists() else None
