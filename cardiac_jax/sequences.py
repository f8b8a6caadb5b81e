"""Split cells -> sequences: the seed's temporal sequences, per-cell sequences, spatial chains, label encoding.

Three kinds of sequence (`data.sequence_mode`, chosen by name in dataset.SEQUENCE_MODES):

* type (the seed's): a sequence of class c takes one random cell of type c at each time point where c has
  cells (in the split's own pool), in time order, so it is 1..n_times steps long. It needs labels to be built.
* anchored: one sequence per cell (the anchor), built without labels. The anchor sits at its own time point;
  every other time point of the context pool contributes the mean of the anchor's `k` nearest cells there, in
  the PCA space of the model's genes fitted on training cells (`Preprocessing.embed`). One more input channel
  is 1 at the anchor's step and 0 elsewhere, so the model knows which cell it labels.
* cell: one sequence per cell, the cell alone (one step): the no-context ablation.

Every sequence is z-scored over its valid entries (the seed's per-sequence standardisation) and zero-padded
to `max_len`, with its length kept so that the model and the mask know where the padding starts.
"""

import dataclasses
import json

import numpy as np

from cardiac_jax import neighbours
from cardiac_jax.errors import DataError

# Visium's hexagonal grid: a spot's six neighbours as (array_row, array_col) offsets.
HEX_NEIGHBOURS = ((0, -2), (0, 2), (-1, -1), (-1, 1), (1, -1), (1, 1))


@dataclasses.dataclass(frozen=True)
class LabelEncoding:
  """Class names <-> consecutive ids; saved with a run so a restored model decodes labels the same way."""

  classes: tuple

  @classmethod
  def fit(cls, labels):
    return cls(tuple(sorted({str(v) for v in labels})))

  def encode(self, labels, path="<data>"):
    """[n] names -> [n] int32 ids; an unknown name is a DataError naming `path`."""
    index = {name: i for i, name in enumerate(self.classes)}
    labels = np.asarray(labels).astype(str)
    unknown = sorted(set(labels.tolist()) - set(index))
    if unknown:
      raise DataError(path, f"unknown label(s) {unknown}; the model knows {list(self.classes)}")
    return np.array([index[v] for v in labels], np.int32)

  def decode(self, ids):
    return np.asarray(self.classes, dtype=object)[np.asarray(ids)]

  def to_json(self):
    return json.dumps({"classes": list(self.classes)})

  @classmethod
  def from_json(cls, text):
    return cls(tuple(json.loads(text)["classes"]))


@dataclasses.dataclass(frozen=True)
class Mode:
  """What one example of a data.sequence_mode is.

  Attributes:
    per_cell: one sequence per cell, built without its label, so a run of this mode can label new cells and its
      test metrics are per cell; otherwise the seed's type sequences, drawn per type.
    context: a cell's steps at the other days are its nearest cells there in an embedding (anchored).
  """

  per_cell: bool
  context: bool


# data.sequence_mode -> what its examples are; dataset.py builds each (its SEQUENCE_MODES), predict.py a query's.
MODES = {"type": Mode(per_cell=False, context=False), "anchored": Mode(per_cell=True, context=True),
         "cell": Mode(per_cell=True, context=False)}


def valid_steps(lengths, steps, xp=np):
  """[n, steps] bool, True at the first lengths[i] steps of row i (padding is at the end); `xp` is numpy or
  jax.numpy, so the model's masks and the data's are one rule."""
  return xp.arange(steps)[None, :] < xp.asarray(lengths)[:, None]


