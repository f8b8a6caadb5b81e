"""How far to trust a label: calibration on held-out donors beside CellTypist and a per-cell logistic
regression, cells of types the model never saw, and accuracy donor by donor.

Two experiments, each a loop of training runs of the annotation model (the annotate config):
- `donors`: a leave-donors-out loop. The donors are dealt into `folds` folds (split.folds); run k holds fold k
  out as its test split and uses seed k, so every donor is a test donor exactly once. On each run's test cells:
  accuracy and macro-F1 per donor, and calibration (ECE uncalibrated, with temperature scaling, with vector
  scaling, and with the one the run's calibration.json chose, which annotate.py applies), beside CellTypist
  (its conf_score) and the per-cell logistic regression (its probabilities) fitted on the same cells. The
  model's per-donor labels are annotate.py's: the most probable class after the chosen calibration.
- `unseen`: one run per cell type with that type left out of the whole run (data.exclude_types); the held-out
  donors' cells of every type, the left-out one included, are then annotated as a user would annotate a new
  time course, and each Unassigned score (unassigned.SCORES) is scored by how well it separates the unseen type
  from the known ones (AUROC), beside CellTypist's 'prob match' mode.

Every run has its own workdir under the experiment's (donors/fold<k>, unseen/<type>): an interrupted loop
resumes, finished runs are read back. Results: <workdir>/<experiment>.json, .md and PNG figures.
"""

import json
import pathlib
import time

import matplotlib.pyplot as plt
import numpy as np
from absl import logging
from sklearn.metrics import roc_auc_score

from cardiac_jax import (annotation, calibrate, conformal, dataset, figures, integrity, metrics, predict, report,
                         unassigned)
from cardiac_jax import workdir as rundir
from cardiac_jax.configs import default as default_config
from cardiac_jax.errors import ConfigError
from cardiac_jax.experiments import baselines, celltypist_compare, tables
from cardiac_jax.preprocess import natural_key

# Folds of the leave-donors-out loop by default: 19 donors -> test splits of 4 or 5 donors.
FOLDS = 4


def fold_config(config, folds, fold):
  """The config of run `fold` of the leave-donors-out loop: test donors = fold `fold`, seed = fold."""
  config = default_config.override(config.copy_and_resolve_references(), {"split.folds": folds, "split.fold": fold})
  config.seed = fold
  return config


def unseen_config(config, cell_type):
  """The config of a run that never sees `cell_type`."""
  return default_config.override(config.copy_and_resolve_references(), {"data.exclude_types": (cell_type,)})


def cell_types(config, adata=None):
  """The cell types of the config's data (or of `adata`, that data already loaded), sorted."""
  if adata is None:
    adata, _ = dataset.load(config)
  return sorted(adata.obs[config.data.label_key].astype(str).unique())


def refit_calibration(workdir):
  """Fits a finished run's calibration again (calibrate.fit, with the validation quantiles of the Unassigned
  scores) from the validation logits of its best model, and rewrites calibration.json and results.json's
  'calibration'; returns the latter (the new record with the test NLL and ECE before and after it).

  The validation split is prepared again from the run's config; it must give the validation accuracy the run
  recorded, or the data have changed since and nothing is written.
  """
  bundle = rundir.load(workdir)
  test, _ = rundir.load_test_sequences(bundle.workdir)
  test_logits = predict.predict_logits(bundle, test)
  val = dataset.prepare(bundle.config).val
  val_logits = predict.predict_logits(bundle, val)
  results = rundir.read_results(bundle.workdir)
  accuracy = float((val_logits.argmax(1) == val.labels).mean())
  if abs(accuracy - results["val_accuracy"]) > 1e-6:
    raise ConfigError(f"{bundle.workdir / rundir.RESULTS}: validation accuracy {results['val_accuracy']:.6f}, but the validation "
                      f"cells prepared again give {accuracy:.6f}; the data changed since the run, not refitted")
  record = unassigned.fitted_calibration(val_logits, val.labels, bundle.config.train.calibration_method)
  writer = rundir.Writer(bundle.workdir)
  with integrity.workdir_lock(bundle.workdir):  # one writer at a time, as in training
    writer.calibration(record)
    results["calibration"] = dict(record, **calibrate.test_record(test_logits, test.labels, record))
    writer.results(results)
  return results["calibration"]


