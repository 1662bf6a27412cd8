# Sourced by the other scripts: creates ./.venv with Python 3.12 (pyenv's if present)
# and installs care-jax into it with the extras given in $CARE_JAX_EXTRAS.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
if [ ! -x .venv/bin/python ]; then
  # pyenv's python3.12 shim needs a selected version; without pyenv, use python3.12 on PATH.
  PYENV_VERSION="$(pyenv versions --bare 2>/dev/null | grep -m1 '^3\.12' || true)" \
    python3.12 -m venv .venv
fi
# care-jax < 0.2 installed tensorflow-cpu, now tensorflow: one distribution of the module only.
if .venv/bin/python -m pip show -q tensorflow-cpu >/dev/null 2>&1; then
  .venv/bin/python -m pip uninstall -q -y tensorflow-cpu
fi
.venv/bin/python -m pip install -q --disable-pip-version-check -e ".${CARE_JAX_EXTRAS:-}" \
  2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
