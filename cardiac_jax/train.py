"""Batches -> a trained model: the seed's training recipe, with Orbax checkpoints and per-epoch metrics.

The recipe (seed section 5.2): AdamW (weight decay 0.01, eps 1e-8) after global-norm clipping at 1.0,
cross-entropy with label smoothing 0.1, the learning rate halved when the validation loss has not improved for
3 epochs (PyTorch's ReduceLROnPlateau), and early stopping after 8 epochs without a better validation accuracy.

A workdir holds everything a run writes:
  config.json      the config, so eval.py and a resumed run use the same one
  data.json        label encoding, input genes, time points, split counts and the leakage audit
  preprocessing.json  the preprocessing fitted on the training cells (preprocess.Preprocessing)
  test_sequences.npz  the test split's sequences and the names of its cells, for eval.py
  calibration.json the calibration fitted on the validation split: temperature or vector scaling (calibrate.py)
  metrics.jsonl    one line per epoch
  checkpoints/     Orbax: best/ (parameters of the best validation accuracy) and latest/ (the full state)
  results.json     final train/val/test accuracy of the best model
"""

import contextlib
import dataclasses
import functools
import json
import logging as std_logging
import os
import pathlib
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp
from absl import logging
from flax.training import train_state
from tqdm import tqdm

from cardiac_jax import batches as batching
from cardiac_jax import calibrate, checks, integrity
from cardiac_jax import dataset as datasets
from cardiac_jax import metrics as metrics_lib
from cardiac_jax import parallel
from cardiac_jax.errors import ConfigError
from cardiac_jax.model import EnhancedCardiacRNN, count_params
from cardiac_jax.sequences import Sequences


def quiet_dependency_logs():
  """Keeps the INFO lines of Orbax and JAX internals out of the run's log; their warnings still show."""
  own = os.sep + "cardiac_jax" + os.sep

  def keep(record):
    return record.levelno >= std_logging.WARNING or own in record.pathname

  logging.get_absl_handler().addFilter(keep)


def use_compilation_cache(cache_dir):
  """Keeps compiled XLA programs in `cache_dir`/xla, so a later run of the same shapes skips most of the compile.

  Set once by the entry points (it is JAX's process-wide setting); compiles under a second are not kept.
  """
  jax.config.update("jax_compilation_cache_dir", str(pathlib.Path(cache_dir).expanduser() / "xla"))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)


class TrainState(train_state.TrainState):
  """Flax's TrainState plus the reduce-on-plateau state whose `scale` multiplies every update.

  The plateau transform needs the validation loss on each of its updates, so it cannot sit in the gradient
  chain; it is advanced once per epoch by `plateau_step` and only its scale is read by `train_step`.
  """

  plateau: optax.contrib.ReduceLROnPlateauState


def create_model(model_config, num_classes):
  fields = model_config.to_dict()
  known = {f.name for f in dataclasses.fields(EnhancedCardiacRNN)} - {"parent", "name", "num_classes"}
  for field in fields:
    if field not in known:
      raise ConfigError(f"config: unknown config field 'model.{field}'{checks.closest(field, known)}")
  return EnhancedCardiacRNN(num_classes=num_classes, **fields)


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
  model = create_model(config.model, num_classes)
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


def predict_step(params, apply_fn, batch):
  """Logits [batch, classes] of a batch (x [batch, steps, features], lengths [batch]), without dropout; no labels."""
  return apply_fn({"params": params}, batch["x"], batch["lengths"], train=False)


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


def track_best(tracker, epoch, val_accuracy):
  """Early-stopping bookkeeping after an epoch: returns (new tracker, whether the epoch is the best so far).

  tracker: {'epoch', 'best_val_accuracy', 'best_epoch', 'epochs_since_best'}; training stops once
  epochs_since_best reaches the patience (the seed's 8).
  """
  improved = val_accuracy > tracker["best_val_accuracy"]
  if improved:
    return dict(tracker, epoch=epoch, best_val_accuracy=val_accuracy, best_epoch=epoch, epochs_since_best=0), True
  return dict(tracker, epoch=epoch, epochs_since_best=tracker["epochs_since_best"] + 1), False


