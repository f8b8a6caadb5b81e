"""When a cell is 'Unassigned': scores of how much a cell looks like the training types, and the rule that
leaves the unlike ones without a label.

`SCORES` are per-cell numbers of the calibrated logits (calibrate.apply), higher for cells like the training
types: 'probability', the top probability; 'energy', the logsumexp of the calibrated logits (the negative free
energy, Liu et al. 2020), which keeps the logits' scale that the softmax throws away. A run keeps the quantiles
of each score on its validation cells (held-out donors, all of known types) with its calibration, so that a
threshold can be chosen that keeps a stated share of known cells assigned (`threshold`).
"""

import dataclasses
import math

import numpy as np

from cardiac_jax import calibrate, conformal
from cardiac_jax.errors import ConfigError

UNASSIGNED = "Unassigned"
SCORES = {
    "probability": lambda calibrated: calibrate.softmax(calibrated).max(-1),
    "energy": calibrate.logsumexp,
}
# The validation quantiles of every score kept beside the calibration: 0%, 0.5%, ..., 100%.
QUANTILES = np.linspace(0.0, 1.0, 201)
# The score that decides 'Unassigned' unless told otherwise: the one that separated cells of types left out of
# training from known ones better in the trust experiment's leave-one-type-out runs (docs/trust.md).
DEFAULT_SCORE = "energy"
# The share of known cells (validation) kept assigned by default.
KEEP_KNOWN = 0.95
# The rule's score names: a score, or 'none' (every cell gets its most probable class).
RULE_SCORES = ("none",) + tuple(SCORES)
# A class's own threshold (Mondrian: one per class) needs at least this many validation cells of that class; a
# class with fewer takes the threshold of all validation cells.
MIN_CLASS_CELLS = 20


def score(name, calibrated):
  """[n] float64 score `name` (one of SCORES) of each row of calibrated logits [n, classes]."""
  if name not in SCORES:
    raise ConfigError(f"unknown unassigned score {name!r}; known: {list(SCORES)}")
  return np.asarray(SCORES[name](np.asarray(calibrated, np.float64)), np.float64)


def validation_quantiles(calibrated):
  """{score name: the QUANTILES of that score} over validation cells' calibrated logits [n, classes]."""
  return {name: np.quantile(score(name, calibrated), QUANTILES).tolist() for name in SCORES}


def validation_quantiles_by_class(calibrated, labels):
  """{score name: per class, the QUANTILES of the score over the validation cells of that class (None for a class
  with fewer than MIN_CLASS_CELLS of them)} of validation cells' calibrated logits [n, classes] and labels [n]."""
  labels = np.asarray(labels)
  out = {}
  for name in SCORES:
    values = score(name, calibrated)
    out[name] = [np.quantile(values[labels == c], QUANTILES).tolist() if (labels == c).sum() >= MIN_CLASS_CELLS
                 else None for c in range(np.shape(calibrated)[1])]
  return out


def fitted_calibration(val_logits, val_labels, method="auto"):
  """A run's calibration record: calibrate.fit (`method`: a name in calibrate.CHOICES) on the validation logits
  [n, classes] and labels [n], with the validation quantiles of every score under the chosen map, over all
  validation cells ('val_score_quantiles') and per class ('val_score_quantiles_by_class'), and each validation
  cell's nonconformity by class for label sets ('val_nonconformity_by_class', conformal.py)."""
  record = calibrate.fit(val_logits, val_labels, method)
  calibrated = calibrate.apply(record, val_logits)
  record["val_score_quantiles"] = validation_quantiles(calibrated)
  record["val_score_quantiles_by_class"] = validation_quantiles_by_class(calibrated, val_labels)
  record["val_nonconformity_by_class"] = conformal.calibration_scores(
      calibrate.softmax(calibrated), val_labels, np.shape(val_logits)[1])
  return record


