"""Metrics -> report: restores a run's best model in a fresh process and writes workdir/report/.

report/report.json   accuracy, macro-F1, per-class precision/recall/F1, confusion matrix, parameter count,
                     split counts and the leakage audit
report/confusion.png the test confusion matrix
report/learning_curves.png  loss and accuracy per epoch, from metrics.jsonl
report/test_predictions.npz  logits [n, classes], labels [n] and class names of the test sequences
report/reliability.png  accuracy against confidence on the test split, before and after calibration

`refit_calibration` fits a finished run's calibration again with this version's `calibrate.fit` (e.g. a
workdir from before vector scaling).
"""

import json

import matplotlib.pyplot as plt
import numpy as np
from absl import logging

from cardiac_jax import calibrate, dataset, inference, integrity
from cardiac_jax import metrics as metrics_lib
from cardiac_jax import train as train_lib
from cardiac_jax.errors import ConfigError
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
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


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
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


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
    count, confidence, accuracy = calibrate.reliability(probabilities.max(1), probabilities.argmax(1) == labels)
    used = count > 0
    ece = calibrate.expected_calibration_error(probabilities, labels)
    ax.plot(confidence[used], accuracy[used], marker="o", label=f"{name}: ECE {ece:.3f}")
  ax.set(xlabel="confidence (top probability)", ylabel="accuracy", xlim=(0, 1), ylim=(0, 1), title=title)
  ax.grid(alpha=0.3)
  ax.legend(loc="upper left", fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def score(workdir):
  """Restores workdir's best model (`inference.load`) and scores the test split that train.py saved with it.

  Nothing is prepared again: the test sequences (and the names of their cells) are in the workdir, and the
  model is applied to them through the same prediction path as annotation.

  Returns:
    (bundle, test Sequences, logits [n, classes], classification report of the test split).
  """
  bundle = inference.load(workdir)
  integrity.check_test_digest(bundle.workdir / "test_sequences.npz", bundle.record)
  test, _ = train_lib.load_test_sequences(bundle.workdir)
  logits = inference.predict_logits(bundle, test)
  return bundle, test, logits, metrics_lib.classification_report(test.labels, logits.argmax(-1), bundle.classes)


def evaluate(workdir):
  """Scores workdir's best model on its test split (`score`), writes workdir/report/ and returns the report."""
  bundle, test, logits, report = score(workdir)
  workdir = bundle.workdir
  config, record, classes = bundle.config, bundle.record, list(bundle.classes)
  report.update(
      best_epoch=bundle.checkpoint["best_epoch"],
      best_val_accuracy=bundle.checkpoint["best_val_accuracy"],
      parameters=count_params(bundle.params),
      split_unit=config.split.unit,
      sequence_mode=config.data.sequence_mode,
      test_unit=train_lib.test_unit(config),
      data_source=config.data.source,
      sequences=record["report"]["sequences"],
      leakage=record["report"]["leakage"],
      calibration=dict(bundle.calibration or {}, **calibrate.test_record(logits, test.labels, bundle.calibration)),
  )
  integrity.check_finite_record(report, workdir / "report" / "report.json")
  history = train_lib.read_metrics(workdir)
  out = workdir / "report"
  with integrity.staged_folder(out) as staging:  # a full disk or Ctrl-C leaves no half-written report
    (staging / "report.json").write_text(json.dumps(report, indent=2))
    np.savez(staging / "test_predictions.npz", logits=logits, labels=test.labels, classes=np.asarray(classes))
    plot_confusion(
        report["confusion_matrix"], classes, staging / "confusion.png",
        f"test, split by {config.split.unit}: accuracy {report['accuracy']:.3f}",
    )
    plot_learning_curves(history, staging / "learning_curves.png")
    plot_reliability(logits, test.labels, bundle.calibration, staging / "reliability.png",
                     f"test {train_lib.test_unit(config)}s, split by {config.split.unit}")
  logging.info("test accuracy %.4f, macro-F1 %.4f; report in %s", report["accuracy"], report["macro_f1"], out)
  return report


def refit_calibration(workdir):
  """Fits a finished run's calibration again (calibrate.fit) from the validation logits of its best model and
  rewrites calibration.json and results.json's 'calibration'; returns the latter (the new record with the test
  NLL and ECE before and after it).

  The validation split is prepared again from the run's config; it must give the validation accuracy the run
  recorded, or the data have changed since and nothing is written.
  """
  bundle, test, test_logits, _ = score(workdir)
  val = dataset.prepare(bundle.config).val
  val_logits = inference.predict_logits(bundle, val)
  results_path = bundle.workdir / "results.json"
  results = integrity.read_json(results_path)
  accuracy = float((val_logits.argmax(1) == val.labels).mean())
  if abs(accuracy - results["val_accuracy"]) > 1e-6:
    raise ConfigError(f"{results_path}: validation accuracy {results['val_accuracy']:.6f}, but the validation "
                      f"cells prepared again give {accuracy:.6f}; the data changed since the run, not refitted")
  results["calibration"] = train_lib.write_calibration(bundle.workdir, val_logits, val.labels, test_logits,
                                                       test.labels)
  train_lib.write_atomic(results_path, json.dumps(results, indent=2))
  return results["calibration"]
