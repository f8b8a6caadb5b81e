"""Splits: deterministic, stratified, no shared cells or donors, clear errors when a split would be empty."""

import numpy as np
import pytest

from cardiac_jax import split
from cardiac_jax.errors import ConfigError, DataError

CLASSES = ("A", "B", "C")


def _cells(n_donors=10, per_donor=60, seed=0):
  rng = np.random.default_rng(seed)
  donors = np.repeat([f"d{i}" for i in range(n_donors)], per_donor)
  labels = rng.integers(0, 3, size=len(donors))
  return labels, donors


def test_split_sizes_add_up_and_fill_every_split():
  assert list(split.split_sizes(10, (0.7, 0.2, 0.1))) == [7, 2, 1]
  assert list(split.split_sizes(3, (0.7, 0.2, 0.1))) == [1, 1, 1]
  assert split.split_sizes(1001, (0.7, 0.2, 0.1)).sum() == 1001


@pytest.mark.parametrize("unit", ["cell", "donor"])
def test_deterministic_and_seed_dependent(unit):
  labels, donors = _cells()
  kwargs = dict(unit=unit, fractions=(0.7, 0.2, 0.1), classes=CLASSES)
  a = split.split_cells(labels, donors, seed=0, **kwargs)
  b = split.split_cells(labels, donors, seed=0, **kwargs)
  c = split.split_cells(labels, donors, seed=1, **kwargs)
  np.testing.assert_array_equal(a, b)
  assert (a != c).any()


def test_cell_split_is_stratified():
  labels, donors = _cells()
  ids = split.split_cells(labels, donors, unit="cell", fractions=(0.7, 0.2, 0.1), seed=0, classes=CLASSES)
  for c in range(3):
    share = np.bincount(ids[labels == c], minlength=3) / (labels == c).sum()
    np.testing.assert_allclose(share, [0.7, 0.2, 0.1], atol=0.01)


def test_donor_split_keeps_donors_whole():
  labels, donors = _cells()
  ids = split.split_cells(labels, donors, unit="donor", fractions=(0.7, 0.2, 0.1), seed=0, classes=CLASSES)
  for donor in np.unique(donors):
    assert len(np.unique(ids[donors == donor])) == 1
  assert [len(np.unique(donors[ids == s])) for s in range(3)] == [7, 2, 1]


def test_donor_folds_hold_every_donor_out_exactly_once():
  labels, donors = _cells(n_donors=11)
  kwargs = dict(unit="donor", fractions=(0.7, 0.2, 0.1), classes=CLASSES, folds=4)
  held_out = []
  for fold in range(4):
    ids = split.split_cells(labels, donors, seed=fold, fold=fold, **kwargs)
    test = set(donors[ids == 2])
    assert set(donors[ids != 2]).isdisjoint(test)
    assert len(test) in (2, 3) and len(set(donors[ids == 1])) >= 1
    # the folds do not depend on the seed: another seed holds out the same donors
    other = split.split_cells(labels, donors, seed=fold + 10, fold=fold, **kwargs)
    assert set(donors[other == 2]) == test
    held_out += sorted(test)
  assert sorted(held_out) == sorted(set(donors))  # every donor once
  with pytest.raises(ConfigError, match="split.folds=4, split.fold=4"):
    split.split_cells(labels, donors, seed=0, fold=4, **kwargs)


def test_fewer_donors_than_splits():
  labels, donors = _cells(n_donors=2)
  with pytest.raises(DataError, match="at least 3 donors, found 2"):
    split.split_cells(labels, donors, unit="donor", fractions=(0.7, 0.2, 0.1), seed=0, classes=CLASSES, path="x.tsv")


def test_split_that_leaves_a_class_empty():
  labels = np.array([0] * 50 + [1] * 50 + [2] * 2)
  with pytest.raises(DataError, match=r"test split would have no cells of class\(es\) \['C'\]"):
    split.split_cells(labels, None, unit="cell", fractions=(0.7, 0.2, 0.1), seed=0, classes=CLASSES)
  # Class C lives in one donor only: no donor split can put it in every split.
  donors = np.array([f"d{i % 5}" for i in range(100)] + ["d0", "d0"])
  with pytest.raises(DataError, match="every split cells of every class"):
    split.split_cells(labels, donors, unit="donor", fractions=(0.7, 0.2, 0.1), seed=0, classes=CLASSES)


def test_leakage_audit_counts_shared_cells():
  audit = split.leakage_audit({"train": np.array([[0, 1, -1], [1, 2, -1]]), "val": np.array([[2, 3, -1]]), "test": np.array([[4, -1, -1]])})
  assert audit["distinct_cells"] == {"train": 3, "val": 2, "test": 1}
  assert audit["cells_in_more_than_one_split"] == 1


def test_a_small_reference_keeps_that_many_training_cells_and_the_same_validation_and_test_cells():
  labels, donors = _cells(per_donor=200)
  kwargs = dict(unit="donor", fractions=(0.7, 0.2, 0.1), seed=3, classes=CLASSES)
  full = split.split_cells(labels, donors, **kwargs)
  small = split.split_cells(labels, donors, max_train=300, **kwargs)
  assert (small == 0).sum() == 300 and set(np.unique(small)) == {split.UNUSED, 0, 1, 2}
  np.testing.assert_array_equal(small[full != 0], full[full != 0])
  assert (full[small == 0] == 0).all()
  np.testing.assert_array_equal(small, split.split_cells(labels, donors, max_train=300, **kwargs))
  np.testing.assert_array_equal(split.split_cells(labels, donors, max_train=10**6, **kwargs), full)
