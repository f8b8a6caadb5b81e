"""Metrics -> report: restores a run's best model in a fresh process and writes workdir/report/.

The test cells are labelled through the one prediction path (predict.py), as annotate.py labels them.

report/report.json   accuracy and macro-F1 of the labels (Unassigned a miss), the same with every cell given its
                     most probable class (top_class_*), the seed's raw-logit accuracy, per-class
                     precision/recall/F1, confusion matrix, parameter count, split counts and the leakage audit
report/confusion.png the test confusion matrix
report/learning_curves.png  loss and accuracy per epoch, from metrics.jsonl
report/test_predictions.npz  logits [n, classes], labels [n], predicted [n] (label ids, -1 Unassigned) and class
                     names of the test sequences
report/reliability.png  accuracy against confidence on the test split, before and after calibration
"""

import json

import matplotlib.pyplot as plt
import numpy as np
from absl import logging

from cardiac_jax import calibrate, dataset, figures, integrity, predict
from cardiac_jax import metrics as metrics_lib
from cardiac_jax import workdir as rundir
from cardiac_jax.model import count_params


def plot_confusion(confusion, classes, path, title):
  confusion = np.asarray(confusion)
  fractions = confusion / np.maximum(confusion.sum(1, keepdims=True), 1)
  fig, ax = plt.subplots(figsize=(6, 5))
  image = ax.imshow(fractions, cmap="Blues", vmin=0, vmax=1)
  for i in range(len(classes)):
    for j in range(len(classes)):
      ax.text(j, i, str(confusion[i, j]), ha="center", va="center", color="white" if fractions[i, j] > 0.5 else "black", fontsize=8)
  ax.set_xticks(range(len(classes)), classes, rotation=45)
  ax.set_yticks(range(len(classes)), classes)
  ax.set_xlabel("predicted")
  ax.set_ylabel("true")
  ax.set_title(title)
  fig.colorbar(image, ax=ax, label="fraction of true class")
  figures.save(fig, path)


def plot_learning_curves(history, path):
  epochs = [r["epoch"] for r in history]
  fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(10, 4))
  for split in ("train", "val"):
    loss_ax.plot(epochs, [r[f"{split}_loss"] for r in history], marker="o", label=split)
    acc_ax.plot(epochs, [r[f"{split}_accuracy"] for r in history], marker="o", label=split)
  loss_ax.set(xlabel="epoch", ylabel="loss (label-smoothed)", title="loss")
  acc_ax.set(xlabel="epoch", ylabel="accuracy", title="accuracy")
  for ax in (loss_ax, acc_ax):
    ax.grid(alpha=0.3)
    ax.legend()
  figures.save(fig, path)


def plot_reliability(logits, labels, calibration, path, title):
  """Reliability diagram: per bin of the top probability, accuracy against mean confidence, without and with
  the run's calibration record (calibrate.apply; None: without only); the diagonal is perfect calibration."""
  fig, ax = plt.subplots(figsize=(5, 5))
  ax.plot([0, 1], [0, 1], color="gray", linestyle="--", label="perfectly calibrated")
  curves = {"uncalibrated": logits}
  if calibration is not None:
    curves[calibrate.describe(calibration)] = calibrate.apply(calibration, logits)
  for name, calibrated in curves.items():
    probabilities = calibrate.softmax(calibrated)
    count, confidence, accuracy = metrics_lib.reliability(probabilities.max(1), probabilities.argmax(1) == labels)
    used = count > 0
    ece = metrics_lib.expected_calibration_error(probabilities, labels)
    ax.plot(confidence[used], accuracy[used], marker="o", label=f"{name}: ECE {ece:.3f}")
  ax.set(xlabel="confidence (top probability)", ylabel="accuracy", xlim=(0, 1), ylim=(0, 1), title=title)
  ax.grid(alpha=0.3)
  ax.legend(loc="upper left", fontsize=8)
  figures.save(fig, path)


def test_report(bundle):
  """Scores a bundle on the test split its run saved (nothing is prepared again), through the one prediction path.

  Returns:
    (test Sequences, predict.Prediction of them, classification report of the labels (Unassigned a miss) with
    'top_class_accuracy'/'top_class_macro_f1' (every cell its most probable calibrated class) and
    'raw_logit_accuracy' (the argmax of the raw logits: the seed's metric)).
  """
  test, _ = rundir.load_test_sequences(bundle.workdir)
  prediction = predict.predict(bundle, test, novelty=rundir.load_test_novelty(bundle.workdir))
  report = metrics_lib.classification_report(test.labels, prediction.label_ids, bundle.classes)
  top = metrics_lib.classification_report(test.labels, prediction.top_class, bundle.classes)
  report.update(top_class_accuracy=top["accuracy"], top_class_macro_f1=top["macro_f1"],
                raw_logit_accuracy=float((prediction.logits.argmax(1) == test.labels).mean()),
                unassigned_rule=prediction.rule.record())
  return test, prediction, report


def evaluate(workdir):
  """Scores workdir's best model on its test split (`test_report`), writes workdir/report/ and returns the report."""
  bundle = rundir.load(workdir)
  test, prediction, report = test_report(bundle)
  logits, workdir = prediction.logits, bundle.workdir
  config, record, classes = bundle.config, bundle.record, list(bundle.classes)
  report.update(
      best_epoch=bundle.checkpoint["best_epoch"],
      best_val_accuracy=bundle.checkpoint["val_accuracy"],  # the best epoch's, whichever score chose it
      early_stopping_metric=bundle.config.train.early_stopping_metric,
      best_val_score=bundle.checkpoint.get("val_score", bundle.checkpoint["val_accuracy"]),
      parameters=count_params(bundle.params),
      split_unit=config.split.unit,
      sequence_mode=config.data.sequence_mode,
      test_unit=dataset.test_unit(config),
      data_source=config.data.source,
      sequences=record["report"]["sequences"],
      leakage=record["report"]["leakage"],
      calibration=dict(bundle.calibration or {}, **calibrate.test_record(logits, test.labels, bundle.calibration)),
  )
  out = workdir / rundir.REPORT
  integrity.check_finite_record(report, out / "report.json")
  history = rundir.read_metrics(workdir)
  if not history:
    logging.warning("%s: no epoch records (missing or empty): the report has no learning curves",
                    workdir / rundir.METRICS)
    report["learning_curves"] = "not drawn: no epoch records"
  with integrity.staged_folder(out) as staging:  # a full disk or Ctrl-C leaves no half-written report
    (staging / "report.json").write_text(json.dumps(report, indent=2))
    np.savez(staging / "test_predictions.npz", logits=logits, labels=test.labels, classes=np.asarray(classes),
             predicted=prediction.label_ids)
    plot_confusion(
        report["confusion_matrix"], classes, staging / "confusion.png",
        f"test, split by {config.split.unit}: accuracy {report['accuracy']:.3f}",
    )
    if history:
      plot_learning_curves(history, staging / "learning_curves.png")
    plot_reliability(logits, test.labels, bundle.calibration, staging / "reliability.png",
                     f"test {dataset.test_unit(config)}s, split by {config.split.unit}")
  logging.info("test accuracy %.4f, macro-F1 %.4f; report in %s", report["accuracy"], report["macro_f1"], out)
  return report
