"""Annotating GSE175634 at full size end to end: cardiac_jax's annotate.py against CellTypist on the same h5ad.

  python benchmarks/annotate.py [--cells 230786] [--genes 38847] [--cache-dir ~/.cache/cardiac_jax]

Setup, done once and kept in the cache (each step in its own process under `/usr/bin/time -v`, reported but
not part of the comparison):
  simulate          the simulated GSE175634 at the given size (counts only; about 15 minutes at full size)
  query             that GEO folder read once (readers.read_geo) and written as an unlabelled query.h5ad: X the
                    raw counts (CSR float32), obs 'diffday', 'individual', ... without the label column 'type'
  training data     the built-in simulated data with --train-cells cells (20,000) and the query's genes (the same
                    seed, donors and signal, so the same cell types; at full size the first 4,000 genes carry only
                    a quarter of a cell's counts, so a model fitted on the default 4,000-gene data would see every
                    normalised value about 4x too small)
  cardiac_jax model a short training run of the annotation model on it: train.py --config=configs/annotate.py
                    --config.train.num_epochs=2 --config.sim.n_cells=20000 --config.sim.n_genes=<genes>
  celltypist model  celltypist.train on all its cells with at least one count, normalised as CellTypist asks
                    (normalize_total to 1e4, log1p), labels 'type', feature_selection=True with top_genes=300 (the
                    recipe of CellTypist's tutorial for a custom model), its defaults otherwise; Model.write

Everything setup makes lives in <cache-dir>/annotate_benchmark/ and is reused as it is; the cardiac_jax model's
folder is named by a hash of configs/annotate.py's settings and any --model-override, so a changed recipe trains
its own.

Timed, each in its own process under `/usr/bin/time -v` (wall time, peak resident memory), both reading
query.h5ad and writing an annotated .h5ad:
  cardiac_jax       python annotate.py --workdir=<model> --input=query.h5ad --output=<tmp>.h5ad: X read in row
                    blocks from disk, the model's 200 genes normalised and the novelty score in the same pass,
                    prediction in chunks, a byte copy of the input written with the annotation added
  celltypist        as CellTypist's documentation does it: anndata.read_h5ad, sc.pp.normalize_total(target_sum=
                    1e4), sc.pp.log1p, celltypist.annotate(adata, model=<Model>, majority_voting=False),
                    predictions.to_adata().write_h5ad(<tmp>.h5ad)
  stages            (not in the default --steps) annotate.py's library call, annotation.annotate_file, with the
                    functions it calls wrapped to add up their seconds and note the peak memory so far: where the
                    time and memory go; then prediction alone at other batch sizes, and the context, sequences
                    and prediction again with and without the next chunk's sequences built while one is predicted

After the timed steps (not timed) each output's labels are compared with the simulation's true types, to show
both annotated something sensible; the outputs are then deleted. Prints a markdown table and writes every
number, the machine and its load to a JSON file (--json; default beside query.h5ad).
"""

import argparse
import datetime
import hashlib
import inspect
import json
import os
import pathlib
import platform
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

FULL_CELLS = 230_786
FULL_GENES = 38_847
CELLTYPIST_LABEL = "predicted_labels"


def peak_gb():
  """Peak resident memory of this process so far (GB)."""
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


class Stages:
  """Wall seconds and peak memory so far after each named stage, printed as it goes."""

  def __init__(self):
    self.start = self.last = time.perf_counter()
    self.rows = []

  def __call__(self, name):
    now = time.perf_counter()
    self.rows.append({"stage": name, "seconds": round(now - self.last, 2), "peak_gb_so_far": round(peak_gb(), 3)})
    print(f"    {name}: {now - self.last:.1f} s, peak so far {peak_gb():.2f} GB", file=sys.stderr, flush=True)
    self.last = now


