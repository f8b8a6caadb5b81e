"""The training recipe: steps that learn, masking of fill examples, plateau and early-stopping rules, and a
tiny end-to-end run that is deterministic, resumes exactly, and restores in a new process."""

import json
import pathlib
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from cardiac_jax import configs, dataset, linear, metrics, training
from cardiac_jax import workdir as rundir
from cardiac_jax.errors import ConfigError
from cardiac_jax.configs import tiny

REPO = pathlib.Path(__file__).resolve().parents[1]


def _state(dropout=0.3, classes=3, genes=6, steps=4):
  config = tiny.get_config()
  config.model.hidden_dim, config.model.num_heads, config.model.head_dims = 8, 2, (8,)
  config.model.dropout = config.model.input_dropout = dropout
  return training.create_train_state(jax.random.key(0), config, classes, genes, steps), config


def _batch(n=8, steps=4, genes=6, seed=0):
  rng = np.random.default_rng(seed)
  return {
      "x": rng.normal(size=(n, steps, genes)).astype(np.float32),
      "lengths": rng.integers(1, steps + 1, size=n).astype(np.int32),
      "labels": (np.arange(n) % 3).astype(np.int32),
      "mask": np.ones(n, np.float32),
  }


@pytest.fixture(scope="module")
def stepper():
  """(state, jitted train step): one state and one compiled step shared by the tests of the step."""
  state, _ = _state()
  return state, jax.jit(lambda s, b: training.train_step(s, b, jax.random.key(1), label_smoothing=0.1))


def test_one_step_changes_every_parameter(stepper):
  state, step = stepper
  before = jax.tree.map(np.asarray, state.params)
  new_state, sums = step(state, _batch())
  changed = jax.tree.map(lambda a, b: bool(np.any(a != np.asarray(b))), before, new_state.params)
  unchanged = [jax.tree_util.keystr(path) for path, c in jax.tree_util.tree_leaves_with_path(changed) if not c]
  assert not unchanged
  assert int(new_state.step) == 1
  assert float(sums["count"]) == 8


def test_steps_lower_the_loss(stepper):
  state, step = stepper
  batch = _batch()
  eval_fn = training.make_eval_step(state.apply_fn, 0.1)
  loss_before = float(eval_fn(state.params, batch=batch)[0]["loss"])
  for _ in range(30):
    state, _ = step(state, batch)
  assert float(eval_fn(state.params, batch=batch)[0]["loss"]) < 0.7 * loss_before


def test_fill_examples_do_not_change_the_step():
  state, _ = _state(dropout=0.0)
  batch = _batch(n=8)
  filled = {k: np.concatenate([v, v[:4]]) for k, v in batch.items()}
  filled["x"][8:] = 99.0
  filled["mask"][8:] = 0.0
  # Plain SGD makes the update the gradient itself: Adam would blow rounding noise in a gradient that is
  # exactly zero in theory (attention's key bias, to which softmax is blind) up to a full-size step.
  sgd = optax.sgd(1.0)
  state = state.replace(tx=sgd, opt_state=sgd.init(state.params))
  step = jax.jit(lambda s, b: training.train_step(s, b, jax.random.key(1), label_smoothing=0.1))
  a, sums_a = step(state, batch)
  b, sums_b = step(state, filled)
  assert max(jax.tree.leaves(jax.tree.map(lambda x, y: float(np.abs(x - y).max()), a.params, state.params))) > 1e-4
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, atol=1e-6), a.params, b.params)
  for key in ("loss", "correct", "count"):
    np.testing.assert_allclose(sums_a[key], sums_b[key], rtol=1e-6)


def _torch_reduce_on_plateau(losses, lr, factor, patience, threshold=1e-4):
  """PyTorch's documented ReduceLROnPlateau (mode='min', threshold_mode='rel', cooldown=0), one step per
  epoch; returns the learning rate in force for each following epoch."""
  best, bad, out = float("inf"), 0, []
  for loss in losses:
    if loss < best * (1 - threshold):
      best, bad = loss, 0
    else:
      bad += 1
    if bad > patience:
      lr, bad = lr * factor, 0
    out.append(lr)
  return out


