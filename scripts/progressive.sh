#!/usr/bin/env bash
# The seed's progressive scaling in one command: base, then medium warm-started from base's best model,
# then large warm-started from medium's. Usage: bash scripts/progressive.sh [ROOT] [more train.py flags]
set -euo pipefail
root=${1:-runs/progressive}
shift || true
previous=""
for stage in base medium large; do
  python train.py --config="configs/$stage.py" --workdir="$root/$stage" ${previous:+--config.init_from="$root/$previous"} "$@"
  previous=$stage
done