@dataclasses.dataclass(frozen=True)
class Sequences:
  """A set of padded sequences.

  Attributes:
    x: [n, max_len, features] float32: the genes (z-scored over each sequence's valid steps, or each gene by the
      training cells' mean and spread), then for per-cell sequences any time channels (`with_time_channels`) and
      the anchor channel (anchored); zeros after the valid steps.
    lengths: [n] int32 valid steps (padding is at the end).
    labels: [n] int32 class ids (-1 where unknown: a query being annotated).
    cell_ids: [n, max_len] int64 rows of the cells used (-1 at padding and at spatial steps); at an anchored
      sequence's context steps, the nearest of the cells averaged there.
    spatial: [n] bool, True for chains of Visium spots.
    anchor: [n] int32 step of the labelled cell in per-cell sequences (anchored, cell), -1 in type sequences.
    times: [n, max_len] int32 time-point index of each step (-1 at padding and at spatial steps).
  """

  x: np.ndarray
  lengths: np.ndarray
  labels: np.ndarray
  cell_ids: np.ndarray
  spatial: np.ndarray
  anchor: np.ndarray
  times: np.ndarray

  def __len__(self):
    return len(self.labels)

  def _at_anchor(self, steps):
    """[n] the value of per-step array `steps` [n, max_len] at each per-cell sequence's anchor (-1 for type
    sequences)."""
    values = np.take_along_axis(steps, np.maximum(self.anchor, 0)[:, None].astype(np.int64), 1)[:, 0]
    return np.where(self.anchor >= 0, values, -1).astype(steps.dtype)

  @property
  def anchor_cells(self):
    """[n] int64 row of each per-cell sequence's labelled cell (-1 for type sequences)."""
    return self._at_anchor(self.cell_ids)

  @property
  def anchor_times(self):
    """[n] int32 time-point index of each per-cell sequence's labelled cell (-1 for type sequences)."""
    return self._at_anchor(self.times)

  @property
  def mask(self):
    """[n, max_len] bool, True at valid steps."""
    return valid_steps(self.lengths, self.x.shape[1])

  def take(self, index):
    return Sequences(*(getattr(self, f.name)[index] for f in dataclasses.fields(self)))

  @staticmethod
  def concatenate(parts):
    return Sequences(*(np.concatenate([getattr(p, f.name) for p in parts]) for f in dataclasses.fields(Sequences)))


# data.input_scaling: 'sequence' (the seed's: each sequence z-scored over all its genes and steps) or 'gene' (each
# gene standardised by the training cells' mean and spread, as a per-cell logistic regression's inputs are).
INPUT_SCALINGS = ("sequence", "gene")
# Gene-scaled values are clipped to this many training standard deviations (as the context embedding's are).
GENE_CLIP = 10.0


def scaled_and_padded(steps, lengths, max_len, gene_scaling=None):
  """[n, max_len, genes] float32 of steps [n, steps, genes]: `standardize_and_pad` (per sequence), or with
  `gene_scaling` = (mean, scale) [genes] each gene standardised by them and clipped to +-GENE_CLIP; zeros at
  padded steps."""
  if gene_scaling is None:
    return standardize_and_pad(steps, lengths, max_len)
  mean, scale = gene_scaling
  n, width, genes = steps.shape
  out = np.zeros((n, max_len, genes), np.float32)
  scaled = out[:, :width]  # a view: scaled in place, one pass each
  np.subtract(steps, mean, out=scaled)
  scaled /= scale
  np.clip(scaled, -GENE_CLIP, GENE_CLIP, out=scaled)
  scaled[~valid_steps(lengths, width)] = 0
  return out


def standardize_and_pad(steps, lengths, max_len):
  """Z-scores each sequence over its valid entries and zero-pads it to max_len.

  Args:
    steps: [n, steps, genes] values; entries past a sequence's length are ignored.
    lengths: [n] valid steps, 1 <= length <= steps <= max_len.

  Returns:
    [n, max_len, genes] float32 with mean 0 and standard deviation 1 over each sequence's valid entries (a
    constant sequence becomes zeros) and zeros at padded steps.
  """
  n, width, genes = steps.shape
  valid = valid_steps(lengths, width)[:, :, None]
  count = lengths.astype(np.float64) * genes
  mean = np.where(valid, steps, 0).sum((1, 2), dtype=np.float64) / count
  centred = np.where(valid, steps - mean[:, None, None], 0)
  std = np.sqrt((centred.astype(np.float64) ** 2).sum((1, 2)) / count)
  out = np.zeros((n, max_len, genes), np.float32)
  out[:, :width] = centred / np.where(std > 0, std, 1)[:, None, None]
  return out


def temporal_sequences(x, labels, times, pool, *, n_per_class, n_classes, max_len, rng):
  """The seed's temporal sequences, drawn from the cells in `pool`.

  Args:
    x: [cells, genes] log expression.
    labels: [cells] int class ids; times: [cells] int time-point indices (0 = first).
    pool: [m] int rows of x that may be drawn (one split's cells).
    n_per_class: sequences per class; n_classes: number of classes (each must have cells in the pool).
    max_len: padded length (>= number of time points).
    rng: numpy Generator.

  Returns:
    Sequences, class by class; cells are drawn with replacement within each (class, time point).
  """
  parts = []
  for c in range(n_classes):
    members = pool[labels[pool] == c]
    days = np.unique(times[members])
    ids = np.empty((n_per_class, len(days)), np.int64)
    for j, day in enumerate(days):
      group = members[times[members] == day]
      ids[:, j] = group[rng.integers(len(group), size=n_per_class)]
    lengths = np.full(n_per_class, len(days), np.int32)
    padded_ids = np.full((n_per_class, max_len), -1, np.int64)
    padded_ids[:, : len(days)] = ids
    parts.append(
        Sequences(
            x=standardize_and_pad(x[ids], lengths, max_len),
            lengths=lengths,
            labels=np.full(n_per_class, c, np.int32),
            cell_ids=padded_ids,
            spatial=np.zeros(n_per_class, bool),
            anchor=np.full(n_per_class, -1, np.int32),
            times=_padded_times(np.tile(days, (n_per_class, 1)), max_len),
        )
    )
  return Sequences.concatenate(parts)


