#!/usr/bin/env bash
# Installs care-jax with its test and docs extras into ./.venv and runs the tests.
#
#   bash scripts/test.sh          as CI runs it: ruff, the docs build, the whole suite (slow and
#                                 integration tests included) with the doctests, but the heavy tests
#   bash scripts/test.sh --fast   the edit-test loop: ruff and the pure and unit tests only (no
#                                 test marked slow, integration or heavy, no docs build)
#   bash scripts/test.sh --heavy  the tests beyond CI's 20-minute budget only (marked heavy: the
#                                 larger backbones' parity with torchvision and timm)
#
# Further arguments go to pytest (e.g. tests/training -k step). The 25 slowest tests of the run
# are written to test-durations.txt (tests/conftest.py); CI prints that file. Two workers, and a
# worker with nothing left takes half of the other's queue (--dist worksteal): neither idles
# while the other works through a list of tests handed to it early.
set -euo pipefail
mode=all
if [ "${1:-}" = --fast ] || [ "${1:-}" = --heavy ]; then
  mode="${1#--}"
  shift
fi
CARE_JAX_EXTRAS='[test,docs]' source "$(dirname "$0")/venv.sh"
# One formatter and one linter over the whole tree (settings in pyproject.toml).
.venv/bin/ruff format --check .
.venv/bin/ruff check .
# The modules whose docstrings hold doctests.
doctests=(care_jax/losses.py care_jax/guidance_losses.py care_jax/attention.py care_jax/imbalance.py
  care_jax/classification_loss.py care_jax/metrics care_jax/boxes/geometry.py
  care_jax/boxes/generators.py care_jax/figures.py
  care_jax/config/schema.py care_jax/models/strided_convolution.py)
if [ "$mode" = fast ]; then
  exec .venv/bin/python -m pytest -n 2 --dist worksteal -m 'not slow and not integration and not heavy' tests \
    --doctest-modules "${doctests[@]}" "$@"
fi
# The documentation site, with its API reference from the docstrings: a warning fails it.
.venv/bin/mkdocs build --strict --quiet
if [ "$mode" = heavy ]; then
  exec .venv/bin/python -m pytest -n 2 --dist worksteal -m heavy tests "$@"
fi
exec .venv/bin/python -m pytest -n 2 --dist worksteal -m 'not heavy' tests --doctest-modules "${doctests[@]}" "$@"
