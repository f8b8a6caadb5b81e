"""Simulated look-alikes of GSE175634 (scRNA-seq) and of a Visium slide, in the real layouts.

GEO cannot be reached from the machines this project runs on, so the loaders are built to the
public file names and tested on data sets written here in exactly that layout:

* `write_gse175634`: GEO's GSE175634 files (genes x cells MatrixMarket counts, gene and cell
  indices, cell metadata, optionally the SCTransform-like matrix) for a simulated
  iPSC-to-cardiomyocyte differentiation: 7 days, 7 cell types, several donors.
* `write_visium`: Space Ranger's `filtered_feature_bc_matrix/` and `spatial/tissue_positions.csv`
  for spots that mix a handful of cells from the same gene programs, in spatial domains.
* `ensure_simulated`: both, cached under a folder keyed by every argument.

Generative model (per cell): log mean = gene baseline + strength * (type program, partly mixed
with a lineage neighbour's) + day drift shared by all types + donor log-fold noise + cell-cycle
program; proportions are the softmax over genes, times a log-normal library size; counts are
negative binomial (gamma-Poisson with a per-gene dispersion). Markers are bursty (high
dispersion) and a cell's program strength varies, so a marker alone does not give the type away.

Everything is seeded from the arguments only (each chunk of cells from (seed, chunk index)), gzip
members carry mtime 0, so the same arguments give byte-identical files. Data sets are written into
a temporary folder next to the target and renamed into place, so a folder that exists is complete.
"""

import contextlib
import dataclasses
import gzip
import os
import pathlib
import shutil
import sys
import tempfile

import numpy as np
import pandas as pd

from cardiac_jax import integrity
from cardiac_jax.errors import DataError

TYPES = ("IPSC", "MES", "CMES", "PROG", "CM", "CF", "UNK")
DAYS = ("day0", "day1", "day3", "day5", "day7", "day11", "day15")
DAY_NUMBERS = tuple(int(day[3:]) for day in DAYS)

# Marker genes by which GSE175634's clusters were named (UNK: non-cardiac, endoderm-like genes).
MARKERS = {
  "IPSC": ("POU5F1", "NANOG", "SOX2", "LIN28A"),
  "MES": ("MIXL1", "TBXT", "EOMES"),
  "CMES": ("MESP1", "HAND1", "PDGFRA"),
  "PROG": ("ISL1", "NKX2-5", "GATA4", "APOA1"),
  "CM": ("TNNT2", "MYH6", "MYL7", "ACTN2"),
  "CF": ("COL1A1", "COL3A1", "POSTN", "VIM", "TAGLN"),
  "UNK": ("TTR", "AFP", "KRT8", "KRT18", "FGB"),
}

# Real genes that join each type's program moderately (after the markers in the gene list).
_SUPPORT = {
  "IPSC": ("DNMT3B", "L1TD1", "TDGF1", "DPPA4", "LEFTY1", "ZFP42", "PRDM14"),
  "MES": ("MSGN1", "TBX6", "FGF8", "CDX1", "LHX1", "CER1", "GSC"),
  "CMES": ("MESP2", "KDR", "BMP4", "FOXF1", "APLNR", "LEF1"),
  "PROG": ("TBX5", "TBX20", "MEF2C", "HAND2", "IRX4", "HEY1"),
  "CM": ("MYL4", "MYH7", "ACTC1", "TNNI1", "TNNC1", "NPPA", "NPPB", "PLN", "TTN", "RYR2", "MYL3"),
  "CF": ("DCN", "LUM", "FN1", "THY1", "ACTA2", "TCF21", "PDGFRB", "SPARC", "COL1A2"),
  "UNK": ("APOA2", "APOB", "TF", "ALB", "KRT19", "EPCAM"),
}
_S_GENES = ("PCNA", "MCM2", "MCM5", "TYMS", "RRM2")
_G2M_GENES = ("MKI67", "TOP2A", "CDK1", "CCNB1", "CENPF")
_HOUSEKEEPING = (
  "MALAT1", "ACTB", "GAPDH", "EEF1A1", "TPT1", "RPL13", "RPS18", "RPLP1", "FTL", "FTH1", "TMSB4X",
  "TMSB10", "B2M", "PTMA", "HSP90AB1", "NPM1", "TUBA1B", "HMGB1", "MT-CO1", "MT-ND4")
_MIN_GENES = 50

# Cell types a cell of each type may be partly transitioning to or from (confusable neighbours).
_NEIGHBOURS = {
  "IPSC": ("MES",),
  "MES": ("IPSC", "CMES", "CF"),
  "CMES": ("MES", "PROG", "CF"),
  "PROG": ("CMES", "CM"),
  "CM": ("PROG",),
  "CF": ("MES", "CMES"),
  "UNK": ("IPSC", "MES", "CMES", "PROG", "CM", "CF"),
}
# Type pairs that share a module of genes and partly express each other's markers.
_SHARED_PAIRS = (("IPSC", "MES"), ("MES", "CMES"), ("CMES", "PROG"), ("PROG", "CM"), ("MES", "CF"),
                 ("CMES", "CF"))
_MARKER_SPILLOVER = 0.3

