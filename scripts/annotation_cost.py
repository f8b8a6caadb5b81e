"""What each annotation model costs to apply: cells labelled per second through the one prediction path.

  python scripts/annotation_cost.py runs/annotation/runs/anchored_seed0 runs/annotation/runs/anchored-small_seed0

For each finished per-cell run: its held-out donors' cells are labelled as annotate.py labels a query (context
sequences built from those cells, the network, calibration and rules), `--rounds` times in turn with the other
runs (after one warm-up each, which compiles), and the median wall time gives cells/s, beside the network's
parameter count. Reading and writing the h5ad are left out (the same for every model); benchmarks/annotate.py
times the whole command.
"""

import sys
import time

import numpy as np
from absl import app, flags, logging

from cardiac_jax import dataset, predict
from cardiac_jax import workdir as rundir
from cardiac_jax.model import count_params

flags.DEFINE_integer("rounds", 3, "Timed rounds per run (the median is reported).")
FLAGS = flags.FLAGS


def _query(bundle):
  """(log expression [cells, genes], time indices [cells], donor codes [cells]) of the run's test cells."""
  data = dataset.prepare(bundle.config)
  cells = np.flatnonzero(data.cell_split == 2)
  times = np.empty(len(data.cell_x), np.int32)
  for sequences in data.splits.values():
    times[sequences.anchor_cells] = sequences.anchor_times
  donors = dataset.load(bundle.config)[0].obs[bundle.config.data.donor_key].astype(str)
  return data.cell_x[cells], times[cells], donors.loc[data.cell_names[cells]].to_numpy()


def main(argv):
  runs = [rundir.load(path) for path in argv[1:]]
  if not runs:
    sys.exit("usage: python scripts/annotation_cost.py WORKDIR [WORKDIR ...]")
  queries = [_query(bundle) for bundle in runs]

  def label(bundle, query):
    x, times, donors = query
    logits = predict.predict_cell_logits(bundle, x, times, donors, progress=False)
    return predict.from_logits(logits, bundle.calibration, bundle.classes, predict.default_rule(bundle))

  for bundle, query in zip(runs, queries):
    label(bundle, query)  # compiles
  seconds = {i: [] for i in range(len(runs))}
  for _ in range(FLAGS.rounds):
    for i, (bundle, query) in enumerate(zip(runs, queries)):
      started = time.perf_counter()
      label(bundle, query)
      seconds[i].append(time.perf_counter() - started)
  print("| run | parameters | cells | median seconds | cells/s |\n|---|---|---|---|---|")
  for i, bundle in enumerate(runs):
    median = float(np.median(seconds[i]))
    n = len(queries[i][0])
    print(f"| {bundle.workdir.name} | {count_params(bundle.params):,} | {n:,} | {median:.2f} | {n / median:,.0f} |")


if __name__ == "__main__":
  logging.set_verbosity(logging.WARNING)
  app.run(main)
