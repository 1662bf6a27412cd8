#!/usr/bin/env bash
# Installs care-jax with its test and docs extras into ./.venv and runs the whole test suite
# (slow end-to-end tests included; add  -m "not slow"  to skip them).
set -euo pipefail
CARE_JAX_EXTRAS='[test,docs]' source "$(dirname "$0")/venv.sh"
# One formatter and one linter over the whole tree (settings in pyproject.toml).
.venv/bin/ruff format --check .
.venv/bin/ruff check .
# The documentation site, with its API reference from the docstrings: a warning fails it.
.venv/bin/mkdocs build --strict --quiet
exec .venv/bin/python -m pytest -n 2 --durations=15 tests \
  --doctest-modules care_jax/losses.py care_jax/attention.py care_jax/metrics \
  care_jax/imbalance.py care_jax/classification_loss.py care_jax/boxes/generators.py \
  care_jax/figures.py "$@"
