"""How unlike every training cell a cell is, read from the whole transcriptome rather than the model's genes.

A type missing from the reference is not among the classifier's genes (chosen without it), so scores of the
classifier's logits hardly see its programme. `fit` learns, from the training cells alone, a wider view: the
`N_GENES` most variable genes (Seurat v3 on counts), each standardised as the training cells', a PCA of them,
and a seeded sample of training cells in that PCA as the reference. A cell is unlike the training cells in two
ways, and the score reads both: far from its `K` nearest reference cells within the PCA (an exact
search, neighbours.py), or expressing many genes above what almost any training cell does (the count of
genes above their training `UPPER` quantile: a programme no training type runs raises genes that vary little
in training, which distances in a PCA of the training cells barely see, and a strong programme shrinks every
other gene's normalised value, which the count does not mistake for likeness). Each is standardised by its mean
and spread over other training cells (not in the reference), and the score (`Novelty.score`) is minus the larger
of the two: higher for cells like the training cells. Fitted with the run's data (dataset.py), saved with the
run (workdir.py), applied to any query by annotate (annotation.py); unassigned.py combines it with the
classifier's score.
"""

import dataclasses

import numpy as np
import scipy.sparse as sp

from cardiac_jax import neighbours, preprocess

# The most variable genes the score reads, the PCA's components, the reference cells kept, the neighbours the
# distance is averaged over. Chosen on the validation donors of the built-in data with each type left out of the
# training cells in turn (no test donor seen; docs/trust.md): 3,000 genes or 50 components did no better.
N_GENES = 2000
N_COMPONENTS = 30
MAX_REFERENCE = 5000
K = 10
# Training cells outside the reference that the two parts are standardised on.
MAX_STANDARDISING = 2000
# A gene counts as raised in a cell above this quantile of its training values.
UPPER = 0.995
# Rows scored at a time (bounds the distance matrices' memory: BLOCK x MAX_REFERENCE floats).
BLOCK = 20_000


@dataclasses.dataclass(frozen=True)
class Novelty:
  """A fitted novelty score.

  Attributes:
    genes: the genes read, in order.
    kind, target_sum: how the training X was normalised (preprocess.log_columns).
    mean, scale: [genes] float32 of the training cells' log expression.
    components: [N_COMPONENTS, genes] float32 principal axes of the standardised training cells.
    reference: [cells, N_COMPONENTS] float32 the reference cells' coordinates.
    upper: [genes] float32 the UPPER quantile of each gene's log expression over the reference cells.
    standard: [2, 2] float32 mean and standard deviation (columns) of the neighbour distance and of the count of
      raised genes (rows) over training cells outside the reference.
  """

  genes: tuple
  kind: str
  target_sum: float
  mean: np.ndarray
  scale: np.ndarray
  components: np.ndarray
  reference: np.ndarray
  upper: np.ndarray
  standard: np.ndarray

  def parts(self, x, names, kind):
    """[rows, 2] float32 of a CSR block of a matrix [rows, genes `names`] holding `kind` values (a gene it lacks is
    read as its training mean): each cell's mean distance to its K nearest reference cells within the PCA, and
    how many genes it expresses above their `upper` value. Read from the non-zero values alone (no dense copy)."""
    columns = preprocess.gene_columns(self.genes, names)
    present = np.flatnonzero(columns >= 0)
    log_x = preprocess.log_columns(preprocess.as_csr(x), columns[present], kind, self.target_sum, dense=False)
    if not log_x.shape[0]:
      return np.zeros((0, 2), np.float32)
    coordinates = preprocess.project_sparse(log_x, present, self.mean, self.scale, self.components)
    raised = log_x.copy()
    raised.data = (log_x.data > self.upper[present][log_x.indices]).astype(np.float32)
    lacking = np.ones(len(self.genes), bool)
    lacking[present] = False
    counts = np.asarray(raised.sum(1)).ravel() + (self.mean > self.upper)[lacking].sum()
    near = neighbours.nearest(coordinates, self.reference, K)[1].mean(1)
    return np.stack([near, counts], 1).astype(np.float32)

  def score_block(self, x, names, kind):
    """[rows] float32 novelty score of a CSR block of a matrix [rows, genes `names`] holding `kind` values: minus
    the larger of the two standardised `parts`; higher is more like the training cells
    (preprocess.Preprocessing.transform's `also`)."""
    standardised = (self.parts(x, names, kind) - self.standard[:, 0]) / self.standard[:, 1]
    return -standardised.max(1, initial=-np.inf).astype(np.float32)

  def arrays(self):
    """{name: array}: everything `from_arrays` needs (workdir.py saves them in one .npz)."""
    return {"genes": np.asarray(self.genes, str), "kind": np.asarray(self.kind), "target_sum": np.asarray(
        self.target_sum), "mean": self.mean, "scale": self.scale, "components": self.components,
            "reference": self.reference, "upper": self.upper, "standard": self.standard}

  @classmethod
  def from_arrays(cls, arrays):
    floats = ("mean", "scale", "components", "reference", "upper", "standard")
    return cls(tuple(str(g) for g in arrays["genes"]), str(arrays["kind"]), float(arrays["target_sum"]),
               *(np.asarray(arrays[name], np.float32) for name in floats))