def predict(eval_fn, params, sequences, batch_size, steps=None):
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


def write_atomic(path, content):
  """Writes content (str, bytes, or a function that writes to a path it is given) to path through a temporary
  file beside it and a rename, so the file is complete or absent; the temporary file never outlives a failure.

  In a run of several processes only process 0 writes; the others return without writing."""
  if not parallel.is_main_process():
    return
  path = pathlib.Path(path)
  tmp = path.with_name(f".{path.name}.tmp{path.suffix}")
  try:
    with integrity.errors_name(path, tmp):
      if callable(content):
        content(tmp)
      elif isinstance(content, bytes):
        tmp.write_bytes(content)
      else:
        tmp.write_text(content)
      os.replace(tmp, path)
  finally:
    tmp.unlink(missing_ok=True)


def override(config, dotted):
  """config with the fields of `dotted` ({'section.field': value}, as the scales and the suite give them) set."""
  for key, value in dotted.items():
    section, field = key.split(".")
    config[section][field] = value
  return config


def config_to_json(config):
  return json.dumps(config.to_dict(), indent=2, sort_keys=True, default=list)


# Model options added after runs were written with Flax's defaults: a config.json without them gets these, so an
# older run's model is restored as it was trained.
EARLIER_MODEL_DEFAULTS = {"layer_norm_eps": 1e-6, "attention_dropout_per_sequence": False}


def load_config(workdir):
  """The ConfigDict a workdir's run used."""
  saved = integrity.read_json(pathlib.Path(workdir) / "config.json")
  saved["model"] = dict(EARLIER_MODEL_DEFAULTS, **saved.get("model", {}))
  return ml_collections.ConfigDict(saved)


class Checkpoints:
  """Orbax managers for a workdir: `best` keeps the parameters of the best epoch, `latest` the full state."""

  def __init__(self, workdir):
    root = pathlib.Path(workdir).absolute() / "checkpoints"
    self.best = ocp.CheckpointManager(
        root / "best",
        options=ocp.CheckpointManagerOptions(
            max_to_keep=1, best_fn=lambda meta: meta["val_accuracy"], best_mode="max", create=True
        ),
        item_names=("params", "meta"),
    )
    self.latest = ocp.CheckpointManager(
        root / "latest", options=ocp.CheckpointManagerOptions(max_to_keep=1, create=True), item_names=("state", "meta")
    )

  def save(self, epoch, state, meta, improved):
    """Saves the latest state, and the parameters too when the epoch improved on the best; then records the
    digests of what was saved (integrity.record_checkpoint)."""
    if improved:
      self.best.save(epoch, args=ocp.args.Composite(params=ocp.args.StandardSave(state.params), meta=ocp.args.JsonSave(meta)), metrics=meta)
    self.latest.save(epoch, args=ocp.args.Composite(state=ocp.args.StandardSave(_saved(state)), meta=ocp.args.JsonSave(meta)))
    for manager in (self.best, self.latest) if improved else (self.latest,):
      manager.wait_until_finished()
      if parallel.is_main_process():  # the one process that writes files records the digests
        integrity.record_checkpoint(_step_dir(manager, epoch), write_atomic)

  def restore_latest(self, state):
    """(state, meta) of the latest epoch, or (state, None) when there is none."""
    epoch = self.latest.latest_step()
    if epoch is None:
      return state, None
    target = jax.tree.map(ocp.utils.to_shape_dtype_struct, _saved(state))
    restored = _restore(
        self.latest, epoch, ocp.args.Composite(state=ocp.args.StandardRestore(target), meta=ocp.args.JsonRestore())
    )
    return state.replace(**restored["state"]), restored["meta"]

  def close(self):
    for manager in (self.best, self.latest):
      manager.wait_until_finished()
      manager.close()