def trained(config, workdir):
  """tables.trained, and a finished run whose calibration predates vector scaling has it fitted again
  (refit_calibration) and its trust scores dropped; returns workdir."""
  workdir = pathlib.Path(workdir)
  if rundir.finished(workdir) and "vector" not in (rundir.load_calibration(workdir) or {}):
    logging.info("trust: %s: its calibration predates vector scaling; fitting it again", workdir)
    refit_calibration(workdir)
    (workdir / rundir.TRUST).unlink(missing_ok=True)
  return tables.trained(config, workdir)


def runs(config, workdir, experiment, folds=FOLDS, types=None, adata=None):
  """[(name, config, run workdir)] of an experiment's training runs (`adata`: the config's data, if loaded)."""
  workdir = pathlib.Path(workdir).expanduser() / experiment
  if experiment == "donors":
    return [(f"fold{k}", fold_config(config, folds, k), workdir / f"fold{k}") for k in range(folds)]
  if experiment == "unseen":
    known = cell_types(config, adata)
    types = list(types or known)
    unknown = sorted(set(types) - set(known))
    if unknown:
      raise ConfigError(f"unknown cell type(s) {unknown}; the data's types are {known}")
    return [(t, unseen_config(config, t), workdir / t) for t in types]
  raise ConfigError(f"unknown experiment {experiment!r}; known: {list(EXPERIMENTS)}")


EXPERIMENTS = ("donors", "unseen")


def _cells_obs(config):
  """obs of every cell of the config's data (cell names made unique as the Dataset's are)."""
  adata, _ = dataset.load(config)
  adata.obs_names_make_unique()
  return adata


def _calibration_row(method, confidence, correct, probabilities, labels):
  """Accuracy, top-label ECE of `confidence` against `correct`, and class-wise ECE of `probabilities`."""
  return {"method": method, "accuracy": float(np.mean(correct)),
          "ece": metrics.top_label_ece(confidence, correct),
          "classwise_ece": metrics.classwise_ece(probabilities, labels)}


def _scored_once(path, score, keys=()):
  """score()'s JSON-ready result, kept at `path` so that a resumed loop does not score a finished run again (a
  kept result that lacks one of `keys`, written by an earlier version, is scored again)."""
  if path.exists():
    kept = json.loads(path.read_text())
    if all(key in kept for key in keys):
      return kept
  result = score()
  integrity.write_atomic(path, json.dumps(result, indent=2))
  return result


# The model's row with the calibration its calibration.json chose (the probabilities annotate.py reports).
AS_ANNOTATED = "model, as annotate.py reports"


def score_fold(name, config, workdir, adata):
  """One run of the donor loop scored on its test cells (kept in the run's trust.json): calibration rows,
  per-donor rows and, per method, the confidences and whether the label was right (reliability diagram)."""
  return _scored_once(pathlib.Path(workdir) / rundir.TRUST, lambda: _score_fold(name, config, workdir, adata),
                      keys=("calibration", "per_donor", "confidences", "labels", "label_sets"))


