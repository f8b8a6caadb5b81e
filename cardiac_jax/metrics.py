"""Model outputs -> metrics: masked sums per batch, normalised once per epoch, and the classification report."""

import jax
import jax.numpy as jnp
import numpy as np
import optax


def example_losses(logits, labels, label_smoothing=0.0):
  """[batch] cross-entropy of each example against its label-smoothed one-hot target."""
  targets = optax.smooth_labels(jax.nn.one_hot(labels, logits.shape[-1]), label_smoothing)
  return optax.softmax_cross_entropy(logits, targets)


def batch_sums(logits, labels, mask, label_smoothing=0.0):
  """Loss and accuracy of one batch as sums over its real examples, so a masked last batch weighs right.

  Args:
    logits: [batch, classes]; labels: [batch] int; mask: [batch] 1.0 for real examples, 0.0 for fill.
    label_smoothing: applied to the loss (the seed trains with 0.1 and reports the same smoothed loss).

  Returns:
    {'loss': sum of per-example losses, 'correct': number right, 'count': number of real examples,
     'confusion': [classes, classes] counts of (true class, predicted class)}.
  """
  losses = example_losses(logits, labels, label_smoothing)
  predicted = jnp.argmax(logits, -1)
  correct = (predicted == labels).astype(jnp.float32)
  n_classes = logits.shape[-1]
  confusion = jax.nn.one_hot(labels, n_classes).T @ (jax.nn.one_hot(predicted, n_classes) * mask[:, None])
  return {"loss": jnp.sum(losses * mask), "correct": jnp.sum(correct * mask), "count": jnp.sum(mask),
          "confusion": confusion}


def f1_scores(confusion, actual):
  """(precision, recall, F1) [classes] from a confusion matrix (rows = true class) and each class's number of
  cells `actual` (the row sums, plus any cells given no label); 0 where undefined."""
  confusion, actual = np.asarray(confusion, np.float64), np.asarray(actual, np.float64)
  n, true_pos, predicted = len(actual), np.diag(confusion), confusion.sum(0)
  precision = np.divide(true_pos, predicted, out=np.zeros(n), where=predicted > 0)
  recall = np.divide(true_pos, actual, out=np.zeros(n), where=actual > 0)
  f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros(n), where=precision + recall > 0)
  return precision, recall, f1


def macro_f1(f1, actual):
  """The mean F1 over the classes that have cells."""
  present = np.asarray(actual) > 0
  return float(np.asarray(f1)[present].mean()) if present.any() else 0.0


def normalize(sums):
  """Epoch sums -> {'loss': mean loss, 'accuracy': fraction right, 'macro_f1': mean F1 over the classes present}."""
  count = max(float(sums["count"]), 1.0)
  actual = np.asarray(sums["confusion"]).sum(1)
  return {"loss": float(sums["loss"]) / count, "accuracy": float(sums["correct"]) / count,
          "macro_f1": macro_f1(f1_scores(sums["confusion"], actual)[2], actual)}


def add(a, b):
  return {k: a[k] + b[k] for k in b} if a else dict(b)


def classification_report(labels, predictions, classes):
  """Accuracy, per-class precision/recall/F1/support, macro-F1 and the confusion matrix (rows = true class).

  A prediction of -1 is 'Unassigned': a miss for its cell's class (in its recall and the accuracy), counted
  per class as 'unassigned', in no class's precision.
  """
  n = len(classes)
  labels, predictions = np.asarray(labels), np.asarray(predictions)
  assigned = predictions >= 0
  confusion = np.zeros((n, n), np.int64)
  np.add.at(confusion, (labels[assigned], predictions[assigned]), 1)
  actual = np.bincount(labels, minlength=n)
  unassigned = np.bincount(labels[~assigned], minlength=n)
  precision, recall, f1 = f1_scores(confusion, actual)
  return {
      "accuracy": float(np.trace(confusion) / max(len(labels), 1)),
      "macro_f1": macro_f1(f1, actual),
      "unassigned": float((~assigned).mean()) if len(labels) else 0.0,
      "per_class": {
          name: {"precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]),
                 "support": int(actual[i]), "unassigned": int(unassigned[i])}
          for i, name in enumerate(classes)
      },
      "confusion_matrix": confusion.tolist(),
  }


# Equal-width bins of the top probability for ECE and reliability diagrams.
ECE_BINS = 15


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

