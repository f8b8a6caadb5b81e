"""Train/validation/test splits by cell, by donor, or (the seed's way) by sequence, and the leakage audit.

Split ids: 0 = train, 1 = validation, 2 = test. For the `cell` and `donor` units the cells are split first and
each split draws its own sequences, so no cell can sit in two splits; the `sequence` unit draws every sequence
from one pool and splits the sequences afterwards, as the seed did, so cells are shared (see `leakage_audit`).
"""

import numpy as np

from cardiac_jax.errors import ConfigError, DataError
from cardiac_jax.preprocess import natural_key

SPLITS = ("train", "val", "test")
UNITS = ("sequence", "cell", "donor")
# Split id of a cell in no split (a training cell left out of a small reference: split.max_train_cells).
UNUSED = -1
# Random donor partitions tried; the one whose per-split type mix is closest to the whole is kept.
DONOR_TRIALS = 200


def split_sizes(n, fractions):
  """Splits n items into len(fractions) counts that add up to n; each split gets at least one when n allows."""
  share = np.asarray(fractions, np.float64) / np.sum(fractions) * n
  sizes = np.floor(share).astype(int)
  for i in np.argsort(-(share - sizes), kind="stable")[: n - sizes.sum()]:
    sizes[i] += 1
  for i in range(len(sizes)):
    if sizes[i] == 0 and sizes.max() > 1:
      sizes[np.argmax(sizes)] -= 1
      sizes[i] += 1
  return sizes


def stratified_split(labels, fractions, rng):
  """[n] split ids for items with `labels` [n]: each label's items are shuffled and cut by `fractions`."""
  labels = np.asarray(labels)
  split = np.empty(len(labels), np.int8)
  for label in np.unique(labels):
    members = rng.permutation(np.flatnonzero(labels == label))
    split[members] = np.repeat(np.arange(len(fractions)), split_sizes(len(members), fractions))
  return split


def fold_donors(names, folds):
  """[donors] fold of each donor name for a leave-donors-out loop: natural order of the names, dealt in turn
  into `folds` groups, so the folds do not depend on the seed and every donor is in exactly one."""
  order = sorted(range(len(names)), key=lambda i: natural_key(names[i]))
  fold = np.empty(len(names), np.int64)
  fold[order] = np.arange(len(names)) % folds
  return fold


def _donor_split(labels, donors, fractions, rng, n_classes, path, folds=0, fold=0):
  """[cells] split ids with whole donors in one split; every split must hold every class.

  With folds > 0 the test donors are fold `fold` of `fold_donors`, and the other donors are shared between
  train and validation in the ratio of the first two fractions.
  """
  names, donor_of_cell = np.unique(donors, return_inverse=True)
  if len(names) < len(fractions):
    raise DataError(path, f"split.unit='donor' needs at least {len(fractions)} donors, found {len(names)}: {list(names)}")
  if folds and not (2 <= folds <= len(names) and 0 <= fold < folds):
    raise ConfigError(f"split.folds={folds}, split.fold={fold}: need 2 <= folds <= {len(names)} donors and "
                      "0 <= fold < folds")
  counts = np.zeros((len(names), n_classes))
  np.add.at(counts, (donor_of_cell, labels), 1)
  overall = counts.sum(0) / counts.sum()
  test = fold_donors(names, folds) == fold if folds else np.zeros(len(names), bool)
  rest = np.flatnonzero(~test)
  shares = fractions[:2] if folds else fractions
  sizes = split_sizes(len(rest), shares)
  best, best_cost = None, np.inf
  for _ in range(DONOR_TRIALS):
    donor_split = np.full(len(names), 2)
    donor_split[rest] = np.repeat(np.arange(len(shares)), sizes)[rng.permutation(len(rest))]
    per_split = np.stack([counts[donor_split == s].sum(0) for s in range(len(fractions))])
    if (per_split == 0).any():
      continue
    cost = np.abs(per_split / per_split.sum(1, keepdims=True) - overall).max()
    if cost < best_cost:
      best, best_cost = donor_split, cost
  if best is None:
    raise DataError(
        path,
        f"no assignment of the {len(names)} donors to {len(fractions)} splits gives every split cells of every "
        "class; use split.unit='cell' or more donors",
    )
  return best[donor_of_cell].astype(np.int8)


def split_cells(labels, donors, *, unit, fractions, seed, classes, path="<data>", folds=0, fold=0, max_train=0):
  """Assigns every cell to a split.

  Args:
    labels: [cells] int class ids in [0, len(classes)).
    donors: [cells] donor names (used by the 'donor' unit only; may be None otherwise).
    unit: 'cell' or 'donor' ('sequence' splits sequences instead: every cell is in the one pool, id 0).
    fractions: (train, val, test) fractions.
    seed: makes the split deterministic.
    classes: class names, for error messages.
    path: the data's file, for error messages.
    folds, fold: 'donor' unit only: with folds > 0, the test donors are fold `fold` of `fold_donors` (a
      leave-donors-out loop runs fold = 0 .. folds - 1) and fractions[2] is not used.
    max_train: with max_train > 0 ('cell' and 'donor' units), only that many training cells, drawn at random,
      keep split id 0; the other training cells get UNUSED.

  Returns:
    [cells] int8 split ids (UNUSED for cells in no split).
  """
  if unit not in UNITS:
    raise ConfigError(f"split.unit must be one of {UNITS}, got {unit!r}")
  labels = np.asarray(labels)
  rng = np.random.default_rng([seed, 1])
  if unit == "sequence":
    return np.zeros(len(labels), np.int8)
  if unit == "cell":
    split = stratified_split(labels, fractions, rng)
  else:
    if donors is None:
      raise DataError(path, "split.unit='donor' needs a donor column (data.donor_key)")
    split = _donor_split(labels, np.asarray(donors), fractions, rng, len(classes), path, folds, fold)
  train = np.flatnonzero(split == 0)
  if 0 < max_train < len(train):
    split[np.random.default_rng([seed, 4]).choice(train, len(train) - max_train, replace=False)] = UNUSED
  check_every_class(labels, split, classes, path,
                    what=f"cells (split.max_train_cells={max_train} drawn at random)" if max_train else "cells")
  return split


def check_every_class(labels, split, classes, path, what):
  """Raises DataError if some split would hold no item of some class (or no items at all)."""
  for s, name in enumerate(SPLITS):
    present = np.unique(labels[split == s])
    absent = [classes[c] for c in range(len(classes)) if c not in present]
    if absent:
      total = {classes[c]: int((labels == c).sum()) for c in range(len(classes))}
      raise DataError(
          path, f"the {name} split would have no {what} of class(es) {absent} (items per class: {total})"
      )


def leakage_audit(cells_by_split):
  """Counts cells that appear in more than one split.

  Args:
    cells_by_split: {split name: [n, steps] cell ids, -1 for padding or non-cell steps}.

  Returns:
    dict with the distinct cells per split and `cells_in_more_than_one_split`.
  """
  distinct = {name: np.unique(ids[ids >= 0]) for name, ids in cells_by_split.items()}
  everything = np.concatenate(list(distinct.values()))
  _, times_seen = np.unique(everything, return_counts=True)
  return {
      "distinct_cells": {name: int(len(ids)) for name, ids in distinct.items()},
      "cells_in_more_than_one_split": int((times_seen > 1).sum()),
  }
