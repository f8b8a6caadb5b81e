"""When a cell is 'Unassigned': scores of how much a cell looks like the training types, and the one rule that
leaves the unlike ones without a label.

The rule, in one paragraph: a cell is 'Unassigned' when its score is below the threshold of its most probable
type, the threshold chosen so that a share KEEP_KNOWN (95%) of that type's validation cells (held-out donors,
all of known types) stay assigned (Mondrian: one threshold per type, so a rare type whose scores run low is not
left out whole). The default score is the energy of the calibrated logits. Every run with a novelty score
(novelty.py: the whole transcriptome's view, which sees programmes outside the model's genes) also offers
'novelty' and 'combined', the lower of the cell's two validation quantiles among the validation cells of its
most probable type, of its energy and of its novelty score (0-1: 0.03 says that on one of the two views, 97% of
that type's validation cells look more like the training cells than this one). The energy stays the default
because it separated types left out of training best on the validation donors (docs/trust.md). A cell's label
set (conformal.py) is a separate statement, the types it may be with a stated coverage; it is empty where no
type's validation cells explain the cell.

`SCORES` are per-cell numbers, higher for cells like the training types: 'probability', the top probability of
the calibrated logits (calibrate.apply); 'energy', their logsumexp (the negative free energy, Liu et al. 2020),
which keeps the logits' scale that the softmax throws away; 'novelty', the novelty score; 'combined', as above.
A run keeps the quantiles of each score on its validation cells with its calibration.
"""

import dataclasses
import math
from typing import Any

import numpy as np

from cardiac_jax import calibrate, conformal
from cardiac_jax.errors import ConfigError

UNASSIGNED = "Unassigned"
# The scores of the calibrated logits alone.
LOGIT_SCORES = {
    "probability": lambda calibrated: calibrate.softmax(calibrated).max(-1),
    "energy": calibrate.logsumexp,
}
NOVELTY, COMBINED = "novelty", "combined"
SCORES = tuple(LOGIT_SCORES) + (NOVELTY, COMBINED)
# What each score is, in words (annotate's uns).
MEANINGS = {
    "probability": "the top calibrated probability",
    "energy": "logsumexp of the calibrated logits; lower = less like any training type",
    NOVELTY: "minus the mean distance to the nearest training cells in a PCA of the whole transcriptome's most "
             "variable genes; lower = less like any training cell",
    COMBINED: "the lower of two shares of the validation cells of the cell's most probable type: those with a lower "
              "energy (the classifier's view) and those with a lower novelty score (the whole transcriptome's); "
              "0-1, lower = less like any training type",
}
# The validation quantiles of every score kept beside the calibration: 0%, 0.5%, ..., 100%.
QUANTILES = np.linspace(0.0, 1.0, 201)
# The score that decides 'Unassigned' unless told otherwise: of the scores, the one with the highest mean AUROC of
# known against left-out types on the trust experiment's validation donors (docs/trust.md).
DEFAULT_SCORE = "energy"
# The share of known cells (validation) kept assigned by default.
KEEP_KNOWN = 0.95
# The rule's score names: a score, or 'none' (every cell gets its most probable class).
RULE_SCORES = ("none",) + SCORES
# A class's own threshold (Mondrian: one per class) needs at least this many validation cells of that class; a
# class with fewer takes the threshold of all validation cells.
MIN_CLASS_CELLS = 20


def _quantile_of(values, quantiles):
  """[n] the share of validation cells below each of `values` [n], read off their stored QUANTILES."""
  return np.interp(values, np.asarray(quantiles), QUANTILES)


def combined(calibrated, novelty, record):
  """[n] 'combined' score: per cell, the lower of the validation quantiles (among the validation cells of its most
  probable class, or all validation cells for a class with too few) of its energy and of its novelty score."""
  calibrated = np.asarray(calibrated, np.float64)
  top = calibrated.argmax(1) if len(calibrated) else np.zeros(0, int)
  out = np.zeros(len(calibrated))
  parts = {"energy": calibrate.logsumexp(calibrated), NOVELTY: np.asarray(novelty, np.float64)}
  for c in np.unique(top):
    cells = top == c
    shares = []
    for name, values in parts.items():
      by_class = record["val_score_quantiles_by_class"][name][c]
      shares.append(_quantile_of(values[cells], record["val_score_quantiles"][name] if by_class is None else by_class))
    out[cells] = np.minimum(*shares)
  return out


def score(name, calibrated, novelty=None, record=None):
  """[n] float64 score `name` (one of SCORES) of each cell: of its calibrated logits [n, classes], its novelty
  score [n] ('novelty', 'combined') and the run's calibration record ('combined': the validation quantiles)."""
  if name not in SCORES:
    raise ConfigError(f"unknown unassigned score {name!r}; known: {list(SCORES)}")
  if name in LOGIT_SCORES:
    return np.asarray(LOGIT_SCORES[name](np.asarray(calibrated, np.float64)), np.float64)
  if novelty is None:
    raise ConfigError(f"the unassigned score {name!r} reads each cell's novelty score, and none was given (a run "
                      f"trained without data.novelty_genes has none: use {DEFAULT_SCORE!r})")
  if name == NOVELTY:
    return np.asarray(novelty, np.float64)
  return combined(calibrated, novelty, record)


def validation_quantiles(calibrated):
  """{score name: the QUANTILES of that score} over validation cells' calibrated logits [n, classes], for the
  scores of the logits alone (LOGIT_SCORES)."""
  return {name: np.quantile(score(name, calibrated), QUANTILES).tolist() for name in LOGIT_SCORES}