def _restore(manager, epoch, args):
  """manager.restore(epoch), with a checkpoint whose tree or shapes do not fit the target as one ConfigError.

  That happens with a workdir written by an earlier version of cardiac_jax whose parameter layout differed.
  """
  integrity.verify_checkpoint(_step_dir(manager, epoch), write_atomic)
  try:
    return manager.restore(epoch, args=args)
  except ValueError as error:
    first_line = str(error).strip().splitlines()[0]
    raise ConfigError(
        f"{manager.directory}: the checkpoint of epoch {epoch} does not fit this model's parameters (written by "
        f"another version of cardiac_jax?); train again in a new --workdir. Orbax: {first_line}"
    ) from error


def _step_dir(manager, epoch):
  return pathlib.Path(manager.directory) / str(epoch)


def _saved(state):
  return {"step": state.step, "params": state.params, "opt_state": state.opt_state, "plateau": state.plateau}


def restore_best_params(workdir, params_like):
  """The best-validation parameters saved in workdir, shaped like `params_like`. Also returns their meta."""
  manager = ocp.CheckpointManager(pathlib.Path(workdir).absolute() / "checkpoints" / "best", item_names=("params", "meta"))
  epoch = manager.latest_step()
  if epoch is None:
    raise ConfigError(f"{workdir}/checkpoints/best: no checkpoint; train first")
  target = jax.tree.map(ocp.utils.to_shape_dtype_struct, params_like)
  try:
    restored = _restore(
        manager, epoch, ocp.args.Composite(params=ocp.args.StandardRestore(target), meta=ocp.args.JsonRestore())
    )
  finally:
    manager.close()
  return restored["params"], restored["meta"]


def data_record(data, batch_size, test_digest):
  """What data.json keeps of a Dataset: enough to decode labels and to check a restored run's inputs (the
  sha256 of test_sequences.npz, which eval.py scores, included)."""
  return {
      "test_sequences_sha256": test_digest,
      "classes": list(data.encoding.classes),
      "genes": list(data.genes),
      "time_points": list(data.time_points),
      "n_features": int(data.train.x.shape[-1]),
      "batch_size": batch_size,
      "report": data.report,
  }


def save_test_sequences(path, data):
  """Writes the test split's Sequences and the obs names of the cells they use to one .npz (atomically)."""
  test = data.test
  fields = {f.name: getattr(test, f.name) for f in dataclasses.fields(test)}
  names = np.where(test.cell_ids >= 0, data.cell_names[np.maximum(test.cell_ids, 0)], "")
  write_atomic(path, lambda tmp: np.savez(tmp, cell_names=names.astype(str), **fields))


def load_test_sequences(workdir):
  """(Sequences, [n, max_len] cell names) of a workdir's test split, as train.py saved them."""
  path = pathlib.Path(workdir) / "test_sequences.npz"
  if not path.exists():
    raise ConfigError(f"{path}: not found; a workdir of an earlier version of cardiac_jax? train again")
  with np.load(path) as saved:
    return Sequences(*(saved[f.name] for f in dataclasses.fields(Sequences))), saved["cell_names"]


def check_same_inputs(expected, data, where):
  """Raises if `data` has other classes or genes than the record `expected` (from data.json)."""
  if list(data.encoding.classes) != expected["classes"]:
    raise ConfigError(f"{where}: classes {expected['classes']} differ from this data's {list(data.encoding.classes)}")
  if list(data.genes) != expected["genes"]:
    raise ConfigError(f"{where}: the input genes differ from this data's genes")
  if expected["n_features"] != data.train.x.shape[-1]:
    raise ConfigError(f"{where}: that model reads {expected['n_features']} input features, these sequences have "
                      f"{data.train.x.shape[-1]} (another data.sequence_mode?)")