def cell_sequences(x, times, cells, labels=None, *, max_len, gene_scaling=None):
  """One sequence per cell of `cells`, the cell alone: [len(cells), max_len, genes], length 1 (no context).

  Args:
    x: [cells, genes] log expression; times: [cells] time-point indices; cells: [n] rows of x; labels: [cells]
      int class ids, or None (-1); gene_scaling: (mean, scale) [genes] for per-gene scaling, or None (the
      seed's per-sequence z-score; `scaled_and_padded`).
  """
  cells = np.asarray(cells, np.int64)
  n = len(cells)
  ids = np.full((n, max_len), -1, np.int64)
  ids[:, 0] = cells
  return Sequences(
      x=scaled_and_padded(x[cells][:, None, :], np.ones(n, np.int32), max_len, gene_scaling),
      lengths=np.ones(n, np.int32),
      labels=_labels_of(labels, cells),
      cell_ids=ids,
      spatial=np.zeros(n, bool),
      anchor=np.zeros(n, np.int32),
      times=_padded_times(np.asarray(times, np.int32)[cells][:, None], max_len),
  )


def with_time_channels(sequences, n_genes, n_times):
  """The sequences with a one-hot of each step's time point (n_times channels, zeros at padding) inserted after
  the first n_genes channels (the genes; an anchor channel stays last): x [n, max_len, features + n_times]."""
  one_hot = (sequences.times[..., None] == np.arange(n_times)).astype(np.float32)
  x = np.concatenate([sequences.x[..., :n_genes], one_hot, sequences.x[..., n_genes:]], axis=-1)
  return dataclasses.replace(sequences, x=x)


def _padded_times(times, max_len):
  """[n, max_len] int32: time indices [n, steps] (-1 where a sequence has ended) padded with -1."""
  out = np.full((len(times), max_len), -1, np.int32)
  out[:, : times.shape[1]] = times
  return out


def _labels_of(labels, cells):
  return np.full(len(cells), -1, np.int32) if labels is None else np.asarray(labels, np.int32)[cells]


# The most cells of one group and time point that serve as context (a donor's cells at one day). Beyond it the
# context comes from a sample of them chosen by their content (`content_sample`), so that the neighbour search
# costs each cell at most this many distances and grows linearly with a donor's cells. The built-in data's pools
# (about 150 cells) and GSE175634's (about 1,700 on average) lie mostly below it; at a million cells from 19
# donors a pool holds about 7,500.
CONTEXT_POOL = 2000


def content_sample(points, size):
  """Sorted positions of at most `size` of the rows of `points` [n, d] (float32), chosen by a hash of each row's
  bytes: the same rows whatever their order, and a different set for different data."""
  if len(points) <= size:
    return np.arange(len(points))
  words = np.ascontiguousarray(points, np.float32).view(np.uint32).astype(np.uint64)
  mixers = (np.arange(1, words.shape[1] + 1, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)) | np.uint64(1)
  with np.errstate(over="ignore"):
    key = (words * mixers).sum(1)
    key ^= key >> np.uint64(31)
    key *= np.uint64(0xBF58476D1CE4E5B9)
    key ^= key >> np.uint64(29)
  return np.sort(np.argsort(key, kind="stable")[:size])


