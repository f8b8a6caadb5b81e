"""cardiac_jax: the attention-enhanced BiLSTM for temporal cardiac cell-type classification, in JAX/Flax, and a
tool that labels every cell of a new time course with it.

  import cardiac_jax as cj
  bundle = cj.train(reference, "runs/mine", label_key="type", time_key="diffday", donor_key="individual")
  result = cj.annotate(cj.load("runs/mine"), query)    # an AnnotationResult
  annotated = result.to_adata()

Modules, in the direction dependencies run: the data's journey (readers, preprocess, split, sequences, batches;
dataset chains them, simulate writes the built-in data), model (the networks by name), workdir (a run on disk),
training and predict (the one prediction path), annotation and report, then interpret and experiments/;
cli and commands/ are the console script.
"""

from cardiac_jax.annotation import AnnotationResult, annotate, annotate_file
from cardiac_jax.configs import get as get_config
from cardiac_jax.dataset import Dataset, prepare
from cardiac_jax.errors import ConfigError, DataError
from cardiac_jax.interpret import explain
from cardiac_jax.readers import read_geo, read_h5ad, read_visium
from cardiac_jax.report import evaluate
from cardiac_jax.simulate import write_gse175634, write_visium
from cardiac_jax.training import train, train_and_evaluate
from cardiac_jax.workdir import Bundle, load

__all__ = [
    "AnnotationResult",
    "Bundle",
    "ConfigError",
    "DataError",
    "Dataset",
    "annotate",
    "annotate_file",
    "evaluate",
    "explain",
    "get_config",
    "load",
    "prepare",
    "read_geo",
    "read_h5ad",
    "read_visium",
    "train",
    "train_and_evaluate",
    "write_gse175634",
    "write_visium",
]
