"""Simple methods on the same genes, split and sequences as the model, so that every number has a reference.

For the seed's type sequences (`BASELINES`):
- `per_cell_logreg`: a logistic regression on single cells (the approach of CellTypist), trained on the distinct
  cells of the training sequences; a sequence's class probabilities are the mean of its cells'.
- `mean_expression_logreg`: a logistic regression on each sequence's mean log expression over its cells.
- `majority`: always the most frequent training class.
Baselines use temporal sequences only: spatial chains have no cells, they are augmentation for the model.
All return predicted class ids [n_test] for the test sequences.

For per-cell sequences (anchored or cell mode; `CELL_BASELINES`), one prediction per test cell, each fitted on
every training cell:
- `cell_logreg`: a logistic regression on each cell's log expression of the model's genes.
- `cell_time_logreg`: the same with the cell's time point (one-hot) beside its genes.
- `anchored_mean_logreg`: a logistic regression on the mean over the steps of each anchored sequence (the
  model's own input, the same context, without the sequence model).
CellTypist, the field's per-cell reference, is in celltypist_compare.py beside this module.
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


def _cells(sequences):
  """[n] row of each per-cell sequence's labelled cell."""
  cells = sequences.anchor_cells
  if (cells < 0).any():
    raise ValueError("per-cell baselines need per-cell sequences (data.sequence_mode 'anchored' or 'cell')")
  return cells


def cell_logreg_probabilities(data, seed):
  """[test cells, classes] class probabilities of a logistic regression on single training cells, on the
  model's genes (every class is among the training cells, so the columns are the Dataset's classes)."""
  train = _cells(data.train)
  model = _classifier(seed).fit(data.cell_x[train], data.cell_labels[train])
  return model.predict_proba(data.cell_x[_cells(data.test)])


def cell_logreg(data, seed):
  """A logistic regression on single training cells, on the model's genes; predicts each test cell."""
  return cell_logreg_probabilities(data, seed).argmax(1)


def _with_time(data, sequences):
  """[n, genes + time points] each per-cell sequence's cell: its log expression and a one-hot of its time point."""
  one_hot = np.eye(len(data.time_points), dtype=np.float32)[sequences.anchor_times]
  return np.hstack([data.cell_x[_cells(sequences)], one_hot])


def cell_time_logreg(data, seed):
  """A logistic regression on single training cells' genes and time point (one-hot), scikit-learn's defaults
  (unweighted, every input standardised): the linear model a temporal annotator has to beat, close to the one
  the annotation network's linear path starts from (linear.py: class-weighted, on the network's own inputs);
  predicts each test cell."""
  model = _classifier(seed).fit(_with_time(data, data.train), data.train.labels)
  return model.predict(_with_time(data, data.test))


def step_means(sequences, n_genes):
  """[n, n_genes] mean over each sequence's valid steps of its gene channels (time and anchor channels left out)."""
  valid = sequences.mask[..., None]
  return (sequences.x[..., :n_genes] * valid).sum(1) / valid.sum(1)


def anchored_mean_logreg(data, seed):
  """A logistic regression on the mean of each training anchored sequence's steps; predicts each test cell."""
  n_genes = len(data.genes)
  model = _classifier(seed).fit(step_means(data.train, n_genes), data.train.labels)
  return model.predict(step_means(data.test, n_genes))


TIME_LOGREG = "per-cell logistic regression with the time point"
CELL_BASELINES = {
    "per-cell logistic regression": cell_logreg,
    TIME_LOGREG: cell_time_logreg,
    "anchored-mean logistic regression": anchored_mean_logreg,
}
