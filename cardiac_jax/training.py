"""Batches -> a trained model: the seed's training recipe, with Orbax checkpoints and per-epoch metrics.

The recipe (seed section 5.2): AdamW (weight decay 0.01, eps 1e-8) after global-norm clipping at 1.0,
cross-entropy with label smoothing 0.1, the learning rate halved when the validation loss has not improved for
3 epochs (PyTorch's ReduceLROnPlateau), and early stopping after 8 epochs without a better validation accuracy.

Everything a run writes goes through workdir.Writer and workdir.Checkpoints; the final labels and their metrics
come from the one prediction path (predict.py), as eval.py's and annotate.py's do.
"""

import dataclasses
import functools
import os
import pathlib
import time

import anndata
import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging
from flax.training import train_state
from tqdm import tqdm

from cardiac_jax import batches as batching
from cardiac_jax import (calibrate, checks, configs, integrity, linear, parallel, predict, preprocess, readers, split,
                         unassigned)
from cardiac_jax.configs import default as default_config
from cardiac_jax import dataset as datasets
from cardiac_jax import metrics as metrics_lib
from cardiac_jax import workdir as rundir
from cardiac_jax.errors import ConfigError, DataError
from cardiac_jax.model import DTYPES, LSTM_IMPLS, MODELS, POOLINGS, count_params, create_model, predict_step
from cardiac_jax.sequences import INPUT_SCALINGS, MODES


class TrainState(train_state.TrainState):
  """Flax's TrainState plus the reduce-on-plateau state whose `scale` multiplies every update.

  The plateau transform needs the validation loss on each of its updates, so it cannot sit in the gradient
  chain; it is advanced once per epoch by `plateau_step` and only its scale is read by `train_step`.
  """

  plateau: optax.contrib.ReduceLROnPlateauState


def make_optimizer(train_config):
  return optax.chain(
      optax.clip_by_global_norm(train_config.clip_norm),
      optax.adamw(train_config.learning_rate, weight_decay=train_config.weight_decay, eps=train_config.adam_eps),
  )


def make_plateau(train_config):
  """optax's reduce_on_plateau with PyTorch's meaning of patience (optax reduces one epoch earlier)."""
  return optax.contrib.reduce_on_plateau(
      factor=train_config.plateau_factor, patience=train_config.plateau_patience + 1, rtol=1e-4
  )


def create_train_state(rng, config, num_classes, n_features, max_len):
  """A fresh TrainState; parameters are initialised on a [1, max_len, n_features] dummy batch."""
  model = create_model(config, num_classes)
  x = jnp.zeros((1, max_len, n_features), jnp.float32)
  init = jax.jit(functools.partial(model.init, train=False))
  params = init({"params": rng}, x, jnp.ones((1,), jnp.int32))["params"]
  return TrainState.create(
      apply_fn=model.apply,
      params=params,
      tx=make_optimizer(config.train),
      plateau=make_plateau(config.train).init(params),
  )


def train_step(state, batch, rng, *, label_smoothing, class_weights=None):
  """One optimisation step on a batch; dropout keys are `fold_in(rng, state.step)`.

  Args:
    state: TrainState.
    batch: x [batch, steps, genes], lengths [batch], labels [batch], mask [batch] (0 for fill examples).
    rng: the run's dropout key.
    class_weights: None (every example weighs the same: the seed's loss) or [classes] weight of each class in
      the loss (`balanced_class_weights`); the metric sums stay unweighted.

  Returns:
    (new state, metric sums of the batch as metrics.batch_sums gives them).
  """
  dropout_rng = jax.random.fold_in(rng, state.step)

  def loss_fn(params):
    logits = state.apply_fn(
        {"params": params}, batch["x"], batch["lengths"], train=True, rngs={"dropout": dropout_rng}
    )
    sums = metrics_lib.batch_sums(logits, batch["labels"], batch["mask"], label_smoothing)
    if class_weights is None:
      return sums["loss"] / jnp.maximum(sums["count"], 1.0), sums
    weights = class_weights[batch["labels"]] * batch["mask"]
    losses = metrics_lib.example_losses(logits, batch["labels"], label_smoothing)
    return jnp.sum(losses * weights) / jnp.maximum(jnp.sum(weights), 1e-6), sums

  grads, sums = jax.grad(loss_fn, has_aux=True)(state.params)
  updates, opt_state = state.tx.update(grads, state.opt_state, state.params)
  updates = jax.tree.map(lambda u: u * state.plateau.scale, updates)
  new_state = state.replace(step=state.step + 1, params=optax.apply_updates(state.params, updates), opt_state=opt_state)
  return new_state, sums


