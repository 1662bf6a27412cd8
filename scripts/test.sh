#!/usr/bin/env bash
# Installs care-jax with its test extras into ./.venv and runs the whole test suite
# (slow end-to-end tests included; add  -m "not slow"  to skip them).
set -euo pipefail
CARE_JAX_EXTRAS='[test]' source "$(dirname "$0")/venv.sh"
# One formatter and one linter over the whole tree (settings in pyproject.toml).
.venv/bin/ruff format --check .
.venv/bin/ruff check .
exec .venv/bin/python -m pytest -n 2 --durations=15 tests \
  --doctest-modules care_jax/losses.py care_jax/attention.py care_jax/metrics.py \
  care_jax/imbalance.py care_jax/boxes/generators.py care_jax/figures.py "$@"