def test_plateau_matches_pytorch():
  state, config = _state()
  plateau = training.make_plateau(config.train)
  losses = [1.0, 0.9, 0.95, 0.92, 0.91, 0.93, 0.94, 0.85, 0.86, 0.87, 0.88, 0.89, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9]
  ours = []
  for loss in losses:
    state = training.plateau_step(state, plateau, loss)
    ours.append(config.train.learning_rate * float(state.plateau.scale))
  expected = _torch_reduce_on_plateau(losses, config.train.learning_rate, factor=0.5, patience=3)
  np.testing.assert_allclose(ours, expected, rtol=1e-6)
  assert expected[-1] < expected[0] / 2  # the sequence does reduce, more than once


def test_epoch_macro_f1_from_masked_sums_is_the_classification_reports():
  """The confusion counts summed over batches (fill examples masked out) give the report's macro-F1."""
  rng = np.random.default_rng(2)
  logits, labels = rng.normal(size=(50, 4)).astype(np.float32), rng.integers(0, 3, 50)  # class 3 never occurs
  mask = (np.arange(50) < 43).astype(np.float32)
  sums = {}
  for lo in range(0, 50, 16):
    rows = slice(lo, lo + 16)
    sums = metrics.add(sums, metrics.batch_sums(logits[rows], labels[rows], mask[rows]))
  expected = metrics.classification_report(labels[:43], logits[:43].argmax(1), ("a", "b", "c", "d"))
  epoch = metrics.normalize(sums)
  assert epoch["macro_f1"] == pytest.approx(expected["macro_f1"], abs=1e-6)
  assert epoch["accuracy"] == pytest.approx(expected["accuracy"], abs=1e-6)
  np.testing.assert_array_equal(np.asarray(sums["confusion"]), expected["confusion_matrix"])


def test_early_stopping_after_patience_epochs():
  tracker = {"epoch": 0, "best_val_score": -1.0, "best_epoch": 0, "epochs_since_best": 0}
  accuracies = [0.5, 0.6, 0.6, 0.55, 0.7] + [0.65] * 8
  stopped_at = None
  for epoch, accuracy in enumerate(accuracies, start=1):
    tracker, improved = training.track_best(tracker, epoch, accuracy)
    assert improved == (epoch in (1, 2, 5))
    if tracker["epochs_since_best"] >= 8:
      stopped_at = epoch
      break
  assert stopped_at == 13 and tracker["best_epoch"] == 5 and tracker["best_val_score"] == 0.7


def _history(workdir):
  records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  return [{k: v for k, v in r.items() if k not in ("sequences_per_second", "seconds")} for r in records]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_run):
  """The session's tiny run of 3 epochs (root / 'full', a link to it), and the same run stopped after 2 epochs
  and then resumed to 3."""
  root = tmp_path_factory.mktemp("runs")
  (root / "full").symlink_to(tiny_run[0], target_is_directory=True)
  full = tiny_run[2]
  config = tiny_run[1].copy_and_resolve_references()
  config.train.num_epochs = 2
  training.train_and_evaluate(config, root / "resumed")
  stopped = _history(root / "resumed")
  config.train.num_epochs = 3
  resumed = training.train_and_evaluate(config, root / "resumed")
  return root, config, full, stopped, resumed


def test_runs_are_deterministic_and_resume_exactly(runs):
  root, _, full, stopped, resumed = runs
  assert [r["epoch"] for r in _history(root / "full")] == [1, 2, 3]
  assert stopped == _history(root / "full")[:2]  # same seed, same numbers
  assert _history(root / "resumed") == _history(root / "full")  # resuming changes nothing
  assert {k: v for k, v in resumed.items() if k != "seconds"} == {k: v for k, v in full.items() if k != "seconds"}
  assert set(full["seconds"]) == {"data", "train_step_compile", "training", "total"}


def test_another_config_in_the_same_workdir_is_refused(runs):
  root, config, *_ = runs
  config = config.copy_and_resolve_references()
  config.train.learning_rate = 0.1
  before = (root / "full" / "results.json").read_text()
  with pytest.raises(ValueError, match="another config"):
    training.train_and_evaluate(config, root / "full")
  assert (root / "full" / "results.json").read_text() == before


