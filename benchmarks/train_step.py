"""Train-step speed of cardiac_jax (fused LSTM, and the nn.RNN reference) against the PyTorch rendering.

  python benchmarks/train_step.py [--rounds 7] [--seconds 0.3]

Times a full train step (forward, backward, clipping, AdamW) of the seed's model (200 genes, 7 classes,
default config) at batch 16 and 64, on batches of 7 valid steps padded to 7 (no padding) and to 100 (the
seed's padding). JAX runs `cardiac_jax.training.train_step`, jitted with the state donated and compiled ahead
of time as training compiles it; PyTorch runs benchmarks/torch_model.py. Every contender sees the same
numpy batches. After a warm-up, each round times every contender in turn (A B C A B C ...) for about
`--seconds`; the table gives medians over rounds, so slow phases of a shared machine hit all alike.

Padded batches reach JAX trimmed to the data's longest sequence (`trim`, as the training loop should
trim them; the slicing is timed), so they run the 7-step compiled step: no new shape, no new compile.
'JAX fused, untrimmed' shows what the 100-step scan would cost. PyTorch gets the padded batch as the
seed's code did; its packed LSTM skips the padding, its input projection and attention do not.

GFLOP/s count the model's work on the 7 valid steps (XLA's cost analysis of the fused 7-step train step,
per sequence) at each contender's speed, against the machine's fp32 matmul rate (a 2048 x 2048 jnp.dot).

Matmul floor: every dot product in the compiled batch-64 fused step (read from its optimized HLO) is timed
alone at its own shapes, as an XLA einsum and as a torch.einsum, and the times are summed, taking per shape
the faster of the two. No train step can take less than that on this machine without changing the
arithmetic, so PyTorch's step time divided by the floor bounds the JAX / PyTorch ratio any JAX step could reach.
"""

import argparse
import collections
import functools
import os
import pathlib
import re
import string
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import torch

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]

from cardiac_jax import training as train_lib  # noqa: E402
from cardiac_jax.configs import default  # noqa: E402
import torch_model  # noqa: E402

GENES = 200
CLASSES = 7
VALID_STEPS = 7
PADDED_STEPS = 100
BATCH_SIZES = (16, 64)
NUM_BATCHES = 4  # distinct random batches, cycled


def trim(batch, steps):
  """The batch with x cut to its first `steps` time steps (`steps` >= every length in the data)."""
  return dict(batch, x=batch["x"][:, :steps])


def random_batches(batch_size, steps, rng):
  """NUM_BATCHES numpy batches of VALID_STEPS-step sequences zero-padded to `steps`, as batches.iterate gives."""
  batches = []
  for _ in range(NUM_BATCHES):
    x = np.zeros((batch_size, steps, GENES), np.float32)
    x[:, :VALID_STEPS] = rng.standard_normal((batch_size, VALID_STEPS, GENES))
    batches.append({
        "x": x,
        "lengths": np.full(batch_size, VALID_STEPS, np.int32),
        "labels": rng.integers(0, CLASSES, batch_size).astype(np.int32),
        "mask": np.ones(batch_size, np.float32),
    })
  return batches


def jax_step(impl, example):
  """(run, compile seconds, compiled step) for the seed's model with `impl` LSTMs, compiled for `example`'s shape.

  run(batch) does one train step on a numpy batch and returns its device outputs.
  """
  config = default.get_config()
  config.model.lstm_impl = impl
  state = train_lib.create_train_state(jax.random.key(0), config, CLASSES, GENES, example["x"].shape[1])
  dropout_rng = jax.random.key(1)
  start = time.perf_counter()
  step = (
      jax.jit(functools.partial(train_lib.train_step, label_smoothing=config.train.label_smoothing), donate_argnums=0)
      .lower(state, example, dropout_rng)
      .compile()
  )
  seconds = time.perf_counter() - start
  holder = [state]

  def run(batch):
    holder[0], sums = step(holder[0], batch, dropout_rng)
    return sums

  return run, seconds, step


def torch_step():
  """run(batch): one PyTorch train step of the seed's model on a numpy batch."""
  train_step = torch_model.TrainStep(torch_model.seed_model())

  def run(batch):
    x = torch.from_numpy(batch["x"])
    lengths = torch.from_numpy(batch["lengths"].astype(np.int64))
    return train_step(x, lengths, torch.from_numpy(batch["labels"].astype(np.int64)))

  return run


def seconds_per_step(run, batches, n):
  """Mean wall time of n steps cycling through batches, outputs awaited at the end."""
  start = time.perf_counter()
  for i in range(n):
    out = run(batches[i % len(batches)])
  jax.block_until_ready(out)
  return (time.perf_counter() - start) / n