def _class_quantiles(values, labels, n_classes):
  """Per class, the QUANTILES of `values` [n] over the cells of that class (None with fewer than MIN_CLASS_CELLS)."""
  return [np.quantile(values[labels == c], QUANTILES).tolist() if (labels == c).sum() >= MIN_CLASS_CELLS else None
          for c in range(n_classes)]


def validation_quantiles_by_class(calibrated, labels):
  """{score name: per class, the QUANTILES of the score over the validation cells of that class (None for a class
  with fewer than MIN_CLASS_CELLS of them)} of validation cells' calibrated logits [n, classes] and labels [n], for
  LOGIT_SCORES."""
  return {name: _class_quantiles(score(name, calibrated), np.asarray(labels), np.shape(calibrated)[1])
          for name in LOGIT_SCORES}


def fitted_calibration(val_logits, val_labels, method="auto", val_novelty=None):
  """A run's calibration record: calibrate.fit (`method`: a name in calibrate.CHOICES) on the validation logits
  [n, classes] and labels [n], with the validation quantiles of every score under the chosen map (with the
  novelty scores [n] `val_novelty`, if the run has them, those of 'novelty' and 'combined' too), over all
  validation cells ('val_score_quantiles') and per class ('val_score_quantiles_by_class'), and each validation
  cell's nonconformity by class for label sets ('val_nonconformity_by_class', conformal.py)."""
  record = calibrate.fit(val_logits, val_labels, method)
  calibrated = calibrate.apply(record, val_logits)
  record["val_score_quantiles"] = validation_quantiles(calibrated)
  record["val_score_quantiles_by_class"] = validation_quantiles_by_class(calibrated, val_labels)
  if val_novelty is not None:
    for name in (NOVELTY, COMBINED):  # 'combined' reads the energy's and the novelty's quantiles: in this order
      values = score(name, calibrated, val_novelty, record)
      record["val_score_quantiles"][name] = np.quantile(values, QUANTILES).tolist()
      record["val_score_quantiles_by_class"][name] = _class_quantiles(values, np.asarray(val_labels),
                                                                      np.shape(val_logits)[1])
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
  """A cell is 'Unassigned' when its score (SCORES) is below threshold.

  Attributes:
    score: a name in SCORES, or 'none' (every cell gets its most probable class).
    threshold: the score below which a cell is Unassigned.
    chosen_by: how the threshold was chosen, in words (for the output's uns and the log).
    class_thresholds: per class, the threshold for cells whose most probable class it is (chosen on that class's
      validation cells: Mondrian), or () for `threshold` for every cell.
    calibration: the run's calibration record ('combined' reads its validation quantiles).
  """

  score: str
  threshold: float
  chosen_by: str
  class_thresholds: tuple = ()
  calibration: Any = dataclasses.field(default=None, repr=False, compare=False)

  def values(self, calibrated, novelty=None):
    """[cells] float64 the rule's score of each cell (calibrated logits [cells, classes], novelty scores [cells]);
    NaN under NO_RULE."""
    if self.score == "none":
      return np.full(len(calibrated), np.nan)
    return score(self.score, calibrated, novelty, self.calibration)

  def unassigned(self, calibrated, novelty=None):
    """[cells] bool: the cells this rule leaves unassigned, from their calibrated logits [cells, classes] (and
    novelty scores [cells], for the scores that read them)."""
    if self.score == "none":
      return np.zeros(len(calibrated), bool)
    limits = (np.asarray(self.class_thresholds)[np.asarray(calibrated).argmax(1)] if self.class_thresholds
              else self.threshold)
    return self.values(calibrated, novelty) < limits

  def record(self):
    """JSON-ready: the score, the threshold (None where there is none) and how it was chosen."""
    return {"score": self.score, "threshold": self.threshold if math.isfinite(self.threshold) else None,
            "chosen_by": self.chosen_by, "class_thresholds": list(self.class_thresholds)}


NO_RULE = Rule("none", float("-inf"), "no cell is left unassigned")


def rule(calibration, score_name=None, threshold_value=None, keep_known=KEEP_KNOWN, where="<run>", per_class=None):
  """The Rule for a run's calibration record: `threshold_value` as given, or else thresholds that keep a share
  `keep_known` of the run's validation cells assigned: with `per_class` (the default, None: where the record has
  per-class quantiles) one per class, chosen on that class's validation cells (Mondrian), so that a rare class
  whose scores run low is not left out whole; else one for all cells. `score_name` None: DEFAULT_SCORE.
  `where` names the run in errors."""
  score_name = DEFAULT_SCORE if score_name is None else score_name
  if score_name not in RULE_SCORES:
    raise ConfigError(f"unknown unassigned score {score_name!r}; known: {list(RULE_SCORES)}")
  if score_name == "none":
    return NO_RULE
  if score_name in (NOVELTY, COMBINED) and score_name not in (calibration or {}).get("val_score_quantiles", {}):
    raise ConfigError(f"{where}: the unassigned score {score_name!r} needs a run with a novelty score (trained "
                      f"with data.novelty_genes); use {DEFAULT_SCORE!r}")
  if threshold_value is not None:
    if not math.isfinite(threshold_value):
      raise ConfigError(f"the Unassigned threshold must be a finite number, got {threshold_value}")
    return Rule(score_name, float(threshold_value), "given", calibration=calibration)
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
                class_thresholds(calibration, score_name, keep_known), calibration)
  return Rule(score_name, threshold(calibration, score_name, keep_known),
              f"keeps {keep_known:.0%} of the validation cells (known types) assigned", calibration=calibration)
