"""How far to trust a label: the runs of the two experiments and what their summaries say."""

import numpy as np
import pytest

from cardiac_jax.experiments import trust
from cardiac_jax.errors import ConfigError


def test_the_donor_loop_runs_every_fold_with_its_own_seed(config, tmp_path):
  runs = trust.runs(config, tmp_path, "donors", folds=3)
  assert [name for name, _, _ in runs] == ["fold0", "fold1", "fold2"]
  assert [(c.split.folds, c.split.fold, c.seed) for _, c, _ in runs] == [(3, 0, 0), (3, 1, 1), (3, 2, 2)]
  assert len({str(w) for _, _, w in runs}) == 3 and config.split.folds == 0  # the given config is not changed


def test_the_unseen_experiment_leaves_each_type_out(config, tmp_path):
  runs = trust.runs(config, tmp_path, "unseen")
  assert [name for name, _, _ in runs] == ["CF", "CM", "CMES", "IPSC", "MES", "PROG", "UNK"]
  assert all(c.data.exclude_types == (name,) for name, c, _ in runs)
  with pytest.raises(ConfigError, match=r"unknown cell type\(s\) \['Endothelial'\]"):
    trust.runs(config, tmp_path, "unseen", types=["CM", "Endothelial"])


def test_summaries_name_the_worst_donor_and_average_over_runs():
  per_donor = [{"donor": d, "run": r, "cells": 10, "model": {"accuracy": a, "macro_f1": a - 0.1}}
               for d, r, a in (("d1", "fold0", 0.8), ("d2", "fold0", 0.6), ("d3", "fold1", 0.9))]
  assert trust._worst(per_donor) == {"donor": "d2", "run": "fold0", "accuracy": 0.6, "macro_f1": 0.5}
  rows = [{"method": "m", "ece": 0.1}, {"method": "m", "ece": 0.3}, {"method": "n", "ece": 0.2}]
  summary = trust._summary(rows, "method", ("ece",))
  assert summary[0]["method"] == "m" and summary[0]["n"] == 2 and summary[0]["ece"][0] == pytest.approx(0.2)
  assert summary[0]["ece"][1] == pytest.approx(0.1414, abs=1e-4) and summary[1]["ece"] == [0.2, 0.0]


def test_the_donor_table_says_which_calibration_each_run_chose():
  rows = [{"method": trust.AS_ANNOTATED, "run": f"fold{k}", "accuracy": 0.8, "ece": 0.04, "classwise_ece": 0.02,
           "chosen": method} for k, method in enumerate(("vector", "temperature"))]
  per_donor = [{"donor": "d1", "run": "fold0", "cells": 10, "model": {"accuracy": 0.8, "macro_f1": 0.7}}]
  labelled = [{"run": f"fold{k}", "method": m, "accuracy": a, "macro_f1": f}
              for k, scores in enumerate(((0.80, 0.72, 0.78, 0.70), (0.82, 0.70, 0.80, 0.71)))
              for m, a, f in (("model", *scores[:2]), ("per-cell logistic regression", *scores[2:]))]
  record = {"folds": 2, "wall_seconds": 60.0, "calibration": rows, "per_donor": per_donor,
            "calibration_summary": trust._summary(rows, "method", ("accuracy", "ece", "classwise_ece")),
            "chosen_calibration": {r["run"]: r["chosen"] for r in rows}, "worst_donor": trust._worst(per_donor),
            "labels_summary": trust._summary(labelled, "method", ("accuracy", "macro_f1")),
            "labels_against_logistic_regression": trust._against(labelled, "per-cell logistic regression")}
  labels = np.array([0, 0, 1, 1, 1, 1, 1, 1, 1, 1])
  made = np.zeros((10, 2), bool)
  made[np.arange(10), labels] = True
  made[0] = [False, False]  # one class-0 cell's set is empty: class 0 is covered 1 of 2, class 1 8 of 8
  row = trust._set_row("model", made, labels)
  assert (row["coverage"], row["mean_size"], row["empty"], row["per_class"]) == (0.9, 0.9, 0.1, [0.5, 1.0])
  assert (row["classes_in_range"], row["classes"]) == (2, 2)  # 2 or 8 cells: wide ranges
  record.update(alpha=0.1, label_sets=[dict(row, run="fold0")],
                label_sets_summary=trust._summary([row], "method", ("coverage", "mean_size", "empty")))
  text = trust.donors_markdown(record)
  assert "| model | 0.900 ± 0.000 | 0.90 ± 0.00 | 0.100 ± 0.000 | 2 of 2 | 1 |" in text
  assert f"| {trust.AS_ANNOTATED} | 0.8000 ± 0.0000 |" in text
  assert f"({trust.AS_ANNOTATED}): fold0 vector, fold1 temperature." in text
  assert "| model | 0.8100 ± 0.0141 | 0.7100 ± 0.0141 | 2 |" in text
  # run by run: macro-F1 +0.02 and -0.01 against the regression, ahead in one run of two
  assert "| model | +0.0200 ± 0.0000 | 2 of 2 | +0.0050 ± 0.0212 | 1 of 2 |" in text