def paths(args):
  """The benchmark's files in the cache: GEO folder's key, query.h5ad, the two models, the JSON."""
  bench = pathlib.Path(args.cache_dir).expanduser() / "annotate_benchmark"
  size = bench / f"c{args.cells}_g{args.genes}"
  return {
      "bench": bench,
      "query": size / "query.h5ad",
      "model": bench / f"cardiac_jax_annotate_{recipe(args)}_c{args.train_cells}_g{args.genes}_e{args.epochs}",
      "celltypist": bench / f"celltypist_c{args.train_cells}_g{args.genes}_top{args.top_genes}.pkl",
      "json": pathlib.Path(args.json) if args.json else size / "results.json",
  }


def model_overrides(args):
  """{config key: value as given} of each --model-override key=value (another model than configs/annotate.py's)."""
  return dict(item.split("=", 1) for item in args.model_override)


def recipe(args):
  """A short hash of configs/annotate.py's settings and --model-override: a changed recipe trains its own model."""
  from cardiac_jax.configs import annotate

  text = json.dumps([annotate.ANNOTATE, model_overrides(args)], sort_keys=True, default=str)
  return hashlib.sha256(text.encode()).hexdigest()[:8]


def training_overrides(args):
  """The settings that make configs/annotate.py train on the benchmark's training data: the built-in simulated
  data with --train-cells cells and the query's genes (the same 19 donors, seed and signal)."""
  return {"data.cache_dir": args.cache_dir, "sim.n_cells": args.train_cells, "sim.n_genes": args.genes}


def training_config(args):
  """configs/annotate.py with `training_overrides`: its simulated data are both models' training data."""
  from cardiac_jax.configs import annotate, default

  return default.override(annotate.get_config(), training_overrides(args))


# ---- steps, each run in its own process (--step) ----


def step_query(args, geo_dir):
  """The GEO folder -> an unlabelled query.h5ad (setup)."""
  from cardiac_jax import readers
  from cardiac_jax.integrity import write_atomic

  stages = Stages()
  adata = readers.read_geo(geo_dir)
  stages("read_geo")
  adata.obs = adata.obs.drop(columns=["type"])
  target = paths(args)["query"]
  target.parent.mkdir(parents=True, exist_ok=True)
  write_atomic(target, lambda tmp: adata.write_h5ad(tmp))
  stages("write_h5ad")
  return {"cells": adata.n_obs, "genes": adata.n_vars, "entries": int(adata.X.nnz),
          "bytes": target.stat().st_size, "obs": list(adata.obs.columns), "stages": stages.rows}


def step_celltypist_model(args):
  """celltypist.train on the training data, normalised as CellTypist asks, with the feature selection of
  CellTypist's tutorial for custom models (setup)."""
  import celltypist
  import scanpy as sc

  from cardiac_jax import dataset, readers

  geo_dir, _ = dataset.simulated(training_config(args))
  adata = readers.read_geo(geo_dir)
  adata = adata[adata.X.sum(axis=1).A1 > 0].copy()  # cells with no counts cannot be normalised
  sc.pp.normalize_total(adata, target_sum=1e4)
  sc.pp.log1p(adata)
  started = time.perf_counter()
  model = celltypist.train(adata, labels="type", n_jobs=os.cpu_count(), feature_selection=True,
                           top_genes=args.top_genes)
  target = paths(args)["celltypist"]
  info = {"cells": adata.n_obs, "genes": adata.n_vars, "model_genes": len(model.features),
          "train_seconds": round(time.perf_counter() - started, 1), "path": str(target)}
  target.with_suffix(".json").write_text(json.dumps(info))
  model.write(str(target))
  return info


def step_celltypist(args, output):
  """CellTypist end to end, as its documentation does it (timed)."""
  stages = Stages()
  import anndata
  import celltypist
  import scanpy as sc
  from celltypist import models

  stages("import")
  adata = anndata.read_h5ad(paths(args)["query"])
  stages("read_h5ad")
  sc.pp.normalize_total(adata, target_sum=1e4)
  sc.pp.log1p(adata)
  stages("normalize_total + log1p")
  model = models.Model.load(str(paths(args)["celltypist"]))  # a path with '/': never a download
  predictions = celltypist.annotate(adata, model=model, majority_voting=False)
  stages("celltypist.annotate")
  annotated = predictions.to_adata()
  annotated.write_h5ad(output)
  stages("to_adata + write_h5ad")
  counts = annotated.obs[CELLTYPIST_LABEL].value_counts()
  return {"cells": int(annotated.n_obs), "labels": {k: int(v) for k, v in counts.items()}, "stages": stages.rows}


