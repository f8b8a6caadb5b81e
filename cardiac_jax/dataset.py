"""The data's whole journey for one config: files -> AnnData -> preprocessed -> split -> sequences.

`prepare(config)` is the one entry point; each step lives in its own module (readers, preprocess, split,
sequences) and this module only chains them and writes down what happened (`Dataset.report`).
"""

import dataclasses
import hashlib
import json
import pathlib
import zipfile
from typing import Any

import numpy as np
import scanpy as sc
from absl import logging

from cardiac_jax import integrity, novelty, preprocess, readers, simulate
from cardiac_jax import split as splitting
from cardiac_jax.errors import ConfigError, DataError
from cardiac_jax.sequences import (
    MODES,
    LabelEncoding,
    Sequences,
    anchored_sequences,
    cell_sequences,
    class_centroids,
    pseudo_label_spots,
    spatial_sequences,
    temporal_sequences,
    with_time_channels,
)

SOURCES = ("simulated", "geo", "h5ad")

# The modules whose code makes a Dataset: a change to any of them makes new prepared-data cache keys.
_DATA_MODULES = ("dataset", "novelty", "preprocess", "readers", "sequences", "simulate", "split")


def code_digest():
  """A digest of the source of the data's journey (`_DATA_MODULES`), so code changes never reuse old caches."""
  folder = pathlib.Path(__file__).parent
  digest = hashlib.sha256()
  for name in _DATA_MODULES:
    digest.update((folder / f"{name}.py").read_bytes())
  return digest.hexdigest()


@dataclasses.dataclass(frozen=True)
class Dataset:
  """Train/val/test sequences with what is needed to read them.

  Attributes:
    train, val, test: Sequences (spatial chains are in train only).
    encoding: the LabelEncoding of the labels.
    genes: the model's input genes, in input order.
    time_points: the time points in order.
    report: JSON-ready counts: quality control, split sizes, the leakage audit, spatial pseudo-labels.
    cell_x: [cells, genes] float32 log expression of every cell kept by QC (rows are Sequences.cell_ids),
      for per-cell baselines.
    cell_labels: [cells] int32 class ids of those cells.
    preprocessing: the preprocess.Preprocessing fitted on the training cells.
    cell_names: [cells] str obs names of those cells; cell_split: [cells] int8 split id (0 train, 1 val, 2 test;
      all 0 for the seed's sequence split, whose cells are shared).
    novelty: the novelty.Novelty fitted on the training cells' whole transcriptome (data.novelty_genes), or None.
    cell_novelty: [cells] float32 novelty score of every cell (empty without a novelty model).
  """

  train: Sequences
  val: Sequences
  test: Sequences
  encoding: LabelEncoding
  genes: tuple
  time_points: tuple
  report: dict
  cell_x: np.ndarray
  cell_labels: np.ndarray
  preprocessing: preprocess.Preprocessing
  cell_names: np.ndarray
  cell_split: np.ndarray
  novelty: Any = None
  cell_novelty: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0, np.float32))

  @property
  def splits(self):
    return {"train": self.train, "val": self.val, "test": self.test}

  def novelty_of(self, sequences):
    """[n] float32 novelty score of each of a split's sequences' anchor cell, or None without a novelty model."""
    return None if self.novelty is None else self.cell_novelty[sequences.anchor_cells]


def simulated(config):
  """(GSE175634 folder, Visium folder) of the built-in simulated data for config.sim, written once to the cache."""
  sim = config.sim
  return simulate.ensure_simulated(
      config.data.cache_dir,
      n_cells=sim.n_cells,
      n_genes=sim.n_genes,
      n_donors=sim.n_donors,
      n_spots=sim.n_spots,
      n_spot_genes=sim.n_spot_genes,
      seed=sim.seed,
      signal=sim.signal,
  )


def load(config):
  """Reads the configured source. Returns (AnnData of cells, path of a Visium folder or None)."""
  data = config.data
  path, visium_path = input_files(config)
  if data.source in ("simulated", "geo"):
    return readers.read_geo(path, data.geo_matrix), visium_path
  adata = readers.read_h5ad(path, time_key=data.time_key, label_key=data.label_key, donor_key=data.donor_key)
  return adata, visium_path


