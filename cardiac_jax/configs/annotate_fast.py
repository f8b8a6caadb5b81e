"""The annotation model at CellTypist's speed: configs/annotate.py with each cell alone (no neighbour search) and
a network of LSTM width 32 with one layer (43,959 parameters).

On the full-size simulated data (230,786 cells x 38,847 genes) it annotates in 25-29 s at 1.57 GB, CellTypist in
29 s at 7.25 GB; configs/annotate.py takes 41-48 s (benchmarks/README.md). Its labels on held-out donors are level
with the annotate config's (suite, 5 seeds: macro-F1 0.7099 against 0.7102; donor loop 0.7133 against 0.7139) and
with a per-cell logistic regression (+0.36 and +0.18 points on the means, ahead in 3 of 5 seeds and 2 of 4 runs);
the seed's larger anchored network is 0.6 points ahead of it in each run of the donor loop (docs/annotation.md).

  cardiac-jax train --config=annotate_fast --workdir=runs/annotate_fast
  cardiac-jax annotate --workdir=runs/annotate_fast --input=query.h5ad --output=annotated.h5ad
"""

from cardiac_jax.configs import annotate, default

# What makes configs/annotate.py's model this one (the suite's row 'cell-small').
FAST = {"data.sequence_mode": "cell", "model.pooling": "mean", **default.network(32, 1)}


def get_config():
  return default.override(annotate.get_config(), FAST)
