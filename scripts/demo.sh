#!/usr/bin/env bash
# Installs care-jax into ./.venv, then trains a cross-entropy baseline and CARE on the
# generated synthetic_lesions data (five seeds each) and prints the test rare-class recall
# and MCA of both (mean ± std), each seed's rare recall, and CARE against the baseline seed
# by seed (mean difference, paired t-test, seeds won); then draws seed 0's attention maps
# "image | without CARE | with CARE" (runs/demo/figures). Extra flags go to
# `care-jax compare` (e.g. --workdir=runs/x --seeds=0 --config.data.synthetic.seed=1).
set -euo pipefail
source "$(dirname "$0")/venv.sh"
workdir=runs/demo
for arg in "$@"; do
  case "$arg" in --workdir=*) workdir="${arg#--workdir=}" ;; esac
done
.venv/bin/care-jax compare --workdir="$workdir" \
  --configs=synthetic_baseline,synthetic_care --seeds=0-4 "$@"
# The first seed's runs (--seeds=a,b,... or a-b,...), baseline beside CARE.
seed=0
for arg in "$@"; do
  case "$arg" in --seeds=*) seed="${arg#--seeds=}"; seed="${seed%%[,-]*}" ;; esac
done
.venv/bin/care-jax visualize --workdir="$workdir/synthetic_care/seed_$seed" \
  --compare="$workdir/synthetic_baseline/seed_$seed" --num_images=8 --out_dir="$workdir/figures"