def time_alternating(contenders, rounds, seconds):
  """{name: median seconds per step}: contenders (name -> (run, batches)) timed in turn, `rounds` times."""
  steps = {}
  for name, (run, batches) in contenders.items():
    seconds_per_step(run, batches, 3)  # warm-up
    steps[name] = max(2, round(seconds / seconds_per_step(run, batches, 3)))
  times = {name: [] for name in contenders}
  for _ in range(rounds):
    for name, (run, batches) in contenders.items():
      times[name].append(seconds_per_step(run, batches, steps[name]))
  return {name: float(np.median(t)) for name, t in times.items()}


def matmul_gflops(n=2048, repeats=7):
  """Median fp32 GFLOP/s of an n x n jnp.dot."""
  a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
  dot = jax.jit(jnp.dot)
  dot(a, a).block_until_ready()
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    dot(a, a).block_until_ready()
    times.append(time.perf_counter() - start)
  return 2 * n**3 / np.median(times) / 1e9


def hlo_dots(hlo_text):
  """Counter of the dot products in an optimized HLO module: (lhs shape, rhs shape, einsum subscripts) -> count."""
  shapes = {m[1]: tuple(int(d) for d in m[2].split(",") if d)
            for m in re.finditer(r"%(\S+) = f32\[([\d,]*)\]", hlo_text)}
  dots = collections.Counter()
  for line in hlo_text.splitlines():
    match = re.search(r" dot\(%(\S+), %(\S+)\)", line)
    if match:
      lhs, rhs = shapes[match[1]], shapes[match[2]]
      dims = {key: tuple(int(d) for d in value.split(",") if d)
              for key, value in re.findall(r"(\w+_dims)=\{([\d,]*)\}", line)}
      dots[lhs, rhs, dot_subscripts(lhs, rhs, dims)] += 1
  return dots


def dot_subscripts(lhs, rhs, dims):
  """The einsum subscripts of an HLO dot: batch dims first, then lhs free, then rhs free dims."""
  letters = iter(string.ascii_lowercase)
  left, right = [None] * len(lhs), [None] * len(rhs)
  for kind in ("batch", "contracting"):
    for i, j in zip(dims.get(f"lhs_{kind}_dims", ()), dims.get(f"rhs_{kind}_dims", ())):
      left[i] = right[j] = next(letters)
  out = [left[i] for i in dims.get("lhs_batch_dims", ())]
  for names in (left, right):
    for i, name in enumerate(names):
      if name is None:
        names[i] = next(letters)
        out.append(names[i])
  return f"{''.join(left)},{''.join(right)}->{''.join(out)}"


def median_seconds(fn, repeats=9, inner=20):
  """Median over `repeats` of the mean time of `inner` calls of fn, after one warm-up call."""
  jax.block_until_ready(fn())
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    for _ in range(inner):
      out = fn()
    jax.block_until_ready(out)
    times.append((time.perf_counter() - start) / inner)
  return float(np.median(times))