CLASS_WEIGHTINGS = ("none", "balanced")


def balanced_class_weights(labels, n_classes):
  """[classes] float32 n / (classes * n_c) for training labels [n]: every class weighs the same in the loss."""
  counts = np.bincount(labels, minlength=n_classes).astype(np.float64)
  return (len(labels) / (n_classes * np.maximum(counts, 1))).astype(np.float32)


def class_weights_for(train_config, labels, n_classes):
  """The class weights train_step gets for train.class_weighting: None ('none') or balanced weights."""
  if train_config.class_weighting not in CLASS_WEIGHTINGS:
    raise ConfigError(f"train.class_weighting must be one of {CLASS_WEIGHTINGS}, got {train_config.class_weighting!r}")
  if train_config.class_weighting == "none":
    return None
  return jnp.asarray(balanced_class_weights(labels, n_classes))


def eval_step(params, apply_fn, batch, *, label_smoothing):
  """Metric sums and logits [batch, classes] of a labelled batch: `predict_step`, then the masked sums."""
  logits = predict_step(params, apply_fn, batch)
  return metrics_lib.batch_sums(logits, batch["labels"], batch["mask"], label_smoothing), logits


def plateau_step(state, plateau, val_loss):
  """Advances reduce-on-plateau by one epoch with the validation loss."""
  _, plateau_state = plateau.update({}, state.plateau, value=jnp.asarray(val_loss, jnp.float32))
  return state.replace(plateau=plateau_state)


def make_eval_step(apply_fn, label_smoothing, data_parallel=None):
  """eval_step jitted once for a model, so every evaluation of a run reuses one compiled function.

  With a parallel.DataParallel: (params, batch) -> (sums, logits), numpy batches split over its devices.
  """
  step = lambda params, batch: eval_step(params, apply_fn, batch, label_smoothing=label_smoothing)
  if data_parallel is None:
    return jax.jit(step)
  return data_parallel.feeding(data_parallel.jit(step, batch_arg=1), batch_arg=1)


# What early stopping and the best checkpoint watch on the validation split (train.early_stopping_metric):
# 'accuracy' (the seed's) or 'macro_f1' (every class counts the same, as in the per-cell scores).
EARLY_STOPPING_METRICS = ("accuracy", "macro_f1")


def track_best(tracker, epoch, val_score):
  """Early-stopping bookkeeping after an epoch: returns (new tracker, whether the epoch is the best so far).

  tracker: {'epoch', 'best_val_score', 'best_epoch', 'epochs_since_best'}; training stops once
  epochs_since_best reaches the patience (the seed's 8).
  """
  improved = val_score > tracker["best_val_score"]
  if improved:
    return dict(tracker, epoch=epoch, best_val_score=val_score, best_epoch=epoch, epochs_since_best=0), True
  return dict(tracker, epoch=epoch, epochs_since_best=tracker["epochs_since_best"] + 1), False


def evaluate_split(eval_fn, params, sequences, batch_size, steps=None):
  """Runs a jitted eval step over all sequences, in batches cut to `steps` time steps (see batches.iterate).

  Returns:
    (normalised metrics, logits [n, classes] as numpy).
  """
  sums, outputs = {}, []
  for batch in batching.iterate(sequences, batch_size, steps=steps):
    batch_sums, logits = eval_fn(params, batch)
    sums = metrics_lib.add(sums, batch_sums)
    outputs.append(np.asarray(logits)[batch["mask"] > 0])
  return metrics_lib.normalize(sums), np.concatenate(outputs)


