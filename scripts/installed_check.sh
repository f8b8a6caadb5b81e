#!/usr/bin/env bash
# A plain `pip install .` (not editable) in a clean virtual environment, then `cardiac-jax train` and
# `cardiac-jax annotate` run from a folder outside the repository, with the shipped configs found by name.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
python3 -m venv "$work/venv"
"$work/venv/bin/pip" install -q -c "$repo/constraints.txt" "$repo"
cd "$work"
export PATH="$work/venv/bin:$PATH"
cardiac-jax train --config=tiny --workdir=run --config.data.cache_dir="$work/cache" \
  --config.data.sequence_mode=anchored --config.train.num_epochs=1
python - "$work/cache" <<'PY'
import pathlib, sys
import cardiac_jax as cj
geo = next(pathlib.Path(sys.argv[1]).glob("simulated/*/GSE175634"))
query = cj.read_geo(geo)[:300].copy()
del query.obs["type"]
query.write_h5ad("query.h5ad")
PY
cardiac-jax annotate --workdir=run --input=query.h5ad --output=annotated.h5ad
python -c "import anndata; a = anndata.read_h5ad('annotated.h5ad'); print('installed check:', a.n_obs, 'cells labelled:', dict(a.obs['cardiac_jax_label'].value_counts()))"
