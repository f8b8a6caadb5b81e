"""Temporal and spatial sequences: lengths, masks, labels, z-scores, label encoding; and fixed-shape batches."""

import numpy as np
import pytest

from cardiac_jax import batches, sequences
from cardiac_jax.errors import DataError


def _cells(seed=0):
  """60 cells of 3 classes over 4 time points; class 2 only at time points 2 and 3."""
  rng = np.random.default_rng(seed)
  labels = np.repeat([0, 1, 2], 20)
  times = np.concatenate([np.arange(20) % 4, np.arange(20) % 4, 2 + np.arange(20) % 2])
  x = rng.normal(size=(60, 5)) * 3 + 2
  return x, labels, times


def test_temporal_sequences():
  x, labels, times = _cells()
  rng = np.random.default_rng(0)
  seqs = sequences.temporal_sequences(x, labels, times, np.arange(60), n_per_class=8, n_classes=3, max_len=6, rng=rng)
  assert seqs.x.shape == (24, 6, 5) and seqs.x.dtype == np.float32
  np.testing.assert_array_equal(seqs.lengths, [4] * 16 + [2] * 8)
  np.testing.assert_array_equal(seqs.labels, np.repeat([0, 1, 2], 8))
  np.testing.assert_array_equal(seqs.mask.sum(1), seqs.lengths)
  for i in range(len(seqs)):
    ids = seqs.cell_ids[i, : seqs.lengths[i]]
    assert (labels[ids] == seqs.labels[i]).all()  # every cell has the sequence's type
    assert (np.diff(times[ids]) > 0).all()  # one cell per time point, in time order
    np.testing.assert_array_equal(seqs.times[i, : seqs.lengths[i]], times[ids])  # each step's time point
    assert (seqs.times[i, seqs.lengths[i] :] == -1).all()
    assert (seqs.cell_ids[i, seqs.lengths[i] :] == -1).all()
    valid = seqs.x[i, : seqs.lengths[i]]
    np.testing.assert_allclose(valid.mean(), 0, atol=1e-5)
    np.testing.assert_allclose(valid.std(), 1, atol=1e-5)
    assert (seqs.x[i, seqs.lengths[i] :] == 0).all()
    raw = x[ids]
    np.testing.assert_allclose(valid, (raw - raw.mean()) / raw.std(), atol=1e-5)
  assert not seqs.spatial.any()


def test_temporal_sequences_respect_the_pool():
  x, labels, times = _cells()
  pool = np.arange(0, 60, 2)
  seqs = sequences.temporal_sequences(
      x, labels, times, pool, n_per_class=30, n_classes=3, max_len=4, rng=np.random.default_rng(1)
  )
  used = seqs.cell_ids[seqs.cell_ids >= 0]
  assert set(used) <= set(pool)


def test_standardize_constant_sequence_is_zero():
  out = sequences.standardize_and_pad(np.full((1, 2, 3), 7.0), np.array([2]), 4)
  assert out.shape == (1, 4, 3) and (out == 0).all()


def test_label_encoding_round_trip_and_unknown_label():
  encoding = sequences.LabelEncoding.fit(["CM", "IPSC", "CF", "CM"])
  assert encoding.classes == ("CF", "CM", "IPSC")
  ids = encoding.encode(["IPSC", "CF"])
  np.testing.assert_array_equal(ids, [2, 0])
  assert list(encoding.decode(ids)) == ["IPSC", "CF"]
  assert sequences.LabelEncoding.from_json(encoding.to_json()) == encoding
  with pytest.raises(DataError, match=r"new.h5ad: unknown label\(s\) \['XYZ'\]"):
    encoding.encode(["CM", "XYZ"], "new.h5ad")