def step_stages(args, output):
  """cardiac_jax's annotate_file as annotate.py runs it, with its steps timed from outside: the functions it
  calls are wrapped (the wrappers add up the seconds of each, and the peak memory so far when it returns), so
  this is the library's own path. Then prediction alone at other batch sizes, on the first chunk's sequences."""
  import dataclasses

  import jax
  import numpy as np

  started = time.perf_counter()
  from cardiac_jax import annotation, novelty, predict, preprocess, readers, workdir

  import_seconds = time.perf_counter() - started
  timings, kept = {}, {}

  def timed(owner, name, label, keep=False, block_first=False):
    original = getattr(owner, name, None)
    if original is None:  # the library changed; leave that stage out
      return

    def wrapper(*a, **k):
      t0 = time.perf_counter()
      try:
        result = original(*a, **k)
        if block_first and label not in timings:
          jax.block_until_ready(result)
        return result
      finally:
        row = timings.setdefault(label, {"calls": 0, "seconds": 0.0})
        row["calls"] += 1
        row["seconds"] += time.perf_counter() - t0
        row["peak_gb_so_far"] = round(peak_gb(), 3)
        if keep and label not in kept:
          kept[label] = result

    setattr(owner, name, wrapper)

  def timed_predict_fn(make):
    def wrapper(apply_fn, data_parallel=None):
      fn = make(apply_fn, data_parallel)
      first = []

      def call(params, batch):
        if first:
          return fn(params, batch)
        t0 = time.perf_counter()
        first.append(jax.block_until_ready(fn(params, batch)))
        timings["  of which compile + first batch"] = {"calls": 1, "seconds": time.perf_counter() - t0,
                                            "peak_gb_so_far": round(peak_gb(), 3)}
        return first[0]

      return call

    return wrapper

  timed(workdir, "load", "load the model (restore the checkpoint)")
  timed(readers, "read_h5ad", "open the h5ad backed (obs, var)")
  timed(preprocess.Preprocessing, "transform", "transform (X in row blocks -> [cells, 200] log expression, and the "
        "novelty score in the same pass)")
  timed(novelty.Novelty, "score_block", "  of which the novelty score (2,000 genes, PCA, nearest reference cells)")
  timed(predict, "query_context", "find each cell's context (embed, nearest neighbours per donor and day)")
  timed(predict, "query_sequences", "build sequences from the context", keep=True)
  timed(predict, "predict_logits", "predict (batches of predict.QUERY_BATCH)")
  predict.make_predict_fn = timed_predict_fn(predict.make_predict_fn)
  timed(annotation, "_write_annotated_copy", "write (byte copy of the input + annotation)")
  cell_logits, calls = predict.predict_cell_logits, []
  predict.predict_cell_logits = lambda *a, **k: calls.append((a, k)) or cell_logits(*a, **k)
  result, seconds = annotation.annotate_file(paths(args)["model"], paths(args)["query"], output, progress=False)
  rows = [{"stage": "import cardiac_jax", "seconds": round(import_seconds, 2), "calls": 1}]
  order = ["load the model", "open the h5ad", "transform", "  of which the novelty", "find", "build", "predict",
           "  of which compile", "write"]
  rank = lambda label: next((i for i, start in enumerate(order) if label.startswith(start)), len(order))
  rows += [{"stage": label, **timings[label], "seconds": round(timings[label]["seconds"], 2)}
           for label in sorted(timings, key=rank)]
  accounted = sum(row["seconds"] for label, row in timings.items()
                  if not label.startswith("  "))
  rows.append({"stage": "the rest of annotate_file", "seconds": round(seconds - accounted, 2), "calls": 1})
  for row in rows:
    print(f"    {row['stage']}: {row['seconds']:.1f} s ({row['calls']} calls), peak so far "
          f"{row.get('peak_gb_so_far', 0):.2f} GB", file=sys.stderr, flush=True)

  # Prediction alone at other batch sizes (one warm-up call compiles each); logits against the training batch's.
  bundle = workdir.load(paths(args)["model"])
  first = kept["build sequences from the context"]
  rates, logits = {}, {}
  for batch in sorted({bundle.batch_size, 256, 1024, 4096}):
    other = dataclasses.replace(bundle, record={**bundle.record, "batch_size": batch})
    fn = predict.make_predict_fn(bundle.apply_fn)
    predict.predict_logits(other, first.take(np.arange(min(batch, len(first)))), fn)
    t0 = time.perf_counter()
    logits[batch] = predict.predict_logits(other, first, fn)
    rates[batch] = round(len(first) / (time.perf_counter() - t0), 1)
    print(f"    predict at batch {batch}: {rates[batch]:,.0f} sequences/s", file=sys.stderr, flush=True)
  differences = {b: float(np.abs(v - logits[bundle.batch_size]).max()) for b, v in logits.items()}

  # Context, sequences and prediction of the whole query again, building the next chunk's sequences while XLA
  # predicts one (predict.PREFETCH 1) or not (0), alternating, two rounds.
  (args_, kwargs), = calls
  overlap = {0: [], 1: []}
  for _ in range(2):
    for prefetch in overlap:
      predict.PREFETCH = prefetch
      t0 = time.perf_counter()
      call = inspect.signature(cell_logits).bind(*args_, **kwargs)
      call.arguments["progress"] = False
      cell_logits(*call.args, **call.kwargs)
      overlap[prefetch].append(round(time.perf_counter() - t0, 2))
      print(f"    context, sequences and prediction, {prefetch} chunk(s) built ahead: {overlap[prefetch][-1]:.1f} s",
            file=sys.stderr, flush=True)
  return {"cells": len(result.labels), "annotate_file_seconds": round(seconds, 2), "stages": rows,
          "sequences_per_s_by_batch": rates, "max_abs_logit_difference_by_batch": differences,
          "training_batch_size": bundle.batch_size, "seconds_by_chunks_built_ahead": overlap}


