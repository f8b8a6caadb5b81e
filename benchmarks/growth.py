"""How annotate.py's wall time and memory grow with the cells: the built-in data's cells repeated to each size.

  python benchmarks/growth.py --workdir=runs/annotate [--cells=230786,1000000] [--cache-dir=/tmp/growth]

The built-in simulated data (20,000 cells x 4,000 genes, 19 donors) is read once, and for each size a query h5ad
of that many cells is written (X the raw counts as CSR float32, written in row blocks with h5py in AnnData's
on-disk layout; obs the cells' day and donor, names made unique per copy): the cells repeated as often as it
takes, so the donors stay 19 and a donor's cells grow with the size. Each query is then annotated by
`python annotate.py --workdir=<run> --input=<query> --output=<tmp>` in its own process under /usr/bin/time -v
(wall time, peak resident memory), as a user would run it. `--workdir` is a run of configs/annotate.py on the
built-in data (e.g. `python train.py --config=configs/annotate.py --workdir=runs/annotate`). Prints a markdown
table with the seconds per 100,000 cells and their ratio to the smallest size's (1.0: linear growth).
"""

import argparse
import importlib.util
import os
import pathlib
import sys

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

BLOCK = 200_000  # cells written at a time


def _benchmark_helpers():
  """benchmarks/annotate.py as a module (its `measured` and `machine`)."""
  spec = importlib.util.spec_from_file_location("annotate_benchmark", pathlib.Path(__file__).with_name("annotate.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def write_query(base, n_cells, path):
  """Writes the cells of AnnData `base` repeated to `n_cells` rows as an h5ad at `path` (through a temporary
  file and a rename)."""
  import anndata
  import anndata.io
  import h5py
  import pandas as pd

  x = base.X.tocsr().astype(np.float32)
  rows = np.arange(n_cells) % base.n_obs
  copies = np.arange(n_cells) // base.n_obs
  nnz_per_row = np.diff(x.indptr)
  indptr = np.zeros(n_cells + 1, np.int64)
  np.cumsum(nnz_per_row[rows], out=indptr[1:])
  tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
  with h5py.File(tmp, "w") as f:
    f.attrs["encoding-type"], f.attrs["encoding-version"] = "anndata", "0.1.0"
    group = f.create_group("X")
    group.attrs["encoding-type"], group.attrs["encoding-version"] = "csr_matrix", "0.1.0"
    group.attrs["shape"] = (n_cells, base.n_vars)
    data = group.create_dataset("data", (int(indptr[-1]),), np.float32)
    indices = group.create_dataset("indices", (int(indptr[-1]),), np.int32)
    group.create_dataset("indptr", data=indptr)
    for lo in range(0, n_cells, BLOCK):
      block = x[rows[lo : lo + BLOCK]]
      data[indptr[lo] : indptr[lo] + block.nnz] = block.data
      indices[indptr[lo] : indptr[lo] + block.nnz] = block.indices
    obs = pd.DataFrame({column: pd.Categorical(base.obs[column].astype(str).to_numpy()[rows])
                        for column in ("diffday", "individual")},
                       index=pd.Index(np.char.add(np.char.add(base.obs_names.to_numpy().astype(str)[rows], "-"),
                                                  copies.astype(str))))
    anndata.io.write_elem(f, "obs", obs)
    anndata.io.write_elem(f, "var", pd.DataFrame(index=base.var_names.copy()))
    for name in ("obsm", "varm", "obsp", "varp", "layers", "uns"):
      anndata.io.write_elem(f, name, {})
  os.replace(tmp, path)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--workdir", required=True, help="a run of configs/annotate.py on the built-in data")
  parser.add_argument("--cells", default="230786,1000000", help="query sizes, comma-separated")
  parser.add_argument("--cache-dir", default="/tmp/cardiac_jax_growth", help="where the queries are written")
  parser.add_argument("--rounds", type=int, default=1, help="times each size is annotated (medians reported)")
  args = parser.parse_args()
  helpers = _benchmark_helpers()

  from cardiac_jax import dataset
  from cardiac_jax import workdir as rundir

  base, _ = dataset.load(rundir.load_config(args.workdir))
  folder = pathlib.Path(args.cache_dir).expanduser()
  folder.mkdir(parents=True, exist_ok=True)
  print(f"{helpers.machine()}; base data {base.n_obs:,} cells x {base.n_vars:,} genes", flush=True)
  rows = []
  for n_cells in (int(n) for n in args.cells.split(",")):
    query = folder / f"query_{n_cells}.h5ad"
    if not query.exists():
      write_query(base, n_cells, query)
    output = folder / f"annotated_{n_cells}.h5ad"
    runs = []
    for _ in range(args.rounds):
      run = helpers.measured([sys.executable, "annotate.py", f"--workdir={args.workdir}", f"--input={query}",
                              f"--output={output}"])
      output.unlink(missing_ok=True)
      if run["returncode"]:
        sys.exit(f"annotate.py failed on {query}: {run['outcome']}\n{run['stderr_tail']}")
      runs.append(run)
    seconds = float(np.median([r["seconds"] for r in runs]))
    peak = max(r["peak_gb"] for r in runs)
    rows.append((n_cells, query.stat().st_size / 1e9, seconds, peak, runs[0]["load_before"][0]))
    print(f"  {n_cells:,} cells: {seconds:.1f} s, peak {peak:.2f} GB", flush=True)
  first = rows[0][2] / rows[0][0]
  print("\n| cells | query h5ad GB | wall s (median) | peak GB | s per 100,000 cells | per-cell time / smallest's | "
        "load at start |")
  print("|---|---|---|---|---|---|---|")
  for n_cells, size, seconds, peak, load in rows:
    print(f"| {n_cells:,} | {size:.2f} | {seconds:.1f} | {peak:.2f} | {1e5 * seconds / n_cells:.1f} | "
          f"{(seconds / n_cells) / first:.2f} | {load:.2f} |")


if __name__ == "__main__":
  main()