def _score_fold(name, config, workdir, adata):
  bundle = rundir.load(workdir)
  test, prediction, _ = report.test_report(bundle)
  data = dataset.prepare(config)
  if not np.array_equal(data.test.labels, test.labels):
    raise ConfigError(f"{workdir}: the test cells saved with the run differ from those prepared again")
  labels, logits = test.labels, prediction.logits
  methods = {
      "model, uncalibrated": calibrate.softmax(logits),
      **{f"model, {m} scaling": calibrate.softmax(calibrate.apply(bundle.calibration, logits, m))
         for m in calibrate.METHODS},
      AS_ANNOTATED: prediction.probabilities,
      "per-cell logistic regression": baselines.cell_logreg_probabilities(data, config.seed),
  }
  confidences = {m: (p.max(1), p.argmax(1) == labels) for m, p in methods.items()}
  rows = [_calibration_row(m, *confidences[m], p, labels) for m, p in methods.items()]
  rows[list(methods).index(AS_ANNOTATED)]["chosen"] = bundle.calibration["method"]
  # The model's labels as annotate.py gives them (Unassigned a miss); the references label every cell.
  predictions = {"model": prediction.label_ids,
                 "per-cell logistic regression": methods["per-cell logistic regression"].argmax(1),
                 baselines.TIME_LOGREG: baselines.cell_time_logreg(data, config.seed)}
  sets = {"model": prediction.label_sets} if prediction.label_sets is not None else {}
  if celltypist_compare.available():
    fitted = celltypist_compare.fit_and_annotate(config, data, config.seed, majority_voting=False)
    scores = conformal.calibration_scores(fitted["val_probabilities"], data.val.labels, len(bundle.classes))
    sets[celltypist_compare.BEST_MATCH] = conformal.label_sets(fitted["probabilities"], conformal.thresholds(scores))
    confidences[celltypist_compare.BEST_MATCH] = (fitted["conf_score"], fitted["best_match"] == labels)
    rows.append(_calibration_row(celltypist_compare.BEST_MATCH, *confidences[celltypist_compare.BEST_MATCH],
                                 fitted["probabilities"], labels))
    predictions[celltypist_compare.BEST_MATCH] = fitted["best_match"]
  for row in rows:
    row.update(run=name, seed=config.seed)
  donors = adata.obs.loc[data.cell_names[test.anchor_cells], config.data.donor_key].astype(str).to_numpy()
  per_donor = []
  for donor in sorted(set(donors), key=natural_key):
    cells = donors == donor
    row = {"donor": donor, "run": name, "cells": int(cells.sum())}
    for method, predicted in predictions.items():
      scored = metrics.classification_report(labels[cells], predicted[cells], bundle.classes)
      row[method] = {"accuracy": scored["accuracy"], "macro_f1": scored["macro_f1"]}
    per_donor.append(row)
  pairs = {m: {"confidence": np.asarray(c, float).tolist(), "correct": np.asarray(r, bool).tolist()}
           for m, (c, r) in confidences.items()}
  labelled = []
  for method, predicted in predictions.items():
    scored = metrics.classification_report(labels, predicted, bundle.classes)
    labelled.append({"run": name, "method": method, "accuracy": scored["accuracy"], "macro_f1": scored["macro_f1"]})
  return {"calibration": rows, "per_donor": per_donor, "confidences": pairs, "labels": labelled,
          "label_sets": [dict(_set_row(method, made, labels), run=name) for method, made in sets.items()]}


def _set_row(method, sets, labels):
  """Coverage of label sets [cells, classes] on the cells' labels: overall, mean size, share empty, and per class
  whether the coverage lies in its binomial sampling range (conformal.binomial_interval)."""
  covered = conformal.coverage(sets, labels)
  counts = np.bincount(labels, minlength=sets.shape[1])
  within = [bool(low <= share <= high) for share, n in zip(covered["per_class"], counts) if n
            for low, high in [conformal.binomial_interval(int(n))]]
  return {"method": method, "coverage": covered["coverage"], "mean_size": covered["mean_size"],
          "empty": covered["empty"], "per_class": covered["per_class"], "classes_in_range": sum(within),
          "classes": len(within)}



# Whose cells the unseen experiment annotates: each run's held-out test donors, or its validation donors (an inner
# loop for choosing a default without the test donors: the left-out type's cells there were never seen either).
UNSEEN_DONORS = ("test", "validation")


def score_unseen(cell_type, config, workdir, adata, donors="test"):
  """One run that never saw `cell_type`: every cell of its `donors` (UNSEEN_DONORS; the unseen type's included)
  is annotated as a new time course; returns the row of that type (AUROC and Unassigned shares per score,
  beside CellTypist's 'prob match'), kept in the run's trust.json (validation donors: trust_validation.json)."""
  kept = rundir.TRUST if donors == "test" else rundir.TRUST_VALIDATION
  return _scored_once(pathlib.Path(workdir) / kept, lambda: _score_unseen(cell_type, config, workdir, adata, donors))


