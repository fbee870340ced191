#!/usr/bin/env bash
# The test suite on a fresh clone: set-up (scripts/env.sh), then pytest on CPU. Arguments go to pytest,
# e.g. ./scripts/test.sh tests/recipe -x
set -euo pipefail
cd "$(dirname "$0")/.."
EXTRAS=test,tpu source scripts/env.sh
exec python -m pytest "$@"
