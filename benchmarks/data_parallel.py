"""Data parallel on 1 vs N CPU devices of one machine: train seq/s and annotation (prediction) sequences/s.

  python benchmarks/data_parallel.py [--devices=2] [--rounds=5] [--steps=10]

Splits the host's CPU into N virtual XLA devices (--xla_force_host_platform_device_count, set before JAX
starts) and times, on the same numpy batches, cardiac_jax.training.train_step and model.predict_step jitted through
cardiac_jax.parallel on a mesh of 1 device and of N devices: the base model (hidden 128, 3 BiLSTM layers, 200
genes, 7 steps), train batch --batch (64), prediction batch predict.QUERY_BATCH (256). After a warm-up,
each round times every contender in turn; the table gives medians over the rounds. Annotation's own work
beside the forward pass (reading, preprocessing, building anchored sequences) is numpy and not timed here.
"""

import os
import pathlib
import sys

from absl import app, flags

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

FLAGS = flags.FLAGS
flags.DEFINE_integer("devices", 2, "Virtual CPU devices of the data-parallel contender.")
flags.DEFINE_integer("batch", 64, "Train batch size (divides by --devices).")
flags.DEFINE_integer("rounds", 5, "Timed rounds; the table gives medians.")
flags.DEFINE_integer("steps", 10, "Steps per contender per round.")


def main(argv):
  del argv
  import time

  import jax
  import numpy as np

  from cardiac_jax import parallel, predict, training
  from cardiac_jax.configs import default

  config = default.get_config()
  rng = np.random.default_rng(0)
  genes, steps = config.data.n_genes, 7

  def batch(n):
    return {"x": rng.normal(size=(n, steps, genes)).astype(np.float32),
            "lengths": rng.integers(1, steps + 1, size=n).astype(np.int32),
            "labels": rng.integers(0, 7, size=n).astype(np.int32), "mask": np.ones(n, np.float32)}

  train_batch, predict_batch = batch(FLAGS.batch), batch(predict.QUERY_BATCH)
  contenders = {}
  for n in (1, FLAGS.devices):
    mesh = parallel.data_parallel(n)
    state = mesh.replicate(training.create_train_state(jax.random.key(0), config, 7, genes, steps))
    rng_key = mesh.replicate(jax.random.key(1))
    step = mesh.jit(lambda s, b, r: training.train_step(s, b, r, label_smoothing=0.1), batch_arg=1, donate_argnums=0)
    started = time.perf_counter()
    compiled = mesh.feeding(step.lower(state, mesh.shard(train_batch), rng_key).compile(), batch_arg=1)
    compile_seconds = time.perf_counter() - started
    predict_fn = predict.make_predict_fn(state.apply_fn, mesh)
    contenders[n] = {"state": state, "key": rng_key, "train": compiled, "predict": predict_fn,
                     "compile": compile_seconds}

  def time_train(c):
    started = time.perf_counter()
    for _ in range(FLAGS.steps):
      c["state"], sums = c["train"](c["state"], train_batch, c["key"])
    jax.block_until_ready(sums)
    return FLAGS.steps * FLAGS.batch / (time.perf_counter() - started)

  def time_predict(c):
    started = time.perf_counter()
    for _ in range(FLAGS.steps):
      logits = c["predict"](c["state"].params, {"x": predict_batch["x"], "lengths": predict_batch["lengths"]})
    np.asarray(logits)
    return FLAGS.steps * predict.QUERY_BATCH / (time.perf_counter() - started)

  for c in contenders.values():  # warm-up
    time_train(c), time_predict(c)
  rates = {(n, what): [] for n in contenders for what in ("train", "predict")}
  for _ in range(FLAGS.rounds):
    for n, c in contenders.items():
      rates[n, "train"].append(time_train(c))
      rates[n, "predict"].append(time_predict(c))
  print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at the end; medians of {FLAGS.rounds} rounds")
  print("| devices | train seq/s (batch %d) | predict seq/s (batch %d) | train-step compile |"
        % (FLAGS.batch, predict.QUERY_BATCH))
  print("|---|---|---|---|")
  for n, c in contenders.items():
    print(f"| {n} | {np.median(rates[n, 'train']):.0f} | {np.median(rates[n, 'predict']):.0f} | {c['compile']:.1f} s |")


if __name__ == "__main__":
  if "--xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    count = next((a.split("=")[1] for a in sys.argv if a.startswith("--devices=")), "2")
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={count}")
  app.run(main)