def initial_state(config, data):
  """A fresh TrainState for `data`, or, with config.init_from, one that starts from another run's best parameters.

  The warm start (the seed's progressive scaling: base -> medium -> large) needs the same classes and input
  genes as the run it starts from; the optimizer state starts fresh.
  """
  init_rng = jax.random.fold_in(jax.random.key(config.seed), 0)
  n_classes = len(data.encoding.classes)
  state = create_train_state(init_rng, config, n_classes, data.train.x.shape[-1], config.data.max_len)
  if config.train.linear_start:
    # The labelled cell's own step is what the linear path reads (anchor pooling; a one-step cell sequence's mean).
    train = data.train
    inputs = train.x[np.arange(len(train)), train.anchor]
    state = state.replace(params=linear.start_params(
        state.params, inputs, train.labels, class_weights_for(config.train, train.labels, n_classes)))
    logging.info("linear start: the network begins as a logistic regression on its training cells' inputs")
  if not config.init_from:
    return state
  init_dir = pathlib.Path(config.init_from).expanduser()
  if not (init_dir / rundir.DATA).exists():
    raise ConfigError(f"{init_dir / rundir.DATA}: config.init_from must be the workdir of a finished run")
  bundle = rundir.load(init_dir)
  bundle.check_same_inputs(data)
  logging.info("warm start from the best model of %s", init_dir)
  return state.replace(params=bundle.params)


class NonFiniteLoss(ArithmeticError):
  """A loss that is NaN or infinite; its message says which."""


def _finite(value, where):
  if not np.isfinite(value):
    raise NonFiniteLoss(f"the {where} is {value}")


def train_epoch(train_step_fn, state, batches, epoch, rng):
  """One pass of train_step_fn over `batches` (dropout key `rng`): (state, {'loss', 'accuracy'} of the epoch).

  Each step's loss is read once the next step is dispatched, so the check for a non-finite loss (NonFiniteLoss)
  never stalls the pipeline.
  """
  sums, previous = {}, None
  for index, batch in enumerate(batches, 1):
    state, batch_sums = train_step_fn(state, batch, rng)
    if previous:
      _finite(float(previous[1]), f"training loss of epoch {epoch}, step {previous[0]}")
    previous = (index, batch_sums["loss"])
    sums = metrics_lib.add(sums, batch_sums)
  if previous:
    _finite(float(previous[1]), f"training loss of epoch {epoch}, step {previous[0]}")
  return state, metrics_lib.normalize(sums)


@dataclasses.dataclass
class Loop:
  """One run's training loop: what every epoch shares, then `epoch` trains, validates and saves one epoch."""

  config: object
  data: object
  train_step_fn: object
  eval_fn: object
  batch_size: int
  steps: int
  writer: rundir.Writer
  checkpoints: rundir.Checkpoints
  history: list
  interrupted: bool = False

  def batches(self, epoch):
    shuffle = np.random.default_rng([self.config.seed, 3, epoch])
    return tqdm(batching.iterate(self.data.train, self.batch_size, shuffle, self.steps),
                total=batching.num_batches(len(self.data.train), self.batch_size), desc=f"epoch {epoch}",
                leave=False, disable=None)

  def epoch(self, state, tracker, epoch, rng):
    """Trains one epoch, validates, writes its metrics.jsonl line, then commits its checkpoints.

    metrics.jsonl is written before the checkpoint: a kill in between leaves a line for an epoch without a
    checkpoint, which a resumed run drops and writes again (the same numbers); never a checkpoint without its
    line. Returns (state, tracker) after the epoch.
    """
    start = time.perf_counter()
    state, train_metrics = train_epoch(self.train_step_fn, state, self.batches(epoch), epoch, rng)
    train_seconds = time.perf_counter() - start
    val_metrics, _ = evaluate_split(self.eval_fn, state.params, self.data.val, self.batch_size, self.steps)
    _finite(val_metrics["loss"], f"validation loss after epoch {epoch}")
    learning_rate = self.config.train.learning_rate * float(state.plateau.scale)
    state = plateau_step(state, make_plateau(self.config.train), val_metrics["loss"])
    val_score = val_metrics[self.config.train.early_stopping_metric]
    tracker, improved = track_best(tracker, epoch, val_score)
    record = {
        "epoch": epoch,
        "train_loss": train_metrics["loss"],
        "train_accuracy": train_metrics["accuracy"],
        "val_loss": val_metrics["loss"],
        "val_accuracy": val_metrics["accuracy"],
        "val_macro_f1": val_metrics["macro_f1"],
        "learning_rate": learning_rate,
        "sequences_per_second": len(self.data.train) / train_seconds,
        "seconds": time.perf_counter() - start,
    }
    logging.info(
        "epoch %3d  train loss %.4f acc %.4f | val loss %.4f acc %.4f | lr %.2e | %.0f seq/s%s",
        epoch, record["train_loss"], record["train_accuracy"], record["val_loss"], record["val_accuracy"],
        learning_rate, record["sequences_per_second"], "  *best" if improved else "",
    )
    self.history.append(record)
    self.writer.metrics(self.history)
    try:
      with integrity.interrupts_deferred():  # Ctrl-C while saving: the epoch is saved first, then the run stops
        self.checkpoints.save(epoch, state, dict(tracker, val_accuracy=val_metrics["accuracy"], val_score=val_score),
                              improved)
    except KeyboardInterrupt:
      self.interrupted = True
    return state, tracker


