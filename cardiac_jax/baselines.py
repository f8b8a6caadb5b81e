"""Simple methods on the same genes, split and sequences as the model, so that every number has a reference.

- `per_cell_logreg`: a logistic regression on single cells (the approach of CellTypist), trained on the distinct
  cells of the training sequences; a sequence's class probabilities are the mean of its cells'.
- `mean_expression_logreg`: a logistic regression on each sequence's mean log expression over its cells.
- `majority`: always the most frequent training class.

Baselines use temporal sequences only: spatial chains have no cells, they are augmentation for the model.
All return predicted class ids [n_test] for the test sequences.
"""

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

MAX_ITER = 1000


def _classifier(seed):
  return make_pipeline(StandardScaler(), LogisticRegression(max_iter=MAX_ITER, random_state=seed))


def _temporal(sequences):
  return sequences.take(~sequences.spatial)


def per_cell_logreg(data, seed):
  """Fits on the training sequences' distinct cells; averages cell probabilities over each test sequence."""
  train = _temporal(data.train)
  cells = np.unique(train.cell_ids[train.cell_ids >= 0])
  model = _classifier(seed).fit(data.cell_x[cells], data.cell_labels[cells])
  test = data.test
  valid = test.cell_ids >= 0
  probabilities = model.predict_proba(data.cell_x[np.where(valid, test.cell_ids, 0)].reshape(-1, data.cell_x.shape[1]))
  probabilities = probabilities.reshape(valid.shape + (-1,)) * valid[..., None]
  mean = probabilities.sum(1) / valid.sum(1, keepdims=True)
  return model.classes_[mean.argmax(1)]


def sequence_means(data, sequences):
  """[n, genes] mean log expression of each sequence's cells."""
  valid = sequences.cell_ids >= 0
  x = data.cell_x[np.where(valid, sequences.cell_ids, 0)] * valid[..., None]
  return x.sum(1) / valid.sum(1, keepdims=True)


def mean_expression_logreg(data, seed):
  """Fits on the training sequences' mean expression; predicts from the test sequences' mean expression."""
  train = _temporal(data.train)
  model = _classifier(seed).fit(sequence_means(data, train), train.labels)
  return model.predict(sequence_means(data, data.test))


def majority(data, seed):
  del seed
  train = _temporal(data.train)
  return np.full(len(data.test), np.bincount(train.labels).argmax())


BASELINES = {
    "per-cell logistic regression": per_cell_logreg,
    "mean-expression logistic regression": mean_expression_logreg,
    "majority class": majority,
}
