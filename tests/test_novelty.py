"""The whole-transcriptome novelty score (novelty.py): fitted on training cells, applied to any query."""

import numpy as np
import scipy.sparse as sp
from sklearn.metrics import roc_auc_score

from cardiac_jax import novelty, preprocess


def _counts(rng, types, n_genes=600):
  """Poisson counts [cells, n_genes] of cells of `types`: type t < 3 raises genes 20t..20t+19 (the known types'
  programmes, 1.5 each); type 3, the novel one, raises genes 400..439 by 3 (as strongly as a marker), which no
  known type moves."""
  log_mean = np.full((len(types), n_genes), np.log(1.0))
  for t in range(3):
    log_mean[types == t, 20 * t : 20 * t + 20] += 1.5
  log_mean[types == 3, 400:440] += 3.0
  return sp.csr_matrix(rng.poisson(np.exp(log_mean)).astype(np.float32))


def test_a_programme_on_genes_outside_the_classifiers_is_scored_novel():
  rng = np.random.default_rng(0)
  train_types = rng.integers(0, 3, 900)
  query_types = np.r_[rng.integers(0, 3, 300), np.full(100, 3)]
  x_train, x_query = _counts(rng, train_types), _counts(rng, query_types)
  names = np.array([f"g{i}" for i in range(x_train.shape[1])])
  # the classifier's genes, chosen on the training cells, do not include the novel programme's
  ranked = np.flatnonzero(preprocess.detected_in(x_train, np.arange(900)) >= 3)
  classifier_genes = preprocess.anova_ranking(x_train, np.arange(900), train_types, ranked, 40, "counts", 1e4)
  assert not set(classifier_genes) & set(range(400, 440))
  model = novelty.fit(x_train, names, np.arange(900), "counts", 1e4, seed=0, n_genes=300)
  assert set(range(400, 440)) & {int(g[1:]) for g in model.genes}  # the variable genes reach beyond them
  scores = novelty.score_matrix(model, x_query, names, "counts")
  assert scores.shape == (400,) and scores.dtype == np.float32
  assert roc_auc_score(query_types < 3, scores) > 0.95
  # saved and read back, the same scores; a query whose genes come in another order, the same scores
  again = novelty.Novelty.from_arrays(model.arrays())
  np.testing.assert_array_equal(novelty.score_matrix(again, x_query, names, "counts"), scores)
  order = rng.permutation(len(names))
  np.testing.assert_allclose(novelty.score_matrix(model, x_query[:, order], names[order], "counts"), scores,
                             rtol=1e-5)


def test_a_gene_the_query_lacks_is_read_as_its_training_mean():
  """The parts are read from the non-zero values alone; against the dense formula, with the lacking genes set to
  their training mean: coordinates standardised, clipped and projected (preprocess.project), the mean distance to
  the K nearest reference cells by brute force, genes above `upper` counted."""
  rng = np.random.default_rng(1)
  types = rng.integers(0, 3, 400)
  x = _counts(rng, types).tolil()
  names = np.array([f"g{i}" for i in range(x.shape[1])])
  model = novelty.fit(x.tocsr(), names, np.arange(300), "counts", 1e4, seed=0, n_genes=200)
  lacking = np.isin(names, model.genes[:5])
  x[:, np.flatnonzero(lacking)] = 0  # so that a cell's total is the same with or without those genes
  query = x.tocsr()[300:]
  log_x = preprocess.log_columns(query, preprocess.gene_columns(model.genes, names), "counts", 1e4)
  log_x[:, :5] = model.mean[:5]
  coordinates = preprocess.project(log_x, model.mean, model.scale, model.components)
  distance = np.sqrt(((coordinates[:, None].astype(np.float64) - model.reference[None]) ** 2).sum(-1))
  expected = np.stack([np.sort(distance, 1)[:, : novelty.K].mean(1), (log_x > model.upper).sum(1)], 1)
  parts = model.parts(query[:, ~lacking], names[~lacking], "counts")
  np.testing.assert_allclose(parts, expected, rtol=1e-4)
  np.testing.assert_array_equal(novelty.score_matrix(model, query[:, ~lacking], names[~lacking], "counts"),
                                model.score_block(query[:, ~lacking], names[~lacking], "counts"))
  assert len(model.reference) == 240 and model.components.shape == (novelty.N_COMPONENTS, 200)
  assert model.standard[:, 1].min() > 0