def test_spatial_chains_are_adjacent_and_of_one_label():
  rows, cols = np.meshgrid(np.arange(10), np.arange(20), indexing="ij")
  keep = (rows + cols) % 2 == 0
  rows, cols = rows[keep], cols[keep]
  spot_labels = (cols >= 10).astype(np.int32)
  spot_labels[:5] = -1
  spot_x = np.random.default_rng(0).normal(size=(len(rows), 4))
  chains, spots = sequences.spatial_sequences(
      spot_x, rows, cols, spot_labels, n=50, chain_len=5, max_len=7, rng=np.random.default_rng(0)
  )
  assert chains.x.shape == (50, 7, 4) and chains.spatial.all() and (chains.cell_ids == -1).all()
  assert (chains.lengths >= 1).all() and (chains.lengths <= 5).all() and chains.lengths.mean() > 3
  for k in range(50):
    chain = spots[k, : chains.lengths[k]]
    assert (spots[k, chains.lengths[k] :] == -1).all()
    assert len(set(chain)) == len(chain)  # no spot twice
    assert (spot_labels[chain] == chains.labels[k]).all()  # one pseudo-label
    steps = {(int(dr), int(dc)) for dr, dc in zip(np.diff(rows[chain]), np.diff(cols[chain]))}
    assert steps <= set(sequences.HEX_NEIGHBOURS)  # each step to a hexagonal neighbour
    values = spot_x[chain]
    np.testing.assert_allclose(chains.x[k, : len(chain)], (values - values.mean()) / values.std(), atol=1e-5)


def test_pseudo_labels_keep_confident_spots_only():
  centroids = np.array([[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0]])
  spots = np.array([[1.0, 0, 0], [0, 1.0, 0], [0.5, 0.5, 0], [0, 0.1, 0.9]])
  labels = sequences.pseudo_label_spots(spots, centroids, 0.25)
  np.testing.assert_array_equal(labels, [0, 1, -1, 2])


def test_batches_have_one_shape_and_mask_the_fill():
  x, labels, times = _cells()
  seqs = sequences.temporal_sequences(
      x, labels, times, np.arange(60), n_per_class=7, n_classes=3, max_len=4, rng=np.random.default_rng(0)
  )
  out = list(batches.iterate(seqs, 8, np.random.default_rng(0)))
  assert len(out) == batches.num_batches(21, 8) == 3
  for batch in out:
    assert batch["x"].shape == (8, 4, 5) and batch["lengths"].shape == (8,)
    assert (batch["lengths"] >= 1).all()
  assert [b["mask"].sum() for b in out] == [8, 8, 5]
  seen = np.concatenate([b["labels"][b["mask"] > 0] for b in out])
  np.testing.assert_array_equal(np.sort(seen), np.sort(seqs.labels))
  assert batches.adaptive_batch_size(1_500) == 16
  assert batches.adaptive_batch_size(5_000) == 32
  assert batches.adaptive_batch_size(20_000) == 64


def _padded(lengths, max_len, genes=3, seed=0):
  rng = np.random.default_rng(seed)
  lengths = np.asarray(lengths, np.int32)
  x = sequences.standardize_and_pad(rng.standard_normal((len(lengths), lengths.max(), genes)), lengths, max_len)
  return sequences.Sequences(
      x=x, lengths=lengths, labels=np.arange(len(lengths), dtype=np.int32) % 2,
      cell_ids=np.full((len(lengths), max_len), -1, np.int64), spatial=np.zeros(len(lengths), bool),
      anchor=np.full(len(lengths), -1, np.int32), times=np.full((len(lengths), max_len), -1, np.int32))


def test_batches_cut_to_the_used_steps_keep_every_valid_value():
  padded = _padded([3, 5, 2, 4, 1], max_len=100)
  steps = batches.used_steps(padded, _padded([2, 1], max_len=100))
  assert steps == 5
  full = list(batches.iterate(padded, 4))
  cut = list(batches.iterate(padded, 4, steps=steps))
  assert [b["x"].shape for b in cut] == [(4, 5, 3), (4, 5, 3)]
  for a, b in zip(full, cut):
    np.testing.assert_array_equal(a["x"][:, :steps], b["x"])
    assert not a["x"][:, steps:].any()  # only padding was cut
    for key in ("lengths", "labels", "mask"):
      np.testing.assert_array_equal(a[key], b[key])
  with pytest.raises(ValueError, match="cut sequences of length 5"):
    next(batches.iterate(padded, 4, steps=4))


