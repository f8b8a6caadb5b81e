"""How the anchored context's neighbour search grows with the cells of a donor: the brute force annotate uses
(`sequences.nearest`) against scikit-learn's exact trees, on the built-in data's context embedding.

  python benchmarks/neighbours.py --copies=1,2,4

The annotate config's cells (all splits) in their context space (the training cells' PCA, 20 components) are
repeated `copies` times, each copy moved by N(0, 1e-3) noise so that no two points tie, as a donor's cells grow.
The pool of one day (day 7) is searched for the 5 nearest of every cell of the other days, as
`sequences.anchored_sequences` does for each donor and day. Prints the wall time of each method and whether
the trees find the same neighbour sets as the brute force.
"""

import time

import numpy as np
from absl import app, flags, logging
from sklearn.neighbors import BallTree, KDTree

from cardiac_jax import configs, dataset
from cardiac_jax.sequences import nearest

flags.DEFINE_list("copies", ["1", "2", "4"], "How many times the cells are repeated.")
flags.DEFINE_integer("k", 5, "Neighbours per cell (the annotate config's data.context_k).")
FLAGS = flags.FLAGS
POOL_DAY = 4  # day 7, the middle of the time course


def main(argv):
  del argv
  data = dataset.prepare(configs.get("annotate"))
  embedding = data.preprocessing.embed(data.cell_x)
  times = np.zeros(len(embedding), np.int32)
  for sequences in data.splits.values():
    times[sequences.anchor_cells] = sequences.anchor_times
  rng = np.random.default_rng(0)
  print("| copies | pool cells | query cells | brute force s | KDTree s | BallTree s | same neighbour sets |")
  print("|---|---|---|---|---|---|---|")
  for copies in map(int, FLAGS.copies):
    points = np.repeat(embedding, copies, 0)
    points += rng.normal(scale=1e-3, size=points.shape).astype(np.float32)
    days = np.repeat(times, copies)
    pool, query = points[days == POOL_DAY], points[days != POOL_DAY]
    seconds, found = {}, {}
    for name, search in (("brute", lambda: nearest(query, pool, FLAGS.k)),
                         ("kd", lambda: KDTree(pool).query(query, k=FLAGS.k)[1]),
                         ("ball", lambda: BallTree(pool).query(query, k=FLAGS.k)[1])):
      started = time.perf_counter()
      found[name] = np.sort(search(), 1)
      seconds[name] = time.perf_counter() - started
    same = all(np.array_equal(found["brute"], found[name]) for name in ("kd", "ball"))
    print(f"| {copies} | {len(pool):,} | {len(query):,} | {seconds['brute']:.2f} | {seconds['kd']:.2f} | "
          f"{seconds['ball']:.2f} | {'yes' if same else 'no'} |", flush=True)


if __name__ == "__main__":
  logging.set_verbosity(logging.WARNING)
  app.run(main)
