"""How the anchored context's neighbour search grows with the cells of a donor, with and without the cap on the
context pool (sequences.CONTEXT_POOL), and what the cap does to the labels.

  python benchmarks/neighbours.py --copies=1,2,4,8 [--workdir=runs/annotate]

The annotate config's cells (all splits) in their context space (the training cells' PCA, 20 components) are
repeated `copies` times, each copy moved by N(0, 1e-3) noise so that no two points tie, as a donor's cells grow.
The pool of one day (day 7) is searched for the 5 nearest of every cell of the other days, as
`sequences.anchored_sequences` does for each donor and day: the whole pool (exact, scikit-learn's ball tree,
`sequences.nearest`) against the pool capped at CONTEXT_POOL cells (`sequences.content_sample`, then the same
search). Prints the wall times and the share of cells whose neighbour set the cap changes.

With --workdir (a run of the annotate config), the repeated cells of the run's data, with their days and donors,
are also labelled as annotate labels a query (`predict.predict_cell_logits`), with the cap and without it, and
the share of cells whose most probable class differs is printed: the cap's effect on the labels.
"""

import time

import numpy as np
from absl import app, flags, logging

from cardiac_jax import configs, dataset, predict, sequences
from cardiac_jax import workdir as rundir

flags.DEFINE_list("copies", ["1", "2", "4"], "How many times the cells are repeated.")
flags.DEFINE_integer("k", 5, "Neighbours per cell (the annotate config's data.context_k).")
flags.DEFINE_string("workdir", None, "A run of the annotate config: also compare its labels with and without the cap.")
FLAGS = flags.FLAGS
POOL_DAY = 4  # day 7, the middle of the time course
UNCAPPED = 10**12


def _timed(search):
  started = time.perf_counter()
  found = np.sort(search(), 1)
  return found, time.perf_counter() - started


def _capped(pool, query):
  kept = sequences.content_sample(pool, sequences.CONTEXT_POOL)
  return kept[sequences.nearest(query, pool[kept], FLAGS.k)]


def _top_classes(bundle, x, times, groups, cap):
  sequences.CONTEXT_POOL = cap
  return predict.predict_cell_logits(bundle, x, times, groups, progress=False).argmax(1)


def main(argv):
  del argv
  data = dataset.prepare(configs.get("annotate"))
  embedding = data.preprocessing.embed(data.cell_x)
  times = np.zeros(len(embedding), np.int32)
  for split in data.splits.values():
    times[split.anchor_cells] = split.anchor_times
  rng = np.random.default_rng(0)
  print(f"| copies | pool cells | query cells | whole pool s | pool capped at {sequences.CONTEXT_POOL:,} s | "
        "neighbour sets changed by the cap |")
  print("|---|---|---|---|---|---|")
  for copies in map(int, FLAGS.copies):
    points = np.repeat(embedding, copies, 0)
    points += rng.normal(scale=1e-3, size=points.shape).astype(np.float32)
    days = np.repeat(times, copies)
    pool, query = points[days == POOL_DAY], points[days != POOL_DAY]
    whole, whole_s = _timed(lambda: sequences.nearest(query, pool, FLAGS.k))
    capped, capped_s = _timed(lambda: _capped(pool, query))
    changed = float((whole != capped).any(1).mean())
    print(f"| {copies} | {len(pool):,} | {len(query):,} | {whole_s:.2f} | {capped_s:.2f} | {changed:.1%} |",
          flush=True)
  if FLAGS.workdir:
    bundle = rundir.load(FLAGS.workdir)
    adata, _ = dataset.load(bundle.config)
    donors = adata.obs.set_index(adata.obs_names.astype(str)).loc[data.cell_names, bundle.config.data.donor_key]
    print("\n| copies | cells | cells per donor and day, largest | top class changed by the cap | labelled in s, "
          "capped / whole |")
    print("|---|---|---|---|---|")
    for copies in map(int, FLAGS.copies):
      x = np.repeat(data.cell_x, copies, 0)
      x += rng.normal(scale=1e-3, size=x.shape).astype(np.float32)
      day, donor = np.repeat(times, copies), np.repeat(donors.astype(str).to_numpy(), copies)
      largest = max(int(((day == t) & (donor == d)).sum()) for t in np.unique(day) for d in np.unique(donor))
      started = time.perf_counter()
      capped = _top_classes(bundle, x, day, donor, sequences.CONTEXT_POOL)
      middle = time.perf_counter()
      whole = _top_classes(bundle, x, day, donor, UNCAPPED)
      ended = time.perf_counter()
      print(f"| {copies} | {len(x):,} | {largest:,} | {float((capped != whole).mean()):.3%} | "
            f"{middle - started:.1f} / {ended - middle:.1f} |", flush=True)


if __name__ == "__main__":
  logging.set_verbosity(logging.WARNING)
  app.run(main)
