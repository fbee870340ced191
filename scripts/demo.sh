#!/usr/bin/env bash
# The demo on a fresh clone: set-up (scripts/env.sh), then the whole method on a tiny random model and a
# synthetic WebQA. WORKDIR (default runs/demo) holds its outputs; further arguments go to mmrag_jax.main,
# e.g. ./scripts/demo.sh --config.train.num_steps=1
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
exec python -m mmrag_jax.main --config=configs/stage2.py:demo --workdir="${WORKDIR:-runs/demo}" "$@"
