"""A config checked before anything runs: every field a known one (the closest name suggested), every value
one the run can take. Each problem is one ConfigError naming the field."""

import difflib
import math

from cardiac_jax.errors import ConfigError

SPLIT_COUNT = 3  # train, validation, test


def closest(name, known):
  """'; did you mean X?' for the known name closest to `name` (difflib), or ''."""
  match = difflib.get_close_matches(name, list(known), n=1, cutoff=0.6)
  return f"; did you mean {match[0]!r}?" if match else ""


def check_fields(config, reference, where="config"):
  """Raises ConfigError for a section or field of `config` that `reference` (configs/default.py) lacks."""
  for section, fields in config.items():
    if section not in reference:
      raise ConfigError(f"{where}: unknown config field {section!r}{closest(section, reference.keys())}")
    if not hasattr(fields, "items") or not hasattr(reference[section], "keys"):
      continue
    for field in fields.keys():
      if field not in reference[section]:
        raise ConfigError(f"{where}: unknown config field '{section}.{field}'"
                          f"{closest(field, reference[section].keys())}")


def _rules(config):
  """(field, is the value acceptable, what it must be) for each value a run needs."""
  model, data, train, split = config.model, config.data, config.train, config.split
  fractions = tuple(split.fractions)
  width = model.hidden_dim * (2 if model.bidirectional else 1)
  return (
      ("seed", isinstance(config.seed, int) and config.seed >= 0, "a whole number >= 0"),
      ("split.fractions", len(fractions) == SPLIT_COUNT, "three fractions (train, validation, test)"),
      ("split.fractions", all(f > 0 for f in fractions), "fractions > 0 (a split of 0 would be empty)"),
      ("split.fractions", math.isclose(sum(fractions), 1.0, abs_tol=1e-6), "fractions that sum to 1"),
      ("split.max_train_cells", split.max_train_cells >= 0, ">= 0 (0: every training cell)"),
      ("split.max_train_cells", split.max_train_cells == 0 or split.unit != "sequence",
       "0 with split.unit='sequence' (a small reference draws cells; that unit splits sequences)"),
      ("model.hidden_dim", model.hidden_dim >= 1, ">= 1"),
      ("model.num_layers", model.num_layers >= 1, ">= 1"),
      ("model.num_heads", model.num_heads >= 1 and (not model.use_attention or width % model.num_heads == 0),
       f"a divisor of the attention width {width} (model.hidden_dim x directions)"),
      ("model.dropout", 0 <= model.dropout < 1, "in [0, 1)"),
      ("model.input_dropout", 0 <= model.input_dropout < 1, "in [0, 1)"),
      ("data.n_genes", data.n_genes >= 1, ">= 1"),
      ("data.n_per_type", data.sequence_mode != "type" or data.n_per_type >= 1,
       ">= 1 with data.sequence_mode='type' (sequences per cell type)"),
      ("data.n_spatial", data.n_spatial >= 0, ">= 0"),
      ("train.num_epochs", train.num_epochs >= 1, ">= 1"),
      ("train.learning_rate", train.learning_rate > 0 and math.isfinite(train.learning_rate), "a finite number > 0"),
      ("train.batch_size", train.batch_size >= 0, ">= 0 (0: adaptive)"),
  )


def check_choices(config, choices):
  """Raises ConfigError for the first enumerated field whose value is not among its choices ({'section.field' or
  'field': allowed values}), so that a misspelt variant is caught before any data are read."""
  for field, allowed in choices.items():
    section, _, name = field.rpartition(".")
    value = (config[section] if section else config)[name]
    if value not in allowed:
      raise ConfigError(f"config: {field}={value!r} must be one of {list(allowed)}{closest(str(value), allowed)}")


def check_values(config):
  """Raises ConfigError for the first value of `config` that a run cannot take."""
  for field, ok, expected in _rules(config):
    if not ok:
      section, _, name = field.rpartition(".")
      value = config[section][name] if section else config[name]
      raise ConfigError(f"config: {field}={value!r} must be {expected}")
