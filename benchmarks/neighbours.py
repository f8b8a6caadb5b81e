"""How the anchored context's neighbour search grows with the cells of a donor, with and without the cap on the
context pool (sequences.CONTEXT_POOL), and what the cap does to the labels.

  python benchmarks/neighbours.py --copies=1,2,4,8 [--workdir=runs/annotate]

The annotate config's cells (all splits) in their context space (the training cells' PCA, 20 components) are
repeated `copies` times, each copy moved by N(0, 1e-3) noise so that no two points tie, as a donor's cells grow.
The pool of one day (day 7) is searched for the 5 nearest of every cell of the other days, as
`sequences.context_neighbours` does for each donor and day: the whole pool through scikit-learn's ball tree
(exact, float64), the pool capped at CONTEXT_POOL cells (`sequences.content_sample`) through the same tree, and
the capped pool through `neighbours.nearest` (scikit-learn's brute-force search for candidates, ranked again in
float64; what annotate uses). Prints the wall times, the share of cells whose neighbour set the cap changes, and the share
whose neighbours (in order) differ between the tree and neighbours.nearest on the same capped pool.

With --workdir (a run of the annotate config), the repeated cells of the run's data, with their days and donors,
are also labelled as annotate labels a query (`predict.predict_cell_logits`), with the cap and without it, and
the share of cells whose most probable class differs is printed: the cap's effect on the labels.
"""

import time

import numpy as np
from absl import app, flags, logging

from sklearn.neighbors import BallTree

from cardiac_jax import configs, dataset, neighbours, predict, sequences
from cardiac_jax import workdir as rundir

flags.DEFINE_list("copies", ["1", "2", "4"], "How many times the cells are repeated.")
flags.DEFINE_integer("k", 5, "Neighbours per cell (the annotate config's data.context_k).")
flags.DEFINE_string("workdir", None, "A run of the annotate config: also compare its labels with and without the cap.")
FLAGS = flags.FLAGS
POOL_DAY = 4  # day 7, the middle of the time course
UNCAPPED = 10**12


def _timed(search):
  started = time.perf_counter()
  found = search()
  return found, time.perf_counter() - started


def _tree(pool, query):
  return BallTree(pool.astype(np.float64)).query(query.astype(np.float64), k=FLAGS.k)[1]


def _capped(search, pool, query):
  kept = sequences.content_sample(pool, sequences.CONTEXT_POOL)
  return kept[search(pool[kept], query)]


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
  print(f"| copies | pool cells | query cells | ball tree, whole pool s | ball tree, capped at "
        f"{sequences.CONTEXT_POOL:,} s | neighbours.nearest, capped s | neighbour sets changed by the cap | "
        "neighbours differing, tree / nearest |")
  print("|---|---|---|---|---|---|---|---|")
  for copies in map(int, FLAGS.copies):
    points = np.repeat(embedding, copies, 0)
    points += rng.normal(scale=1e-3, size=points.shape).astype(np.float32)
    days = np.repeat(times, copies)
    pool, query = points[days == POOL_DAY], points[days != POOL_DAY]
    whole, whole_s = _timed(lambda: _tree(pool, query))
    tree, tree_s = _timed(lambda: _capped(_tree, pool, query))
    fast, fast_s = _timed(lambda: _capped(lambda r, q: neighbours.nearest(q, r, FLAGS.k)[0], pool, query))
    changed = float((np.sort(whole, 1) != np.sort(tree, 1)).any(1).mean())
    differing = float((tree != fast).any(1).mean())
    print(f"| {copies} | {len(pool):,} | {len(query):,} | {whole_s:.2f} | {tree_s:.2f} | {fast_s:.2f} | "
          f"{changed:.1%} | {differing:.3%} |", flush=True)
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
