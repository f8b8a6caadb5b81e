"""Data parallelism on JAX's own engine: a device mesh over a `data` axis, and several processes.

A run's devices form a one-axis `jax.sharding.Mesh` named `data` (config.parallel.num_devices of them; 0 = all).
Every batch is split over that axis, its rows in order, one equal share per device; parameters and optimizer
state are replicated on every device. The steps are jitted with these shardings as explicit in/out shardings,
and XLA inserts the all-reduce of the gradients and of the metric sums: the step computes the same function of
the whole batch as on one device, so numbers agree with a one-device run to float rounding.

Several processes (one per host, or several on one host for tests) join through `jax.distributed`: with a
coordinator address, `initialize` connects them before any computation, after which `jax.devices()` lists the
devices of every process and the mesh spans them all. Each process iterates the same batches (same seed, same
order) and hands JAX only the rows of its own devices (`jax.make_array_from_process_local_data`); outputs
(metric sums, logits) come back replicated, so every process sees them whole. Only process 0 writes files
(workdir.Writer) and logs at INFO; Orbax checkpoints are saved by all processes together, as Orbax requires.
"""

import dataclasses
import functools
import inspect
import os

import jax
import numpy as np
from absl import logging
from jax._src import distributed
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from cardiac_jax.errors import ConfigError

DATA_AXIS = "data"
BARRIER_TIMEOUT_MS = 30 * 60 * 1000


def initialize(parallel_config):
  """Joins this process to a multi-process run when a coordinator is named; a single process otherwise.

  The coordinator address, process count and process id come from config.parallel (flags such as
  --config.parallel.coordinator_address=10.0.0.1:1234) or else from the environment variables
  JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and JAX_PROCESS_ID. Must run before any JAX computation; a second
  call (the same process training twice) does nothing. Processes other than 0 then log warnings only.
  """
  address = parallel_config.coordinator_address or os.environ.get("JAX_COORDINATOR_ADDRESS", "")
  if not address or jax.distributed.is_initialized():
    return
  num_processes = parallel_config.num_processes or int(os.environ.get("JAX_NUM_PROCESSES", "0"))
  process_id = parallel_config.process_id if parallel_config.process_id >= 0 else int(
      os.environ.get("JAX_PROCESS_ID", "-1"))
  if num_processes < 1 or not 0 <= process_id < num_processes:
    raise ConfigError(f"coordinator {address!r} given, but parallel.num_processes={num_processes} and "
                      f"parallel.process_id={process_id} (or JAX_NUM_PROCESSES / JAX_PROCESS_ID) do not name "
                      "this process among the run's: need num_processes >= 1 and 0 <= process_id < num_processes")
  jax.config.update("jax_cpu_collectives_implementation", parallel_config.cpu_collectives)
  jax.distributed.initialize(address, num_processes=num_processes, process_id=process_id)
  if jax.process_index() != 0:
    logging.set_verbosity(logging.WARNING)


def barrier(name):
  """Waits until every process of the run reaches the barrier `name`, once per name (a no-op in a single process).

  Through JAX's coordination service, with a long timeout: the CPU collectives (gloo) give up after 30 s, so a
  process that prepares its data or compiles more slowly than the others must be waited for before the first
  step that communicates.
  """
  if jax.process_count() > 1:
    # JAX has no public barrier that avoids device collectives; Orbax reaches this client the same way.
    distributed.global_state.client.wait_at_barrier(name, BARRIER_TIMEOUT_MS)


def is_main_process():
  """True on the process that writes files and logs (process 0; the only one of a single-process run)."""
  return jax.process_index() == 0


