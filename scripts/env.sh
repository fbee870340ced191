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
# glibc's malloc backs its large blocks with transparent huge pages where the kernel allows them (THP
# "madvise" or "always"): XLA:CPU's fresh buffers then fault in 2 MiB pages instead of 4 KiB ones (a GRPO step
# of the versus-TRL size, 2-core AMD EPYC, 2026-12-02: ~224,000 page faults -> ~10,000, update
# 2.3-2.6 s -> 2.1-2.2 s). Older glibc ignores the setting; a GLIBC_TUNABLES already set is kept.
export GLIBC_TUNABLES="${GLIBC_TUNABLES:-glibc.malloc.hugetlb=1}"
