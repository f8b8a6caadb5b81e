"""Run by tests/test_parallel.py in a process of its own, with 2 virtual CPU devices (XLA_FLAGS), so that the rest
of the suite keeps one device: python tests/parallel_checks.py OUT_DIR ONE_DEVICE_CHECKPOINT_DIR

Writes OUT_DIR/results.npz: the parameters after a few train steps on 1 and on 2 devices, annotation
probabilities on 1 and on 2 devices, and the parent's 1-device checkpoint (of `fresh_state`) restored onto 2 devices
beside the state it should hold; and OUT_DIR/checkpoint: a state trained on 2 devices, saved by Orbax, for the parent to restore
on its one device.
"""

import functools
import pathlib
import sys

import jax
import numpy as np

from cardiac_jax import parallel, predict, preprocess, training
from cardiac_jax import workdir as rundir
from cardiac_jax.errors import ConfigError
from cardiac_jax.configs import tiny

STEPS = 3
GENES = 6


def model_config():
  config = tiny.get_config()
  config.model.hidden_dim, config.model.num_heads, config.model.head_dims = 8, 2, (8,)
  config.model.num_layers = 1  # one BiLSTM layer: the compiles are most of this check's time
  config.data.sequence_mode, config.model.pooling = "anchored", "anchor"
  config.data.max_len = 4
  return config


@functools.cache
def fresh_state():
  """The TrainState both processes build from seed 0 ([4 steps, GENES + 1 features], 3 classes); built once (each
  build compiles the model's init)."""
  return training.create_train_state(jax.random.key(0), model_config(), 3, GENES + 1, 4)


def batches(n=16, seed=0):
  """STEPS batches of n sequences, 3 of them fill (mask 0), as batches.iterate gives a short last batch."""
  rng = np.random.default_rng(seed)
  out = []
  for _ in range(STEPS):
    batch = {"x": rng.normal(size=(n, 4, GENES + 1)).astype(np.float32),
             "lengths": rng.integers(1, 5, size=n).astype(np.int32),
             "labels": rng.integers(0, 3, size=n).astype(np.int32),
             "mask": np.r_[np.ones(n - 3), np.zeros(3)].astype(np.float32)}
    out.append(batch)
  return out


def trained(mesh):
  """The TrainState after STEPS train steps (dropout on) over `mesh`'s devices."""
  state = mesh.replicate(fresh_state())
  step = mesh.feeding(mesh.jit(lambda s, b, r: training.train_step(s, b, r, label_smoothing=0.1), batch_arg=1),
                      batch_arg=1)
  rng = mesh.replicate(jax.random.key(1))
  for batch in batches():
    state, _ = step(state, batch, rng)
  return state


def bundle(config, params):
  """A Bundle of an anchored model with `params`, without a workdir (annotation only reads these fields)."""
  rng = np.random.default_rng(1)
  components = np.linalg.qr(rng.normal(size=(GENES, preprocess.N_COMPONENTS)))[0].T.astype(np.float32)
  components = np.resize(components, (preprocess.N_COMPONENTS, GENES))
  preprocessing = preprocess.Preprocessing(tuple(f"g{i}" for i in range(GENES)), "log", 1e4,
                                           np.zeros(GENES, np.float32), np.ones(GENES, np.float32), components)
  config.data.context_k = 2
  return rundir.Bundle(pathlib.Path("."), config, params, fresh_state().apply_fn, ("a", "b", "c"),
                       ("d0", "d1", "d2", "d3"), preprocessing, {"batch_size": 16}, {})


def annotate_probabilities(config, params, n_devices):
  """Probabilities of 301 cells (the last batch short) with every forward pass over n_devices devices."""
  rng = np.random.default_rng(2)
  x = rng.normal(size=(301, GENES)).astype(np.float32)
  times = rng.integers(0, 4, size=301).astype(np.int32)
  mesh = parallel.data_parallel(n_devices)
  query = bundle(config, mesh.replicate(params))
  logits = predict.predict_cell_logits(query, x, times, progress=False, data_parallel=mesh)
  return predict.from_logits(logits, query.calibration, query.classes).probabilities


def batch_size_error(mesh):
  try:
    mesh.check_batch_size(15)
  except ConfigError as error:
    return str(error)
  return ""


def main(out, one_device_checkpoint):
  out = pathlib.Path(out)
  assert jax.device_count() == 2, jax.devices()
  config = model_config()
  one, two = parallel.data_parallel(1), parallel.data_parallel(2)
  state_1, state_2 = trained(one), trained(two)
  checkpoints = rundir.Checkpoints(out / "checkpoint")
  checkpoints.save(STEPS, state_2, {"val_accuracy": 0.5}, improved=True)
  checkpoints.close()
  restored, _ = rundir.Checkpoints(one_device_checkpoint).restore_latest(two.replicate(fresh_state()))
  flat = lambda tree: {jax.tree_util.keystr(p): np.asarray(v) for p, v in jax.tree_util.tree_leaves_with_path(tree)}
  np.savez(
      out / "results.npz",
      **{f"params_1{k}": v for k, v in flat(state_1.params).items()},
      **{f"params_2{k}": v for k, v in flat(state_2.params).items()},
      **{f"restored{k}": v for k, v in flat(restored.params).items()},
      **{f"expected{k}": v for k, v in flat(fresh_state().params).items()},
      devices_after_restore=len(jax.tree.leaves(restored.params)[0].sharding.device_set),
      probabilities_1=annotate_probabilities(config, state_1.params, 1),
      probabilities_2=annotate_probabilities(config, state_1.params, 2),
      batch_size_error=batch_size_error(two),
  )


if __name__ == "__main__":
  main(*sys.argv[1:])