def config_choices():
  """Every enumerated config field and the values it may take, read from the registries that hold the variants."""
  return {
      "model_name": tuple(MODELS), "model.pooling": POOLINGS, "model.dtype": tuple(DTYPES),
      "model.lstm_impl": LSTM_IMPLS, "data.source": datasets.SOURCES, "data.sequence_mode": tuple(MODES),
      "data.gene_selection": preprocess.GENE_SELECTIONS, "data.normalization": preprocess.NORMALIZATIONS,
      "data.geo_matrix": tuple(readers.GEO_MATRICES), "data.input_scaling": INPUT_SCALINGS, "split.unit": split.UNITS,
      "train.class_weighting": CLASS_WEIGHTINGS, "train.calibration_method": calibrate.CHOICES,
      "train.early_stopping_metric": EARLY_STOPPING_METRICS,
  }


def train_and_evaluate(config, workdir):
  """Trains the seed's model on the configured data; resumes if workdir holds an unfinished run of this config.

  Returns:
    dict of final results (also written to workdir/results.json).
  """
  workdir = pathlib.Path(workdir).expanduser()
  checks.check_values(config)
  checks.check_choices(config, config_choices())
  parallel.initialize(config.parallel)
  with rundir.claimed(config, workdir):
    return _train_and_evaluate(config, workdir)


def _compiled_train_step(config, data, state, mesh, example):
  """train_step for the run's loss, compiled once ahead of time for the one batch shape of `example`."""
  weights = class_weights_for(config.train, data.train.labels, len(data.encoding.classes))
  step = functools.partial(train_step, label_smoothing=config.train.label_smoothing, class_weights=weights)
  dropout_rng = mesh.replicate(jax.random.fold_in(jax.random.key(config.seed), 1))
  compiled = mesh.jit(step, batch_arg=1, donate_argnums=0).lower(state, mesh.shard(example), dropout_rng).compile()
  return mesh.feeding(compiled, batch_arg=1), dropout_rng


