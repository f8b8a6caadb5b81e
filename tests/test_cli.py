"""The command line as a user meets it: the README's test command is CI's, and bad input is one clear line."""

import gzip
import pathlib
import re
import shutil
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]


def test_ci_runs_the_readme_test_command():
  readme = (REPO / "README.md").read_text()
  commands = re.findall(r"```bash\n(.*?)\n```", readme, flags=re.S)
  test_command = next(c for c in commands if "pytest" in c)
  ci = (REPO / ".ci" / "run").read_text().splitlines()
  assert test_command in ci


def test_bad_input_is_one_clear_line_and_writes_nothing(simulated, tmp_path):
  geo = shutil.copytree(simulated[0], tmp_path / "geo")
  meta = geo / "GSE175634_cell_metadata.tsv.gz"
  lines = gzip.decompress(meta.read_bytes()).splitlines(keepends=True)
  meta.write_bytes(gzip.compress(b"".join(lines[:-3])))
  workdir = tmp_path / "run"
  result = subprocess.run(
      [sys.executable, "train.py", "--config=configs/tiny.py", "--config.data.source=geo",
       f"--config.data.path={geo}", f"--workdir={workdir}"],
      cwd=REPO, capture_output=True, text=True,
  )
  assert result.returncode == 1
  last = result.stderr.strip().splitlines()[-1]
  assert last.startswith("error: ") and "GSE175634_cell_metadata.tsv.gz" in last and "rows" in last
  assert "Traceback" not in result.stderr
  assert not workdir.exists()