def _score_unseen(cell_type, config, workdir, adata, donors):
  bundle = rundir.load(workdir)
  data = dataset.prepare(config)
  donor_key, label_key = config.data.donor_key, config.data.label_key
  split = data.test if donors == "test" else data.val
  chosen = set(adata.obs.loc[data.cell_names[split.anchor_cells], donor_key].astype(str))
  query = adata[adata.obs[donor_key].astype(str).isin(chosen).to_numpy()].copy()
  result = annotation.annotate(bundle, query, unassigned_score="none", progress=False)
  unseen = (query.obs[label_key].astype(str) == cell_type).to_numpy()
  known_labels = query.obs[label_key].astype(str).to_numpy()[~unseen]
  best = np.asarray(bundle.classes)[result.prediction.top_class]
  calibrated = bundle.calibrated(result.logits)
  row = {"type": cell_type, "unseen_cells": int(unseen.sum()), "known_cells": int((~unseen).sum()),
         "known_accuracy": float((best[~unseen] == known_labels).mean()), "scores": {}}
  novelty = result.prediction.novelty
  for name in unassigned.SCORES if novelty is not None else unassigned.LOGIT_SCORES:
    rule = unassigned.rule(bundle.calibration, name)  # the default: each class's own threshold
    values = rule.values(calibrated, novelty)
    below = rule.unassigned(calibrated, novelty)
    row["scores"][name] = {"auroc": float(roc_auc_score(~unseen, values)),
                           "unseen_unassigned": float(below[unseen].mean()),
                           "known_unassigned": float(below[~unseen].mean())}
  if celltypist_compare.available():
    train_cells, *_ = celltypist_compare.split_adatas(config, data)
    model = celltypist_compare.train_model(train_cells, config.seed)
    labels, top = celltypist_compare.prob_match(model, celltypist_compare.log_normalised(query))
    below = labels == unassigned.UNASSIGNED
    row["scores"][CELLTYPIST_PROB_MATCH] = {"auroc": float(roc_auc_score(~unseen, top)),
                                            "unseen_unassigned": float(below[unseen].mean()),
                                            "known_unassigned": float(below[~unseen].mean())}
  return row


CELLTYPIST_PROB_MATCH = "CellTypist (prob match, p_thres 0.5)"


def donor_loop(config, workdir, folds=FOLDS):
  """The leave-donors-out loop: trains (or reads back) every fold's run and scores it. Returns the record
  written to <workdir>/donors.json."""
  started = time.perf_counter()
  adata = None
  calibration, per_donor, labelled, sets, pooled = [], [], [], [], {}
  for name, run_config, run_dir in runs(config, workdir, "donors", folds):
    logging.info("trust: donor loop, %s", name)
    trained(run_config, run_dir)
    adata = adata if adata is not None else _cells_obs(run_config)
    scored = score_fold(name, run_config, run_dir, adata)
    calibration += scored["calibration"]
    per_donor += scored["per_donor"]
    labelled += scored["labels"]
    sets += scored["label_sets"]
    for method, pair in scored["confidences"].items():
      previous = pooled.get(method, (np.zeros(0), np.zeros(0, bool)))
      pooled[method] = (np.concatenate([previous[0], pair["confidence"]]),
                        np.concatenate([previous[1], np.asarray(pair["correct"], bool)]))
  record = {"folds": folds, "wall_seconds": time.perf_counter() - started, "calibration": calibration,
            "calibration_summary": _summary(calibration, "method", ("accuracy", "ece", "classwise_ece")),
            "chosen_calibration": {r["run"]: r["chosen"] for r in calibration if "chosen" in r},
            "per_donor": per_donor, "worst_donor": _worst(per_donor),
            "labels": labelled, "labels_summary": _summary(labelled, "method", ("accuracy", "macro_f1")),
            "labels_against_logistic_regression": _against(labelled, "per-cell logistic regression"),
            "alpha": conformal.ALPHA, "label_sets": sets,
            "label_sets_summary": _summary(sets, "method", ("coverage", "mean_size", "empty"))}
  out = pathlib.Path(workdir).expanduser()
  integrity.write_atomic(out / "donors.json", json.dumps(record, indent=2))
  integrity.write_atomic(out / "donors.md", donors_markdown(record))
  plot_donors(per_donor, out / "donors.png")
  plot_reliability(pooled, out / "reliability.png")
  if sets:
    plot_label_sets(sets, cell_types(config, adata), conformal.ALPHA, out / "label_sets.png")
  return record