@contextlib.contextmanager
def claimed_workdir(config, workdir):
  """Creates workdir, or checks that an existing one was made with this config (to resume or extend it), and
  holds its lock while the run writes (integrity.workdir_lock; in a multi-process run, process 0 holds it).
  Done before any data preparation.

  Only train.num_epochs may differ, so that a finished run can be continued for more epochs. A workdir this
  call created is removed again if the run fails before writing anything into it.
  """
  if workdir.exists() and not workdir.is_dir():
    raise ConfigError(f"{workdir}: is a file, not a workdir folder; name another --workdir")
  saved = workdir / "config.json"
  if saved.exists():
    before = json.loads(config_to_json(load_config(workdir)))
    now = json.loads(config_to_json(config))
    before["train"].pop("num_epochs", None)
    now["train"].pop("num_epochs", None)
    before.pop("parallel", None)  # a checkpoint restores on any number of devices and processes
    now.pop("parallel", None)
    if before != now:
      raise ConfigError(f"{saved}: this workdir holds a run with another config; use a new --workdir")
  created = not workdir.exists()
  workdir.mkdir(parents=True, exist_ok=True)
  # The processes of one multi-process run share the workdir: process 0, the one that writes, holds the lock.
  lock = integrity.workdir_lock(workdir) if parallel.is_main_process() else contextlib.nullcontext()
  try:
    with lock:
      yield
  except BaseException:
    if created and [p.name for p in workdir.iterdir()] == [integrity.LOCK_NAME]:
      (workdir / integrity.LOCK_NAME).unlink()
      workdir.rmdir()
    raise


def initial_state(config, data):
  """A fresh TrainState for `data`, or, with config.init_from, one that starts from another run's best parameters.

  The warm start (the seed's progressive scaling: base -> medium -> large) needs the same classes and input
  genes as the run it starts from; the optimizer state starts fresh.
  """
  from cardiac_jax import inference  # inference reads workdirs that this module writes

  init_rng = jax.random.fold_in(jax.random.key(config.seed), 0)
  state = create_train_state(init_rng, config, len(data.encoding.classes), data.train.x.shape[-1], config.data.max_len)
  if not config.init_from:
    return state
  init_dir = pathlib.Path(config.init_from).expanduser()
  if not (init_dir / "data.json").exists():
    raise ConfigError(f"{init_dir / 'data.json'}: config.init_from must be the workdir of a finished run")
  bundle = inference.load(init_dir)
  check_same_inputs(bundle.record, data, init_dir / "data.json")
  logging.info("warm start from the best model of %s", init_dir)
  return state.replace(params=bundle.params)


def train_and_evaluate(config, workdir):
  """Trains the seed's model on the configured data; resumes if workdir holds an unfinished run of this config.

  Returns:
    dict of final results (also written to workdir/results.json).
  """
  workdir = pathlib.Path(workdir).expanduser()
  checks.check_values(config)
  parallel.initialize(config.parallel)
  with claimed_workdir(config, workdir):
    return _train_and_evaluate(config, workdir)


