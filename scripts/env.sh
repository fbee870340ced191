# Sourced by scripts/demo.sh and scripts/test.sh from the repository root: makes .venv (Python 3.11) when
# missing, activates it, and installs the package editable with its test extra. pip runs only when
# pyproject.toml is newer than the last install, so a second call starts at once.
# PYTHON=python3.11 picks the interpreter that creates .venv.
if [ ! -x .venv/bin/python ]; then
  echo "creating .venv with ${PYTHON:-python3.11}"
  "${PYTHON:-python3.11}" -m venv .venv
fi
# shellcheck disable=SC1091
source .venv/bin/activate
installed=.venv/.mmrag_jax-installed
if [ ! -f "$installed" ] || [ pyproject.toml -nt "$installed" ]; then
  echo "installing mmrag_jax and its test extra into .venv (a few minutes the first time)"
  python -m pip install --quiet --disable-pip-version-check -e '.[test,tpu]'
  touch "$installed"
fi
