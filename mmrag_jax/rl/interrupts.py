"""Why a training run stops early, and stopping on SIGTERM / SIGINT at a step boundary.

A preempted TPU VM gets SIGTERM and a short grace period; a user presses Ctrl-C (SIGINT). Either way
the loop should end where a rerun continues exactly: `StopSignals` turns the first signal into a
request that the loop reads after each completed step (it then checkpoints that step and raises
`TrainingInterrupted`); a second signal stops at once (`StopNow`), and the trainer keeps the
last checkpoint whose state a completed step produced.

On several processes the request is agreed on (an all-gather of one flag per step), so every process
stops after the same step and the collectives of the checkpoint line up.
"""

from __future__ import annotations

import logging
import signal
import threading
from types import FrameType
from typing import Any

import jax
import numpy as np

from mmrag_jax.errors import RunError

__all__ = ["NonFiniteTraining", "StopNow", "StopSignals", "TrainingInterrupted", "signal_name"]

_log = logging.getLogger(__name__)

_HANDLED = (signal.SIGTERM, signal.SIGINT)


class TrainingInterrupted(RunError):
  """The run stopped on a signal after checkpointing its last completed step; exit code 128 + signal."""

  def __init__(self, message: str, signum: int):
    super().__init__(message)
    self.signum = signum
    self.exit_code = 128 + signum


class StopNow(KeyboardInterrupt):
  """A second SIGTERM / SIGINT: stop at once (the trainer still keeps the last consistent checkpoint)."""

  def __init__(self, signum: int):
    super().__init__(f"second {signal_name(signum)}")
    self.signum = signum
    self.exit_code = 128 + signum


class NonFiniteTraining(RunError):
  """A loss, gradient or parameter became NaN or infinite; nothing after the last finite state was saved."""


class StopSignals:
  """A context manager: while active, the first SIGTERM / SIGINT only sets `requested` (the signal
  number); a second one raises `StopNow` (a KeyboardInterrupt) in the main thread. Outside the main
  thread (where Python cannot install handlers) it does nothing, and `requested` stays None."""

  def __init__(self) -> None:
    self.requested: int | None = None
    self._previous: dict[int, Any] = {}

  def __enter__(self) -> "StopSignals":
    if threading.current_thread() is threading.main_thread():
      for signum in _HANDLED:
        self._previous[signum] = signal.signal(signum, self._handle)
    return self

  def __exit__(self, *exc: object) -> None:
    for signum, handler in self._previous.items():
      signal.signal(signum, handler)
    self._previous.clear()

  def _handle(self, signum: int, frame: FrameType | None) -> None:
    del frame
    if self.requested is not None:
      raise StopNow(signum)
    self.requested = signum
    _log.warning("received %s: finishing the current step, then saving a checkpoint (send it again to stop "
                 "at once)", signal_name(signum))

  def agreed(self) -> int | None:
    """The signal any process received (the same answer on every process), or None.

    Call it at the same point on every process: with several it is a collective.
    """
    if jax.process_count() == 1:
      return self.requested
    from jax.experimental import multihost_utils

    flags = multihost_utils.process_allgather(np.asarray(self.requested or 0, np.int32))
    received = [int(f) for f in np.ravel(flags) if int(f)]
    return received[0] if received else None


def signal_name(signum: int) -> str:
  return signal.Signals(signum).name