def _train_and_evaluate(config, workdir):
  started = time.perf_counter()
  mesh = parallel.data_parallel(config.parallel.num_devices)
  data = datasets.prepare(config)
  seconds = {"data": time.perf_counter() - started}
  state = mesh.replicate(initial_state(config, data))
  batch_size = config.train.batch_size or batching.adaptive_batch_size(len(data.train))
  mesh.check_batch_size(batch_size)
  logging.info("%s", mesh.describe())
  writer = rundir.Writer(workdir)
  writer.start(config, data, batch_size)

  checkpoints = rundir.Checkpoints(workdir)
  state, meta = checkpoints.restore_latest(state)
  tracker = meta or {"epoch": 0, "best_val_score": -1.0, "best_epoch": 0, "epochs_since_best": 0}
  history = [r for r in rundir.read_metrics(workdir) if r["epoch"] <= tracker["epoch"]]  # beyond: no checkpoint
  if meta:
    logging.info("resuming %s after epoch %d", workdir, tracker["epoch"])
  lost = sorted(set(range(1, tracker["epoch"] + 1)) - {r["epoch"] for r in history})
  if lost:  # only the latest epoch's state is kept, so an older epoch's line cannot be recomputed
    logging.warning("%s: no line for epoch(s) %s, which the checkpoints cover; they cannot be recomputed and stay "
                    "missing (results.json: metrics_missing_epochs)", workdir / rundir.METRICS, lost)

  # Batches are cut to the longest sequence of the data, so padding no sequence uses is never scanned.
  steps = batching.used_steps(*data.splits.values())
  compile_start = time.perf_counter()
  step, dropout_rng = _compiled_train_step(config, data, state, mesh,
                                           next(batching.iterate(data.train, batch_size, steps=steps)))
  seconds["train_step_compile"] = time.perf_counter() - compile_start
  parallel.barrier(f"compiled {workdir}")
  training_start = time.perf_counter()
  eval_fn = make_eval_step(state.apply_fn, config.train.label_smoothing, mesh)
  loop = Loop(config, data, step, eval_fn, batch_size, steps, writer, checkpoints, history)
  logging.info("model: %s parameters; training on %d sequences, batch %d, up to %d epochs",
               f"{count_params(state.params):,}", len(data.train), batch_size, config.train.num_epochs)
  patience = config.train.early_stop_patience
  epoch = tracker["epoch"] + 1
  try:
    for epoch in range(tracker["epoch"] + 1, config.train.num_epochs + 1):
      if tracker["epochs_since_best"] >= patience:
        break
      state, tracker = loop.epoch(state, tracker, epoch, dropout_rng)
      if loop.interrupted:
        epoch += 1  # the epoch that was about to start
        raise KeyboardInterrupt
  except KeyboardInterrupt:
    interrupted = True
  except NonFiniteLoss as e:
    raise ConfigError(f"{workdir}: training stopped: {e}; the last saved epoch is {tracker['epoch']} (try a lower "
                      "train.learning_rate, or check the inputs for extreme values)") from None
  else:
    interrupted = False
  finally:
    with integrity.interrupts_held():  # a checkpoint being committed is waited for, even on a second Ctrl-C
      checkpoints.close()
  if interrupted:
    raise ConfigError(f"{workdir}: interrupted in epoch {epoch}; epochs up to {tracker['epoch']} are saved: run the "
                      "same command again to resume")
  seconds["training"] = time.perf_counter() - training_start
  if tracker["epochs_since_best"] >= patience:
    logging.info("early stop: no better validation %s for %d epochs", config.train.early_stopping_metric, patience)
  results = {"epochs_run": tracker["epoch"], "parameters": count_params(state.params)}
  if lost:
    results["metrics_missing_epochs"] = lost
  results.update(_final_metrics(loop, workdir, state))
  seconds["total"] = time.perf_counter() - started
  results.update(seconds=seconds, split_unit=config.split.unit, sequence_mode=config.data.sequence_mode,
                 test_unit=datasets.test_unit(config), data_source=config.data.source, devices=mesh.num_devices,
                 processes=jax.process_count())
  writer.results(results)
  logging.info(
      "best epoch %d: test accuracy %.4f (train %.4f, val %.4f, gap %.4f); split unit %r, data %r",
      results["best_epoch"], results["test_accuracy"], results["train_accuracy"], results["val_accuracy"],
      results["train_val_gap"], config.split.unit, config.data.source,
  )
  logging.info(
      "wall time %.0f s: data %.0f s, train-step compile %.1f s, training %.0f s",
      seconds["total"], seconds["data"], seconds["train_step_compile"], seconds["training"],
  )
  return results


