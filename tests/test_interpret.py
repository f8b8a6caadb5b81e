"""Tests of cardiac_jax.interpret and of the simulator's ground truth (simulate.programmes, simulate.true_genes).

Small models (6 genes, hidden 8) and few shapes: every new shape is an XLA compile.
"""

import hashlib
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from cardiac_jax import interpret, simulate
from cardiac_jax.experiments import interpret_scores
from cardiac_jax import model as model_lib
from cardiac_jax.errors import ConfigError
from cardiac_jax.configs import tiny

GENES = 6
SMALL = dict(num_classes=3, hidden_dim=8, num_layers=1, num_heads=2, head_dims=(8,), dropout=0.0, input_dropout=0.0)
LENGTHS = np.array([5, 3, 1, 4], np.int32)


def _small_model(seed=0, anchored=False, **overrides):
  """(model, params, x [4, 5, features], lengths) with random parameters and zero padding."""
  features = GENES + int(anchored)
  model = model_lib.EnhancedCardiacRNN(**dict(SMALL, **overrides))
  x = np.random.default_rng(seed).normal(size=(4, 5, features)).astype(np.float32)
  x *= (np.arange(5)[None, :] < LENGTHS[:, None])[..., None]
  if anchored:
    x[..., -1] = 0.0
    x[np.arange(4), np.minimum(LENGTHS - 1, 1), -1] = 1.0
  params = model.init(jax.random.key(seed), jnp.asarray(x), jnp.asarray(LENGTHS), train=False)["params"]
  # Non-zero biases and larger weights, so that the logits move far from the baseline.
  leaves, tree = jax.tree_util.tree_flatten(params)
  keys = jax.random.split(jax.random.key(seed + 1), len(leaves))
  params = jax.tree_util.tree_unflatten(tree, [l * 1.5 + 0.2 * jax.random.normal(k, l.shape) for l, k in zip(leaves, keys)])
  return model, params, x, LENGTHS


@pytest.fixture(scope="module")
def anchored():
  """A random anchored model (anchor pooling), its inputs with garbage in one sequence's padding, and the
  attributions of each sequence to a class (256 points: this random model is rougher than a trained one)."""
  model, params, x, lengths = _small_model(seed=1, anchored=True, pooling="anchor")
  x = x.copy()
  x[2, 1:, :GENES] = 7.0  # the model masks padding; the attributions must be zero there whatever it holds
  attribute = interpret.make_attribution_fn(model.apply, params, GENES, steps=256)
  # Per sequence, the class whose centred logit moves most from the baseline (one compile for the three calls).
  results = [attribute(x, lengths, np.full(4, c, np.int32)) for c in range(SMALL["num_classes"])]
  best = np.abs(np.stack([np.asarray(r["logit"] - r["baseline_logit"]) for r in results])).argmax(0)
  result = {k: np.stack([np.asarray(results[c][k][i]) for i, c in enumerate(best)]) for k in results[0]}
  return x, lengths, result


def test_integrated_gradients_complete(anchored):
  _, _, result = anchored
  delta = result["logit"] - result["baseline_logit"]
  total = result["integrated_gradients"].sum((1, 2))
  assert np.abs(delta).max() > 0.3  # the check below is not trivially met
  np.testing.assert_allclose(total, delta, rtol=0.02, atol=0.01)
  # Gradient x input is a different (first-order) attribution: it does not sum to the logit change.
  assert not np.allclose(result["gradient_x_input"].sum((1, 2)), delta, atol=1e-3)
  summary = interpret.completeness(result)
  assert summary["fraction_within_tolerance"] == 1.0 and summary["sequences"] == 4


def test_padded_steps_and_anchor_channel_get_exactly_zero(anchored):
  _, lengths, result = anchored
  padded = np.arange(5)[None, :] >= lengths[:, None]
  for method in ("integrated_gradients", "gradient_x_input", "gradient"):
    a = result[method]
    assert (a[padded] == 0.0).all()
    assert (a[..., GENES] == 0.0).all()  # the anchor channel is kept at its value in the baseline
    assert (np.abs(a[~padded][:, :GENES]) > 0).mean() > 0.9


def test_path_points_integrate_polynomials_exactly():
  alphas, weights = interpret.path_points(8, power=3)
  assert (np.diff(np.asarray(alphas)) > 0).all() and float(alphas[0]) < 1e-3
  for k in range(4):
    assert float(jnp.sum(weights * alphas ** k)) == pytest.approx(1 / (k + 1), rel=1e-5)


