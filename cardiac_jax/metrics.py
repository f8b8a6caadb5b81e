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
    {'loss': sum of per-example losses, 'correct': number right, 'count': number of real examples}.
  """
  losses = example_losses(logits, labels, label_smoothing)
  correct = (jnp.argmax(logits, -1) == labels).astype(jnp.float32)
  return {"loss": jnp.sum(losses * mask), "correct": jnp.sum(correct * mask), "count": jnp.sum(mask)}


def normalize(sums):
  """Epoch sums -> {'loss': mean loss, 'accuracy': fraction right}."""
  count = max(float(sums["count"]), 1.0)
  return {"loss": float(sums["loss"]) / count, "accuracy": float(sums["correct"]) / count}


def add(a, b):
  return {k: a[k] + b[k] for k in b} if a else dict(b)


def classification_report(labels, predictions, classes):
  """Accuracy, per-class precision/recall/F1/support, macro-F1 and the confusion matrix (rows = true class)."""
  n = len(classes)
  confusion = np.zeros((n, n), np.int64)
  np.add.at(confusion, (np.asarray(labels), np.asarray(predictions)), 1)
  true_pos = np.diag(confusion).astype(np.float64)
  predicted = confusion.sum(0)
  actual = confusion.sum(1)
  precision = np.divide(true_pos, predicted, out=np.zeros(n), where=predicted > 0)
  recall = np.divide(true_pos, actual, out=np.zeros(n), where=actual > 0)
  f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros(n), where=precision + recall > 0)
  return {
      "accuracy": float(true_pos.sum() / max(confusion.sum(), 1)),
      "macro_f1": float(f1[actual > 0].mean()) if (actual > 0).any() else 0.0,
      "per_class": {
          name: {"precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]), "support": int(actual[i])}
          for i, name in enumerate(classes)
      },
      "confusion_matrix": confusion.tolist(),
  }
