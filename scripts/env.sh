# Sourced by scripts/demo.sh and scripts/test.sh from the repository root: makes .venv (Python 3.11) when
# missing, activates it, and installs the package editable with the extras in EXTRAS (default: test;
# scripts/test.sh adds tpu, the libtpu the planner tests compile with). pip runs only when pyproject.toml
# is newer than the last install of those extras, so a second call starts at once.
# PYTHON=python3.11 picks the interpreter that creates .venv.
if [ ! -x .venv/bin/python ]; then
  echo "creating .venv with ${PYTHON:-python3.11}"
  "${PYTHON:-python3.11}" -m venv .venv
fi
# shellcheck disable=SC1091
source .venv/bin/activate
extras="${EXTRAS:-test}"
installed=".venv/.mmrag_jax-installed-${extras//,/-}"
if [ ! -f "$installed" ] || [ pyproject.toml -nt "$installed" ]; then
  echo "installing mmrag_jax with the extras [$extras] into .venv (a few minutes the first time)"
  python -m pip install --quiet --disable-pip-version-check -e ".[$extras]"
  touch "$installed"
fi
