"""The data layer at GSE175634's full size: cardiac_jax's preparation against plain scanpy, and the prepared cache.

  python benchmarks/data_layer.py [--cells 230786] [--genes 38847] [--scale large]

Writes the simulated GSE175634 at the given size once into the cache (counts only; about 15 minutes and
2 GB at full size), then times, each in its own process under `/usr/bin/time -v` (wall time, peak
resident memory):
  cardiac_jax   dataset.prepare for the scale's config: read_geo (chunked MatrixMarket reader), quality
                control, normalisation, 200 highly variable genes on training cells, the scale's sequences
  scanpy        the same steps the plain way: sc.read_mtx, sc.pp.highly_variable_genes (seurat_v3, training
                cells), sc.pp.normalize_total, sc.pp.log1p, then the same sequence builder
  cached        dataset.prepare again with data.reuse_prepared: the first call fills the cache (not timed),
                the timed second call reads it back
Simulated Visium spots are left out: they are the same 4,000 spots at every size.
"""

import argparse
import json
import pathlib
import re
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

FULL_CELLS = 230_786
FULL_GENES = 38_847


def config_for(args, geo_dir, reuse):
  from cardiac_jax.configs import default

  config = default.with_scale(default.get_config(), args.scale)
  config.data.source = "geo"
  config.data.path = str(geo_dir)
  config.data.n_spatial = 0
  config.data.reuse_prepared = reuse
  config.data.cache_dir = args.cache_dir
  return config


def step_cardiac_jax(args, geo_dir, reuse):
  from cardiac_jax import dataset

  data = dataset.prepare(config_for(args, geo_dir, reuse))
  return {"sequences": {name: len(s) for name, s in data.splits.items()}, "genes": len(data.genes)}


def step_scanpy(args, geo_dir):
  """The plain scanpy way, with the same split and sequence builder as cardiac_jax."""
  import anndata
  import numpy as np
  import pandas as pd
  import scanpy as sc

  from cardiac_jax import readers, sequences, split

  config = config_for(args, geo_dir, False)
  adata = sc.read_mtx(geo_dir / readers.GEO_MATRICES["counts"][0]).T  # genes x cells -> cells x genes
  meta = pd.read_csv(geo_dir / readers.GEO_METADATA, sep="\t", dtype=str)
  adata = anndata.AnnData(adata.X.tocsr(), obs=meta)
  labels_enc = sequences.LabelEncoding.fit(adata.obs["type"])
  labels = labels_enc.encode(adata.obs["type"])
  times = np.array([config.data.time_order.index(t) for t in adata.obs["diffday"]], np.int32)
  cell_split = split.split_cells(labels, adata.obs["individual"].to_numpy(), unit=config.split.unit,
                                 fractions=tuple(config.split.fractions), seed=config.seed,
                                 classes=labels_enc.classes, path=str(geo_dir))
  hvg = sc.pp.highly_variable_genes(adata[cell_split == 0], flavor="seurat_v3", n_top_genes=config.data.n_genes,
                                    inplace=False)
  sc.pp.normalize_total(adata, target_sum=config.data.target_sum)
  sc.pp.log1p(adata)
  x = adata[:, hvg["highly_variable"].to_numpy()].X.toarray().astype(np.float32)
  rng = np.random.default_rng([config.seed, 2])
  sizes = split.split_sizes(config.data.n_per_type, tuple(config.split.fractions))
  parts = [sequences.temporal_sequences(x, labels, times, np.flatnonzero(cell_split == s), n_per_class=int(sizes[s]),
                                        n_classes=len(labels_enc.classes), max_len=config.data.max_len, rng=rng)
           for s in range(3)]
  return {"sequences": dict(zip(split.SPLITS, (len(p) for p in parts))), "genes": int(x.shape[1])}


def measured(command):
  """Runs command under /usr/bin/time -v.

  Returns:
    (wall seconds, peak RSS GB, outcome): the command's last stdout line, or how it failed (e.g. killed by the
    kernel when memory ran out).
  """
  out = subprocess.run(["/usr/bin/time", "-v", *command], capture_output=True, text=True)
  wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): (\S+)", out.stderr).group(1)
  seconds = sum(float(part) * 60**i for i, part in enumerate(reversed(wall.split(":"))))
  peak_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", out.stderr).group(1))
  if out.returncode:
    killed = re.search(r"Command terminated by signal (\d+)", out.stderr)
    outcome = f"killed by signal {killed.group(1)}" if killed else f"failed: {out.stderr.strip().splitlines()[-1]}"
  else:
    outcome = out.stdout.strip().splitlines()[-1]
  return seconds, peak_kb / 1024**2, outcome


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--cells", type=int, default=FULL_CELLS)
  parser.add_argument("--genes", type=int, default=FULL_GENES)
  parser.add_argument("--scale", default="large", choices=("base", "medium", "large"))
  parser.add_argument("--cache-dir", default="~/.cache/cardiac_jax")
  parser.add_argument("--steps", default="cardiac_jax,scanpy,cached", help="which of cardiac_jax,scanpy,cached to run")
  parser.add_argument("--step", choices=("cardiac_jax", "scanpy", "cached"), help=argparse.SUPPRESS)
  parser.add_argument("--geo-dir", help=argparse.SUPPRESS)
  args = parser.parse_args()

  if args.step:  # one measured step, in its own process
    geo_dir = pathlib.Path(args.geo_dir)
    if args.step == "scanpy":
      result = step_scanpy(args, geo_dir)
    else:
      result = step_cardiac_jax(args, geo_dir, reuse=args.step == "cached")
    print(json.dumps(result))
    return

  from cardiac_jax import simulate

  start = time.perf_counter()
  geo_dir, _ = simulate.ensure_simulated(args.cache_dir, n_cells=args.cells, n_genes=args.genes, n_donors=19,
                                         n_spots=4000, n_spot_genes=2000, seed=0, signal=0.5, sctransform=False)
  print(f"simulated data in {geo_dir} ({time.perf_counter() - start:.0f} s, 0 if cached)", flush=True)
  matrix = geo_dir / "GSE175634_cell_counts.mtx.gz"
  print(f"{args.cells:,} cells x {args.genes:,} genes, {matrix.stat().st_size / 1e9:.2f} GB gzipped MatrixMarket")

  base = [sys.executable, __file__, "--cells", str(args.cells), "--genes", str(args.genes), "--scale", args.scale,
          "--cache-dir", args.cache_dir, "--geo-dir", str(geo_dir)]
  rows = []
  steps = args.steps.split(",")
  for step in ("cardiac_jax", "scanpy"):
    if step in steps:
      seconds, peak, outcome = measured(base + ["--step", step])
      rows.append((step, seconds, peak, outcome))
      print(f"  {step}: {seconds:.0f} s, peak {peak:.2f} GB: {outcome}", flush=True)
  if "cached" in steps:
    measured(base + ["--step", "cached"])  # fills the cache (or finds it filled)
    seconds, peak, outcome = measured(base + ["--step", "cached"])
    rows.append(("cardiac_jax, cached", seconds, peak, outcome))
    print(f"  cached: {seconds:.0f} s, peak {peak:.2f} GB: {outcome}", flush=True)

  print()
  print(f"| preparation ({args.scale} scale) | wall time | peak resident memory | outcome |")
  print("|---|---|---|---|")
  for step, seconds, peak, outcome in rows:
    print(f"| {step} | {seconds:.0f} s | {peak:.2f} GB | {outcome} |")


if __name__ == "__main__":
  main()
