"""Data parallelism: the same numbers on 2 devices as on 1, checkpoints that move between device counts, and the
clear errors. The 2-device checks run in one subprocess with 2 virtual CPU devices (tests/parallel_checks.py), so
the rest of the suite keeps one device."""

import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest

import parallel_checks
from cardiac_jax import parallel
from cardiac_jax import workdir as rundir
from cardiac_jax.errors import ConfigError
from cardiac_jax.configs import tiny

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def two_devices(tmp_path_factory):
  """The results of tests/parallel_checks.py, given a checkpoint saved here on one device."""
  root = tmp_path_factory.mktemp("parallel")
  checkpoints = rundir.Checkpoints(root / "one_device")
  checkpoints.save(1, parallel_checks.fresh_state(), {"val_accuracy": 0.5}, improved=True)
  checkpoints.close()
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO))
  subprocess.run([sys.executable, "tests/parallel_checks.py", str(root / "out"), str(root / "one_device")],
                 cwd=REPO, env=env, check=True, capture_output=True)
  with np.load(root / "out" / "results.npz") as results:
    return dict(results), root / "out" / "checkpoint"


def _params(results, prefix):
  return {k[len(prefix):]: v for k, v in results.items() if k.startswith(prefix)}


def test_train_steps_on_two_devices_match_one(two_devices):
  results, _ = two_devices
  one, two = _params(results, "params_1"), _params(results, "params_2")
  fresh = {jax.tree_util.keystr(p): np.asarray(v)
           for p, v in jax.tree_util.tree_leaves_with_path(parallel_checks.fresh_state().params)}
  assert one.keys() == two.keys() == fresh.keys()
  assert max(np.abs(one[k] - fresh[k]).max() for k in one) > 1e-3  # the steps did move the parameters
  for k in one:
    np.testing.assert_allclose(two[k], one[k], atol=1e-5, err_msg=k)


def test_annotation_on_two_devices_matches_one(two_devices):
  results, _ = two_devices
  one, two = results["probabilities_1"], results["probabilities_2"]
  assert one.shape == (301, 3)
  np.testing.assert_allclose(one.sum(1), 1.0, atol=1e-5)
  np.testing.assert_allclose(two, one, atol=1e-6)
  np.testing.assert_array_equal(two.argmax(1), one.argmax(1))


def test_checkpoints_move_between_device_counts(two_devices):
  results, saved_on_two = two_devices
  # 1 -> 2: the parent's one-device checkpoint, restored onto the subprocess's two devices.
  assert int(results["devices_after_restore"]) == 2
  restored, expected = _params(results, "restored"), _params(results, "expected")
  assert restored.keys() == expected.keys()
  for k in restored:
    np.testing.assert_array_equal(restored[k], expected[k], err_msg=k)
  # 2 -> 1: the subprocess's two-device checkpoint, restored here on one device.
  state, meta = rundir.Checkpoints(saved_on_two).restore_latest(parallel_checks.fresh_state())
  assert meta["val_accuracy"] == 0.5 and int(state.step) == parallel_checks.STEPS
  for path, value in jax.tree_util.tree_leaves_with_path(state.params):
    assert len(value.sharding.device_set) == 1
    np.testing.assert_array_equal(np.asarray(value), results["params_2" + jax.tree_util.keystr(path)])


def test_batch_size_must_divide_by_the_devices(two_devices):
  results, _ = two_devices
  assert str(results["batch_size_error"]) == ("train.batch_size=15 does not divide by the 2 devices of "
                                              "parallel.num_devices; use a batch size that is a multiple of 2")
  parallel.data_parallel().check_batch_size(15)  # one device takes any batch size
  with pytest.raises(ConfigError, match="parallel.num_devices=2, but JAX sees 1 device"):
    parallel.data_parallel(2)


def test_data_parallel_describes_itself():
  assert parallel.data_parallel().describe() == "data parallel over 1 cpu device in 1 process (mesh {'data': 1})"


def test_a_coordinator_without_this_process_s_place_is_one_clear_error(monkeypatch):
  monkeypatch.delenv("JAX_NUM_PROCESSES", raising=False)
  monkeypatch.delenv("JAX_PROCESS_ID", raising=False)
  config = tiny.get_config().parallel
  config.coordinator_address, config.num_processes = "127.0.0.1:1", 2
  with pytest.raises(ConfigError, match="parallel.num_processes=2 and parallel.process_id=-1"):
    parallel.initialize(config)
  assert not jax.distributed.is_initialized()