def _per_split_counts(sequences_by_split, classes):
  return {
      name: {
          "sequences": int(len(s)),
          "spatial": int(s.spatial.sum()),
          "per_class": {classes[c]: int((s.labels == c).sum()) for c in range(len(classes))},
      }
      for name, s in sequences_by_split.items()
  }


def _spatial(config, visium_path, x, labels, train_cells, genes, n_classes, chain_len, rng):
  """Spatial chains (at most chain_len spots) for the train split, pseudo-labelled by nearest training centroid."""
  spots = readers.read_visium(visium_path)
  kind = preprocess.detect_normalization(spots.X)
  if kind == "counts":
    sc.pp.normalize_total(spots, target_sum=config.data.target_sum)
  if kind in ("counts", "linear"):
    sc.pp.log1p(spots)
  spot_index = {g: i for i, g in enumerate(spots.var_names)}
  shared = [j for j, g in enumerate(genes) if g in spot_index]
  if not shared:
    raise DataError(visium_path, f"shares none of the model's {len(genes)} genes")
  train_x = x[train_cells]
  centroids = class_centroids(train_x, labels[train_cells], n_classes)
  spot_dense = spots.X[:, [spot_index[genes[j]] for j in shared]].toarray()
  spot_labels = pseudo_label_spots(spot_dense, centroids[:, shared], config.data.spatial_confidence_quantile)
  # Genes the spots lack take the training cells' mean, a neutral value for the model.
  spot_x = np.tile(train_x.mean(0), (spots.n_obs, 1)).astype(np.float32)
  spot_x[:, shared] = spot_dense
  chains, _ = spatial_sequences(
      spot_x,
      spots.obs["array_row"].to_numpy(),
      spots.obs["array_col"].to_numpy(),
      spot_labels,
      n=config.data.n_spatial,
      chain_len=chain_len,
      max_len=config.data.max_len,
      rng=rng,
  )
  report = {
      "path": str(visium_path),
      "spots": int(spots.n_obs),
      "shared_genes": len(shared),
      "confident_spots": int((spot_labels >= 0).sum()),
      "mean_chain_length": float(chains.lengths.mean()),
  }
  return chains, report


def input_files(config):
  """The files `prepare(config)` reads: (the data's path, the Visium folder or None), simulated data written first."""
  data = config.data
  if data.source == "simulated":
    geo_dir, visium_dir = simulated(config)
    return geo_dir, data.spatial_path or visium_dir
  if data.source not in SOURCES:
    raise ConfigError(f"data.source must be one of {SOURCES}, got {data.source!r}")
  if not data.path:
    raise ConfigError(f"data.source={data.source!r} needs data.path")
  return data.path, data.spatial_path or None


def cache_key(config):
  """A digest of everything a Dataset depends on: the data, split, seed and sim configs, the input files and
  the code that prepares them (`code_digest`).

  Files enter by name, size and modification time, so replacing or editing an input makes a new key.
  """
  files = []
  for root in input_files(config):
    if root is None:
      continue
    root = pathlib.Path(root).expanduser()
    if not root.exists():
      raise DataError(root, "file not found")
    paths = sorted(p for p in root.rglob("*") if p.is_file()) if root.is_dir() else [root]
    files += [[str(p.absolute()), p.stat().st_size, p.stat().st_mtime_ns] for p in paths]
  settings = {name: config[name].to_dict() for name in ("data", "split", "sim")}
  settings["data"].pop("reuse_prepared", None)
  text = json.dumps({"settings": settings, "seed": config.seed, "files": files, "code": code_digest()},
                    sort_keys=True, default=list)
  return hashlib.sha256(text.encode()).hexdigest()[:20]


_SEQUENCE_FIELDS = tuple(f.name for f in dataclasses.fields(Sequences))


def _save(dataset, path):
  """Writes a Dataset to one .npz, through a temporary file and a rename: complete or absent."""
  arrays = {f"{split}.{field}": getattr(seqs, field) for split, seqs in dataset.splits.items() for field in _SEQUENCE_FIELDS}
  meta = {"classes": dataset.encoding.classes, "genes": dataset.genes, "time_points": dataset.time_points,
          "report": dataset.report, "preprocessing": dataset.preprocessing.to_json()}
  path.parent.mkdir(parents=True, exist_ok=True)
  if dataset.novelty is not None:
    arrays.update({f"novelty.{name}": value for name, value in dataset.novelty.arrays().items()})
  integrity.write_atomic(path, lambda tmp: np.savez(
      tmp, cell_x=dataset.cell_x, cell_labels=dataset.cell_labels, cell_names=dataset.cell_names,
      cell_split=dataset.cell_split, cell_novelty=dataset.cell_novelty, meta=np.array(json.dumps(meta)), **arrays))