def _train_and_evaluate(config, workdir):
  started = time.perf_counter()
  mesh = parallel.data_parallel(config.parallel.num_devices)
  data = datasets.prepare(config)
  seconds = {"data": time.perf_counter() - started}
  state = mesh.replicate(initial_state(config, data))
  n_params = count_params(state.params)
  batch_size = config.train.batch_size or batching.adaptive_batch_size(len(data.train))
  mesh.check_batch_size(batch_size)
  logging.info("%s", mesh.describe())
  save_test_sequences(workdir / "test_sequences.npz", data)
  # Only the main process writes the workdir's files (write_atomic); it alone records their digest.
  test_digest = integrity.file_digest(workdir / "test_sequences.npz") if parallel.is_main_process() else None
  write_atomic(workdir / "config.json", config_to_json(config))
  write_atomic(workdir / "data.json", json.dumps(data_record(data, batch_size, test_digest), indent=2))
  write_atomic(workdir / "preprocessing.json", data.preprocessing.to_json())
  dropout_rng = mesh.replicate(jax.random.fold_in(jax.random.key(config.seed), 1))

  checkpoints = Checkpoints(workdir)
  state, meta = checkpoints.restore_latest(state)
  tracker = meta or {"epoch": 0, "best_val_accuracy": -1.0, "best_epoch": 0, "epochs_since_best": 0}
  history = _read_history(workdir, tracker["epoch"])
  if meta:
    logging.info("resuming %s after epoch %d", workdir, tracker["epoch"])

  # Compiled once, ahead of time, for the run's one batch shape: a batch of any other shape is an error.
  # Batches are cut to the longest sequence of the data, so padding no sequence uses is never scanned.
  steps = batching.used_steps(*data.splits.values())
  compile_start = time.perf_counter()
  example = next(batching.iterate(data.train, batch_size, steps=steps))
  step = mesh.feeding(
      mesh.jit(functools.partial(train_step, label_smoothing=config.train.label_smoothing,
                                 class_weights=class_weights_for(config.train, data.train.labels, len(data.encoding.classes))),
               batch_arg=1, donate_argnums=0)
      .lower(state, mesh.shard(example), dropout_rng)
      .compile(),
      batch_arg=1,
  )
  seconds["train_step_compile"] = time.perf_counter() - compile_start
  parallel.barrier(f"compiled {workdir}")
  training_start = time.perf_counter()
  eval_fn = make_eval_step(state.apply_fn, config.train.label_smoothing, mesh)
  plateau = make_plateau(config.train)
  n_batches = batching.num_batches(len(data.train), batch_size)
  logging.info(
      "model: %s parameters; training on %d sequences, batch %d, up to %d epochs",
      f"{n_params:,}", len(data.train), batch_size, config.train.num_epochs,
  )
  patience = config.train.early_stop_patience
  epoch = tracker["epoch"] + 1
  try:
    for epoch in range(tracker["epoch"] + 1, config.train.num_epochs + 1):
      if tracker["epochs_since_best"] >= patience:
        break
      state, tracker = _epoch(config, workdir, epoch, data, state, step, eval_fn, plateau, tracker, history,
                              dropout_rng, batch_size, steps, n_batches, checkpoints)
  except KeyboardInterrupt:
    interrupted = True
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
    logging.info("early stop: no better validation accuracy for %d epochs", patience)
  return _finish(config, workdir, data, state, eval_fn, batch_size, steps, tracker, n_params, seconds, started,
                 mesh.num_devices)


def _check_finite_loss(value, workdir, where, tracker):
  """Stops training with one error at the first non-finite loss instead of training on from NaN."""
  if not np.isfinite(value):
    raise ConfigError(f"{workdir}: training stopped: the {where} is {value}; the last saved epoch is "
                      f"{tracker['epoch']} (try a lower train.learning_rate, or check the inputs for extreme values)")


def _epoch(config, workdir, epoch, data, state, step, eval_fn, plateau, tracker, history, dropout_rng, batch_size,
           steps, n_batches, checkpoints):
  """Trains one epoch, validates, writes its metrics.jsonl line, then commits its checkpoints.

  metrics.jsonl is written before the checkpoint: a kill in between leaves a line for an epoch without a
  checkpoint, which a resumed run drops and writes again (the same numbers); never a checkpoint without its line.

  Returns:
    (state, tracker) after the epoch.
  """
  start = time.perf_counter()
  shuffle = np.random.default_rng([config.seed, 3, epoch])
  batches = tqdm(
      batching.iterate(data.train, batch_size, shuffle, steps), total=n_batches, desc=f"epoch {epoch}", leave=False,
      disable=None
  )
  sums, previous = {}, None
  for index, batch in enumerate(batches, 1):
    state, batch_sums = step(state, batch, dropout_rng)
    # Each step's loss is read once the next step is dispatched, so the check never stalls the pipeline.
    if previous:
      _check_finite_loss(float(previous[1]), workdir, f"training loss of epoch {epoch}, step {previous[0]}", tracker)
    previous = (index, batch_sums["loss"])
    sums = metrics_lib.add(sums, batch_sums)
  if previous:
    _check_finite_loss(float(previous[1]), workdir, f"training loss of epoch {epoch}, step {previous[0]}", tracker)
  train_metrics = metrics_lib.normalize(sums)
  train_seconds = time.perf_counter() - start
  val_metrics, _ = predict(eval_fn, state.params, data.val, batch_size, steps)
  _check_finite_loss(val_metrics["loss"], workdir, f"validation loss after epoch {epoch}", tracker)
  learning_rate = config.train.learning_rate * float(state.plateau.scale)
  state = plateau_step(state, plateau, val_metrics["loss"])
  tracker, improved = track_best(tracker, epoch, val_metrics["accuracy"])
  record = {
      "epoch": epoch,
      "train_loss": train_metrics["loss"],
      "train_accuracy": train_metrics["accuracy"],
      "val_loss": val_metrics["loss"],
      "val_accuracy": val_metrics["accuracy"],
      "learning_rate": learning_rate,
      "sequences_per_second": len(data.train) / train_seconds,
      "seconds": time.perf_counter() - start,
  }
  logging.info(
      "epoch %3d  train loss %.4f acc %.4f | val loss %.4f acc %.4f | lr %.2e | %.0f seq/s%s",
      epoch, record["train_loss"], record["train_accuracy"], record["val_loss"], record["val_accuracy"],
      learning_rate, record["sequences_per_second"], "  *best" if improved else "",
  )
  history.append(record)
  write_atomic(workdir / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in history))
  checkpoints.save(epoch, state, dict(tracker, val_accuracy=val_metrics["accuracy"]), improved)
  return state, tracker