@dataclasses.dataclass(frozen=True)
class DataParallel:
  """A mesh over the `data` axis and the shardings of a data-parallel run.

  Attributes:
    mesh: the jax.sharding.Mesh, devices of every process.
  """

  mesh: Mesh

  @property
  def num_devices(self):
    return self.mesh.devices.size

  @property
  def replicated(self):
    return NamedSharding(self.mesh, PartitionSpec())

  @property
  def batch(self):
    """Rows split over the `data` axis, the rest of each array whole."""
    return NamedSharding(self.mesh, PartitionSpec(DATA_AXIS))

  def describe(self):
    kinds = sorted({d.platform for d in self.mesh.devices.flat})
    processes = len({d.process_index for d in self.mesh.devices.flat})
    return (f"data parallel over {self.num_devices} {'/'.join(kinds)} device{'s' * (self.num_devices > 1)} "
            f"in {processes} process{'es' * (processes > 1)} (mesh {dict(self.mesh.shape)})")

  def check_batch_size(self, batch_size, what="train.batch_size"):
    if batch_size % self.num_devices:
      raise ConfigError(f"{what}={batch_size} does not divide by the {self.num_devices} devices of "
                        f"parallel.num_devices; use a batch size that is a multiple of {self.num_devices}")

  def round_batch_size(self, batch_size):
    """The smallest multiple of the device count at least batch_size (for prediction, whose fill is masked)."""
    return -(-batch_size // self.num_devices) * self.num_devices

  def replicate(self, tree):
    """A pytree of arrays (a TrainState, parameters, PRNG keys) copied onto every device of the mesh; the same
    values on every process."""
    return jax.tree.map(self._replicate_leaf, tree)

  def _replicate_leaf(self, x):
    if isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
      return jax.random.wrap_key_data(self._replicate_leaf(jax.random.key_data(x)), impl=jax.random.key_impl(x))
    # From host memory on each process: no collective (device_put would compare the processes' values).
    value = np.asarray(x)
    return jax.make_array_from_callback(value.shape, self.replicated, lambda index: value[index])

  def abstract(self, tree):
    """jax.ShapeDtypeStructs of a pytree, replicated on this mesh: the target that makes Orbax restore a
    checkpoint onto these devices, however many devices wrote it."""
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=self.replicated), tree)

  def shard(self, batch):
    """A batch (dict of numpy [batch, ...] arrays, the same global batch on every process) -> global arrays split
    over `data`; each process hands JAX only the rows of its own devices."""
    return {key: self._global_array(np.asarray(value)) for key, value in batch.items()}

  def _global_array(self, value):
    index = self.batch.addressable_devices_indices_map(value.shape).values()
    rows = slice(min(i[0].start or 0 for i in index), max(i[0].stop or len(value) for i in index))
    return jax.make_array_from_process_local_data(self.batch, value[rows], value.shape)

  def jit(self, fn, batch_arg, **jit_kwargs):
    """jax.jit of fn(*args) with explicit shardings: the argument at position `batch_arg` is a batch split over
    `data`, every other argument and every output replicated (so each process reads metric sums and logits
    whole). jit_kwargs: more jax.jit arguments (donate_argnums)."""
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    n_args = sum(p.kind in positional for p in inspect.signature(fn).parameters.values())
    in_shardings = tuple(self.batch if i == batch_arg else self.replicated for i in range(n_args))
    return jax.jit(fn, in_shardings=in_shardings, out_shardings=self.replicated, **jit_kwargs)

  def feeding(self, step, batch_arg):
    """step (jitted or compiled) called with numpy batches: the argument at position `batch_arg` is sharded first."""

    @functools.wraps(step)
    def run(*args):
      return step(*(self.shard(a) if i == batch_arg else a for i, a in enumerate(args)))

    return run


def data_parallel(num_devices=0):
  """The DataParallel over the first num_devices devices of every process (0 = all of them: prediction's default).

  A run takes its config.parallel.num_devices.
  """
  devices = jax.devices()
  n = num_devices or len(devices)
  if not 1 <= n <= len(devices):
    raise ConfigError(f"parallel.num_devices={num_devices}, but JAX sees {len(devices)} "
                      f"device(s) ({devices[0].platform}); use 0 for all of them")
  return DataParallel(Mesh(np.array(devices[:n]), (DATA_AXIS,)))