def test_eval_restores_in_a_new_process(runs, tmp_path):
  root, config, full, *_ = runs
  workdir = shutil.copytree(root / "full", tmp_path / "full")
  subprocess.run([sys.executable, "eval.py", f"--workdir={workdir}"], cwd=REPO, check=True, capture_output=True)
  report = json.loads((workdir / "report" / "report.json").read_text())
  assert report["accuracy"] == pytest.approx(full["test_accuracy"], abs=1e-12)
  assert report["parameters"] == full["parameters"]
  assert report["leakage"]["cells_in_more_than_one_split"] == 0
  assert np.asarray(report["confusion_matrix"]).sum() == report["sequences"]["test"]["sequences"]
  for name in ("confusion.png", "learning_curves.png", "reliability.png"):
    assert (workdir / "report" / name).read_bytes()[:4] == b"\x89PNG"
  calibration = json.loads((workdir / "calibration.json").read_text())
  assert report["calibration"]["temperature"] == calibration["temperature"] == full["calibration"]["temperature"]
  assert report["calibration"]["scale"] == calibration["scale"] == full["calibration"]["scale"]
  assert calibration["val_nll_after"] <= calibration["val_nll_before"]
  assert report["calibration"]["test_ece_after"] == pytest.approx(full["calibration"]["test_ece_after"], abs=1e-9)
  saved = np.load(workdir / "report" / "test_predictions.npz")
  data = dataset.prepare(config)
  state = training.create_train_state(jax.random.key(0), config, len(saved["classes"]), len(data.genes), config.data.max_len)
  params, _ = rundir.restore_best_params(workdir, state.params)
  _, logits = training.evaluate_split(training.make_eval_step(state.apply_fn, 0.1), params, data.test, 16)
  np.testing.assert_allclose(saved["logits"], logits, atol=1e-5)
  np.testing.assert_array_equal(saved["labels"], data.test.labels)
  assert jnp.isfinite(logits).all()


def test_warm_start_takes_the_best_parameters_of_another_run(runs):
  root, config, *_ = runs
  config = config.copy_and_resolve_references()
  data = dataset.prepare(config)
  fresh = training.initial_state(config, data)
  config.init_from = str(root / "full")
  warm = training.initial_state(config, data)
  best, _ = rundir.restore_best_params(root / "full", fresh.params)
  jax.tree.map(np.testing.assert_array_equal, warm.params, best)
  assert any(jax.tree.leaves(jax.tree.map(lambda a, b: bool(np.any(a != b)), fresh.params, best)))
  config.init_from = str(root / "missing")
  with pytest.raises(ConfigError, match="missing/data.json"):
    training.initial_state(config, data)


# After a failed restore, Orbax's background thread reports to an event loop it has already closed.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_a_checkpoint_of_another_layout_is_one_clear_error(runs):
  """Parameters saved under another tree (an earlier version's LSTM layout) give a ConfigError naming the folder."""
  root, *_ = runs
  data = dataset.prepare(runs[1])
  state = training.create_train_state(jax.random.key(0), runs[1], len(data.encoding.classes), len(data.genes), 7)
  best, _ = rundir.restore_best_params(root / "full", state.params)
  renamed = dict(best, lstm_0={"forward": best["lstm_0"]["bias"]})
  with pytest.raises(ConfigError, match=r"checkpoints/best: the checkpoint of epoch \d+ does not fit"):
    rundir.restore_best_params(root / "full", renamed)
  reshaped = jax.tree.map(lambda leaf: jnp.zeros(leaf.shape + (1,)), best)
  with pytest.raises(ConfigError, match="does not fit this model's parameters"):
    rundir.restore_best_params(root / "full", reshaped)
  latest = rundir.Checkpoints(root / "full")
  try:
    with pytest.raises(ConfigError, match="checkpoints/latest: the checkpoint"):
      latest.restore_latest(state.replace(params=renamed))
  finally:
    latest.close()


def test_balanced_class_weights_make_every_class_weigh_the_same():
  labels = np.array([0, 1, 1, 1, 2, 2])
  weights = training.balanced_class_weights(labels, 4)
  per_class = np.bincount(labels, weights=weights[labels], minlength=4)
  np.testing.assert_allclose(per_class[:3], per_class[0])  # each present class adds up to the same weight
  weights = training.balanced_class_weights(labels, 3)
  assert weights[labels].sum() == pytest.approx(len(labels))  # the mean weight of an example stays 1


def test_class_weights_steer_the_step():
  """Weights of one change nothing; a weight of zero takes that class's examples out of the update."""
  state, _ = _state(dropout=0.0)
  batch = _batch()
  sgd = optax.sgd(1.0)
  state = state.replace(tx=sgd, opt_state=sgd.init(state.params))
  step = jax.jit(lambda s, b, w=None: training.train_step(s, b, jax.random.key(1), label_smoothing=0.1, class_weights=w))
  plain, _ = step(state, batch)
  ones, _ = step(state, batch, jnp.ones(3))
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), plain.params, ones.params)
  keep = batch["labels"] != 2
  without = {k: v[keep] for k, v in batch.items()}
  dropped, _ = step(state, without)
  zeroed, _ = step(state, batch, jnp.array([1.0, 1.0, 0.0]))
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5), dropped.params, zeroed.params)


