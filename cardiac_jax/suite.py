"""Honest numbers in one run: the model, its ablations, the three scales and the three split units, each over
several seeds and beside baselines fitted on the very same sequences.

Within a seed, every method of a data setting (scale x split unit) sees identical splits and sequences:
`dataset.prepare` is deterministic given the config, and ablations change only the model or the loss.
Each training run has its own workdir under the suite's, so an interrupted suite resumes: finished runs are
read back from their results.json.

Writes <workdir>/results.json (every run), results.md (the table) and results.png (accuracy with spread).
"""

import json
import pathlib
import time

import matplotlib.pyplot as plt
import numpy as np
from absl import logging

from cardiac_jax import baselines, dataset, metrics, train
from cardiac_jax.errors import ConfigError

# Model rows: id -> (data setting (scale, split unit), method name in the table, config overrides).
ROWS = {
    "model": (("base", "donor"), "model", {}),
    "no-attention": (("base", "donor"), "model without attention", {"model.use_attention": False}),
    "unidirectional": (("base", "donor"), "model, unidirectional LSTM", {"model.bidirectional": False}),
    "no-label-smoothing": (("base", "donor"), "model without label smoothing", {"train.label_smoothing": 0.0}),
    "medium": (("medium", "donor"), "model", {}),
    "large": (("large", "donor"), "model", {}),
    "split-sequence": (("base", "sequence"), "model", {}),
    "split-cell": (("base", "cell"), "model", {}),
}


# Model rows are also compared seed by seed with this baseline, the strongest one in every setting measured.
PAIRED_BASELINE = "mean-expression logistic regression"


def _with(config, overrides):
  config = config.copy_and_resolve_references()
  for key, value in overrides.items():
    section, field = key.split(".")
    config[section][field] = value
  return config


def _setting(config, scales, scale, unit, seed):
  """The config of a data setting (scale, split unit) and a seed."""
  if scale not in scales:
    raise ConfigError(f"the suite needs the numbers of the {scale!r} scale; given scales: {list(scales)}")
  config = _with(config, dict(scales[scale], **{"split.unit": unit}))
  config.seed = seed
  return config


def _train_row(config, workdir):
  """Trains (or reads back) one run; returns its test accuracy and macro-F1."""
  results_path = workdir / "results.json"
  if not results_path.exists():
    train.train_and_evaluate(config, workdir)
  results = json.loads(results_path.read_text())
  return {"accuracy": results["test_accuracy"], "macro_f1": results["test_macro_f1"], "seconds": results["seconds"]["total"]}


def run(config, workdir, seeds, rows=tuple(ROWS), scales=None):
  """Runs the suite and writes results.json, results.md and results.png into workdir. Returns the summary rows.

  Args:
    config: the config of the 'base' scale; every run starts from it.
    seeds: each seed changes the split, the sequences, the initialisation and dropout.
    rows: ids of ROWS to train; baselines run on every data setting those rows use.
    scales: {scale name: dotted config overrides} (configs/default.py's SCALES); 'base' alone by default.
  """
  scales = scales or {"base": {}}
  unknown = [r for r in rows if r not in ROWS]
  if unknown:
    raise ConfigError(f"unknown suite rows {unknown}; known: {list(ROWS)}")
  workdir = pathlib.Path(workdir).expanduser()
  workdir.mkdir(parents=True, exist_ok=True)
  started = time.perf_counter()
  order = ["base", "medium", "large"]
  settings = sorted({ROWS[r][0] for r in rows}, key=lambda s: (order.index(s[0]), s[1]))
  runs = []
  for seed in seeds:
    for setting in settings:
      setting_name = f"{setting[0]}, split by {setting[1]}"
      base = _setting(config, scales, *setting, seed)
      data = dataset.prepare(base)
      leakage = data.report["leakage"]["cells_in_more_than_one_split"]
      for name, method in baselines.BASELINES.items():
        predictions = method(data, seed)
        report = metrics.classification_report(data.test.labels, predictions, data.encoding.classes)
        runs.append(dict(setting=setting_name, method=name, seed=seed, accuracy=report["accuracy"],
                         macro_f1=report["macro_f1"], leakage=leakage))
      for row in rows:
        row_setting, method, overrides = ROWS[row]
        if row_setting != setting:
          continue
        logging.info("suite: %s on %s, seed %d", method, setting_name, seed)
        result = _train_row(_with(base, overrides), workdir / "runs" / f"{row}_seed{seed}")
        runs.append(dict(setting=setting_name, method=method, seed=seed, leakage=leakage, **result))
  summary, pairs = summarize(runs), paired(runs)
  elapsed = time.perf_counter() - started
  output = {"seeds": list(seeds), "wall_seconds": elapsed, "summary": summary, "paired": pairs, "runs": runs}
  train.write_atomic(workdir / "results.json", json.dumps(output, indent=2))
  train.write_atomic(workdir / "results.md", markdown(summary, seeds, elapsed, pairs))
  plot(summary, workdir / "results.png")
  logging.info("suite: %d runs in %.0f s; table in %s", len(runs), elapsed, workdir / "results.md")
  return summary