def _load_saved(path):
  with np.load(path) as saved:
    meta = json.loads(str(saved["meta"]))
    splits = [Sequences(*(saved[f"{split}.{field}"] for field in _SEQUENCE_FIELDS)) for split in splitting.SPLITS]
    fitted = {name[len("novelty."):]: saved[name] for name in saved.files if name.startswith("novelty.")}
    return Dataset(
        *splits, encoding=LabelEncoding(tuple(meta["classes"])), genes=tuple(meta["genes"]),
        time_points=tuple(meta["time_points"]), report=meta["report"], cell_x=saved["cell_x"],
        cell_labels=saved["cell_labels"], preprocessing=preprocess.Preprocessing.from_json(meta["preprocessing"]),
        cell_names=saved["cell_names"], cell_split=saved["cell_split"],
        novelty=novelty.Novelty.from_arrays(fitted) if fitted else None, cell_novelty=saved["cell_novelty"],
    )


def prepare(config):
  """Runs the data's journey for `config` and returns a Dataset. Deterministic given config.seed.

  With config.data.reuse_prepared, the Dataset is kept in `{cache_dir}/prepared/{cache_key}.npz` and a later
  call with the same config and unchanged input files reads it back instead of preparing the data again
  (seconds instead of minutes at GSE175634's full size).
  """
  check_sequence_mode(config)
  if not config.data.reuse_prepared:
    return _prepare(config)
  path = pathlib.Path(config.data.cache_dir).expanduser() / "prepared" / f"{cache_key(config)}.npz"
  if path.exists():
    try:
      dataset = _load_saved(path)
    except (OSError, EOFError, KeyError, ValueError, zipfile.BadZipFile) as e:
      logging.warning(f"the prepared-data cache {path} is damaged ({type(e).__name__}: {e}); preparing the data "
                      "again and rewriting it")
    else:
      logging.info(f"prepared data read from the cache {path}")
      return dataset
  dataset = _prepare(config)
  _save(dataset, path)
  logging.info(f"prepared data cached in {path}")
  return dataset


