"""Which Unassigned rule serves a user best: each rule's labels of the held-out donors' cells, beside every cell
given its most probable class and the per-cell logistic regression on the same genes, over the suite's seeds.

  python scripts/unassigned_rules.py runs/annotation/runs/anchored_seed0 runs/annotation/runs/anchored_seed1 ...
  python scripts/unassigned_rules.py --calibration=temperature runs/annotation/runs/anchored-linear-start_seed0 ...

Each workdir is a finished per-cell run (e.g. the suite's `anchored` rows). Its thresholds come from its own
validation cells (held-out donors), under the calibration the run chose: one threshold for all cells that keeps
95% of them assigned (the default), or one per class that keeps 95% of that class's validation cells assigned,
applied to the cells labelled with that class (Mondrian). The test cells are scored once per run. Prints a markdown table (mean ± sd over runs, and
paired differences against the logistic regression) and, per rule, the lowest share of a class's top-class
recall that its labels keep, and each class's recall under every rule.
"""

import numpy as np
from absl import app, flags

from cardiac_jax import calibrate, dataset, metrics, predict, unassigned
from cardiac_jax import workdir as rundir
from cardiac_jax.experiments import baselines, tables

RULES = {
    "top class (no Unassigned)": dict(score_name="none"),
    "energy, one threshold": dict(score_name="energy", per_class=False),
    "energy, per class (default)": dict(score_name="energy", per_class=True),
    "probability, one threshold": dict(score_name="probability", per_class=False),
    "probability, per class": dict(score_name="probability", per_class=True),
}
LOGISTIC_REGRESSION = "per-cell logistic regression"
VALIDATION = "top class on the validation donors"
flags.DEFINE_enum("calibration", None, calibrate.CHOICES, "Fit this calibration map again on each run's validation "
                  "cells instead of using the run's own (e.g. temperature for runs that chose vector scaling).")
FLAGS = flags.FLAGS


def score_run(workdir, calibration=None):
  """{method: classification report of its test labels} for one run: every rule and the logistic regression;
  `calibration`: a method in calibrate.CHOICES fitted again on the run's validation cells, or None (the run's)."""
  bundle = rundir.load(workdir)
  data = dataset.prepare(bundle.config)
  val_logits = predict.predict_logits(bundle, data.val)
  if calibration:
    record = unassigned.fitted_calibration(val_logits, data.val.labels, calibration)
  else:
    record = dict(bundle.calibration, val_score_quantiles_by_class=unassigned.validation_quantiles_by_class(
        calibrate.apply(bundle.calibration, val_logits), data.val.labels))
  test, _ = rundir.load_test_sequences(workdir)
  logits = predict.predict_logits(bundle, test)
  reports = {}
  for name, settings in RULES.items():
    rule = unassigned.rule(record, where=workdir, **settings)
    prediction = predict.from_logits(logits, record, bundle.classes, rule)
    reports[name] = metrics.classification_report(test.labels, prediction.label_ids, bundle.classes)
  validation = predict.from_logits(val_logits, record, bundle.classes)
  reports[VALIDATION] = metrics.classification_report(data.val.labels, validation.top_class, bundle.classes)
  predicted = baselines.cell_logreg(data, bundle.config.seed)
  reports[LOGISTIC_REGRESSION] = metrics.classification_report(data.test.labels, predicted, bundle.classes)
  return reports


def kept_recall(report, top):
  """(lowest share of a class's top-class recall that `report` keeps, that class)."""
  shares = {c: report["per_class"][c]["recall"] / top["per_class"][c]["recall"]
            for c in top["per_class"] if top["per_class"][c]["recall"] > 0}
  worst = min(shares, key=shares.get)
  return shares[worst], worst


def main(argv):
  workdirs = argv[1:]
  runs = [score_run(w, FLAGS.calibration) for w in workdirs]
  calibration = FLAGS.calibration or "each run's own"
  lines = [f"{len(runs)} runs: {', '.join(workdirs)}; calibration: {calibration}", "",
           "| method | accuracy | macro-F1 | macro-F1 - logistic regression (ahead in) | Unassigned | "
           "lowest kept share of a class's top-class recall |", "|---|---|---|---|---|---|"]
  for method in list(RULES) + [LOGISTIC_REGRESSION]:
    f1 = [r[method]["macro_f1"] for r in runs]
    diff = np.array(f1) - [r[LOGISTIC_REGRESSION]["macro_f1"] for r in runs]
    kept = [kept_recall(r[method], r[next(iter(RULES))]) for r in runs] if method != LOGISTIC_REGRESSION else []
    kept_text = (f"{min(k for k, _ in kept):.2f} ({', '.join(sorted({c for k, c in kept}))})" if kept else "")
    lines.append(f"| {method} | {tables.pm([r[method]['accuracy'] for r in runs])} | {tables.pm(f1)} | "
                 f"{tables.pm(diff)} ({int((diff > 0).sum())} of {len(runs)}) | "
                 f"{tables.pm([r[method]['unassigned'] for r in runs], 3)} | {kept_text} |")
  validation = [r[VALIDATION]["macro_f1"] for r in runs]
  lines += ["", f"Validation donors, every cell its top class (what choices are made on): macro-F1 "
            f"{tables.pm(validation)}, per run {', '.join(f'{v:.4f}' for v in validation)}."]
  classes = list(runs[0][LOGISTIC_REGRESSION]["per_class"])
  lines += ["", "Recall of each class, mean over runs:", "", "| method | " + " | ".join(classes) + " |",
            "|---|" + "---|" * len(classes)]
  for method in list(RULES) + [LOGISTIC_REGRESSION]:
    recalls = [np.mean([r[method]["per_class"][c]["recall"] for r in runs]) for c in classes]
    lines.append(f"| {method} | " + " | ".join(f"{v:.3f}" for v in recalls) + " |")
  print("\n".join(lines))


if __name__ == "__main__":
  app.run(main)