def threshold(record, name, keep=KEEP_KNOWN):
  """The score `name` below which a cell is 'Unassigned', chosen so that a share `keep` of the validation cells
  (all of types the model knows) stay assigned: the (1 - keep) quantile of their scores (record: a calibration
  record with 'val_score_quantiles')."""
  if not 0 < keep <= 1:
    raise ConfigError(f"the share of known cells to keep must lie in (0, 1], got {keep}")
  return float(np.interp(1.0 - keep, QUANTILES, record["val_score_quantiles"][name]))


def class_thresholds(record, name, keep=KEEP_KNOWN):
  """Per class, the score below which a cell labelled with that class is 'Unassigned': the (1 - keep) quantile of
  the scores of that class's validation cells (Mondrian), or `threshold` where the class had too few of them."""
  overall = threshold(record, name, keep)
  return tuple(overall if q is None else float(np.interp(1.0 - keep, QUANTILES, q))
               for q in record["val_score_quantiles_by_class"][name])


@dataclasses.dataclass(frozen=True)
class Rule:
  """A cell is 'Unassigned' when its score (SCORES, of its calibrated logits) is below threshold.

  Attributes:
    score: a name in SCORES, or 'none' (every cell gets its most probable class).
    threshold: the score below which a cell is Unassigned.
    chosen_by: how the threshold was chosen, in words (for the output's uns and the log).
    class_thresholds: per class, the threshold for cells whose most probable class it is (chosen on that class's
      validation cells: Mondrian), or () for `threshold` for every cell.
  """

  score: str
  threshold: float
  chosen_by: str
  class_thresholds: tuple = ()

  def unassigned(self, calibrated):
    """[cells] bool: the cells this rule leaves unassigned, from their calibrated logits [cells, classes]."""
    if self.score == "none":
      return np.zeros(len(calibrated), bool)
    if self.class_thresholds:
      limits = np.asarray(self.class_thresholds)[np.asarray(calibrated).argmax(1)]
      return score(self.score, calibrated) < limits
    return score(self.score, calibrated) < self.threshold

  def record(self):
    """JSON-ready: the score, the threshold (None where there is none) and how it was chosen."""
    return {"score": self.score, "threshold": self.threshold if math.isfinite(self.threshold) else None,
            "chosen_by": self.chosen_by, "class_thresholds": list(self.class_thresholds)}


NO_RULE = Rule("none", float("-inf"), "no cell is left unassigned")


def rule(calibration, score_name=DEFAULT_SCORE, threshold_value=None, keep_known=KEEP_KNOWN, where="<run>",
         per_class=None):
  """The Rule for a run's calibration record: `threshold_value` as given, or else thresholds that keep a share
  `keep_known` of the run's validation cells assigned: with `per_class` (the default, None: where the record has
  per-class quantiles) one per class, chosen on that class's validation cells (Mondrian), so that a rare class
  whose scores run low is not left out whole; else one for all cells. `where` names the run in errors."""
  if score_name not in RULE_SCORES:
    raise ConfigError(f"unknown unassigned score {score_name!r}; known: {list(RULE_SCORES)}")
  if score_name == "none":
    return NO_RULE
  if threshold_value is not None:
    if not math.isfinite(threshold_value):
      raise ConfigError(f"the Unassigned threshold must be a finite number, got {threshold_value}")
    return Rule(score_name, float(threshold_value), "given")
  if not 0 < keep_known <= 1:
    raise ConfigError(f"keep_known must lie in (0, 1], got {keep_known}")
  if not calibration or "val_score_quantiles" not in calibration:
    raise ConfigError(f"{where}: has no validation scores (a run of an earlier version); "
                      "give the threshold instead (--threshold)")
  if per_class is None:
    per_class = "val_score_quantiles_by_class" in calibration
  if per_class:
    if "val_score_quantiles_by_class" not in calibration:
      raise ConfigError(f"{where}: has no validation scores per class (a run of an earlier version)")
    return Rule(score_name, threshold(calibration, score_name, keep_known),
                f"keeps {keep_known:.0%} of each class's validation cells (known types) assigned",
                class_thresholds(calibration, score_name, keep_known))
  return Rule(score_name, threshold(calibration, score_name, keep_known),
              f"keeps {keep_known:.0%} of the validation cells (known types) assigned")