def matmul_floor(compiled):
  """(dot count, GFLOP, seconds XLA, seconds PyTorch, seconds faster-per-shape): the step's dots timed alone."""
  rng = np.random.default_rng(0)
  count = flops = xla = pytorch = best = 0.0
  for (lhs, rhs, subscripts), n in hlo_dots(compiled.as_text()).items():
    a, b = rng.standard_normal(lhs, np.float32), rng.standard_normal(rhs, np.float32)
    einsum = jax.jit(functools.partial(jnp.einsum, subscripts))
    a_jax, b_jax, a_torch, b_torch = jnp.asarray(a), jnp.asarray(b), torch.from_numpy(a), torch.from_numpy(b)
    t_xla = median_seconds(lambda: einsum(a_jax, b_jax))
    t_torch = median_seconds(lambda: torch.einsum(subscripts, a_torch, b_torch))
    left, right = subscripts.split("->")[0].split(",")
    rhs_free = [size for size, name in zip(rhs, right) if name not in left]
    flops += n * 2 * np.prod(lhs) * np.prod(rhs_free)
    count += n
    xla, pytorch, best = xla + n * t_xla, pytorch + n * t_torch, best + n * min(t_xla, t_torch)
  return int(count), flops / 1e9, xla, pytorch, best


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--rounds", type=int, default=7, help="timing rounds per setting (the median is reported)")
  parser.add_argument("--seconds", type=float, default=0.3, help="approximate seconds per contender per round")
  args = parser.parse_args()

  threads = len(os.sched_getaffinity(0))
  torch.set_num_threads(threads)
  rng = np.random.default_rng(0)
  peak = matmul_gflops()
  print(f"jax {jax.__version__} ({jax.default_backend()}), torch {torch.__version__} with {threads} threads; "
        f"load average {os.getloadavg()[0]:.1f}")
  print(f"fp32 matmul (2048 x 2048 jnp.dot): {peak:.0f} GFLOP/s")

  rows = []
  for batch_size in BATCH_SIZES:
    unpadded = random_batches(batch_size, VALID_STEPS, rng)
    padded = [dict(b, x=np.pad(b["x"], ((0, 0), (0, PADDED_STEPS - VALID_STEPS), (0, 0)))) for b in unpadded]
    fused, fused_compile, compiled = jax_step("fused", unpadded[0])
    rnn, rnn_compile, _ = jax_step("rnn", unpadded[0])
    untrimmed, untrimmed_compile, _ = jax_step("fused", padded[0])
    flops = compiled.cost_analysis()["flops"] / batch_size
    pytorch = torch_step()
    for steps, batches in ((VALID_STEPS, unpadded), (PADDED_STEPS, padded)):
      if steps == VALID_STEPS:
        contenders = {"fused": (fused, batches), "rnn": (rnn, batches), "torch": (pytorch, batches)}
      else:
        trimmed = lambda run: (lambda batch: run(trim(batch, VALID_STEPS)))
        contenders = {"fused": (trimmed(fused), batches), "untrimmed": (untrimmed, batches),
                      "rnn": (trimmed(rnn), batches), "torch": (pytorch, batches)}
      times = time_alternating(contenders, args.rounds, args.seconds)
      rows.append(dict(batch=batch_size, steps=steps, times=times, flops=flops, compiled=compiled,
                       compile={"fused": fused_compile, "rnn": rnn_compile, "untrimmed": untrimmed_compile}))
      print(f"  batch {batch_size}, {steps} steps: " + ", ".join(
          f"{name} {batch_size / t:.0f} seq/s" for name, t in times.items()), flush=True)

  print()
  print(f"model work: {rows[-1]['flops'] / 1e6:.1f} MFLOP per sequence per train step (7 valid steps)")
  print("seq/s (GFLOP/s, % of matmul rate); ratios are JAX / PyTorch; compile = first step, lower + compile")
  header = (f"{'batch':>5} {'steps':>14} | {'JAX fused':>20} {'JAX rnn':>20} {'PyTorch':>20} | "
            f"{'fused/PT':>8} {'rnn/PT':>7} | {'fused untrimmed':>15} | {'compile fused, rnn':>18}")
  print(header)
  print("-" * len(header))
  for row in rows:
    times, batch_size = row["times"], row["batch"]

    def cell(name):
      gflops = row["flops"] * batch_size / times[name] / 1e9
      return f"{batch_size / times[name]:6.0f} ({gflops:4.0f}, {100 * gflops / peak:3.0f}%)"

    steps = "7" if row["steps"] == VALID_STEPS else "100 (7 valid)"
    untrimmed = f"{batch_size / times['untrimmed']:6.0f} seq/s" if "untrimmed" in times else ""
    compile_seconds = row["compile"]
    print(f"{batch_size:>5} {steps:>14} | {cell('fused'):>20} {cell('rnn'):>20} {cell('torch'):>20} | "
          f"{times['torch'] / times['fused']:8.2f} {times['torch'] / times['rnn']:7.2f} | {untrimmed:>15} | "
          f"{compile_seconds['fused']:6.1f} s, {compile_seconds['rnn']:4.1f} s")
  print()
  for batch_size in BATCH_SIZES:
    seven, hundred = (r for r in rows if r["batch"] == batch_size)
    print(f"batch {batch_size}: padded to 100 / 7 steps, JAX fused: "
          f"{hundred['times']['fused'] / seven['times']['fused']:.2f}x trimmed, "
          f"{hundred['times']['untrimmed'] / seven['times']['fused']:.2f}x untrimmed "
          f"(compiled in {seven['compile']['untrimmed']:.1f} s)")
  seven = next(r for r in rows if r["batch"] == BATCH_SIZES[-1] and r["steps"] == VALID_STEPS)
  count, gflop, xla, pytorch, best = matmul_floor(seven["compiled"])
  step_jax, step_torch = seven["times"]["fused"], seven["times"]["torch"]
  print()
  print(f"matmul floor, batch {BATCH_SIZES[-1]} x 7: the fused step's {count} dot products ({gflop:.2f} GFLOP), "
        f"each timed alone at its shapes: XLA {1e3 * xla:.1f} ms, PyTorch {1e3 * pytorch:.1f} ms, "
        f"faster of the two per shape {1e3 * best:.1f} ms")
  print(f"  steps: JAX fused {1e3 * step_jax:.1f} ms ({100 * best / step_jax:.0f}% of it in that floor), "
        f"PyTorch {1e3 * step_torch:.1f} ms; highest JAX / PyTorch ratio a step could reach: "
        f"{step_torch / best:.2f} (a step of dot products alone)")
  load = os.getloadavg()[0]
  print(f"load average at the end {load:.1f}")
  if load > threads:
    print(f"warning: more runnable processes than the {threads} cores; PyTorch's OpenMP threads stall when they "
          "share cores with other jobs, so its numbers (and the ratios) are not those of an idle machine")


if __name__ == "__main__":
  main()