def _final_metrics(loop, workdir, state):
  """The best checkpoint scored on every split (raw logits, the training metrics), its calibration fitted on the
  validation split and written, and the test labels as every consumer gives them (predict.py)."""
  params, best_meta = rundir.restore_best_params(workdir, state.params)
  results, logits = {"best_epoch": best_meta["best_epoch"]}, {}
  data = loop.data
  for name, sequences in data.splits.items():
    split_metrics, logits[name] = evaluate_split(loop.eval_fn, params, sequences, loop.batch_size, loop.steps)
    integrity.check_finite_logits(logits[name], f"{rundir.best_checkpoint(workdir)} on the {name} split")
    results[f"{name}_accuracy"] = split_metrics["accuracy"]
    results[f"{name}_loss"] = split_metrics["loss"]
  calibration = unassigned.fitted_calibration(logits["val"], data.val.labels, loop.config.train.calibration_method,
                                              data.novelty_of(data.val))
  loop.writer.calibration(calibration)
  parallel.barrier(f"calibrated {workdir}")
  bundle = rundir.load(workdir)
  # The validation donors' macro-F1 of every cell's most probable class: what a choice between runs is made on
  # (the test split is scored once).
  validation = predict.predict(bundle, data.val, novelty=data.novelty_of(data.val))
  results["val_top_class_macro_f1"] = metrics_lib.classification_report(
      data.val.labels, validation.top_class, data.encoding.classes)["macro_f1"]
  prediction = predict.predict(bundle, data.test, novelty=data.novelty_of(data.test))
  report = metrics_lib.classification_report(data.test.labels, prediction.label_ids, data.encoding.classes)
  results["test_raw_logit_accuracy"] = results.pop("test_accuracy")
  results["test_accuracy"] = report["accuracy"]
  results["test_macro_f1"] = report["macro_f1"]
  results["test_unassigned"] = float(prediction.unassigned.mean())
  results["calibration"] = dict(calibration, **calibrate.test_record(logits["test"], data.test.labels, calibration))
  results["train_val_gap"] = results["train_accuracy"] - results["val_accuracy"]
  return results


def train(adata, workdir, *, label_key, time_key, donor_key="", config="annotate", **overrides):
  """Trains a model on an AnnData in memory (the reference: labelled cells of a time course) into workdir and
  returns the run's workdir.Bundle, ready for annotation.annotate.

  Args:
    adata: cells x genes, X raw counts or normalised values; obs with the label, time and donor columns.
    label_key, time_key, donor_key: obs columns of the cell type, the time point and the donor ('' for none:
      then set split.unit='cell').
    config: a shipped config's name (configs.NAMES) or a ConfigDict; 'annotate' by default.
    overrides: dotted config fields to set, e.g. {'train.num_epochs': 5} as `**{'train.num_epochs': 5}`.

  The AnnData is written once to the config's cache folder, named by the digest of its bytes, and the run reads
  it from there as any .h5ad run does (so a resumed run finds the same data).
  """
  if not isinstance(adata, anndata.AnnData):
    raise DataError("<reference>", f"expected an AnnData, got {type(adata).__name__}")
  missing = [key for key in (label_key, time_key, donor_key) if key and key not in adata.obs.columns]
  if missing or adata.n_obs == 0:
    raise DataError("<reference>", f"obs has no column(s) {missing}; columns are {list(adata.obs.columns)}" if missing
                    else "has no cells")
  config = configs.get(config) if isinstance(config, str) else config.copy_and_resolve_references()
  config = default_config.override(config, dict(
      {"data.source": "h5ad", "data.label_key": label_key, "data.time_key": time_key, "data.donor_key": donor_key},
      **overrides))
  checks.check_fields(config, default_config.get_config())
  checks.check_values(config)
  config.data.path = str(_stored_anndata(adata, pathlib.Path(config.data.cache_dir).expanduser() / "anndata"))
  train_and_evaluate(config, workdir)
  return rundir.load(workdir)


def _stored_anndata(adata, folder):
  """The path of `adata` written as .h5ad under folder, named by the sha256 of the written file."""
  folder.mkdir(parents=True, exist_ok=True)
  staging = folder / f".staging-{os.getpid()}.h5ad"
  try:
    adata.write_h5ad(staging)
    target = folder / f"{integrity.file_digest(staging)[:20]}.h5ad"
    if target.exists():
      staging.unlink()
    else:
      os.replace(staging, target)
  finally:
    staging.unlink(missing_ok=True)
  return target
