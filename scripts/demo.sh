#!/usr/bin/env bash
# Installs care-jax into ./.venv, then trains a cross-entropy baseline and CARE on the
# generated synthetic_lesions data, prints test rare-class recall and MCA for both, and
# draws seed 0's attention maps "image | without CARE | with CARE" (runs/demo/figures).
# Three seeds each; extra flags go to `care-jax compare` (e.g. --workdir=runs/x --seeds=0).
set -euo pipefail
source "$(dirname "$0")/venv.sh"
workdir=runs/demo
for arg in "$@"; do
  case "$arg" in --workdir=*) workdir="${arg#--workdir=}" ;; esac
done
.venv/bin/care-jax compare --workdir="$workdir" \
  --configs=configs/synthetic_baseline.py,configs/synthetic_care.py --seeds=0,1,2 "$@"
# The first seed's runs (seeds given as --seeds=a,b,...), baseline beside CARE.
seed=0
for arg in "$@"; do
  case "$arg" in --seeds=*) seed="${arg#--seeds=}"; seed="${seed%%,*}" ;; esac
done
.venv/bin/care-jax visualize --workdir="$workdir/synthetic_care/seed_$seed" \
  --compare="$workdir/synthetic_baseline/seed_$seed" --num_images=8 --out_dir="$workdir/figures"
