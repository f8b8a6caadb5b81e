"""The package's shape: dependencies run one way (no import cycle, imports inside functions counted), one module
names a workdir's files, and the console script finds the shipped configs from any folder."""

import ast
import pathlib

import pytest

from cardiac_jax import cli, configs
from cardiac_jax import workdir as rundir

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "cardiac_jax"
# The layers, lowest first: a module may import its own layer's modules and lower ones, never a higher layer's.
LAYERS = (
    {"errors", "checks", "configs", "figures", "integrity", "parallel", "metrics", "calibrate", "conformal",
     "unassigned"},
    {"readers", "preprocess", "neighbours", "novelty", "split", "sequences", "batches", "simulate", "dataset"},
    {"model", "linear"},
    {"workdir"},
    {"training", "predict"},
    {"annotation", "report", "interpret"},
    {"experiments"},
    {"cli", "commands"},
)


def _module_name(path):
  parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
  return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path, modules):
  """The cardiac_jax modules a file imports anywhere in it (functions included): `from a import b` imports the
  module a.b where there is one, else (a name defined in a) a."""
  name = _module_name(path)
  package = name if path.name == "__init__.py" else name.rpartition(".")[0]
  found = set()
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.Import):
      found |= {a.name for a in node.names if a.name.startswith("cardiac_jax")}
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:
        base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
      if base.startswith("cardiac_jax"):
        found |= {f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names}
  return found


@pytest.fixture(scope="module")
def graph():
  modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
  return {name: {m for m in _imports(path, modules) if m in modules and m != name} for name, path in modules.items()}


def _layer(module):
  """The layer of a module of the package (its first name under cardiac_jax), or None for the package itself."""
  parts = module.split(".")
  if len(parts) == 1:
    return None
  return next(i for i, layer in enumerate(LAYERS) if parts[1] in layer)


def test_no_import_cycle(graph):
  finished, active = set(), []

  def visit(module):
    assert module not in active, "import cycle: " + " -> ".join(active[active.index(module):] + [module])
    if module in finished:
      return
    active.append(module)
    for dependency in graph[module]:
      visit(dependency)
    active.pop()
    finished.add(module)

  for module in graph:
    visit(module)


def test_dependencies_run_one_way(graph):
  upward = [(m, d) for m, deps in graph.items() for d in deps
            if _layer(m) is not None and _layer(d) is not None and _layer(d) > _layer(m)]
  assert not upward, f"modules importing a higher layer: {upward}"


def test_only_the_workdir_module_names_a_runs_files():
  names = [rundir.CONFIG, rundir.DATA, rundir.PREPROCESSING, rundir.TEST_SEQUENCES, rundir.CALIBRATION, rundir.NOVELTY,
           rundir.METRICS, rundir.TRUST, rundir.TRUST_VALIDATION]
  offenders = [(str(p.relative_to(PACKAGE)), n) for p in PACKAGE.rglob("*.py") if p.name != "workdir.py"
               for n in names if f'"{n}"' in p.read_text()]
  assert not offenders


@pytest.mark.parametrize("given", ["annotate", "annotate.py", "configs/annotate.py"])
def test_a_shipped_config_is_found_by_name_from_any_folder(given, tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  (found,) = [a for a in cli.shipped_configs(["cardiac-jax train", f"--config={given}", "--workdir=w"])
              if a.startswith("--config=")]
  assert found == f"--config={configs.FOLDER / 'annotate.py'}"
  assert configs.get(given).data.sequence_mode == "anchored" and configs.get(given).data.novelty_genes == 2000
  assert cli.shipped_configs(["x", "--config", given])[2] == str(configs.FOLDER / "annotate.py")


def test_the_fast_annotation_config_is_the_annotate_config_with_each_cell_alone_and_a_small_network():
  fast, annotate = configs.get("annotate_fast"), configs.get("annotate")
  assert (fast.data.sequence_mode, fast.model.pooling, fast.model.hidden_dim, fast.model.num_layers) == ("cell", "mean",
                                                                                                       32, 1)
  changed = {k for k in fast.data.keys() if fast.data[k] != annotate.data[k]}
  assert changed == {"sequence_mode"} and fast.data.novelty_genes == 2000  # genes, scaling, novelty as annotate's


def test_a_config_file_that_exists_and_an_unknown_name_are_left_as_given(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  (tmp_path / "tiny.py").write_text("")
  given = ["x", "--config=tiny.py", "--config=nope.py", "--config=/elsewhere/annotate.py", "--config=mine/large.py"]
  assert cli.shipped_configs(given) == given  # a user's own file (or a missing one) is never swapped for ours
