"""Label sets with coverage: class-conditional (Mondrian) split-conformal prediction.

A cell's label set holds every class c whose nonconformity 1 - p_c (p: calibrated probabilities) is at most
that class's threshold q_c, the ceil((n_c + 1)(1 - alpha))-th smallest nonconformity of the n_c calibration cells
of class c. If the calibration cells and a new cell of class c are exchangeable, the set contains c with
probability at least 1 - alpha, for every class separately (so rare types get the same coverage as common
ones; Vovk et al. 2005, Angelopoulos & Bates 2021). A class with too few calibration cells for alpha
(ceil((n_c + 1)(1 - alpha)) > n_c) is in every set. A cell whose set is empty is one that no class explains as
well as the calibration cells of that class were explained.

The calibration cells are a run's validation cells (donors held out from training; the same cells fit the
calibration map and chose the best epoch), so cells of new donors are exchangeable with them only as far as
donors are: the trust experiment measures the coverage on held-out donors.
"""

import math

import numpy as np
import scipy.stats

# The error rate a label set is built for by default: it misses a cell's type at most 10% of the time.
ALPHA = 0.1
# Decimals of every nonconformity (a run's calibration cells' are kept in its calibration record).
DECIMALS = 6


def nonconformity(probabilities):
  """[n, classes] 1 - each class's probability, rounded to DECIMALS (as a run keeps its calibration cells')."""
  return np.round(1.0 - np.asarray(probabilities, np.float64), DECIMALS)


def calibration_scores(probabilities, labels, n_classes):
  """Per class, the sorted nonconformities of its calibration cells (lists, JSON-ready; [] for a class without
  cells): what a run keeps so that label sets can be built for any alpha."""
  labels = np.asarray(labels)
  scores = nonconformity(probabilities)[np.arange(len(labels)), labels]
  return [np.sort(scores[labels == c]).tolist() for c in range(n_classes)]


def thresholds(scores_by_class, alpha=ALPHA):
  """[classes] float64 q_c for error rate alpha: the ceil((n_c + 1)(1 - alpha))-th smallest calibration score of
  class c, or +inf where class c has too few calibration cells for alpha (the class is then in every set)."""
  if not 0 < alpha < 1:
    raise ValueError(f"alpha must lie in (0, 1), got {alpha}")
  out = np.full(len(scores_by_class), np.inf)
  for c, scores in enumerate(scores_by_class):
    rank = math.ceil((len(scores) + 1) * (1 - alpha) - 1e-9)  # the tolerance: (n + 1)(1 - alpha) in floats
    if rank <= len(scores):
      out[c] = scores[rank - 1]
  return out


def label_sets(probabilities, class_thresholds):
  """[n, classes] bool: class c is in a cell's set where 1 - p_c <= q_c (probabilities [n, classes])."""
  return nonconformity(probabilities) <= np.asarray(class_thresholds)[None, :]


def coverage(sets, labels):
  """Share of cells whose set holds their class, overall and per class (None where a class has no cells), and
  the mean set size: {'coverage', 'per_class', 'mean_size', 'empty'}."""
  sets, labels = np.asarray(sets, bool), np.asarray(labels)
  hit = sets[np.arange(len(labels)), labels]
  per_class = [float(hit[labels == c].mean()) if (labels == c).any() else None for c in range(sets.shape[1])]
  return {"coverage": float(hit.mean()), "per_class": per_class, "mean_size": float(sets.sum(1).mean()),
          "empty": float((sets.sum(1) == 0).mean())}


def binomial_interval(n, alpha=ALPHA, level=0.95):
  """(low, high): the central `level` range of the share of n cells covered when each is covered with
  probability 1 - alpha (Binomial(n, 1 - alpha) / n): how far sampling alone moves a class's coverage."""
  low, high = scipy.stats.binom.interval(level, max(n, 1), 1 - alpha)
  return float(low / max(n, 1)), float(high / max(n, 1))