def unseen_types(config, workdir, types=None, donors="test"):
  """Trains (or reads back) one run per left-out type and scores it on its `donors` (UNSEEN_DONORS). Returns the
  record written to <workdir>/unseen.json (validation donors: unseen_validation.json)."""
  if donors not in UNSEEN_DONORS:
    raise ConfigError(f"unknown donors {donors!r} for the unseen experiment; known: {list(UNSEEN_DONORS)}")
  started = time.perf_counter()
  adata, rows = _cells_obs(config), []  # every cell: exclude_types acts when a run prepares its data
  for name, run_config, run_dir in runs(config, workdir, "unseen", types=types, adata=adata):
    logging.info("trust: unseen type %s", name)
    trained(run_config, run_dir)
    rows.append(score_unseen(name, run_config, run_dir, adata, donors))
  record = {"keep_known": unassigned.KEEP_KNOWN, "wall_seconds": time.perf_counter() - started, "types": rows,
            "donors": donors}
  out = pathlib.Path(workdir).expanduser()
  name = "unseen" if donors == "test" else "unseen_validation"
  integrity.write_atomic(out / f"{name}.json", json.dumps(record, indent=2))
  integrity.write_atomic(out / f"{name}.md", unseen_markdown(record))
  plot_unseen(rows, out / f"{name}.png")
  return record


def _summary(rows, key, fields):
  """Per value of rows[key]: mean and sd over runs of each field, and the number of runs."""
  out = []
  for value in dict.fromkeys(r[key] for r in rows):
    group = [r for r in rows if r[key] == value]
    out.append({key: value, "n": len(group), **{f: list(tables.mean_sd([r[f] for r in group])) for f in fields}})
  return out


def _against(rows, reference):
  """Each method's macro-F1 and accuracy minus the reference's, run by run (the same test cells): mean and sd
  over runs, and the runs where the method is ahead."""
  by_run = {r["run"]: r for r in rows if r["method"] == reference}
  out = []
  for method in dict.fromkeys(r["method"] for r in rows if r["method"] != reference):
    group = [r for r in rows if r["method"] == method and r["run"] in by_run]
    row = {"method": method, "reference": reference, "n": len(group)}
    for field in ("accuracy", "macro_f1"):
      mean, sd, ahead = tables.differences([r[field] - by_run[r["run"]][field] for r in group])
      row.update({field: [mean, sd], f"{field}_ahead": ahead})
    out.append(row)
  return out


def _worst(per_donor):
  """The held-out donor on whom the model's accuracy is lowest."""
  worst = min(per_donor, key=lambda r: r["model"]["accuracy"])
  return {"donor": worst["donor"], "run": worst["run"], "accuracy": worst["model"]["accuracy"],
          "macro_f1": worst["model"]["macro_f1"]}