def summarize(runs):
  """One row per (setting, method): mean and standard deviation over seeds."""
  keys = list(dict.fromkeys((r["setting"], r["method"]) for r in runs))
  summary = []
  for setting, method in keys:
    group = [r for r in runs if r["setting"] == setting and r["method"] == method]
    accuracy_mean, accuracy_std = _mean_sd([r["accuracy"] for r in group])
    macro_f1_mean, macro_f1_std = _mean_sd([r["macro_f1"] for r in group])
    summary.append(dict(
        setting=setting, method=method, n=len(group), accuracy_mean=accuracy_mean, accuracy_std=accuracy_std,
        macro_f1_mean=macro_f1_mean, macro_f1_std=macro_f1_std, leakage=int(np.mean([r["leakage"] for r in group])),
    ))
  return summary


def _mean_sd(values):
  """(mean, sample standard deviation) of values over seeds; the deviation is 0 for a single seed."""
  values = np.asarray(values, float)
  return float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else 0.0


def paired(runs, baseline=PAIRED_BASELINE):
  """Each model row against `baseline` seed by seed: the same split and sequences, so their differences pair.

  Returns:
    one dict per (setting, model method): n seeds, mean and sd of accuracy(model) - accuracy(baseline) over
    seeds, and in how many seeds the model is ahead.
  """
  reference = {(r["setting"], r["seed"]): r["accuracy"] for r in runs if r["method"] == baseline}
  models = [r for r in runs if r["method"] not in baselines.BASELINES and (r["setting"], r["seed"]) in reference]
  rows = []
  for setting, method in dict.fromkeys((r["setting"], r["method"]) for r in models):
    diff = np.array([r["accuracy"] - reference[setting, r["seed"]]
                     for r in models if r["setting"] == setting and r["method"] == method])
    mean, sd = _mean_sd(diff)
    rows.append(dict(setting=setting, method=method, baseline=baseline, n=len(diff), difference_mean=mean,
                     difference_std=sd, wins=int((diff > 0).sum())))
  return rows


def markdown(summary, seeds, elapsed, pairs=()):
  lines = [
      f"Test accuracy and macro-F1, mean ± sd over seeds {list(seeds)}; suite wall time {elapsed / 60:.1f} min.",
      "",
      "| data (scale, split unit) | method | test accuracy | macro-F1 | cells in >1 split | runs |",
      "|---|---|---|---|---|---|",
  ]
  for r in summary:
    lines.append(
        f"| {r['setting']} | {r['method']} | {r['accuracy_mean']:.4f} ± {r['accuracy_std']:.4f} | "
        f"{r['macro_f1_mean']:.4f} ± {r['macro_f1_std']:.4f} | {r['leakage']:,} | {r['n']} |"
    )
  if pairs:
    lines += [
        "",
        f"Seed by seed against the {PAIRED_BASELINE} (same split and sequences): test accuracy of the row minus",
        "the baseline's, mean ± sd over seeds, and the seeds where the row is ahead.",
        "",
        "| data (scale, split unit) | method | accuracy - baseline | ahead in |",
        "|---|---|---|---|",
    ]
    for r in pairs:
      lines.append(f"| {r['setting']} | {r['method']} | {r['difference_mean']:+.4f} ± {r['difference_std']:.4f} | "
                   f"{r['wins']} of {r['n']} seeds |")
  return "\n".join(lines) + "\n"


def plot(summary, path):
  labels = [f"{r['method']}\n[{r['setting']}]" for r in summary]
  fig, ax = plt.subplots(figsize=(9, 0.45 * len(summary) + 1.5))
  y = np.arange(len(summary))[::-1]
  colors = ["tab:gray" if r["method"] in baselines.BASELINES else "tab:blue" for r in summary]
  ax.barh(y, [r["accuracy_mean"] for r in summary], xerr=[r["accuracy_std"] for r in summary], color=colors, capsize=3)
  ax.set_yticks(y, labels, fontsize=7)
  ax.set_xlabel("test accuracy (mean ± sd over seeds); grey = baselines")
  ax.set_xlim(0, 1)
  ax.grid(axis="x", alpha=0.3)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