# ---- the parent process ----


def measured(command, env=None):
  """Runs command under /usr/bin/time -v. Returns a dict: seconds, peak_gb, returncode, outcome (the last line
  of stdout, or how it failed), stdout, stderr tail, and the load average before and after."""
  load_before = os.getloadavg()
  out = subprocess.run(["/usr/bin/time", "-v", *command], capture_output=True, text=True, env=env, cwd=ROOT)
  wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): (\S+)", out.stderr).group(1)
  seconds = sum(float(part) * 60**i for i, part in enumerate(reversed(wall.split(":"))))
  peak_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", out.stderr).group(1))
  own = out.stderr[: out.stderr.rfind("\tCommand being timed")].strip()  # the command's stderr, without time's
  if out.returncode:
    killed = re.search(r"Command terminated by signal (\d+)", out.stderr)
    outcome = f"killed by signal {killed.group(1)}" if killed else f"failed: {own.splitlines()[-1] if own else '?'}"
  else:
    outcome = out.stdout.strip().splitlines()[-1] if out.stdout.strip() else ""
  return {"seconds": seconds, "peak_gb": peak_kb / 1024**2, "returncode": out.returncode, "outcome": outcome,
          "stdout": out.stdout, "stderr_tail": own[-4000:], "load_before": load_before, "load_after": os.getloadavg()}


def machine():
  lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
  model = re.search(r"Model name:\s*(.+)", lscpu)
  mem = re.search(r"MemTotal:\s*(\d+) kB", pathlib.Path("/proc/meminfo").read_text())
  return {"nproc": os.cpu_count(), "cpu": model.group(1).strip() if model else platform.processor(),
          "memory_gb": round(int(mem.group(1)) / 1024**2, 1), "python": platform.python_version()}