# Fraction of each day's cells per type (rows DAYS, columns TYPES; rows need not sum to 1).
_COMPOSITION = (
  (0.95, 0.02, 0.00, 0.00, 0.00, 0.00, 0.03),
  (0.35, 0.58, 0.04, 0.00, 0.00, 0.00, 0.03),
  (0.03, 0.45, 0.45, 0.04, 0.00, 0.00, 0.03),
  (0.00, 0.08, 0.45, 0.40, 0.03, 0.01, 0.03),
  (0.00, 0.02, 0.10, 0.40, 0.30, 0.14, 0.04),
  (0.00, 0.00, 0.02, 0.15, 0.55, 0.24, 0.04),
  (0.00, 0.00, 0.00, 0.08, 0.60, 0.27, 0.05),
)
# Cells per day in GSE175634 (day0, day5 and day11 as reported; the rest share what is left).
_DAY_SIZES = (41330, 32650, 32650, 19508, 32650, 39342, 32656)
# Per type: mean S and G2M scores, library-size factor, progress along the differentiation (for
# pseudotime; UNK's is drawn at random), number of leiden clusters.
_CYCLE_MEANS = ((0.15, 0.20), (0.10, 0.10), (0.05, 0.05), (0.00, 0.00), (-0.10, -0.10),
                (0.00, -0.05), (0.00, 0.00))
_TYPE_LIBRARY = (1.0, 1.0, 0.9, 1.0, 1.3, 0.85, 0.7)
_TYPE_STAGE = (0.0, 0.25, 0.45, 0.6, 0.85, 0.8, np.nan)
_LEIDEN_SPLITS = (2, 1, 1, 2, 3, 2, 1)
_MEDIAN_LIBRARY = 8000.0

# Real YRI cell-line ids (GSE175634 used 19 YRI lines); more donors get made-up numeric ids.
_DONOR_IDS = ("18499", "18505", "18508", "18511", "18517", "18520", "18852", "18855", "18858",
              "18870", "18912", "19093", "19108", "19127", "19159", "19160", "19190", "19193",
              "19209")
_N_EXP_GROUPS = 3

# Visium slide: 78 rows x 128 columns of which those with (row + col) even hold a spot.
_VISIUM_ROWS = 78
_VISIUM_COLS = 128
_VISIUM_SPOTS = _VISIUM_ROWS * _VISIUM_COLS // 2
_SPATIAL_TYPES = ("CM", "CF", "PROG", "CMES", "MES")
_SPATIAL_TYPE_WEIGHTS = (0.4, 0.25, 0.15, 0.1, 0.1)

# Independent random streams, each seeded from (stream, seed, ...).
_STREAM_GENES, _STREAM_DONORS, _STREAM_CELLS, _STREAM_COUNTS, _STREAM_SCT = 1, 2, 3, 4, 5
_STREAM_SPOTS, _STREAM_SPOT_COUNTS = 6, 7
# Largest cells x genes block generated at once (bounds memory at any size).
_CHUNK_ELEMENTS = 5_000_000
_GZIP_LEVEL = 1

_GEO_FILES = ("GSE175634_cell_counts.mtx.gz", "GSE175634_gene_indices_counts.tsv.gz",
              "GSE175634_cell_indices.tsv.gz", "GSE175634_cell_metadata.tsv.gz")
_SCT_FILES = ("GSE175634_cell_counts_sctransform.mtx.gz",
              "GSE175634_gene_indices_counts_sctransform.tsv.gz")
_VISIUM_FILES = ("filtered_feature_bc_matrix/matrix.mtx.gz",
                 "filtered_feature_bc_matrix/features.tsv.gz",
                 "filtered_feature_bc_matrix/barcodes.tsv.gz", "spatial/tissue_positions.csv")


@dataclasses.dataclass(frozen=True)
class _GeneModel:
  """Gene-level parameters shared by the scRNA and Visium simulators (G genes, T types, D days).

  names: (G,) gene names. log_base: (G,) log share of each gene in an average cell's library.
  programs: (T, G) log-fold changes of each type. drift: (D, G) log-fold changes of each day, the
  same for all types. s_genes, g2m_genes: (G,) bool, genes raised by the cell's S / G2M score.
  dispersion: (G,) negative binomial dispersion (variance = mean + dispersion * mean^2).
  """
  names: tuple
  log_base: np.ndarray
  programs: np.ndarray
  drift: np.ndarray
  s_genes: np.ndarray
  g2m_genes: np.ndarray
  dispersion: np.ndarray


@dataclasses.dataclass(frozen=True)
class _Cells:
  """Per-cell latent variables, all (N,), in the order of the written cells.

  type, day, donor, neighbour: indices into TYPES, DAYS, donors and TYPES. mix: weight of the
  neighbour's program (transitional cells). strength: how fully the cell runs its programs.
  s_score, g2m_score: cell-cycle scores. library: expected UMIs.
  """
  type: np.ndarray
  day: np.ndarray
  donor: np.ndarray
  neighbour: np.ndarray
  mix: np.ndarray
  strength: np.ndarray
  s_score: np.ndarray
  g2m_score: np.ndarray
  library: np.ndarray


def _named_genes():
  """Real gene names in gene-list order: markers, type-program genes, cell cycle, housekeeping."""
  names = [g for t in TYPES for g in MARKERS[t]] + [g for t in TYPES for g in _SUPPORT[t]]
  names += list(_S_GENES) + list(_G2M_GENES) + list(_HOUSEKEEPING)
  return list(dict.fromkeys(names))


def _gene_names(n_genes):
  """(n_genes,) unique names: the real ones first, then synthetic SIMG00001, SIMG00002, ..."""
  named = _named_genes()[:n_genes]
  return tuple(named + [f"SIMG{i:05d}" for i in range(1, n_genes - len(named) + 1)])


