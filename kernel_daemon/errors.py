"""Errors and sentinels internal to the daemon.

``KernelError`` is the daemon's one way to fail a system call with a Linux errno; the
dispatcher turns it into an errno reply, and the agent raises the matching ``OSError``.
A call that must wait returns ``PARKED`` (a sentinel that never crosses the wire); bugs
are never disguised as an errno: any other exception is a daemon bug, logged and
answered with a protocol error.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from typing import Final


class KernelError(Exception):
    """Fail the current system call with Linux errno ``code``."""

    def __init__(self, code: int, detail: str = "") -> None:
        super().__init__(f"{errno.errorcode.get(code, code)}: {detail or os.strerror(code)}")
        self.errno = code
        self.detail = detail


class MustWait(Exception):
    """Raised inside a handler when the call must sleep.

    ``register(wake)`` puts ``wake`` on the wait queue and returns a function that takes
    it off again.  When woken, the dispatcher calls ``resume`` (the rest of the call,
    as the kernel's loop around a sleep goes on with what it already holds, e.g. the
    file ``open`` opened before ``break_lease``) or, without one, runs the handler again
    from the start.  ``abort`` undoes what the call holds when it ends without
    resuming (EINTR, an error, the caller's death).
    """

    def __init__(self, register: Callable[[Callable[[], None]], Callable[[], None]],
                 resume: Callable[[], object] | None = None,
                 abort: Callable[[], None] | None = None) -> None:
        super().__init__("must wait")
        self.register = register
        self.resume = resume
        self.abort = abort


def retry(attempt: Callable[[], object], abort: Callable[[], None]) -> object:
    """Run ``attempt``; if it must sleep, it is what runs again when woken.

    ``abort`` runs if the attempt fails, or later if the sleep ends without success.
    """
    try:
        return attempt()
    except MustWait as wait:
        wait.resume = attempt
        wait.abort = abort
        raise
    except BaseException:
        abort()
        raise


class _Parked:
    """Sentinel a handler returns when its caller must wait; the reply comes later."""

    _instance: _Parked | None = None

    def __new__(cls) -> _Parked:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "PARKED"


PARKED: Final = _Parked()