def test_anchored_sequences_take_context_without_labels():
  """Each anchor at its own day, the mean of its k nearest pool cells (of its group) at every other day."""
  rng = np.random.default_rng(1)
  n, genes = 60, 4
  x = rng.normal(size=(n, genes)).astype(np.float32)
  embedding = x[:, :2] * 3
  times = np.repeat(np.arange(3), 20)
  groups = np.tile(np.array(["a", "b"]), 30)
  anchors = np.array([0, 25, 59])
  pool = np.arange(n)
  built = sequences.anchored_sequences(x, embedding, times, anchors, pool, n_times=3, k=2, max_len=5, groups=groups)
  assert built.x.shape == (3, 5, genes + 1)
  np.testing.assert_array_equal(built.lengths, [3, 3, 3])
  np.testing.assert_array_equal(built.anchor, times[anchors])
  np.testing.assert_array_equal(built.times, np.tile([0, 1, 2, -1, -1], (3, 1)))  # every day, in order
  np.testing.assert_array_equal(built.anchor_cells, anchors)
  np.testing.assert_array_equal(built.labels, [-1, -1, -1])  # no labels were given or needed
  for i, a in enumerate(anchors):
    flags = built.x[i, :, -1]
    assert flags[built.anchor[i]] == 1 and flags.sum() == 1
    steps = np.zeros((3, genes), np.float32)
    for t in range(3):
      if t == times[a]:
        steps[t] = x[a]
        continue
      candidates = np.flatnonzero((times == t) & (groups == groups[a]))
      near = candidates[np.argsort(((embedding[candidates] - embedding[a]) ** 2).sum(1), kind="stable")[:2]]
      steps[t] = x[near].mean(0)
      assert built.cell_ids[i, t] == near[0] and groups[built.cell_ids[i, t]] == groups[a]
    expected = sequences.standardize_and_pad(steps[None], np.array([3]), 5)[0]
    np.testing.assert_allclose(built.x[i, :, :genes], expected, atol=1e-5)
  # A pool without some day gives shorter sequences, the anchor's step counted among the days present.
  short = sequences.anchored_sequences(x, embedding, times, np.array([45]), np.flatnonzero(times != 1), n_times=3,
                                       k=2, max_len=5)
  assert short.lengths[0] == 2 and short.anchor[0] == 1 and short.x[0, 1, -1] == 1
  np.testing.assert_array_equal(short.times[0], [0, 2, -1, -1, -1])


def test_cell_sequences_are_single_cells():
  x = np.arange(12, dtype=np.float32).reshape(4, 3)
  built = sequences.cell_sequences(x, np.array([0, 1, 2, 1]), np.array([2, 0]), np.array([5, 6, 7, 8]), max_len=3)
  np.testing.assert_array_equal(built.labels, [7, 5])
  np.testing.assert_array_equal(built.lengths, [1, 1])
  np.testing.assert_array_equal(built.anchor_cells, [2, 0])
  np.testing.assert_array_equal(built.times, [[2, -1, -1], [0, -1, -1]])
  np.testing.assert_allclose(built.x[0, 0], (x[2] - x[2].mean()) / x[2].std(), atol=1e-6)
  assert not built.x[:, 1:].any()