def test_the_annotation_network_matches_a_logistic_regression_on_a_planted_linear_signal():
  """Cell types that a linear map of the genes decides (plus noise): the annotation network (linear path beside
  the BiLSTM) labels held-out cells at least about as well as a logistic regression fitted on the same cells."""
  from sklearn.linear_model import LogisticRegression

  rng = np.random.default_rng(0)
  genes, classes, n_train, n_test = 12, 4, 3000, 2000
  weights = rng.normal(size=(genes, classes))
  x = rng.normal(size=(n_train + n_test, genes)).astype(np.float32)
  labels = (x @ weights + rng.gumbel(size=(len(x), classes))).argmax(1).astype(np.int32)
  logreg = LogisticRegression(max_iter=1000).fit(x[:n_train], labels[:n_train])
  logreg_accuracy = float((logreg.predict(x[n_train:]) == labels[n_train:]).mean())

  config = configs.get("annotate")
  config.model.hidden_dim, config.model.num_layers, config.model.num_heads, config.model.head_dims = 16, 1, 2, (16,)
  config.model.linear_path = True
  config.train.learning_rate = 0.01
  sequences = np.concatenate([x[:, None, :], np.ones((len(x), 1, 1), np.float32)], -1)  # one step, anchor channel
  state = training.create_train_state(jax.random.key(0), config, classes, genes + 1, 1)
  step = jax.jit(lambda s, b: training.train_step(s, b, jax.random.key(1), label_smoothing=0.0))
  for epoch in range(8):
    order = np.random.default_rng(epoch).permutation(n_train)
    for lo in range(0, n_train, 100):
      rows = order[lo:lo + 100]
      state, _ = step(state, {"x": sequences[rows], "lengths": np.ones(len(rows), np.int32),
                              "labels": labels[rows], "mask": np.ones(len(rows), np.float32)})
  logits = state.apply_fn({"params": state.params}, sequences[n_train:], np.ones(n_test, np.int32), train=False)
  accuracy = float((np.asarray(logits).argmax(1) == labels[n_train:]).mean())
  assert logreg_accuracy > 0.6  # a signal there is to find
  assert accuracy >= logreg_accuracy - 0.02, (accuracy, logreg_accuracy)


def test_a_linear_start_makes_the_untrained_network_the_logistic_regression():
  """linear.fit is scikit-learn's LogisticRegression (C=1) fitted in JAX; start_params puts it in the linear path
  and zeroes the other path's last layer, so the network's first logits are the regression's."""
  from sklearn.linear_model import LogisticRegression

  rng = np.random.default_rng(1)
  x = rng.normal(size=(600, 5)).astype(np.float32)
  labels = (x @ rng.normal(size=(5, 3)) + rng.gumbel(size=(600, 3))).argmax(1)
  kernel, bias = linear.fit(x, labels, 3)
  reference = LogisticRegression(max_iter=1000).fit(x, labels)
  np.testing.assert_allclose(kernel, reference.coef_.T, atol=2e-3)
  np.testing.assert_allclose(bias - bias.mean(), reference.intercept_ - reference.intercept_.mean(), atol=2e-3)
  weighted, _ = linear.fit(x, labels, 3, class_weights=np.array([5.0, 1.0, 1.0]))
  assert np.abs(weighted - kernel).max() > 0.01  # class weights enter the loss

  config = configs.get("annotate")
  config.model.hidden_dim, config.model.num_layers, config.model.num_heads, config.model.head_dims = 8, 1, 2, (8,)
  config.model.linear_path = True
  sequences = np.concatenate([x[:, None, :], np.ones((len(x), 1, 1), np.float32)], -1)
  state = training.create_train_state(jax.random.key(0), config, 3, 6, 1)
  params = linear.start_params(state.params, sequences[:, 0], labels)
  logits = state.apply_fn({"params": params}, sequences, np.ones(len(x), np.int32), train=False)
  np.testing.assert_allclose(logits, sequences[:, 0] @ params["linear_path"]["kernel"] + params["linear_path"]["bias"],
                             atol=1e-4)
  np.testing.assert_array_equal(np.asarray(logits).argmax(1), reference.predict(x))