def test_attention_is_sown_without_changing_the_logits():
  model, params, x, lengths = _small_model(seed=2)
  plain = model.apply({"params": params}, x, lengths, train=False)
  logits, state = model.apply({"params": params}, x, lengths, train=False, mutable=["intermediates"])
  np.testing.assert_array_equal(plain, logits)
  weights = np.asarray(interpret.make_attention_fn(model.apply, params)(x, lengths))
  assert weights.shape == (4, SMALL["num_heads"], 5, 5)
  valid = np.arange(5)[None, :] < lengths[:, None]
  # Valid queries spread their weight over valid keys only.
  for b in range(4):
    np.testing.assert_allclose(weights[b][:, valid[b]][..., valid[b]].sum(-1), 1.0, rtol=1e-5)
    assert (weights[b][:, valid[b]][..., ~valid[b]] == 0).all()
  pooled = interpret.pooled_attention(weights, lengths, np.zeros(4, np.int64), "mean")
  np.testing.assert_allclose(pooled.sum(-1), 1.0, rtol=1e-5)
  np.testing.assert_allclose(pooled[2, :, 0], 1.0, rtol=1e-6)  # a one-step sequence looks at its only step


def _trained_small(x, lengths, labels, epochs=5, **overrides):
  """(model, params) of a small 2-class model trained briefly (Adam, batches of 64) on x [n, steps, features]."""
  model = model_lib.EnhancedCardiacRNN(**dict(SMALL, num_classes=2, **overrides))
  params = model.init(jax.random.key(0), x[:2], lengths[:2], train=False)["params"]
  optimizer = optax.adam(1e-2)

  @jax.jit
  def step(params, opt_state, xb, lb, yb):
    def loss(p):
      logits = model.apply({"params": p}, xb, lb, train=False)
      return optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean()
    grads = jax.grad(loss)(params)
    updates, opt_state = optimizer.update(grads, opt_state)
    return optax.apply_updates(params, updates), opt_state

  opt_state = optimizer.init(params)
  for _ in range(epochs):
    for lo in range(0, len(x), 64):
      params, opt_state = step(params, opt_state, x[lo:lo + 64], lengths[lo:lo + 64], labels[lo:lo + 64])
  return model, params


def test_planted_gene_ranks_first():
  """Gene 2 alone decides the class (its sign, the same at every step); a briefly trained model's attributions
  put it first for both classes."""
  rng = np.random.default_rng(0)
  n, steps = 384, 3
  x = rng.normal(size=(n, steps, GENES)).astype(np.float32)
  labels = rng.integers(0, 2, n).astype(np.int32)
  x[:, :, 2] = (2 * labels[:, None] - 1) * (0.5 + np.abs(x[:, :, 2]))  # gene 2's sign is the class
  lengths = np.full(n, steps, np.int32)
  model, params = _trained_small(x, lengths, labels)
  logits = model.apply({"params": params}, x, lengths, train=False)
  right = np.asarray(logits.argmax(1)) == labels
  assert right.mean() > 0.9
  attribute = interpret.make_attribution_fn(model.apply, params, GENES, steps=16)
  result = attribute(x[right][:128], lengths[:128], labels[right][:128])
  for method in ("integrated_gradients", "gradient_x_input"):
    scores = interpret.gene_scores(np.asarray(result[method]), labels[right][:128], 2, GENES)
    table = interpret.ranking_table(method, scores, ("low", "high"), [f"g{i}" for i in range(GENES)])
    first = table[table["rank"] == 1].set_index("class").gene
    assert first.to_dict() == {"low": "g2", "high": "g2"}


def test_own_step_reads_the_anchored_cell():
  """Anchored sequences of 3 steps, the anchor at step 0 or 2: the anchor's gene 2 decides the class; the context
  steps carry it louder but in only 70% of the sequences, in gene 4 (the anchor's gene 4 is noise). The own-step
  attributions are those at each sequence's anchor step, and a briefly trained anchor-pooled model's put gene 2
  first for both classes; its own-step gradient ranks gene 2 first for the class it raises, last for the other."""
  rng = np.random.default_rng(1)
  n, steps = 384, 3
  labels = rng.integers(0, 2, n).astype(np.int32)
  sign = (2 * labels - 1) * np.where(rng.random(n) < 0.7, 1, -1)
  anchor = 2 * rng.integers(0, 2, n)
  rows = np.arange(n)
  x = np.zeros((n, steps, GENES + 1), np.float32)
  x[..., :GENES] = rng.normal(size=(n, steps, GENES))
  x[..., 4] = sign[:, None] * (1.0 + np.abs(x[..., 4]))
  x[rows, anchor, 2] = (2 * labels - 1) * (0.5 + np.abs(x[rows, anchor, 2]))
  x[rows, anchor, 4] = rng.normal(size=n)
  x[rows, anchor, GENES] = 1.0
  lengths = np.full(n, steps, np.int32)
  model, params = _trained_small(x, lengths, labels, pooling="anchor")
  right = np.asarray(model.apply({"params": params}, x, lengths, train=False).argmax(1)) == labels
  assert right.mean() > 0.85
  keep = np.flatnonzero(right)[:128]
  result = interpret.make_attribution_fn(model.apply, params, GENES, steps=16)(x[keep], lengths[keep], labels[keep])
  ig = np.asarray(result["integrated_gradients"])
  own = interpret.own_step(ig, anchor[keep])
  np.testing.assert_array_equal(own[:, 0], ig[np.arange(len(keep)), anchor[keep]])
  scores = interpret.gene_scores(own, labels[keep], 2, GENES)
  assert (scores.argmax(1) == 2).all()
  gradient = interpret.gene_scores(interpret.own_step(np.asarray(result["gradient"]), anchor[keep]), labels[keep], 2,
                                   GENES)
  assert gradient[1].argmax() == 2 and gradient[0].argmin() == 2


