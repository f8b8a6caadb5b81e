"""What the experiments share: mean and sd over seeds or runs, one number format for them, and "train unless the
run finished"."""

import numpy as np

from cardiac_jax import training
from cardiac_jax import workdir as rundir


def mean_sd(values):
  """(mean, sample standard deviation) of values over seeds or runs; the deviation is 0 for a single value."""
  values = np.asarray(values, float)
  return float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else 0.0


def differences(values):
  """(mean, sd, how many are above 0) of paired differences over seeds or runs (a method minus its reference)."""
  values = np.asarray(values, float)
  return (*mean_sd(values), int((values > 0).sum()))


def format_pm(mean, sd, digits=4, signed=False):
  """'mean ± sd', e.g. '0.7951 ± 0.0229' (signed: '+0.0210 ± 0.0048', for differences)."""
  return f"{mean:{'+' if signed else ''}.{digits}f} ± {sd:.{digits}f}"


def pm(values, digits=4):
  """'mean ± sd' of values (mean_sd)."""
  return format_pm(*mean_sd(values), digits)


def trained(config, workdir):
  """Trains a run into workdir unless it finished there already with this config; returns workdir."""
  rundir.check_same_config(config, workdir)
  if not rundir.finished(workdir):
    training.train_and_evaluate(config, workdir)
  return workdir