def write_calibration(workdir, val_logits, val_labels, test_logits, test_labels):
  """Fits the calibration on the validation logits [n, classes] and labels [n] (calibrate.fit) and writes it to
  workdir/calibration.json; returns it with the test NLL and ECE before and after it (results.json's)."""
  calibration = calibrate.fit(val_logits, val_labels)
  integrity.check_finite_record(calibration, workdir / "calibration.json")
  write_atomic(workdir / "calibration.json", json.dumps(calibration, indent=2))
  return dict(calibration, **calibrate.test_record(test_logits, test_labels, calibration))


def _finish(config, workdir, data, state, eval_fn, batch_size, steps, tracker, n_params, seconds, started,
            n_devices):
  """Scores the best checkpoint on every split, fits the calibration and writes results.json."""
  params, best_meta = restore_best_params(workdir, state.params)
  results = {"best_epoch": best_meta["best_epoch"], "epochs_run": tracker["epoch"], "parameters": n_params}
  logits = {}
  for name, sequences in data.splits.items():
    split_metrics, logits[name] = predict(eval_fn, params, sequences, batch_size, steps)
    integrity.check_finite_logits(logits[name], f"{workdir / 'checkpoints' / 'best'} on the {name} split")
    results[f"{name}_accuracy"] = split_metrics["accuracy"]
    results[f"{name}_loss"] = split_metrics["loss"]
  report = metrics_lib.classification_report(data.test.labels, logits["test"].argmax(-1), data.encoding.classes)
  results["test_macro_f1"] = report["macro_f1"]
  results["calibration"] = write_calibration(workdir, logits["val"], data.val.labels, logits["test"],
                                             data.test.labels)
  results["train_val_gap"] = results["train_accuracy"] - results["val_accuracy"]
  seconds["total"] = time.perf_counter() - started
  results["seconds"] = seconds
  results["split_unit"] = config.split.unit
  results["sequence_mode"] = config.data.sequence_mode
  results["test_unit"] = test_unit(config)
  results["data_source"] = config.data.source
  results["devices"] = n_devices
  results["processes"] = jax.process_count()
  integrity.check_finite_record(results, workdir / "results.json")
  write_atomic(workdir / "results.json", json.dumps(results, indent=2))
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


def read_metrics(workdir):
  """The records of a workdir's metrics.jsonl, one per epoch ([] when there is none yet)."""
  path = pathlib.Path(workdir) / "metrics.jsonl"
  if not path.exists():
    return []
  records = []
  for number, line in enumerate(path.read_text().splitlines(), 1):
    if line.strip():
      try:
        records.append(json.loads(line))
      except json.JSONDecodeError:
        raise ConfigError(f"{path}: line {number} is truncated or damaged; delete that line (a resumed run writes "
                          "it again)") from None
  return records


def _read_history(workdir, up_to_epoch):
  """metrics.jsonl records of epochs <= up_to_epoch (a resumed run drops epochs it has no checkpoint for)."""
  return [r for r in read_metrics(workdir) if r["epoch"] <= up_to_epoch]


def test_unit(config):
  """What one test example is: a type sequence (the seed's mode) or a cell (per-cell modes)."""
  return "sequence" if config.data.sequence_mode == "type" else "cell"
