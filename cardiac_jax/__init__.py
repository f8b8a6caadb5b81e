"""cardiac_jax: the attention-enhanced BiLSTM for temporal cardiac cell-type classification, in JAX/Flax.

The data's journey, one module per step: readers (files -> AnnData), preprocess, split, sequences, batches,
model, train, metrics, report; dataset chains the data steps for a config, simulate writes the built-in data,
inference turns a trained workdir into a Bundle that labels any AnnData (annotate); interpret says which genes
and days a label leans on (explain) and scores that against the simulator's true genes; calibrate and trust
measure how far a label's confidence can be trusted; parallel spreads batches over a device mesh and processes.
"""

from cardiac_jax.dataset import Dataset, prepare
from cardiac_jax.errors import ConfigError, DataError
from cardiac_jax.inference import Bundle, annotate, annotate_file, load
from cardiac_jax.interpret import attribute, explain
from cardiac_jax.preprocess import Preprocessing
from cardiac_jax.model import EnhancedCardiacRNN, count_params
from cardiac_jax.readers import read_geo, read_h5ad, read_visium
from cardiac_jax.report import evaluate
from cardiac_jax.sequences import LabelEncoding, Sequences
from cardiac_jax.simulate import programmes, true_genes, write_gse175634, write_visium
from cardiac_jax.train import quiet_dependency_logs, train_and_evaluate, use_compilation_cache

__all__ = [
    "Bundle",
    "ConfigError",
    "DataError",
    "Dataset",
    "EnhancedCardiacRNN",
    "LabelEncoding",
    "Preprocessing",
    "Sequences",
    "annotate",
    "annotate_file",
    "attribute",
    "count_params",
    "evaluate",
    "explain",
    "load",
    "prepare",
    "programmes",
    "quiet_dependency_logs",
    "read_geo",
    "read_h5ad",
    "read_visium",
    "train_and_evaluate",
    "true_genes",
    "use_compilation_cache",
    "write_gse175634",
    "write_visium",
]