def _ranked(x, rows, genes, n_top, kind, target_sum):
  """The `n_top` most variable of `genes` among `rows` of CSR x: Seurat v3's rule on counts, else the variance
  of the log values; [n_top] int indices into x's genes, increasing."""
  if kind == "counts":
    return preprocess.seurat_v3_ranking(x, rows, genes, n_top)
  total, squares = np.zeros(len(genes)), np.zeros(len(genes))
  for lo in range(0, len(rows), BLOCK):
    part = preprocess.log_columns(x[rows[lo : lo + BLOCK]], genes, kind, target_sum, dense=False).astype(np.float64)
    total += np.asarray(part.sum(0)).ravel()
    squares += np.asarray(part.multiply(part).sum(0)).ravel()
  variance = squares / len(rows) - (total / len(rows)) ** 2
  return np.sort(genes[np.argsort(-variance, kind="stable")[:n_top]])


def fit(x, names, train_cells, kind, target_sum, seed, n_genes=N_GENES):
  """The Novelty of the training cells `train_cells` of x [cells, genes] (gene `names`, values of `kind`).

  Genes are ranked among those detected in at least 3 training cells; the PCA and the reference use a seeded
  sample of at most MAX_REFERENCE training cells, and the distances are standardised on at most MAX_STANDARDISING
  others (with fewer training cells than that, a fifth of them).
  """
  x, train_cells = preprocess.as_csr(x), np.asarray(train_cells)
  detected = np.flatnonzero((preprocess.detected_in(x, train_cells) >= 3)
                            & preprocess.first_of_each_name(names, "<novelty genes>"))
  genes = _ranked(x, train_cells, detected, min(n_genes, len(detected)), kind, target_sum)
  rng = np.random.default_rng([seed, 5])
  order = rng.permutation(train_cells)
  sample = np.sort(order[:MAX_REFERENCE])
  held = np.sort(order[MAX_REFERENCE : MAX_REFERENCE + MAX_STANDARDISING])
  if not len(held):  # few training cells: standardise on a fifth of them, the rest the reference
    sample, held = np.sort(order[len(order) // 5 :]), np.sort(order[: len(order) // 5])
  log_x = preprocess.log_columns(x[sample], genes, kind, target_sum)
  mean, scale, axes = preprocess.principal_axes(log_x, N_COMPONENTS)
  model = Novelty(tuple(np.asarray(names)[genes].astype(str)), kind, float(target_sum), mean, scale, axes,
                  np.zeros((0, len(axes)), np.float32), np.quantile(log_x, UPPER, axis=0).astype(np.float32),
                  np.zeros((2, 2), np.float32))
  every = np.arange(len(genes))
  reference = preprocess.project_sparse(sp.csr_matrix(log_x), every, mean, scale, axes)
  model = dataclasses.replace(model, reference=reference)
  held_parts = model.parts(x[held], names, kind).astype(np.float64)
  spread = np.maximum(held_parts.std(0), 1e-6)
  return dataclasses.replace(model, standard=np.stack([held_parts.mean(0), spread], 1).astype(np.float32))


def score_matrix(model, x, names, kind):
  """[cells] float32 scores of every row of x [cells, genes `names`] holding `kind` values, BLOCK rows at a time."""
  x = preprocess.as_csr(x)
  out = [model.score_block(x[lo : lo + BLOCK], names, kind) for lo in range(0, x.shape[0], BLOCK)]
  return np.concatenate(out) if out else np.zeros(0, np.float32)