def donors_markdown(record):
  runs_ = sorted({r["run"] for r in record["calibration"]})
  lines = [f"Leave-donors-out loop: {record['folds']} runs ({', '.join(runs_)}), each fold's donors held out "
           f"once; wall time {record['wall_seconds'] / 60:.1f} min.", "",
           "Calibration on the test cells (held-out donors), mean ± sd over runs; ECE: 15 equal-width bins of the "
           "confidence (top probability; CellTypist: conf_score).", "",
           "| method | accuracy | ECE | class-wise ECE | runs |", "|---|---|---|---|---|"]
  for r in record["calibration_summary"]:
    lines.append(f"| {r['method']} | {tables.format_pm(*r['accuracy'])} | {tables.format_pm(*r['ece'])} | "
                 f"{tables.format_pm(*r['classwise_ece'])} | "
                 f"{r['n']} |")
  lines += ["", "Labels of each run's held-out donors' cells (the model's as annotate gives them, Unassigned a miss), "
            "mean ± sd over runs:", "", "| method | accuracy | macro-F1 | runs |", "|---|---|---|---|"]
  lines += [f"| {r['method']} | {tables.format_pm(*r['accuracy'])} | {tables.format_pm(*r['macro_f1'])} | {r['n']} |"
            for r in record["labels_summary"]]
  lines += ["", "Run by run against the per-cell logistic regression (same cells): difference, mean ± sd, and the "
            "runs where the method is ahead.", "", "| method | accuracy - LR | ahead in | macro-F1 - LR | ahead in |",
            "|---|---|---|---|---|"]
  lines += [f"| {r['method']} | {tables.format_pm(*r['accuracy'], signed=True)} | {r['accuracy_ahead']} of {r['n']} | "
            f"{tables.format_pm(*r['macro_f1'], signed=True)} | {r['macro_f1_ahead']} of {r['n']} |"
            for r in record["labels_against_logistic_regression"]]
  if record.get("label_sets"):
    alpha = record["alpha"]
    lines += ["", f"Label sets for alpha = {alpha} (each should hold the cell's type for {1 - alpha:.0%} of the cells, "
              "of every type alike), calibrated on each run's validation cells, scored on its held-out donors' cells:",
              "", "| method | coverage | mean set size | empty sets | classes within their sampling range | runs |",
              "|---|---|---|---|---|---|"]
    for r in record["label_sets_summary"]:
      group = [s for s in record["label_sets"] if s["method"] == r["method"]]
      lines.append(f"| {r['method']} | {tables.format_pm(*r['coverage'], 3)} | {tables.format_pm(*r['mean_size'], 2)} "
                   f"| {tables.format_pm(*r['empty'], 3)} | {sum(s['classes_in_range'] for s in group)} of "
                   f"{sum(s['classes'] for s in group)} | {r['n']} |")
  chosen = ", ".join(f"{run} {method}" for run, method in record["chosen_calibration"].items())
  lines += ["", f"Calibration each run's calibration.json chose on its validation cells ({AS_ANNOTATED}): {chosen}."]
  methods = [m for m in record["per_donor"][0] if isinstance(record["per_donor"][0][m], dict)]
  lines += ["", "Per held-out donor: accuracy / macro-F1 (the model's labels as annotate gives them, Unassigned a "
            "miss; the references label every cell).", "",
            "| donor | run | cells | " + " | ".join(methods) + " |", "|---|---|---|" + "---|" * len(methods)]
  for r in record["per_donor"]:
    cells = " | ".join(f"{r[m]['accuracy']:.3f} / {r[m]['macro_f1']:.3f}" for m in methods)
    lines.append(f"| {r['donor']} | {r['run']} | {r['cells']:,} | {cells} |")
  worst = record["worst_donor"]
  lines += ["", f"Worst donor for the model: {worst['donor']} ({worst['run']}): accuracy {worst['accuracy']:.3f}, "
                f"macro-F1 {worst['macro_f1']:.3f}."]
  return "\n".join(lines) + "\n"


def unseen_markdown(record):
  names = list(record["types"][0]["scores"])
  donors = "held-out test" if record.get("donors", "test") == "test" else "validation"
  lines = [f"Each type left out of a whole run in turn; all cells of the run's {donors} donors annotated. "
           f"Thresholds: annotate's default, one per class keeping {record['keep_known']:.0%} of that class's "
           f"validation cells assigned (CellTypist: no class "
           f"reaches 0.5). Wall time {record['wall_seconds'] / 60:.1f} min.", "",
           "AUROC of known (high) versus unseen (low) cells; in brackets the share of unseen-type cells / of "
           "known-type cells marked Unassigned.", "",
           "| left-out type | unseen cells | known accuracy | " + " | ".join(names) + " |",
           "|---|---|---|" + "---|" * len(names)]
  for r in record["types"]:
    cells = " | ".join(f"{s['auroc']:.3f} ({s['unseen_unassigned']:.0%} / {s['known_unassigned']:.0%})"
                       for s in r["scores"].values())
    lines.append(f"| {r['type']} | {r['unseen_cells']:,} | {r['known_accuracy']:.3f} | {cells} |")
  means = " | ".join(f"{np.mean([r['scores'][n]['auroc'] for r in record['types']]):.3f}" for n in names)
  lines.append(f"| mean | | | {means} |")
  return "\n".join(lines) + "\n"


