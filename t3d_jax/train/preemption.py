"""Stop requests for the training loop and the decoding modes: SIGTERM (spot /
preemptible VMs) and SIGINT.

With one process, a handler records the first signal and the loop stops after the
update (or chunk) in flight, saves a checkpoint there and exits; a second signal acts at
once, as it would without the handler. With several processes every one
must stop at the same update, so the handlers are left to JAX's preemption sync manager
(set up by ``jax.distributed.initialize``; it receives the notice on any host) and the
loop asks :func:`jax.experimental.multihost_utils.reached_preemption_sync_point` each
update instead.
"""
from __future__ import annotations

import signal
import threading
from typing import Optional

import jax

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopRequests:
  """``with StopRequests() as stop: ... if stop.requested(step): ...``."""

  def __init__(self):
    self.signum: Optional[int] = None
    self._previous: dict = {}

  def __enter__(self) -> "StopRequests":
    if jax.process_count() == 1 and threading.current_thread() is threading.main_thread():
      for s in SIGNALS:
        self._previous[s] = signal.signal(s, self._record)
    return self

  def _record(self, signum, frame) -> None:
    del frame
    if self.signum is None:
      self.signum = signum
    for s, handler in self._previous.items():  # a second signal acts at once, as before
      signal.signal(s, handler)

  def __exit__(self, *exc) -> None:
    for s, handler in self._previous.items():
      signal.signal(s, handler)

  def requested(self, step: int) -> bool:
    """True once a stop was asked for; with several processes, True on all of them at
    the same ``step`` (a collective: every process calls it every update)."""
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils
      if multihost_utils.reached_preemption_sync_point(step):
        self.signum = self.signum or signal.SIGTERM
        return True
      return False
    return self.signum is not None

  @property
  def name(self) -> str:
    return signal.Signals(self.signum).name if self.signum else "a stop request"
