"""`StopSignals`: the first SIGTERM / SIGINT is a request read at a step boundary, the second stops at once."""

import os
import signal

import pytest

from mmrag_jax.rl.interrupts import StopNow, StopSignals


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_first_signal_is_a_request_second_stops_at_once(signum):
  before = signal.getsignal(signum)
  with StopSignals() as stop:
    assert stop.requested is None and stop.agreed() is None
    os.kill(os.getpid(), signum)
    assert stop.requested == signum and stop.agreed() == signum  # the process goes on
    with pytest.raises(StopNow) as second:
      os.kill(os.getpid(), signum)
    assert second.value.exit_code == 128 + signum
    assert isinstance(second.value, KeyboardInterrupt)
  assert signal.getsignal(signum) is before  # handlers restored on exit