def _log_uniform(rng, low, high, size):
  return rng.uniform(np.log(low), np.log(high), size)


def _gene_model(n_genes, seed):
  """The gene-level model for n_genes genes; depends on (n_genes, seed) only."""
  rng = np.random.default_rng([_STREAM_GENES, seed, n_genes])
  names = _gene_names(n_genes)
  index = {name: i for i, name in enumerate(names)}

  def present(genes):
    return np.array([index[g] for g in genes if g in index], dtype=np.int64)

  markers = {t: present(MARKERS[t]) for t in TYPES}
  support = {t: present(_SUPPORT[t]) for t in TYPES}
  s_idx, g2m_idx, house = present(_S_GENES), present(_G2M_GENES), present(_HOUSEKEEPING)
  all_markers = np.concatenate(list(markers.values()))
  named = len(_named_genes())
  generic = np.arange(min(named, n_genes), n_genes)

  # Baseline shares: named genes at fixed absolute shares (so markers look alike at any n_genes);
  # synthetic genes share the rest, 30% of them expressed with a wide log-normal spread and the
  # others nearly silent (about 2,000 genes detected per cell at 38,847 genes), none above 1%.
  log_base = np.zeros(n_genes)
  log_base[house] = _log_uniform(rng, 2e-3, 2e-2, len(house))
  log_base[all_markers] = _log_uniform(rng, 1e-5, 4e-5, len(all_markers))
  rest = np.concatenate([*support.values(), s_idx, g2m_idx])
  log_base[rest] = _log_uniform(rng, 2e-5, 1e-4, len(rest))
  if len(generic):
    on = rng.random(len(generic)) < 0.3
    z = np.where(on, rng.normal(0.0, 2.4, len(generic)), rng.normal(-6.0, 1.5, len(generic)))
    share = np.log(1.0 - np.exp(log_base[:named]).sum()) + z - np.log(np.exp(z).sum())
    log_base[generic] = np.minimum(share, np.log(0.01))

  dispersion = np.exp(rng.normal(np.log(0.4), 0.5, n_genes))
  dispersion[all_markers] = rng.uniform(0.8, 1.5, len(all_markers))

  # Type programs: markers strongly, real support genes and a few dozen synthetic genes moderately
  # (a quarter of those down), modules shared by neighbouring types, partial marker spillover.
  n_types = len(TYPES)
  programs = np.zeros((n_types, n_genes))
  free = rng.permutation(generic[np.argsort(-log_base[generic])[:len(generic) // 4]])
  n_specific = int(np.clip(n_genes // 60, 5, 40))
  n_shared = int(np.clip(n_genes // 120, 3, 20))
  # Disjoint gene sets (empty once the expressed synthetic genes run out, at small n_genes).
  sizes = [n_specific] * n_types + [n_shared] * len(_SHARED_PAIRS)
  gene_sets = np.split(free, np.cumsum(sizes))[:-1]
  for t, name in enumerate(TYPES):
    programs[t, markers[name]] = rng.uniform(2.5, 3.5, len(markers[name]))
    programs[t, support[name]] = rng.uniform(1.0, 2.0, len(support[name]))
    genes = gene_sets[t]
    sign = np.where(rng.random(len(genes)) < 0.25, -1.0, 1.0)
    programs[t, genes] = sign * rng.uniform(0.6, 1.4, len(genes))
  for k, (a, b) in enumerate(_SHARED_PAIRS):
    ia, ib = TYPES.index(a), TYPES.index(b)
    genes = gene_sets[n_types + k]
    programs[ia, genes] = programs[ib, genes] = rng.uniform(0.6, 1.4, len(genes))
    programs[ib, markers[a]] += _MARKER_SPILLOVER * programs[ia, markers[a]]
    programs[ia, markers[b]] += _MARKER_SPILLOVER * programs[ib, markers[b]]

  # Day drift, shared by all types, on 15% of the non-marker genes; days on a log scale.
  x = np.log1p(DAY_NUMBERS) / np.log1p(DAY_NUMBERS[-1])
  non_marker = np.setdiff1d(np.arange(n_genes), all_markers)
  drifting = rng.choice(non_marker, max(1, int(0.15 * len(non_marker))), replace=False)
  slope, bend = rng.normal(0.0, 0.7, len(drifting)), rng.normal(0.0, 0.4, len(drifting))
  drift = np.zeros((len(DAYS), n_genes))
  drift[:, drifting] = (2 * x[:, None] - 1) * slope + np.sin(np.pi * x)[:, None] * bend

  s_genes, g2m_genes = np.zeros(n_genes, bool), np.zeros(n_genes, bool)
  s_genes[s_idx], g2m_genes[g2m_idx] = True, True
  return _GeneModel(names, log_base, programs, drift, s_genes, g2m_genes, dispersion)


def programmes(n_genes=4000, seed=0):
  """The simulator's ground truth: each type's programme, {type: {gene name: log-fold change}}.

  A type's programme is the log-fold change that `write_gse175634(n_genes=n_genes, seed=seed)` adds to the
  log mean of its cells (scaled by each cell's strength and the data set's `signal`): its markers (2.5-3.5),
  its real support genes (1.0-2.0), its synthetic programme genes (0.6-1.4, a quarter of them lowered), the
  modules it shares with a neighbouring type (0.6-1.4, the same in both) and 0.3 of that neighbour's marker
  changes. Only nonzero entries, in gene-list order. The day drift, shared by all types, is not part of any
  programme. Built from the same gene model the writer draws (same streams), so it changes nothing written.
  """
  model = _gene_model(n_genes, seed)
  return {t: {model.names[g]: float(model.programs[i, g]) for g in np.flatnonzero(model.programs[i])}
          for i, t in enumerate(TYPES)}


def true_genes(n_genes=4000, seed=0):
  """Each type's true genes, {type: gene names, largest log-fold change first}: the genes its programme raises,
  and raises more than any other type's programme does (so a module shared equally by two types is neither's,
  and a neighbour's marker spillover stays the neighbour's).
  """
  model = _gene_model(n_genes, seed)
  out = {}
  for i, t in enumerate(TYPES):
    own, others = model.programs[i], np.delete(model.programs, i, axis=0).max(0)
    genes = np.flatnonzero((own > 0) & (own > others))
    out[t] = tuple(model.names[g] for g in genes[np.argsort(-own[genes], kind="stable")])
  return out


def _donor_effects(n_genes, n_donors, seed):
  """Per-donor gene log-fold noise (n_donors, n_genes) on 30% of genes, and library factors."""
  rng = np.random.default_rng([_STREAM_DONORS, seed, n_genes, n_donors])
  lfc = rng.normal(0.0, 0.2, (n_donors, n_genes)) * (rng.random(n_genes) < 0.3)
  return lfc, np.exp(rng.normal(0.0, 0.2, n_donors))


def _donor_ids(n_donors):
  """n_donors distinct numeric-looking cell-line ids, the real YRI ids first."""
  extra = [str(20001 + i) for i in range(max(0, n_donors - len(_DONOR_IDS)))]
  return (list(_DONOR_IDS) + extra)[:n_donors]


def _allocate(n, weights):
  """Integer counts summing to n: 1 for every positive weight, the rest by largest remainder.

  weights: (K,) non-negative. Returns (K,) int64; deterministic, so compositions are exact.
  """
  weights = np.asarray(weights, float)
  counts = (weights > 0).astype(np.int64)
  share = (n - counts.sum()) * weights / weights.sum()
  counts += np.floor(share).astype(np.int64)
  order = np.argsort(-(share - np.floor(share)), kind="stable")
  counts[order[:n - counts.sum()]] += 1
  return counts


def _barcodes(rng, groups):
  """(N,) random 16-letter ACGT barcodes, unique within each group id of groups (N,)."""
  codes = rng.integers(0, 4**16, len(groups), dtype=np.int64)
  while True:
    _, first = np.unique(groups.astype(np.int64) * 4**16 + codes, return_index=True)
    dup = np.ones(len(codes), bool)
    dup[first] = False
    if not dup.any():
      break
    codes[dup] = rng.integers(0, 4**16, dup.sum(), dtype=np.int64)
  digits = (codes[:, None] >> (2 * np.arange(15, -1, -1))) & 3
  letters = np.frombuffer(b"ACGT", np.uint8)[digits]
  return np.ascontiguousarray(letters).view("S16").ravel().astype(str)


def _simulate_cells(n_cells, n_donors, seed, donor_library, signal):
  """Draws every cell's latent variables and its metadata row.

  Returns (_Cells, metadata DataFrame with GSE175634's columns); cells are ordered by 10x lane
  (exp.grp x day) like a concatenation of libraries, random within a lane.
  """
  rng = np.random.default_rng([_STREAM_CELLS, seed, n_cells, n_donors])
  n_types = len(TYPES)
  composition = np.asarray(_COMPOSITION)
  composition = composition / composition.sum(1, keepdims=True)
  joint = np.asarray(_DAY_SIZES, float)[:, None] * composition
  counts = _allocate(n_cells, joint.ravel())
  day, type_ = np.divmod(np.repeat(np.arange(joint.size), counts), n_types)

  # Donors: uneven contributions, and lines differ a little in how well they make each type.
  propensity = rng.dirichlet(np.full(n_donors, 4.0))[:, None] * np.exp(
    rng.normal(0.0, 0.4, (n_donors, n_types)))
  donor = np.zeros(n_cells, np.int64)
  for t in range(n_types):
    sel = type_ == t
    donor[sel] = rng.choice(n_donors, sel.sum(), p=propensity[:, t] / propensity[:, t].sum())
  group = rng.permutation(np.arange(n_donors) % min(_N_EXP_GROUPS, n_donors))[donor]
  lane_key = group * len(DAYS) + day
  order = np.lexsort((rng.random(n_cells), lane_key))
  day, type_, donor, group, lane_key = (a[order] for a in (day, type_, donor, group, lane_key))
  lane = np.unique(lane_key, return_inverse=True)[1] + 1

  neighbour = np.zeros(n_cells, np.int64)
  for t, name in enumerate(TYPES):
    sel = type_ == t
    neighbour[sel] = rng.choice([TYPES.index(u) for u in _NEIGHBOURS[name]], sel.sum())
  mix = rng.beta(1.0, 5.0, n_cells)
  strength = signal * rng.beta(5.0, 2.0, n_cells)
  cycle = np.asarray(_CYCLE_MEANS)[type_]
  s_score = np.round(cycle[:, 0] + rng.normal(0.0, 0.1, n_cells), 4)
  g2m_score = np.round(cycle[:, 1] + rng.normal(0.0, 0.12, n_cells), 4)
  library = np.maximum(300.0, _MEDIAN_LIBRARY * np.exp(rng.normal(0.0, 0.55, n_cells))
                       * np.asarray(_TYPE_LIBRARY)[type_] * donor_library[donor])
  cells = _Cells(type_, day, donor, neighbour, mix, strength, s_score, g2m_score, library)

  # Leiden clusters follow type (split by day within a type), with some noise; 0 = largest.
  splits = np.asarray(_LEIDEN_SPLITS)
  days_present = composition > 0
  first = days_present.argmax(0)
  span = len(DAYS) - days_present[::-1].argmax(0) - first
  sub = (splits[type_] * (day - first[type_])) // span[type_]
  noisy = rng.random(n_cells) < 0.2
  sub[noisy] = rng.integers(0, splits[type_[noisy]])
  cluster = np.concatenate([[0], np.cumsum(splits)[:-1]])[type_] + sub
  wrong = rng.random(n_cells) < 0.03
  cluster[wrong] = rng.integers(0, splits.sum(), wrong.sum())
  sizes = np.bincount(cluster, minlength=splits.sum())
  rank = np.empty_like(sizes)
  rank[np.argsort(-sizes, kind="stable")] = np.arange(len(sizes))

  stage = np.asarray(_TYPE_STAGE)[type_]
  stage = np.where(np.isnan(stage), rng.random(n_cells), stage)
  x = np.log1p(np.asarray(DAY_NUMBERS)[day]) / np.log1p(DAY_NUMBERS[-1])
  pseudotime = np.clip(0.05 + 0.5 * x + 0.45 * stage + rng.normal(0.0, 0.04, n_cells), 0.0, 1.0)
  pseudotime[rng.random(n_cells) < 0.01] = np.nan

  donors = np.asarray(_donor_ids(n_donors))
  names = np.char.add(np.char.add(_barcodes(rng, lane), "-1_"), lane.astype(str))
  metadata = pd.DataFrame({
    "cell": names,
    "exp.grp": np.char.add("E", (group + 1).astype(str)),
    "sample": np.char.add(np.char.add(donors[donor], "_"),
                          np.asarray(DAY_NUMBERS)[day].astype(str)),
    "diffday": np.asarray(DAYS)[day],
    "individual": donors[donor],
    "S.Score": s_score,
    "G2M.Score": g2m_score,
    "CC.Difference": np.round(s_score - g2m_score, 4),
    "demux.dbl.prb": rng.beta(0.4, 40.0, n_cells),
    "leiden": rank[cluster],
    "type": np.asarray(TYPES)[type_],
    "dpt_pseudotime": np.round(pseudotime, 6),
  })
  return cells, metadata


def _sample_counts(mean, dispersion, rng):
  """Negative binomial counts (gamma-Poisson) with the given means (N, G) and dispersions (G,)."""
  gamma = rng.standard_gamma(np.broadcast_to(1.0 / dispersion, mean.shape))
  gamma *= dispersion
  gamma *= mean
  return rng.poisson(gamma)


def _cell_counts(model, donor_lfc, cells, lo, hi, rng):
  """UMI counts (hi - lo, G) of cells lo..hi-1."""
  sl = slice(lo, hi)
  mix = cells.mix[sl, None]
  eta = (1.0 - mix) * model.programs[cells.type[sl]] + mix * model.programs[cells.neighbour[sl]]
  eta *= cells.strength[sl, None]
  eta += model.log_base + model.drift[cells.day[sl]] + donor_lfc[cells.donor[sl]]
  eta += 1.5 * (np.maximum(cells.s_score[sl], 0.0)[:, None] * model.s_genes
                + np.maximum(cells.g2m_score[sl], 0.0)[:, None] * model.g2m_genes)
  eta -= eta.max(1, keepdims=True)
  np.exp(eta, out=eta)
  eta *= (cells.library[sl] / eta.sum(1))[:, None]
  return _sample_counts(eta, model.dispersion, rng)


def _chunk_bounds(n_items, n_genes):
  """(start, stop) of the chunks of items generated together: at most _CHUNK_ELEMENTS values."""
  size = int(np.clip(_CHUNK_ELEMENTS // n_genes, 1, 5000))
  return [(lo, min(lo + size, n_items)) for lo in range(0, n_items, size)]


def _format_lines(*columns):
  """ASCII lines of space-separated non-negative integers, one line per row of the columns (N,).

  Vectorised: the digits go right-aligned into an (N, width) byte table whose padding is dropped.
  """
  columns = [np.asarray(c, np.int64) for c in columns]
  widths = [len(str(int(c.max()))) if len(c) else 1 for c in columns]
  table = np.zeros((len(columns[0]), sum(widths) + len(columns)), np.uint8)
  end = 0
  for column, width in zip(columns, widths):
    rest = column.copy()
    for k in range(width):
      digit = (rest % 10 + 48).astype(np.uint8)
      table[:, end + width - 1 - k] = np.where((column >= 10**k) | (k == 0), digit, 0)
      rest //= 10
    end += width
    table[:, end] = ord(" ")
    end += 1
  table[:, -1] = ord("\n")
  return table[table != 0].tobytes()


@contextlib.contextmanager
def _gzip_open(path, mode="wb"):
  """A gzip member with mtime 0 and no file name, so equal content gives equal bytes."""
  with open(path, mode) as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0,
                                              compresslevel=_GZIP_LEVEL) as gz:
    yield gz


def _write_mtx(path, n_rows, n_cols, blocks):
  """Writes an n_rows x n_cols MatrixMarket coordinate integer matrix as R's writeMM does.

  blocks: iterable of (col_offset, block) with block (n, n_rows) integer: columns col_offset ..
  col_offset + n - 1 given as rows (cells x genes), in column order. The body goes to a temporary
  gzip file first, since the header needs the number of nonzeros; the file is the header member
  followed by the body's gzip bytes (a multi-member gzip stream reads as one).
  """
  path = pathlib.Path(path)
  body = path.with_name(path.name + ".body")
  nnz = 0
  with _gzip_open(body) as gz:
    for offset, block in blocks:
      col, row = np.nonzero(block)
      gz.write(_format_lines(row + 1, col + offset + 1, block[col, row]))
      nnz += len(col)
  with _gzip_open(path) as gz:
    gz.write(f"%%MatrixMarket matrix coordinate integer general\n{n_rows} {n_cols} {nnz}\n"
             .encode())
  with open(path, "ab") as out, open(body, "rb") as src:
    shutil.copyfileobj(src, out, 1 << 22)
  body.unlink()


def _write_table(path, frame, header=True):
  """Writes a DataFrame as gzipped TSV (no index; NaN as R's NA)."""
  text = frame.to_csv(sep="\t", index=False, header=header, lineterminator="\n", na_rep="NA",
                      float_format="%.6g")
  with _gzip_open(path) as gz:
    gz.write(text.encode())


def remove_stale_partials(out_dir):
  """Removes the temporary folders of out_dir left by a writer that was killed (kill -9 leaves no chance to
  clean up): `.{name}.{pid}.*.partial` whose process is gone. A live writer's folder is left alone."""
  for tmp in pathlib.Path(out_dir).parent.glob(f".{pathlib.Path(out_dir).name}.*.partial"):
    pid = tmp.name.split(".")[2]
    if not pid.isdigit() or not integrity.process_alive(int(pid)):
      shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def _atomic_dir(out_dir):
  """Yields a temporary folder next to out_dir, renamed to out_dir when the block completes.

  Raises FileExistsError if out_dir exists and is not an empty folder; on any error the temporary
  folder is removed, so out_dir either does not exist or holds a complete data set.
  """
  out_dir = pathlib.Path(out_dir)
  if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
    raise FileExistsError(f"{out_dir} already exists and is not empty; not overwriting it")
  out_dir.parent.mkdir(parents=True, exist_ok=True)
  remove_stale_partials(out_dir)
  tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.{os.getpid()}.", suffix=".partial",
                                      dir=out_dir.parent))
  try:
    yield tmp
    tmp.chmod(0o755)
    try:
      os.rename(tmp, out_dir)
    except OSError as e:
      raise FileExistsError(f"{out_dir} appeared while it was being written: {e}") from e
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise


def _check_seed(seed):
  if not isinstance(seed, (int, np.integer)) or seed < 0:
    raise ValueError(f"seed must be a non-negative integer, got {seed!r}")


def write_gse175634(out_dir, *, n_cells=20000, n_genes=4000, n_donors=19, seed=0,
                    sctransform=False, signal=1.0):
  """Writes a simulated data set in GEO's GSE175634 layout into out_dir (which must not exist yet).

  Files: GSE175634_cell_counts.mtx.gz (genes x cells UMI counts),
  GSE175634_gene_indices_counts.tsv.gz, GSE175634_cell_indices.tsv.gz,
  GSE175634_cell_metadata.tsv.gz and, with sctransform=True,
  GSE175634_cell_counts_sctransform.mtx.gz with GSE175634_gene_indices_counts_sctransform.tsv.gz
  (genes detected in >= 3 cells, in the original order; cells above the median library size
  binomially downsampled to it).

  signal scales every cell's type programs (markers included): lower is harder to classify.
  Memory is bounded at any size (cells are generated in chunks, twice with sctransform). Returns
  out_dir as a pathlib.Path.
  """
  n_min = len(TYPES) * len(DAYS)
  if n_cells < n_min:
    raise ValueError(f"n_cells must be at least {n_min} (types x days), got {n_cells}")
  if n_genes < _MIN_GENES:
    raise ValueError(f"n_genes must be at least {_MIN_GENES}, got {n_genes}")
  if n_donors < 1:
    raise ValueError(f"n_donors must be at least 1, got {n_donors}")
  _check_seed(seed)
  out_dir = pathlib.Path(out_dir).expanduser()
  model = _gene_model(n_genes, seed)
  donor_lfc, donor_library = _donor_effects(n_genes, n_donors, seed)
  cells, metadata = _simulate_cells(n_cells, n_donors, seed, donor_library, signal)
  chunks = _chunk_bounds(n_cells, n_genes)

  def raw_chunks():
    for i, (lo, hi) in enumerate(chunks):
      rng = np.random.default_rng([_STREAM_COUNTS, seed, n_cells, n_genes, n_donors, i])
      yield i, lo, _cell_counts(model, donor_lfc, cells, lo, hi, rng)

  detected = np.zeros(n_genes, np.int64)
  library = np.zeros(n_cells, np.int64)

  def raw_blocks():
    for _, lo, counts in raw_chunks():
      detected[:] += (counts > 0).sum(0)
      library[lo:lo + len(counts)] = counts.sum(1)
      yield lo, counts

  with _atomic_dir(out_dir) as tmp:
    _write_mtx(tmp / _GEO_FILES[0], n_genes, n_cells, raw_blocks())
    genes = pd.DataFrame({"gene_index": np.arange(1, n_genes + 1), "gene_name": model.names})
    _write_table(tmp / _GEO_FILES[1], genes)
    cell_index = pd.DataFrame({"cell_index": np.arange(1, n_cells + 1), "cell_name": metadata.cell})
    _write_table(tmp / _GEO_FILES[2], cell_index)
    _write_table(tmp / _GEO_FILES[3], metadata)
    if sctransform:
      kept = np.flatnonzero(detected >= 3)
      target = np.median(library)

      def corrected_blocks():
        for i, lo, counts in raw_chunks():
          rng = np.random.default_rng([_STREAM_SCT, seed, n_cells, n_genes, n_donors, i])
          keep = np.minimum(1.0, target / np.maximum(library[lo:lo + len(counts)], 1))
          yield lo, rng.binomial(counts[:, kept], keep[:, None])

      _write_mtx(tmp / _SCT_FILES[0], len(kept), n_cells, corrected_blocks())
      _write_table(tmp / _SCT_FILES[1], pd.DataFrame({
        "gene_index": np.arange(1, len(kept) + 1), "gene_name": np.asarray(model.names)[kept]}))
  return out_dir


def _hex_grid():
  """(array_row, array_col) of Visium's 4,992 spots, (S,) each: (row + col) even."""
  row, col = np.divmod(np.arange(_VISIUM_ROWS * _VISIUM_COLS), _VISIUM_COLS)
  on = (row + col) % 2 == 0
  return row[on], col[on]


def _spot_genes(model, n_genes, rng):
  """Indices (n_genes,) into the scRNA genes, ascending: markers, then the genes whose program
  log-fold changes differ most between types, then the rest at random."""
  marker_set = {g for t in TYPES for g in MARKERS[t]}
  is_marker = np.array([name in marker_set for name in model.names])
  spread = model.programs.max(0) - model.programs.min(0)
  order = np.lexsort((rng.random(len(spread)), -spread, ~is_marker))
  return np.sort(order[:n_genes])


def _spot_composition(xy, rng):
  """Cells of each type in each spot, (S, T) int, from Voronoi-like domains with mixed borders.

  xy: (S, 2) spot centres in units of the spot spacing. Each domain is dominated by one of the
  middle/late types; a spot mixes the domains near it (soft by distance) plus a little background.
  """
  n_domains = min(len(xy), len(_SPATIAL_TYPES) + len(xy) // 600)
  centres = xy[rng.choice(len(xy), n_domains, replace=False)]
  extra = rng.choice(len(_SPATIAL_TYPES), n_domains - len(_SPATIAL_TYPES), p=_SPATIAL_TYPE_WEIGHTS)
  domain_type = np.array([TYPES.index(t) for t in _SPATIAL_TYPES])[
    np.concatenate([rng.permutation(len(_SPATIAL_TYPES)), extra])]
  dist = np.linalg.norm(xy[:, None, :] - centres[None], axis=-1)
  soft = np.exp(-(dist - dist.min(1, keepdims=True)))  # borders mix over about one spot spacing
  soft /= soft.sum(1, keepdims=True)
  mixture = np.zeros((len(xy), len(TYPES)))
  np.add.at(mixture.T, domain_type, soft.T)
  background_types = [TYPES.index(t) for t in _SPATIAL_TYPES + ("UNK",)]
  background = np.zeros_like(mixture)
  background[:, background_types] = rng.dirichlet([0.5] * len(_SPATIAL_TYPES) + [0.2], len(xy))
  mixture = 0.85 * mixture + 0.15 * background
  n_cells = rng.integers(5, 16, len(xy))
  return np.stack([rng.multinomial(n, p / p.sum()) for n, p in zip(n_cells, mixture)])


def write_visium(out_dir, *, n_spots=4000, n_genes=2000, sc_n_genes=4000, seed=0):
  """Writes a simulated Visium slide in Space Ranger's layout into out_dir (must not exist yet).

  Files: filtered_feature_bc_matrix/{matrix.mtx.gz (features x barcodes), features.tsv.gz,
  barcodes.tsv.gz} for the n_spots in-tissue spots, and spatial/tissue_positions.csv (Space Ranger
  2.0+, all 4,992 spots). The genes are n_genes of write_gse175634's genes for (sc_n_genes, seed),
  from the same programs (late-day drift), so both data sets share names. Returns out_dir.
  """
  if not len(_SPATIAL_TYPES) <= n_spots <= _VISIUM_SPOTS:
    raise ValueError(f"n_spots must be in [{len(_SPATIAL_TYPES)}, {_VISIUM_SPOTS}], got {n_spots}")
  if sc_n_genes < _MIN_GENES:
    raise ValueError(f"sc_n_genes must be at least {_MIN_GENES}, got {sc_n_genes}")
  if not 1 <= n_genes <= sc_n_genes:
    raise ValueError(f"n_genes must be in [1, sc_n_genes={sc_n_genes}], got {n_genes}")
  _check_seed(seed)
  out_dir = pathlib.Path(out_dir).expanduser()
  model = _gene_model(sc_n_genes, seed)
  rng = np.random.default_rng([_STREAM_SPOTS, seed, n_spots, n_genes, sc_n_genes])
  genes = _spot_genes(model, n_genes, rng)

  # Tissue: the spots nearest the slide's centre under an irregular, wavy outline.
  row, col = _hex_grid()
  xy = np.stack([row * np.sqrt(3) / 2, col / 2], axis=1)
  offset = xy - xy.mean(0)
  angle = np.arctan2(offset[:, 0], offset[:, 1])
  phase = rng.uniform(0, 2 * np.pi, 2)
  wobble = 1 + 0.15 * np.sin(3 * angle + phase[0]) + 0.08 * np.sin(5 * angle + phase[1])
  in_tissue = np.zeros(len(row), bool)
  in_tissue[np.argsort(np.linalg.norm(offset, axis=1) / wobble, kind="stable")[:n_spots]] = True
  barcodes = np.char.add(_barcodes(rng, np.zeros(len(row), np.int64)), "-1")
  by_barcode = np.argsort(barcodes)
  spots = by_barcode[in_tissue[by_barcode]]

  composition = _spot_composition(xy[spots], rng)
  late = model.drift[DAYS.index("day11"):].mean(0)
  eta = model.log_base + model.programs + late
  profiles = np.exp(eta - eta.max(1, keepdims=True))
  profiles = (profiles / profiles.sum(1, keepdims=True))[:, genes]
  n_cells = composition.sum(1)
  library = n_cells * 900.0 * np.exp(rng.normal(0.0, 0.35, n_spots))

  def blocks():
    for i, (lo, hi) in enumerate(_chunk_bounds(n_spots, n_genes)):
      mean = composition[lo:hi] @ profiles * (library[lo:hi] / n_cells[lo:hi])[:, None]
      block_rng = np.random.default_rng(
        [_STREAM_SPOT_COUNTS, seed, n_spots, n_genes, sc_n_genes, i])
      yield lo, _sample_counts(mean, model.dispersion[genes], block_rng)

  with _atomic_dir(out_dir) as tmp:
    (tmp / "filtered_feature_bc_matrix").mkdir()
    (tmp / "spatial").mkdir()
    _write_mtx(tmp / _VISIUM_FILES[0], n_genes, n_spots, blocks())
    _write_table(tmp / _VISIUM_FILES[1], pd.DataFrame({
      "id": [f"ENSG{90000000000 + g + 1:011d}" for g in genes],
      "name": np.asarray(model.names)[genes], "type": "Gene Expression"}), header=False)
    _write_table(tmp / _VISIUM_FILES[2], pd.DataFrame({"barcode": barcodes[spots]}), header=False)
    pd.DataFrame({
      "barcode": barcodes[by_barcode],
      "in_tissue": in_tissue[by_barcode].astype(int),
      "array_row": row[by_barcode],
      "array_col": col[by_barcode],
      "pxl_row_in_fullres": np.round(1200 + 138.564 * row[by_barcode]).astype(int),
      "pxl_col_in_fullres": np.round(1300 + 80.0 * col[by_barcode]).astype(int),
    }).to_csv(tmp / _VISIUM_FILES[3], index=False, lineterminator="\n")
  return out_dir


def _complete(folder, files):
  """True if folder holds every one of files; DataError if it exists without some of them."""
  if not folder.exists():
    return False
  missing = [f for f in files if not (folder / f).is_file()]
  if missing:
    raise DataError(folder, f"incomplete simulated data set (missing {', '.join(missing)}); "
                            "delete the folder to simulate it again")
  return True


def _write_or_accept(folder, files, write, **kwargs):
  """Runs write(folder, **kwargs); a complete folder written meanwhile by another process is OK."""
  try:
    write(folder, **kwargs)
  except FileExistsError:
    if not _complete(folder, files):
      raise


def ensure_simulated(cache_dir, *, n_cells, n_genes, n_donors, n_spots, n_spot_genes, seed, signal=1.0,
                     sctransform=True):
  """The simulated GSE175634 (with its SCTransform-like matrix) and Visium folders, written once.

  Both live under `cache_dir/simulated/<key>/` (key from every argument, e.g.
  c20000_g4000_d19_s4000_sg2000_seed0_signal0.5) as `GSE175634/` and `visium/`; each is written only if it
  does not exist (folders appear complete or not at all). sctransform=False leaves the SCTransform-like
  matrix out (half the writing at full size; key suffix `_counts_only`). Returns (geo_dir, visium_dir).
  """
  key = f"c{n_cells}_g{n_genes}_d{n_donors}_s{n_spots}_sg{n_spot_genes}_seed{seed}_signal{signal:g}"
  key += "" if sctransform else "_counts_only"
  geo_files = _GEO_FILES + (_SCT_FILES if sctransform else ())
  base = pathlib.Path(cache_dir).expanduser() / "simulated" / key
  geo_dir, visium_dir = base / "GSE175634", base / "visium"
  if not _complete(geo_dir, geo_files):
    print(f"simulating GSE175634 ({n_cells:,} cells x {n_genes:,} genes) into {geo_dir}",
          file=sys.stderr)
    _write_or_accept(geo_dir, geo_files, write_gse175634, n_cells=n_cells,
                     n_genes=n_genes, n_donors=n_donors, seed=seed, sctransform=sctransform, signal=signal)
  if not _complete(visium_dir, _VISIUM_FILES):
    print(f"simulating Visium ({n_spots:,} spots x {n_spot_genes:,} genes) into {visium_dir}",
          file=sys.stderr)
    _write_or_accept(visium_dir, _VISIUM_FILES, write_visium, n_spots=n_spots,
                     n_genes=n_spot_genes, sc_n_genes=n_genes, seed=seed)
  return geo_dir, visium_dir