def _prepare(config):
  """The data's journey itself: files -> AnnData -> preprocessed -> split -> sequences."""
  data = config.data
  adata, visium_path = load(config)
  path = adata.uns["source_path"]
  logging.info(f"read {adata.n_obs:,} cells x {adata.n_vars:,} genes from {path}")
  adata, time_points, qc = preprocess.quality_control(
      adata, time_key=data.time_key, label_key=data.label_key, donor_key=data.donor_key, time_order=data.time_order
  )
  adata = exclude_types(adata, data.label_key, data.exclude_types, path)
  if data.max_len < len(time_points):
    raise ConfigError(f"data.max_len={data.max_len} is less than the {len(time_points)} time points")
  if len(time_points) == 1:
    logging.warning("%s: the data have one time point (%s): every sequence is one step long, so the model sees "
                    "no change over time (the seed's sequences run over several days)", path, time_points[0])
  encoding = LabelEncoding.fit(adata.obs[data.label_key])
  classes = encoding.classes
  labels = encoding.encode(adata.obs[data.label_key], path)
  time_index = {t: i for i, t in enumerate(time_points)}
  times = np.array([time_index[t] for t in adata.obs[data.time_key]], np.int32)
  donors = adata.obs[data.donor_key].to_numpy() if data.donor_key else None
  unit = config.split.unit
  fractions = tuple(config.split.fractions)
  cell_split = splitting.split_cells(
      labels, donors, unit=unit, fractions=fractions, seed=config.seed, classes=classes, path=path,
      folds=config.split.folds, fold=config.split.fold, max_train=config.split.max_train_cells,
  )
  train_cells = np.flatnonzero(cell_split == 0)
  fitted, x = preprocess.fit(
      adata,
      train_cells,
      n_genes=data.n_genes,
      normalization=data.normalization,
      hvg_flavor=data.hvg_flavor,
      target_sum=data.target_sum,
      min_cells=data.min_cells_per_gene,
      seed=config.seed,
      selection=data.gene_selection,
      labels=labels,
  )
  genes, kind = fitted.genes, fitted.kind
  logging.info(f"preprocessed ({kind}): {adata.n_obs:,} cells, {len(genes)} genes chosen on {len(train_cells):,} training cells")
  novel, cell_novelty = None, np.zeros(0, np.float32)
  if data.novelty_genes:
    novel = novelty.fit(adata.X, adata.var_names, train_cells, kind, data.target_sum, config.seed, data.novelty_genes)
    cell_novelty = novelty.score_matrix(novel, adata.X, adata.var_names, kind)
    logging.info(f"novelty score: {len(novel.genes):,} genes, {len(novel.reference):,} reference cells")
  rng = np.random.default_rng([config.seed, 2])
  journey = _Journey(config, x, labels, times, donors, cell_split, fitted, classes, len(time_points), rng, path)
  parts = SEQUENCE_MODES[data.sequence_mode](journey)
  spatial_report = None
  if data.n_spatial > 0 and visium_path and not MODES[data.sequence_mode].per_cell:
    chains, spatial_report = _spatial(
        config, visium_path, x, labels, train_cells, genes, len(classes), len(time_points), rng
    )
    parts[0] = Sequences.concatenate([parts[0], chains])
  by_split = dict(zip(splitting.SPLITS, parts))
  report = {
      "source": data.source,
      "path": path,
      "normalization": kind,
      "quality_control": qc,
      "classes": list(classes),
      "time_points": list(time_points),
      "split_unit": unit,
      "sequence_mode": data.sequence_mode,
      "cells_per_split": {name: int((cell_split == s).sum()) for s, name in enumerate(splitting.SPLITS)}
      if unit != "sequence"
      else {"pool": int(adata.n_obs)},
      "sequences": _per_split_counts(by_split, classes),
      "leakage": splitting.leakage_audit({name: s.cell_ids for name, s in by_split.items()}),
      "spatial": spatial_report,
  }
  logging.info(
      f"sequences: {', '.join(f'{n} {len(s):,}' for n, s in by_split.items())}; "
      f"cells in more than one split: {report['leakage']['cells_in_more_than_one_split']:,}"
  )
  return Dataset(
      *parts, encoding=encoding, genes=genes, time_points=time_points, report=report, cell_x=x, cell_labels=labels,
      preprocessing=fitted, cell_names=adata.obs_names.to_numpy().astype(str), cell_split=cell_split,
      novelty=novel, cell_novelty=cell_novelty,
  )


def exclude_types(adata, label_key, types, path):
  """adata without the cells whose label is one of `types` (a type name the data lack is a ConfigError)."""
  if not types:
    return adata
  labels = adata.obs[label_key].astype(str)
  unknown = sorted(set(types) - set(labels))
  if unknown:
    raise ConfigError(f"data.exclude_types {unknown}: no such type in {path}; types are {sorted(set(labels))}")
  keep = ~labels.isin(list(types)).to_numpy()
  logging.info(f"left out {int((~keep).sum()):,} cells of type(s) {list(types)} (data.exclude_types)")
  return adata[keep].copy()


@dataclasses.dataclass(frozen=True)
class _Journey:
  """What a sequence mode builds its train/val/test sequences from."""

  config: object
  x: np.ndarray  # [cells, genes] log expression
  labels: np.ndarray  # [cells] class ids
  times: np.ndarray  # [cells] time-point indices
  donors: object  # [cells] donor names, or None
  cell_split: np.ndarray  # [cells] split ids
  preprocessing: preprocess.Preprocessing
  classes: tuple
  n_times: int
  rng: np.random.Generator
  path: str


def _type_sequences(j):
  """The seed's sequences: per class, one random cell per time point; split by sequence (leaky) or per split."""
  data = j.config.data
  draw = dict(n_classes=len(j.classes), max_len=data.max_len, rng=j.rng)
  fractions = tuple(j.config.split.fractions)
  if j.config.split.unit == "sequence":
    pool = temporal_sequences(j.x, j.labels, j.times, np.arange(len(j.x)), n_per_class=data.n_per_type, **draw)
    seq_split = splitting.stratified_split(pool.labels, fractions, j.rng)
    splitting.check_every_class(pool.labels, seq_split, j.classes, j.path, what="sequences")
    return [pool.take(seq_split == s) for s in range(3)]
  sizes = splitting.split_sizes(data.n_per_type, fractions)
  return [
      temporal_sequences(j.x, j.labels, j.times, np.flatnonzero(j.cell_split == s), n_per_class=int(sizes[s]), **draw)
      for s in range(3)
  ]