def context_neighbours(embedding, times, anchors, pool, *, n_times, k, groups=None):
  """Each anchor's context: its k nearest pool cells at every other time point, in `embedding` space.

  The pool is `pool`, restricted to the anchor's group (e.g. its donor's time course) when `groups` is given, and
  at each time point to at most CONTEXT_POOL of its cells (`content_sample`); the search is exact
  (neighbours.nearest: nearest first, ties to the lower row).

  Args:
    embedding: [cells, d] float32 coordinates; times: [cells] int time-point index of each cell (0..n_times-1).
    anchors: [n] rows of the cells to give a context; pool: [m] rows that may serve as context.
    n_times: number of time points; k: neighbours per time point; groups: [cells] group of each cell, or None.

  Returns:
    [n, n_times, k] int32 rows of x, nearest first; -1 at the anchor's own time point, at time points where its
    pool has no cells, and beyond a pool's size where it holds fewer than k.
  """
  anchors = np.asarray(anchors, np.int64)
  pool = np.asarray(pool, np.int64)
  group_of = np.zeros(len(times), np.int64) if groups is None else np.unique(np.asarray(groups), return_inverse=True)[1]
  out = np.full((len(anchors), n_times, k), -1, np.int32)
  anchor_time = times[anchors]
  for g in np.unique(group_of[anchors]):
    members = np.flatnonzero(group_of[anchors] == g)
    context = pool[group_of[pool] == g]
    for t in np.unique(times[context]):
      reference = context[times[context] == t]
      reference = reference[content_sample(embedding[reference], CONTEXT_POOL)]
      need = members[anchor_time[members] != t]
      if len(need):
        rows = neighbours.nearest(embedding[anchors[need]], embedding[reference], k)[0]
        out[need, t, : rows.shape[1]] = reference[rows]
  return out


def _mean_of_rows(x, rows):
  """[n, genes] float32 mean of x over the rows [n, k] of each (-1: none; at least one row each)."""
  if (rows >= 0).all():
    return x[rows].mean(1)
  valid = rows >= 0
  return (x[np.maximum(rows, 0)] * valid[..., None]).sum(1) / valid.sum(1)[:, None]


def sequences_with_context(x, times, anchors, context, *, max_len, labels=None, gene_scaling=None):
  """One sequence per anchor from its context (`context_neighbours`): anchored_sequences' second half.

  Args:
    x: [cells, genes] log expression; times: [cells] time-point indices; anchors: [n] rows of x.
    context: [n, n_times, k] int rows of each anchor's context cells (-1: none), as context_neighbours gives.
    max_len: padded length; labels: [cells] int class ids or None (-1); gene_scaling: as in anchored_sequences.

  Returns:
    Sequences in the order of `anchors`: x [n, max_len, genes + 1] (scaled genes, then the anchor channel).
  """
  anchors = np.asarray(anchors, np.int64)
  n, n_times, genes = len(anchors), context.shape[1], x.shape[1]
  anchor_time = times[anchors]
  present = context[:, :, 0] >= 0
  present[np.arange(n), anchor_time] = True
  lengths = present.sum(1).astype(np.int32)
  order = np.argsort(~present, axis=1, kind="stable")  # each sequence's time points, present ones first, in order
  valid = valid_steps(lengths, n_times)
  step_times = np.where(valid, order, -1)
  steps = np.zeros((n, n_times, genes), np.float32)
  ids = np.full((n, max_len), -1, np.int64)
  for j in range(n_times):  # the j-th step of every sequence: its anchor, or the mean of its context cells
    at_anchor = valid[:, j] & (step_times[:, j] == anchor_time)
    steps[at_anchor, j] = x[anchors[at_anchor]]
    ids[at_anchor, j] = anchors[at_anchor]
    rows = np.flatnonzero(valid[:, j] & ~at_anchor)
    near = context[rows, step_times[rows, j]]
    steps[rows, j] = _mean_of_rows(x, near)
    ids[rows, j] = near[:, 0]
  anchor_step = (present & (np.arange(n_times)[None, :] < anchor_time[:, None])).sum(1)
  out = np.zeros((n, max_len, genes + 1), np.float32)
  out[:, :, :genes] = scaled_and_padded(steps, lengths, max_len, gene_scaling)
  out[np.arange(n), anchor_step, genes] = 1.0
  return Sequences(
      x=out, lengths=lengths, labels=_labels_of(labels, anchors), cell_ids=ids,
      spatial=np.zeros(n, bool), anchor=anchor_step.astype(np.int32), times=_padded_times(step_times, max_len),
  )