def code_version():
  """The commit this runs, and whether cardiac_jax's code or annotate.py differ from it."""
  def git(*command):
    return subprocess.run(["git", *command], capture_output=True, text=True, cwd=ROOT).stdout.strip()

  changed = git("status", "--porcelain", "--", "cardiac_jax", "annotate.py", "configs")
  return {"commit": git("rev-parse", "--short", "HEAD"), "uncommitted_changes": changed.splitlines()}


def others():
  """Other processes using the CPU now (the machine may be shared): 'pid %cpu rss_mb command' lines."""
  ps = subprocess.run(["ps", "-eo", "pid,ppid,pcpu,rss,args", "--sort=-pcpu"], capture_output=True, text=True).stdout
  mine = {os.getpid()}
  rows = []
  for line in ps.splitlines()[1:]:
    pid, ppid, cpu, rss, cmd = line.split(None, 4)
    if int(ppid) in mine or int(pid) in mine:
      mine.add(int(pid))
      continue
    if float(cpu) >= 5:
      rows.append(f"{pid} {cpu}% {int(rss) // 1024} MB {cmd[:120]}")
  return rows


def agreement(path, key, truth):
  """{'labels': fraction of cells whose label in `path`'s obs[key] equals the simulation's type ('Unassigned'
  counts as wrong), and for cardiac_jax 'top_class': the same for the most probable class, no threshold}."""
  import anndata
  import h5py
  import numpy as np

  with h5py.File(path, "r") as f:
    labels = np.asarray(anndata.io.read_elem(f["obs"])[key]).astype(str)
    out = {"labels": float((labels == truth).mean())}
    if "cardiac_jax_probabilities" in f.get("obsm", {}):
      classes = np.asarray(anndata.io.read_elem(f["uns"]["cardiac_jax"])["classes"]).astype(str)
      top = classes[np.asarray(f["obsm"]["cardiac_jax_probabilities"]).argmax(1)]
      out["top_class"] = float((top == truth).mean())
  return out


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--cells", type=int, default=FULL_CELLS)
  parser.add_argument("--genes", type=int, default=FULL_GENES)
  parser.add_argument("--cache-dir", default="~/.cache/cardiac_jax")
  parser.add_argument("--steps", default="cardiac_jax,celltypist", help="which of cardiac_jax,celltypist,stages")
  parser.add_argument("--train-cells", type=int, default=20_000, help="cells of the simulated training data (setup)")
  parser.add_argument("--epochs", type=int, default=2, help="training epochs of the cardiac_jax model (setup)")
  parser.add_argument("--top-genes", type=int, default=300, help="CellTypist's feature selection: genes per type")
  parser.add_argument("--rounds", type=int, default=1, help="times each timed step is run, alternating")
  parser.add_argument("--model-override", action="append", default=[], help="key=value: a config setting of the "
                      "cardiac_jax model beside configs/annotate.py's, e.g. model.hidden_dim=64 (repeatable; setup "
                      "trains that model)")
  parser.add_argument("--json", help="where to write the results (default: results.json beside query.h5ad)")
  parser.add_argument("--step", choices=("query", "celltypist_model", "celltypist", "stages"), help=argparse.SUPPRESS)
  parser.add_argument("--geo-dir", help=argparse.SUPPRESS)
  parser.add_argument("--output", help=argparse.SUPPRESS)
  args = parser.parse_args()
  files = paths(args)

  if args.step:  # one measured step, in its own process; its result is the last stdout line
    if args.step == "query":
      result = step_query(args, pathlib.Path(args.geo_dir))
    elif args.step == "celltypist_model":
      result = step_celltypist_model(args)
    elif args.step == "celltypist":
      result = step_celltypist(args, args.output)
    else:
      result = step_stages(args, args.output)
    print(json.dumps(result))
    return

  import numpy as np
  import pandas as pd

  from cardiac_jax import readers, simulate

  results = {"date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"), "machine": machine(),
             "other_processes_at_start": others(), "code": code_version(), "cells": args.cells, "genes": args.genes, "setup": {}, "runs": []}
  print(f"{results['machine']}; other processes at start: {results['other_processes_at_start'] or 'none'}")
  base = [sys.executable, __file__, "--cells", str(args.cells), "--genes", str(args.genes),
          "--cache-dir", args.cache_dir, "--train-cells", str(args.train_cells), "--epochs", str(args.epochs),
          "--top-genes", str(args.top_genes)] + [f"--model-override={item}" for item in args.model_override]

  # ---- setup (measured, reported, not compared) ----
  sim_args = dict(n_cells=args.cells, n_genes=args.genes, n_donors=19, n_spots=4000, n_spot_genes=2000, seed=0,
                  signal=0.5, sctransform=False)
  start = time.perf_counter()
  geo_dir, _ = simulate.ensure_simulated(args.cache_dir, **sim_args)
  print(f"simulated data in {geo_dir} ({time.perf_counter() - start:.0f} s, 0 if cached)", flush=True)

  def setup(name, command, done):
    if done():
      print(f"  setup {name}: found in the cache", flush=True)
      return
    run = measured(command)
    if run["returncode"] or not done():
      sys.exit(f"setup {name} failed: {run['outcome']}\n{run['stderr_tail']}")
    results["setup"][name] = {k: run[k] for k in ("seconds", "peak_gb", "outcome")}
    print(f"  setup {name}: {run['seconds']:.0f} s, peak {run['peak_gb']:.2f} GB: {run['outcome'][:300]}", flush=True)

  files["bench"].mkdir(parents=True, exist_ok=True)
  setup("query.h5ad", base + ["--step", "query", "--geo-dir", str(geo_dir)], files["query"].exists)
  train = [sys.executable, "train.py", "--config=configs/annotate.py", f"--workdir={files['model']}",
           f"--config.train.num_epochs={args.epochs}"]
  overrides = {**model_overrides(args), **training_overrides(args)}
  train += [f"--config.{key}={value}" for key, value in overrides.items()]
  results["cardiac_jax_train_command"] = " ".join(train[1:])
  setup("cardiac_jax model", train, (files["model"] / "results.json").exists)
  setup("celltypist model", base + ["--step", "celltypist_model"], files["celltypist"].exists)
  size_gb = files["query"].stat().st_size / 1e9
  print(f"query: {files['query']} ({size_gb:.2f} GB); models: {files['model']}, {files['celltypist']}", flush=True)
  results.update(query=str(files["query"]), query_gb=round(size_gb, 2), cardiac_jax_model=str(files["model"]),
                 celltypist_model=str(files["celltypist"]))
  cardiac_results = json.loads((files["model"] / "results.json").read_text())
  results["cardiac_jax_model_test_accuracy"] = cardiac_results.get("test_accuracy")
  results["cardiac_jax_model_genes"] = len(json.loads((files["model"] / "preprocessing.json").read_text())["genes"])
  results["celltypist_model"] = json.loads(files["celltypist"].with_suffix(".json").read_text())
  print(f"cardiac_jax model: test accuracy {results['cardiac_jax_model_test_accuracy']:.4f} (per cell, held-out "
        f"donors), {results['cardiac_jax_model_genes']} genes; CellTypist model: "
        f"{results['celltypist_model']['model_genes']} genes", flush=True)

  # ---- the timed steps ----
  truth = pd.read_csv(geo_dir / readers.GEO_METADATA, sep="\t", usecols=["type"], dtype=str)["type"].to_numpy()
  env = dict(os.environ)
  scratch = pathlib.Path(tempfile.mkdtemp(prefix="annotate_benchmark_", dir=files["bench"]))
  env["CELLTYPIST_FOLDER"] = str(scratch / "celltypist_folder")  # CellTypist never touches ~/.celltypist
  commands = {
      "cardiac_jax": lambda out: [sys.executable, "annotate.py", f"--workdir={files['model']}",
                                  f"--input={files['query']}", f"--output={out}"],
      "celltypist": lambda out: base + ["--step", "celltypist", "--output", str(out)],
      "stages": lambda out: base + ["--step", "stages", "--output", str(out)],
  }
  label_keys = {"cardiac_jax": "cardiac_jax_label", "celltypist": CELLTYPIST_LABEL, "stages": "cardiac_jax_label"}
  try:
    for round_ in range(args.rounds):
      for step in args.steps.split(","):
        if step == "stages" and round_:
          continue  # the profile runs once
        output = scratch / f"{step}.h5ad"
        run = measured(commands[step](output), env=env)
        row = {"step": step, "round": round_, **{k: run[k] for k in ("seconds", "peak_gb", "returncode", "outcome",
                                                                        "load_before", "load_after")}}
        row["cells_per_s"] = args.cells / run["seconds"]
        if step == "cardiac_jax":  # annotate.py's one-line summary (absl log, stderr)
          summary = [line for line in run["stderr_tail"].splitlines() if "annotated " in line]
          row["outcome"] = summary[-1].split("] ", 1)[-1] if summary else run["outcome"]
        elif not run["returncode"]:
          row["detail"] = json.loads(run["outcome"])
          row["outcome"] = f"{row['detail']['cells']:,} cells annotated"
        if not run["returncode"] and output.exists():
          row["output_gb"] = round(output.stat().st_size / 1e9, 2)
          row["agreement_with_simulated_types"] = agreement(output, label_keys[step], truth)
          output.unlink()
        else:
          row["stderr_tail"] = run["stderr_tail"]
        results["runs"].append(row)
        print(f"  {step}: {run['seconds']:.1f} s, {row['cells_per_s']:,.0f} cells/s, peak {run['peak_gb']:.2f} GB, "
              f"load {run['load_before'][0]:.2f} -> {run['load_after'][0]:.2f}: {row['outcome'][:200]}", flush=True)
        for stage in row.get("detail", {}).get("stages", []):
          calls = f", {stage['calls']} calls" if stage.get("calls", 1) > 1 else ""
          peak = f", peak so far {stage['peak_gb_so_far']:.2f} GB" if "peak_gb_so_far" in stage else ""
          print(f"      {stage['stage']}: {stage['seconds']} s{calls}{peak}")
        if row.get("detail", {}).get("sequences_per_s_by_batch"):
          print(f"      prediction alone, sequences/s by batch size: {row['detail']['sequences_per_s_by_batch']}")
        if row.get("detail", {}).get("seconds_by_chunks_built_ahead"):
          print(f"      context, sequences and prediction, s by chunks built ahead: "
                f"{row['detail']['seconds_by_chunks_built_ahead']}")
  finally:
    shutil.rmtree(scratch, ignore_errors=True)
  results["other_processes_at_end"] = others()

  # ---- the table ----
  best = {}
  for row in results["runs"]:
    if not row["returncode"] and row["step"] in ("cardiac_jax", "celltypist"):
      best[row["step"]] = min(best.get(row["step"], np.inf), row["seconds"])
  if len(best) == 2:
    results["speedup_cardiac_jax_over_celltypist"] = best["celltypist"] / best["cardiac_jax"]
  print()
  print(f"{args.cells:,} cells x {args.genes:,} genes, query.h5ad {size_gb:.2f} GB; {results['machine']['nproc']} cores "
        f"({results['machine']['cpu']}), {results['machine']['memory_gb']} GB")
  print()
  print("| annotation, end to end | wall time | cells/s | peak resident memory | agreement with simulated types | outcome |")
  print("|---|---|---|---|---|---|")
  for row in results["runs"]:
    agree = row.get("agreement_with_simulated_types", {})
    accuracy = (f"{agree['labels']:.4f}" + (f" ({agree['top_class']:.4f} top class)" if "top_class" in agree else "")
                if agree else "")
    print(f"| {row['step']} | {row['seconds']:.0f} s | {row['cells_per_s']:,.0f} | {row['peak_gb']:.2f} GB | {accuracy} "
          f"| {row['outcome'][:160]} |")
  if "speedup_cardiac_jax_over_celltypist" in results:
    print(f"\nCellTypist / cardiac_jax wall time: {results['speedup_cardiac_jax_over_celltypist']:.2f}x")
  files["json"].parent.mkdir(parents=True, exist_ok=True)
  files["json"].write_text(json.dumps(results, indent=2, default=float))
  print(f"results: {files['json']}")


if __name__ == "__main__":
  main()