def check_sequence_mode(config):
  """Raises ConfigError for an unknown data.sequence_mode, or a per-cell mode with the seed's sequence split."""
  mode = config.data.sequence_mode
  if mode not in MODES:
    raise ConfigError(f"data.sequence_mode must be one of {tuple(MODES)}, got {mode!r}")
  if MODES[mode].per_cell and config.split.unit == "sequence":
    raise ConfigError(f"data.sequence_mode={mode!r} labels cells: split.unit must be 'cell' or 'donor' "
                      "(the 'sequence' unit splits the seed's type sequences)")
  if config.data.input_scaling == "gene" and not MODES[mode].per_cell:
    raise ConfigError("data.input_scaling='gene' is for per-cell sequences (data.sequence_mode 'anchored' or 'cell')")
  if config.train.linear_start and not (config.model.linear_path and MODES[mode].per_cell
                                        and (config.model.pooling == "anchor" or not MODES[mode].context)):
    raise ConfigError("train.linear_start starts the linear path of a per-cell model from the labelled cell's own "
                      "inputs: it needs model.linear_path=True and data.sequence_mode 'anchored' (with "
                      "model.pooling='anchor') or 'cell'")
  if config.train.linear_start and config.init_from:
    raise ConfigError("train.linear_start and init_from both set the starting parameters; give one")
  if config.data.time_channels and not MODES[mode].per_cell:
    raise ConfigError("data.time_channels is for per-cell sequences (data.sequence_mode 'anchored' or 'cell')")
  if MODES[mode].context and config.data.context_k < 1:
    raise ConfigError(f"data.context_k must be at least 1, got {config.data.context_k}")
  if config.model.pooling == "anchor" and not MODES[mode].context:
    raise ConfigError(f"model.pooling='anchor' reads the anchor channel of anchored sequences; with "
                      f"data.sequence_mode={mode!r} use model.pooling='mean'")


def _per_cell_split(j):
  return [np.flatnonzero(j.cell_split == s) for s in range(3)]


def gene_scaling(config, preprocessing):
  """(mean, scale) [genes] of the training cells for data.input_scaling='gene', or None (per-sequence z-score)."""
  return (preprocessing.mean, preprocessing.scale) if config.data.input_scaling == "gene" else None


def model_inputs(config, sequences, n_genes, n_times):
  """Per-cell sequences as the model reads them: with each step's time point as one-hot channels after the genes
  where config.data.time_channels (the same for the training splits and any query)."""
  return with_time_channels(sequences, n_genes, n_times) if config.data.time_channels else sequences


def _cell_sequences(j):
  """Every cell of a split alone, one step: the no-context ablation."""
  return [model_inputs(j.config, cell_sequences(j.x, j.times, cells, j.labels, max_len=j.config.data.max_len,
                                                gene_scaling=gene_scaling(j.config, j.preprocessing)),
                       j.x.shape[1], j.n_times) for cells in _per_cell_split(j)]


def _anchored_sequences(j):
  """Every cell of a split as an anchor, with context from its own split (and donor, with data.context_by_donor)."""
  data = j.config.data
  embedding = j.preprocessing.embed(j.x)
  groups = j.donors if data.context_by_donor and j.donors is not None else None
  return [
      model_inputs(j.config, anchored_sequences(j.x, embedding, j.times, cells, cells, n_times=j.n_times,
                                                k=data.context_k, max_len=data.max_len, labels=j.labels,
                                                groups=groups, gene_scaling=gene_scaling(j.config, j.preprocessing)),
                   j.x.shape[1], j.n_times)
      for cells in _per_cell_split(j)
  ]


# data.sequence_mode -> the function that builds [train, val, test] Sequences from a _Journey.
SEQUENCE_MODES = {"type": _type_sequences, "anchored": _anchored_sequences, "cell": _cell_sequences}


def test_unit(config):
  """What one test example is: a type sequence (the seed's mode) or a cell (per-cell modes)."""
  return "cell" if MODES[config.data.sequence_mode].per_cell else "sequence"
