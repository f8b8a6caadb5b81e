"""The Python API in scverse's shape: train from an AnnData in memory, load the run, annotate an AnnData."""

import numpy as np
import pytest

import cardiac_jax as cj
from cardiac_jax import annotation, cli, readers, unassigned
from cardiac_jax import workdir as rundir


def test_train_from_an_anndata_in_memory_then_annotate_one(simulated, cache_dir, tmp_path):
  reference = readers.read_geo(simulated[0])
  config = cj.get_config("tiny")
  config.data.cache_dir = str(cache_dir)
  settings = {"data.sequence_mode": "anchored", "train.num_epochs": 1, "seed": 0}
  bundle = cj.train(reference, tmp_path / "run", label_key="type", time_key="diffday", donor_key="individual",
                    config=config, **settings)
  assert isinstance(bundle, cj.Bundle) and bundle.sequence_mode == "anchored"
  assert list(bundle.classes) == sorted(reference.obs["type"].astype(str).unique())
  stored = rundir.load_config(tmp_path / "run").data
  assert stored.source == "h5ad" and stored.label_key == "type" and stored.path.endswith(".h5ad")
  assert config.data.source == "simulated"  # the caller's config is not changed
  # the same AnnData is stored once, under the digest of its bytes: a second call finds the finished run
  again = cj.train(reference, tmp_path / "run", label_key="type", time_key="diffday", donor_key="individual",
                   config=config, **settings)
  assert rundir.load_config(tmp_path / "run").data.path == stored.path
  assert again.checkpoint == bundle.checkpoint
  query = reference[reference.obs["individual"].astype(str).isin(reference.obs["individual"].unique()[:2])].copy()
  del query.obs["type"]
  result = cj.annotate(bundle, query, progress=False)
  assert isinstance(result, cj.AnnotationResult) and result.adata is query
  annotated = result.to_adata()
  assert annotated is not query and annotation.LABEL_KEY not in query.obs
  labels = annotated.obs[annotation.LABEL_KEY].astype(str).to_numpy()
  assert len(labels) == query.n_obs and set(labels) <= set(bundle.classes) | {unassigned.UNASSIGNED}
  np.testing.assert_allclose(annotated.obsm[annotation.PROBABILITIES_KEY].sum(1), 1, atol=1e-5)


def test_a_reference_without_its_columns_is_one_clear_error(simulated, tmp_path):
  reference = readers.read_geo(simulated[0])
  with pytest.raises(cj.DataError, match=r"<reference>: obs has no column\(s\) \['celltype'\]"):
    cj.train(reference, tmp_path / "run", label_key="celltype", time_key="diffday")
  assert not (tmp_path / "run").exists()


def test_the_public_namespace_is_small():
  assert "quiet_dependency_logs" not in cj.__all__ and "use_compilation_cache" not in cj.__all__
  assert all(not isinstance(getattr(cj, name), type(cj)) for name in cj.__all__)  # no module objects


def test_an_unknown_command_is_one_line(monkeypatch):
  monkeypatch.setattr("sys.argv", ["cardiac-jax", "trian"])
  with pytest.raises(SystemExit, match="error: unknown command 'trian'; known: \\['train'"):
    cli.main()
