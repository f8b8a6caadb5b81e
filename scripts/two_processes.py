"""Trains a config once in one process and once in N processes on 127.0.0.1, and compares their loss trajectories.

  python scripts/two_processes.py --config=configs/tiny.py --workdir=/tmp/two_processes [--processes=2]

The N processes are train.py, each with one CPU device, joined through jax.distributed (CPU collectives: gloo)
into one mesh of N devices: each process hands JAX its share of every batch. The one-process run is the
reference. Prints, per epoch, both runs' train and validation losses, the largest difference and the wall
times, and exits with status 1 if a loss differs by more than --tolerance. Runs of the same config and seed
should agree to float rounding: the gradient all-reduce adds the same numbers in another order.
"""

import json
import os
import pathlib
import socket
import subprocess
import sys
import time

from absl import app, flags

REPO = pathlib.Path(__file__).resolve().parents[1]
FLAGS = flags.FLAGS
flags.DEFINE_string("config", "configs/tiny.py", "Training configuration file.")
flags.DEFINE_string("workdir", "/tmp/two_processes", "Folder for the two runs (one/ and processes/); must not hold runs.")
flags.DEFINE_integer("processes", 2, "Processes of the distributed run.")
flags.DEFINE_float("tolerance", 1e-5, "Largest allowed difference of a per-epoch loss.")
flags.DEFINE_multi_string("set", [], "More train.py flags for both runs, e.g. --set=--config.train.num_epochs=5.")

LOSSES = ("train_loss", "val_loss")


def free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def train_command(workdir, *extra):
  return [sys.executable, "train.py", f"--config={FLAGS.config}", f"--workdir={workdir}", *FLAGS.set, *extra]


def run_processes(workdir, n):
  """Runs train.py as n processes of one distributed run; returns the wall time."""
  address = f"127.0.0.1:{free_port()}"
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="")  # one CPU device per process
  started = time.perf_counter()
  logs = [open(workdir.parent / f"process_{i}.log", "w") for i in range(n)]
  processes = [
      subprocess.Popen(train_command(workdir, f"--config.parallel.coordinator_address={address}",
                                     f"--config.parallel.num_processes={n}", f"--config.parallel.process_id={i}"),
                       cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
      for i, log in enumerate(logs)
  ]
  codes = [p.wait() for p in processes]
  for log in logs:
    log.close()
  if any(codes):
    sys.exit(f"error: a process failed (exit codes {codes}); see {workdir.parent}/process_*.log")
  return time.perf_counter() - started


def run_one(workdir):
  started = time.perf_counter()
  subprocess.run(train_command(workdir), cwd=REPO, check=True, env=dict(os.environ, XLA_FLAGS=""))
  return time.perf_counter() - started


def trajectory(workdir):
  return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


def main(argv):
  del argv
  root = pathlib.Path(FLAGS.workdir).expanduser()
  one, many = root / "one" / "run", root / "processes" / "run"
  if one.exists() or many.exists():
    sys.exit(f"error: {root} already holds runs; name another --workdir")
  for folder in (one, many):
    folder.parent.mkdir(parents=True)
  seconds_one = run_one(one)  # first: it also writes the simulated data and the caches the processes read
  seconds_many = run_processes(many, FLAGS.processes)
  reference, distributed = trajectory(one), trajectory(many)
  results = json.loads((many / "results.json").read_text())
  print(f"{results['processes']} processes, {results['devices']} devices; per epoch, one process | distributed:")
  worst = 0.0
  for a, b in zip(reference, distributed, strict=True):
    worst = max([worst] + [abs(a[k] - b[k]) for k in LOSSES])
    print(f"epoch {a['epoch']}: " + "  ".join(f"{k} {a[k]:.7f} | {b[k]:.7f}" for k in LOSSES))
  print(f"largest loss difference {worst:.2e} (tolerance {FLAGS.tolerance:.0e}); wall time one process "
        f"{seconds_one:.0f} s, {FLAGS.processes} processes {seconds_many:.0f} s; train seq/s (median of epochs) "
        f"{median(reference):.0f} | {median(distributed):.0f}")
  if worst > FLAGS.tolerance:
    sys.exit(1)


def median(records):
  values = sorted(r["sequences_per_second"] for r in records)
  return values[len(values) // 2]


if __name__ == "__main__":
  app.run(main)
