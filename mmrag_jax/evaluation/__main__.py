"""Entry point of `python -m mmrag_jax.evaluation` (see `cli.py`)."""

import sys

from mmrag_jax.evaluation.cli import main

if __name__ == "__main__":
  sys.exit(main())

__all__: list[str] = []
