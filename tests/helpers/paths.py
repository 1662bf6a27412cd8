"""Paths in the repository: its root and the committed test fixtures (tests/fixtures/)."""

import pathlib

# The clone's root (this file is tests/helpers/paths.py).
REPO = pathlib.Path(__file__).resolve().parents[2]
FIXTURES = REPO / 'tests' / 'fixtures'