def test_gene_scaling_standardises_each_gene_as_the_training_cells_are():
  rng = np.random.default_rng(3)
  x = rng.gamma(2.0, size=(30, 4)).astype(np.float32)
  times = np.repeat(np.arange(3), 10)
  mean, scale = x.mean(0), x.std(0)
  built = sequences.anchored_sequences(x, x[:, :2], times, np.array([0, 15]), np.arange(30), n_times=3, k=2,
                                       max_len=4, gene_scaling=(mean, scale))
  anchor_rows = built.x[np.arange(2), built.anchor, :4]
  np.testing.assert_allclose(anchor_rows, (x[[0, 15]] - mean) / scale, atol=1e-5)  # the cell as an LR reads it
  assert not built.x[:, 3:, :4].any()  # padding stays zero
  alone = sequences.cell_sequences(x, times, np.array([7]), max_len=2, gene_scaling=(mean, scale))
  np.testing.assert_allclose(alone.x[0, 0], (x[7] - mean) / scale, atol=1e-5)
  assert not np.allclose(sequences.cell_sequences(x, times, np.array([7]), max_len=2).x[0, 0], alone.x[0, 0])


def test_time_channels_say_each_steps_time_point_between_the_genes_and_the_anchor_channel():
  rng = np.random.default_rng(5)
  x = rng.normal(size=(30, 4)).astype(np.float32)
  times = np.repeat(np.arange(3), 10)
  built = sequences.anchored_sequences(x, x[:, :2], times, np.array([0, 15]), np.flatnonzero(times != 1), n_times=3,
                                       k=2, max_len=5)
  timed = sequences.with_time_channels(built, 4, 3)
  assert timed.x.shape == (2, 5, 4 + 3 + 1)
  np.testing.assert_array_equal(timed.x[..., :4], built.x[..., :4])  # genes unchanged
  np.testing.assert_array_equal(timed.x[..., -1], built.x[..., -1])  # the anchor channel stays last
  np.testing.assert_array_equal(timed.x[0, :, 4:7], [[1, 0, 0], [0, 0, 1], [0, 0, 0], [0, 0, 0], [0, 0, 0]])
  np.testing.assert_array_equal(timed.x[1, :3, 4:7], np.eye(3))  # anchor 15 sits at day 1, between its context
  assert not timed.x[0, 2:, 4:].any() and not timed.x[1, 3:, 4:].any()  # padding has no time
  alone = sequences.with_time_channels(sequences.cell_sequences(x, times, np.array([25]), max_len=2), 4, 3)
  np.testing.assert_array_equal(alone.x[0, :, 4:], [[0, 0, 1], [0, 0, 0]])


def test_a_large_context_pool_is_sampled_by_content_whatever_the_cells_order(monkeypatch):
  """Beyond CONTEXT_POOL cells of a day, the context comes from a sample chosen by the cells' content: the same
  cells, and so the same sequences, whatever order the cells come in; the search per cell stays bounded."""
  rng = np.random.default_rng(3)
  points = rng.normal(size=(500, 6)).astype(np.float32)
  chosen = sequences.content_sample(points, 100)
  assert len(chosen) == 100 and (np.diff(chosen) > 0).all()
  order = rng.permutation(500)
  assert set(order[sequences.content_sample(points[order], 100)]) == set(chosen)
  np.testing.assert_array_equal(sequences.content_sample(points[:80], 100), np.arange(80))
  monkeypatch.setattr(sequences, "CONTEXT_POOL", 50)
  x = rng.normal(size=(400, 5)).astype(np.float32)
  times = np.repeat(np.arange(2), 200)
  built = sequences.anchored_sequences(x, x[:, :3], times, np.arange(10), np.arange(400), n_times=2, k=3, max_len=2)
  pool_day1 = 200 + sequences.content_sample(x[200:, :3], 50)
  assert set(built.cell_ids[:, 1]) <= set(pool_day1)  # the context's nearest cells come from the sample
  shuffled = rng.permutation(400)
  inverse = np.argsort(shuffled)
  again = sequences.anchored_sequences(x[shuffled], x[shuffled, :3], times[shuffled], inverse[:10], np.arange(400),
                                       n_times=2, k=3, max_len=2)
  np.testing.assert_allclose(again.x, built.x, atol=1e-6)