def test_by_day_sums_steps_by_their_time_point():
  values = np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 0.0]])
  times = np.array([[0, 2, 3], [1, 3, -1]])  # sequence 1 is padded at its last step
  table = interpret.by_day(values, times, np.array([0, 0]), n_classes=2, n_times=4)
  np.testing.assert_allclose(table[0], [0.5, 2.0, 1.0, 4.0])
  assert np.isnan(table[1]).all()


def test_precision_and_overlap():
  genes = ["a", "b", "c", "d", "e", "f", "g", "h", "i", "j", "k", "l"]
  ranked = {"m": {"X": ["a", "z1", "b", "c"] + genes[3:], "Y": genes[::-1]}}
  truth = {"X": ("a", "b", "c", "not_an_input"), "Y": ("a",), "Z": ("a",)}
  rows = interpret_scores.precision_table(ranked, truth, genes).set_index("class")
  assert rows.loc["X", "k"] == 3 and rows.loc["X", "r_precision"] == pytest.approx(2 / 3)
  assert rows.loc["X", "precision_at_10"] == pytest.approx(0.3)
  assert rows.loc["Y", "r_precision"] == 0.0 and "Z" not in rows.index
  other = {"m": {"X": ranked["m"]["X"][:10] + ["q"] * 10, "Y": genes}}
  overlap = interpret_scores.top_overlap([ranked, other], top=4).set_index("class")
  assert overlap.loc["X", "top4_overlap"] == 1.0 and overlap.loc["Y", "top4_overlap"] == 0.0


def test_true_genes_follow_the_programmes():
  programmes = simulate.programmes(n_genes=300, seed=0)
  truth = simulate.true_genes(n_genes=300, seed=0)
  assert set(truth) == set(simulate.TYPES)
  shared = {g for a, b in simulate._SHARED_PAIRS for g, v in programmes[a].items()
            if g.startswith("SIMG") and programmes[b].get(g) == v}
  for t in simulate.TYPES:
    assert set(simulate.MARKERS[t]) <= set(truth[t])
    lfc = [programmes[t][g] for g in truth[t]]
    assert lfc == sorted(lfc, reverse=True) and min(lfc) > 0
    for other in simulate.TYPES:
      if other != t:
        assert all(programmes[t][g] > programmes[other].get(g, 0.0) for g in truth[t])
  # A module shared equally by two types belongs to neither; some synthetic genes are lowered, never true.
  every_true = {g for genes in truth.values() for g in genes}
  assert shared and not shared & every_true
  lowered = {g for p in programmes.values() for g, v in p.items() if v < 0}
  assert lowered and not lowered & every_true


# sha256 of the files below as written by the simulator before programmes/true_genes existed (main at e869680).
SIMULATED_SHA256 = "a6a60c8dcd724fcbbb3b400207100459c80c5558132cd3a3b6083477bd19b6c1"


def test_simulated_data_unchanged(tmp_path):
  simulate.write_gse175634(tmp_path / "geo", n_cells=400, n_genes=300, n_donors=4, seed=3, sctransform=True,
                           signal=0.5)
  simulate.write_visium(tmp_path / "vis", n_spots=200, n_genes=150, sc_n_genes=300, seed=3)
  digest = hashlib.sha256()
  for path in sorted(pathlib.Path(tmp_path).rglob("*")):
    if path.is_file():
      digest.update(str(path.relative_to(tmp_path)).encode())
      digest.update(path.read_bytes())
  assert digest.hexdigest() == SIMULATED_SHA256


def test_ground_truth_needs_the_simulated_data():
  config = tiny.get_config()
  assert interpret_scores.ground_truth(config) == simulate.true_genes(config.sim.n_genes, config.sim.seed)
  config.data.source = "h5ad"
  with pytest.raises(ConfigError, match="simulated"):
    interpret_scores.ground_truth(config)
