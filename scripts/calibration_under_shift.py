"""Other calibration maps, fitted on each donor-loop run's validation donors, scored on its held-out donors (ECE):
what a post-hoc map can do for calibration under donor shift (docs/trust.md, "Calibration under donor shift").

  python scripts/calibration_under_shift.py runs/trust/donors/fold0 runs/trust/donors/fold1 ...

For each run (no retraining): the run's validation and test logits, and on the test cells the top-label ECE of
the run's own calibration (the temperature minimising validation NLL) against maps fitted on the same validation
cells: a temperature minimising the class-balanced NLL (the weighting the model was trained with), a temperature
minimising validation ECE, isotonic regression of correctness on the confidence (over all cells, and per most
probable class), histogram binning (15 equal-mass bins); and, to show which way each run's donors moved, the
ECE with the run's temperature times 0.9 and 1.1. Prints a markdown table.
"""

import pathlib
import sys

import numpy as np
from sklearn.isotonic import IsotonicRegression

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from cardiac_jax import calibrate, dataset, metrics, predict  # noqa: E402
from cardiac_jax import workdir as rundir  # noqa: E402

GRID = np.exp(np.linspace(np.log(0.3), np.log(3.0), 400))
MIN_CLASS_CELLS = 100


def _ece(probabilities, labels):
  return metrics.top_label_ece(probabilities.max(1), probabilities.argmax(1) == labels)


def _isotonic(confidence, correct):
  return IsotonicRegression(y_min=0, y_max=1, out_of_bounds="clip").fit(confidence, correct)


def scores(workdir):
  """{map: test ECE} for one run."""
  bundle = rundir.load(workdir)
  test, _ = rundir.load_test_sequences(workdir)
  val = dataset.prepare(bundle.config).val
  val_logits = predict.predict_logits(bundle, val).astype(np.float64)
  test_logits = predict.predict_logits(bundle, test).astype(np.float64)
  vy, ty = val.labels, test.labels
  t = calibrate.fit_temperature(val_logits, vy)
  counts = np.bincount(vy, minlength=val_logits.shape[1])
  weights = (len(vy) / (len(counts) * np.maximum(counts, 1)))[vy]

  def balanced_nll(temperature):
    p = calibrate.softmax(val_logits / temperature)[np.arange(len(vy)), vy]
    return -(weights * np.log(p + 1e-12)).sum() / weights.sum()

  def at(temperature):
    return _ece(calibrate.softmax(test_logits / temperature), ty)

  out = {"temperature, validation NLL (the run's)": at(t),
         "temperature, class-balanced validation NLL": at(GRID[np.argmin([balanced_nll(g) for g in GRID])]),
         "temperature, validation ECE": at(GRID[np.argmin([_ece(calibrate.softmax(val_logits / g), vy)
                                                            for g in GRID])])}
  pv, pt = calibrate.softmax(val_logits / t), calibrate.softmax(test_logits / t)
  cv, ct, top_v, top_t = pv.max(1), pt.max(1), pv.argmax(1), pt.argmax(1)
  rv, rt = top_v == vy, top_t == ty
  pooled = _isotonic(cv, rv)
  out["isotonic on the confidence"] = metrics.top_label_ece(pooled.predict(ct), rt)
  per_class = pooled.predict(ct)
  for c in range(pv.shape[1]):
    if (top_v == c).sum() >= MIN_CLASS_CELLS:
      per_class[top_t == c] = _isotonic(cv[top_v == c], rv[top_v == c]).predict(ct[top_t == c])
  out["isotonic per most probable class"] = metrics.top_label_ece(per_class, rt)
  edges = np.quantile(cv, np.linspace(0, 1, 16))
  bins_v, bins_t = (np.clip(np.searchsorted(edges, c, "right") - 1, 0, 14) for c in (cv, ct))
  means = np.array([rv[bins_v == k].mean() for k in range(15)])
  out["histogram binning"] = metrics.top_label_ece(means[bins_t], rt)
  out["the run's temperature x 0.9"] = at(0.9 * t)
  out["the run's temperature x 1.1"] = at(1.1 * t)
  out["validation ECE at the run's temperature (in sample)"] = _ece(pv, vy)
  return out


def main(workdirs):
  rows = {pathlib.Path(w).name: scores(w) for w in workdirs}
  maps = list(next(iter(rows.values())))
  print("| map fitted on the validation donors | " + " | ".join(rows) + " | runs below 0.02 |")
  print("|---|" + "---|" * (len(rows) + 1))
  for name in maps:
    values = [rows[run][name] for run in rows]
    print(f"| {name} | " + " | ".join(f"{v:.4f}" for v in values) + f" | {sum(v < 0.02 for v in values)} |")


if __name__ == "__main__":
  if len(sys.argv) < 2:
    sys.exit("usage: python scripts/calibration_under_shift.py <donor-loop run workdir> ...")
  main(sys.argv[1:])