def plot_donors(per_donor, path):
  """Per held-out donor: the model's and the references' accuracy, donors ordered by the model's."""
  rows = sorted(per_donor, key=lambda r: r["model"]["accuracy"])
  methods = [m for m in rows[0] if isinstance(rows[0][m], dict)]
  fig, ax = plt.subplots(figsize=(max(6, 0.45 * len(rows) + 2), 4))
  x = np.arange(len(rows))
  width = 0.8 / len(methods)
  for i, method in enumerate(methods):
    ax.bar(x + (i - (len(methods) - 1) / 2) * width, [r[method]["accuracy"] for r in rows], width, label=method)
  ax.set_xticks(x, [r["donor"] for r in rows], rotation=60, fontsize=8)
  ax.set(ylabel="accuracy on the donor's cells", ylim=(0, 1), title="held-out donors (leave-donors-out loop)")
  ax.grid(axis="y", alpha=0.3)
  ax.legend(fontsize=8, loc="lower right")
  figures.save(fig, path)


def plot_reliability(pooled, path):
  """Reliability diagram of every method's confidence on the pooled test cells of the loop's runs."""
  fig, ax = plt.subplots(figsize=(5.5, 5.5))
  ax.plot([0, 1], [0, 1], color="gray", linestyle="--", label="perfectly calibrated")
  for method, (confidence, correct) in pooled.items():
    count, mean_confidence, accuracy = metrics.reliability(confidence, correct)
    used = count > 0
    ax.plot(mean_confidence[used], accuracy[used], marker="o", markersize=3,
            label=f"{method}: ECE {metrics.top_label_ece(confidence, correct):.3f}")
  ax.set(xlabel="confidence", ylabel="accuracy", xlim=(0, 1), ylim=(0, 1), title="test cells of every fold")
  ax.grid(alpha=0.3)
  ax.legend(loc="upper left", fontsize=7)
  figures.save(fig, path)


def plot_label_sets(rows, classes, alpha, path):
  """Coverage of each type's cells by its label sets, run by run (dots) and over runs (bars), per method, against
  the 1 - alpha the sets are built for."""
  methods = list(dict.fromkeys(r["method"] for r in rows))
  fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(classes) + 2), 4))
  x = np.arange(len(classes))
  width = 0.8 / len(methods)
  for i, method in enumerate(methods):
    group = np.array([r["per_class"] for r in rows if r["method"] == method], float)  # [runs, classes]
    offset = x + (i - (len(methods) - 1) / 2) * width
    sizes = np.mean([r["mean_size"] for r in rows if r["method"] == method])
    ax.bar(offset, np.nanmean(group, 0), width, alpha=0.6, label=f"{method} (mean set size {sizes:.2f})")
    for run in group:
      ax.plot(offset, run, "k.", markersize=3)
  ax.axhline(1 - alpha, color="gray", linestyle="--", linewidth=1, label=f"1 - alpha = {1 - alpha:.2f}")
  ax.set_xticks(x, classes)
  ax.set(xlabel="true type", ylabel="share of its cells whose set holds it", ylim=(0, 1.05),
         title="label sets on held-out donors (dots: runs)")
  ax.grid(axis="y", alpha=0.3)
  ax.legend(fontsize=8, loc="lower right")
  figures.save(fig, path)


def plot_unseen(rows, path):
  """AUROC of known versus unseen cells per left-out type, for every score."""
  names = list(rows[0]["scores"])
  fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(rows) + 2), 4))
  x = np.arange(len(rows))
  width = 0.8 / len(names)
  for i, name in enumerate(names):
    ax.bar(x + (i - (len(names) - 1) / 2) * width, [r["scores"][name]["auroc"] for r in rows], width, label=name)
  ax.axhline(0.9, color="gray", linestyle="--", linewidth=1)
  ax.set_xticks(x, [r["type"] for r in rows])
  ax.set(xlabel="type left out of training", ylabel="AUROC, known vs unseen cells", ylim=(0, 1))
  ax.grid(axis="y", alpha=0.3)
  ax.legend(fontsize=8, loc="lower right")
  figures.save(fig, path)
