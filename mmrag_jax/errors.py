"""The one exception type a command-line run reports as a single line (no traceback).

Raise a subclass of `RunError` for a failure whose message already says everything a user needs (the
bad file, field, step or process named). `python -m mmrag_jax.main` prints it as `error: <message>` and
exits with `exit_code`; library callers catch it like any other exception.
"""

from __future__ import annotations

__all__ = ["RunError"]


class RunError(Exception):
  """A run stopped for a reason stated in full by the message."""

  exit_code = 1
