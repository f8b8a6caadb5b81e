"""Shared defaults: every number the seed names lives here; scales override a few.

Read `../shared/design/seed-notes.md` for where these readings of the seed come from.
"""

import json

import ml_collections

# GSE175634's seven differentiation days, in order.
GSE175634_DAYS = ("day0", "day1", "day3", "day5", "day7", "day11", "day15")

# The seed's three stages (section 5.1), as dotted config fields; base is also the default.
SCALES = {
    "base": {"data.n_per_type": 1000, "data.n_spatial": 500, "train.num_epochs": 30, "train.learning_rate": 0.002},
    "medium": {"data.n_per_type": 2000, "data.n_spatial": 1000, "train.num_epochs": 40, "train.learning_rate": 0.001},
    "large": {"data.n_per_type": 3000, "data.n_spatial": 1500, "train.num_epochs": 50, "train.learning_rate": 0.0008},
}


def override(config, dotted):
  """config with the fields of `dotted` ({'section.field': value} or {'field': value} for a top-level one such as
  'seed', as the scales and the suite give them) set."""
  for key, value in dotted.items():
    section, _, field = key.rpartition(".")
    (config[section] if section else config)[field] = value
  return config


def network(hidden, layers):
  """Overrides for a network of LSTM width `hidden` and `layers` layers, 4 attention heads and one head layer as
  wide as the LSTM: the annotation models' sizes (configs/annotate.py, configs/annotate_fast.py, the suite's rows)."""
  return {"model.hidden_dim": hidden, "model.num_layers": layers, "model.num_heads": 4, "model.head_dims": (hidden,)}


def to_json(config):
  """A config as the JSON text a workdir keeps (config.json)."""
  return json.dumps(config.to_dict(), indent=2, sort_keys=True, default=list)


def with_scale(config, scale):
  """config with the numbers of one of the seed's stages (SCALES) set."""
  return override(config, SCALES[scale])


