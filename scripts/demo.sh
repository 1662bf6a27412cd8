#!/usr/bin/env bash
# Installs care-jax into ./.venv, then trains a cross-entropy baseline and CARE on the
# generated synthetic_lesions data and prints test rare-class recall and MCA for both.
# Three seeds each; extra flags go to `care-jax compare` (e.g. --seeds=0 for one).
set -euo pipefail
source "$(dirname "$0")/venv.sh"
exec .venv/bin/care-jax compare --workdir=runs/demo \
  --configs=configs/synthetic_baseline.py,configs/synthetic_care.py --seeds=0,1,2 "$@"