def anchored_sequences(x, embedding, times, anchors, pool, *, n_times, k, max_len, labels=None, groups=None,
                       gene_scaling=None):
  """One sequence per anchor cell, its context chosen without labels.

  For an anchor at time point t, the sequence has a step for every time point where the anchor's context pool
  has cells (and for t), in time order: at t the anchor itself, at any other time point the mean expression of
  the anchor's k nearest pool cells of that time point in `embedding` space (`context_neighbours`: the pool is
  `pool`, restricted to the anchor's group when `groups` is given, and capped at CONTEXT_POOL cells a time
  point). A last input channel is 1 at the anchor's step.

  Args:
    x: [cells, genes] log expression; embedding: [cells, d] coordinates to find neighbours in.
    times: [cells] int time-point index of each cell (0..n_times-1).
    anchors: [n] rows of the cells to label; pool: [m] rows that may serve as context.
    n_times: number of time points; k: neighbours averaged at a context step; max_len: padded length.
    labels: [cells] int class ids or None (then -1); groups: [cells] group of each cell, or None.
    gene_scaling: (mean, scale) [genes] for per-gene scaling, or None (per-sequence z-score; `scaled_and_padded`).

  Returns:
    Sequences in the order of `anchors`: x [n, max_len, genes + 1] (scaled genes, then the anchor channel);
    cell_ids at a context step: the nearest of the cells averaged there.
  """
  context = context_neighbours(embedding, times, anchors, pool, n_times=n_times, k=k, groups=groups)
  return sequences_with_context(x, times, anchors, context, max_len=max_len, labels=labels, gene_scaling=gene_scaling)


def class_centroids(x, labels, n_classes):
  """[n_classes, genes] mean expression of each class's cells."""
  sums = np.zeros((n_classes, x.shape[1]))
  np.add.at(sums, labels, x)
  return sums / np.maximum(np.bincount(labels, minlength=n_classes), 1)[:, None]


def pseudo_label_spots(spot_x, centroids, confidence_quantile):
  """Nearest-centroid labels for spots, kept only where the call is confident.

  Spots and centroids are centred by the centroids' gene-wise mean and compared by cosine similarity; the
  margin between the best and the second-best class measures confidence.

  Args:
    spot_x: [spots, shared genes] log expression; centroids: [classes, shared genes].
    confidence_quantile: spots whose margin is below this quantile of all margins get label -1.

  Returns:
    [spots] int32 labels, -1 for spots that are not confident.
  """
  centre = centroids.mean(0)
  a = spot_x - centre
  b = centroids - centre
  a = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
  b = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12)
  similarity = a @ b.T
  top2 = np.sort(similarity, axis=1)[:, -2:]
  margin = top2[:, 1] - top2[:, 0]
  labels = similarity.argmax(1).astype(np.int32)
  labels[margin < np.quantile(margin, confidence_quantile)] = -1
  return labels


def spatial_sequences(spot_x, rows, cols, spot_labels, *, n, chain_len, max_len, rng):
  """Chains of spatially adjacent spots that share one pseudo-label.

  Each chain starts at a random labelled spot and walks to a random unvisited hexagonal neighbour with the same
  label until it has `chain_len` spots or no such neighbour is left.

  Args:
    spot_x: [spots, genes] log expression on the model's genes.
    rows, cols: [spots] Visium array_row / array_col.
    spot_labels: [spots] int class ids, -1 for spots to leave out.
    n: number of chains; chain_len: the longest chain (<= max_len).

  Returns:
    (Sequences with spatial=True and cell_ids -1, [n, max_len] spot ids of the chains with -1 at padding).
  """
  at = {(r, c): i for i, (r, c) in enumerate(zip(rows.tolist(), cols.tolist()))}
  starts = np.flatnonzero(spot_labels >= 0)
  if len(starts) == 0:
    raise ValueError("no confidently labelled spots to build spatial sequences from")
  chains = np.full((n, max_len), -1, np.int64)
  lengths = np.zeros(n, np.int32)
  for k in range(n):
    chain = [int(rng.choice(starts))]
    label = spot_labels[chain[0]]
    while len(chain) < chain_len:
      r, c = rows[chain[-1]], cols[chain[-1]]
      options = [at[(r + dr, c + dc)] for dr, dc in HEX_NEIGHBOURS if (r + dr, c + dc) in at]
      options = [i for i in options if spot_labels[i] == label and i not in chain]
      if not options:
        break
      chain.append(int(rng.choice(options)))
    chains[k, : len(chain)] = chain
    lengths[k] = len(chain)
  chain_x = spot_x[np.maximum(chains, 0)]
  sequences = Sequences(
      x=standardize_and_pad(chain_x, lengths, max_len),
      lengths=lengths,
      labels=spot_labels[chains[:, 0]].astype(np.int32),
      cell_ids=np.full((n, max_len), -1, np.int64),
      spatial=np.ones(n, bool),
      anchor=np.full(n, -1, np.int32),
      times=np.full((n, max_len), -1, np.int32),
  )
  return sequences, chains