def get_config():
  """The seed's method with its base-scale numbers, on the built-in simulated data."""
  config = ml_collections.ConfigDict()
  config.seed = 0
  # The network, by name in model.MODELS.
  config.model_name = "enhanced_rnn"
  # Warm start from another run's best checkpoint (progressive scaling): a workdir, or ''.
  config.init_from = ""

  config.data = ml_collections.ConfigDict()
  # 'simulated' (built-in GSE175634 look-alike), 'geo' (a GSE175634 download), or 'h5ad'.
  config.data.source = "simulated"
  # geo: the folder holding the GSE175634_* files; h5ad: the .h5ad file.
  config.data.path = ""
  # geo: 'counts' (raw UMI) or 'sctransform' (SCTransform-corrected counts).
  config.data.geo_matrix = "counts"
  config.data.time_key = "diffday"
  config.data.label_key = "type"
  # Optional for h5ad ('' = no donor column); required for split.unit='donor'.
  config.data.donor_key = "individual"
  # Order of the time points; () = natural sort of the values found.
  config.data.time_order = GSE175634_DAYS
  # 'auto' (detect), 'counts' (raw counts), 'linear' (FPKM/TPM/CPM), or 'log' (already log).
  config.data.normalization = "auto"
  config.data.target_sum = 1e4
  # Genes fed to the model: highly variable genes chosen on training cells (seed's input_dim).
  config.data.n_genes = 200
  # How the genes are chosen on training cells: 'hvg' (the seed's highly variable genes) or 'anova' (those whose
  # log expression differs most between the training cells' types, by the one-way ANOVA F statistic).
  config.data.gene_selection = "hvg"
  # Genes ranked for that choice: those detected in at least this many training cells.
  config.data.min_cells_per_gene = 3
  # HVG flavour for count data; log/linear data use 'seurat' (seurat_v3 needs counts).
  config.data.hvg_flavor = "seurat_v3"
  # Sequences (cardiac_jax/sequences.py): 'type' (the seed's: one cell of one type per day, built from labels),
  # 'anchored' (one per cell, the cell among its nearest neighbours at the other days; needs no labels), or
  # 'cell' (each cell alone: the no-context ablation). Per-cell modes give per-cell test metrics.
  config.data.sequence_mode = "type"
  # How a sequence's genes are scaled: 'sequence' (the seed's z-score over each sequence) or, for per-cell
  # sequences, 'gene' (each gene by the training cells' mean and spread, as a logistic regression reads them).
  config.data.input_scaling = "sequence"
  # Per-cell sequences: give each step its time point as one-hot input channels after the genes (so the model
  # reads which day a cell was sampled on, not only the order of its steps).
  config.data.time_channels = False
  # anchored: neighbours averaged at each context day, found in a PCA space of the model's genes.
  config.data.context_k = 5
  # anchored: context from the anchor's own donor (its own time course) when the data name donors.
  config.data.context_by_donor = True
  # Steps a sequence is padded to: the 7 days; 100 reproduces the seed's padding.
  config.data.max_len = 7
  # Temporal sequences per cell type (all splits together) and spatial sequences (train only): see SCALES.
  config.data.n_per_type = 0
  config.data.n_spatial = 0
  # Visium data (Space Ranger layout) for spatial sequences; '' = simulated (simulated source only).
  config.data.spatial_path = ""
  # Spots kept for pseudo-labelling: those whose centroid-correlation margin is at least this quantile.
  config.data.spatial_confidence_quantile = 0.5
  # Where the simulated data set and prepared-data caches are written.
  config.data.cache_dir = "~/.cache/cardiac_jax"
  # Cell types left out of the whole run (train, validation and test), as if the reference had never seen
  # them: trust.py's unseen-type experiment trains with each type left out in turn.
  config.data.exclude_types = ()
  # Genes of the whole-transcriptome novelty score (cardiac_jax/novelty.py: the most variable genes of the training
  # cells, their PCA and a reference of training cells, saved with the run); 0 = no novelty score.
  config.data.novelty_genes = 0
  # Keep each prepared Dataset in cache_dir/prepared/ and read it back when config and input files are unchanged.
  config.data.reuse_prepared = True

  # The built-in simulated GSE175634 (used when data.source == 'simulated').
  config.sim = ml_collections.ConfigDict()
  config.sim.n_cells = 20000
  config.sim.n_genes = 4000
  config.sim.n_donors = 19
  config.sim.n_spots = 4000
  config.sim.n_spot_genes = 2000
  config.sim.seed = 0
  # Scale of the cell-type expression programs. At 0.5 a per-cell logistic regression on 200 genes
  # gets about 0.70 on held-out donors (1.0: about 0.89), so sequence models have room to differ.
  config.sim.signal = 0.5

  config.split = ml_collections.ConfigDict()
  # 'sequence' (the seed's, leaky), 'cell' or 'donor'.
  config.split.unit = "donor"
  config.split.fractions = (0.7, 0.2, 0.1)
  # Leave-donors-out (unit 'donor'): with folds > 0 the donors are dealt into that many folds and fold `fold`
  # is the test split (the first two fractions share the rest); trust.py's donor loop runs every fold.
  config.split.folds = 0
  config.split.fold = 0
  # A small reference: keep this many of the training split's cells, drawn at random by the seed (0 = all);
  # the rest are used nowhere. Validation and test cells are as the unit and fractions make them.
  config.split.max_train_cells = 0

  config.model = ml_collections.ConfigDict()
  config.model.hidden_dim = 128
  config.model.num_layers = 3
  config.model.num_heads = 8
  config.model.dropout = 0.3
  config.model.input_dropout = 0.15
  config.model.head_dims = (128, 64)
  config.model.use_attention = True
  config.model.bidirectional = True
  # 'fused': input projections outside the scan, both directions in one scan (benchmarks/README.md);
  # 'rnn': the plain nn.RNN reference, same parameters, same logits and gradients to 1e-5.
  config.model.lstm_impl = "fused"
  # 'mean' (the seed's: the mean over valid steps) or 'anchor' (anchored sequences: the labelled cell's step).
  config.model.pooling = "mean"
  # PyTorch's LayerNorm epsilon and per-sequence attention dropout, as the seed's PyTorch model has them
  # (Flax's defaults: 1e-6, one attention-dropout mask shared by the batch).
  config.model.layer_norm_eps = 1e-5
  config.model.attention_dropout_per_sequence = True
  # A linear map from the pooled input (the labelled cell's own genes with anchor pooling) straight to the logits,
  # beside the network: the model then contains a per-cell logistic regression on the same inputs.
  config.model.linear_path = False
  # Computation dtype: 'float32', or 'bfloat16' (for accelerators; parameters stay float32). See model.DTYPES.
  config.model.dtype = "float32"

  config.train = ml_collections.ConfigDict()
  # Epochs and learning rate: see SCALES.
  config.train.num_epochs = 0
  config.train.learning_rate = 0.0
  config.train.weight_decay = 0.01
  config.train.adam_eps = 1e-8
  config.train.clip_norm = 1.0
  config.train.label_smoothing = 0.1
  # 'none' (the seed's loss) or 'balanced' (each class weighs the same: rare types count as much as common).
  config.train.class_weighting = "none"
  # Per-cell runs with model.linear_path: start the linear path from a logistic regression fitted on the training
  # cells' inputs (linear.py) and the other path's last layer from zero, so training begins at that regression.
  config.train.linear_start = False
  # The validation-fitted map from logits to probabilities (calibrate.py): 'auto' (vector scaling where it
  # measurably lowers the validation NLL, else a temperature), 'temperature' (keeps every cell's most probable
  # class: the labels stay those the loss was trained for), or 'vector'.
  config.train.calibration_method = "auto"
  # 0 = adaptive to the training-set size (16..64), see cardiac_jax.batches.adaptive_batch_size.
  config.train.batch_size = 0
  # ReduceLROnPlateau on validation loss, in PyTorch's meaning (patience 3 = optax patience 4).
  config.train.plateau_factor = 0.5
  config.train.plateau_patience = 3
  # Early stopping: epochs without a better validation score (train.early_stopping_metric).
  config.train.early_stop_patience = 8
  # What early stopping and the best checkpoint watch on the validation split: 'accuracy' (the seed's) or
  # 'macro_f1' (each class counts the same, as in the per-cell scores).
  config.train.early_stopping_metric = "accuracy"

  # Data parallelism (cardiac_jax/parallel.py): batches split over a mesh of devices, parameters replicated.
  config.parallel = ml_collections.ConfigDict()
  # Devices of the mesh's 'data' axis, over all processes; 0 = all. train.batch_size must divide by it.
  config.parallel.num_devices = 0
  # Several processes (jax.distributed): the coordinator's host:port ('' = $JAX_COORDINATOR_ADDRESS, and if that
  # is unset a single process), the number of processes (0 = $JAX_NUM_PROCESSES) and this one's id
  # (-1 = $JAX_PROCESS_ID); the collectives CPU devices use across processes ('gloo' or 'mpi').
  config.parallel.coordinator_address = ""
  config.parallel.num_processes = 0
  config.parallel.process_id = -1
  config.parallel.cpu_collectives = "gloo"
  return with_scale(config, "base")
