"""Errors and sentinels internal to the daemon.

``KernelError`` is the daemon's one way to fail a system call with a Linux errno; the
dispatcher turns it into an errno reply, and the agent raises the matching ``OSError``.
A call that must wait sleeps on a wait queue (:mod:`kemu.kernel_daemon.sync`), which leaves
the handler by :class:`MustWait`, an exception that never crosses the wire; bugs
are never disguised as an errno: any other exception is a daemon bug, logged and
answered with a protocol error.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable


class KernelError(Exception):
    """Fail the current system call with Linux errno ``code``."""

    def __init__(self, code: int, detail: str = "") -> None:
        super().__init__(f"{errno.errorcode.get(code, code)}: {detail or os.strerror(code)}")
        self.errno = code
        self.detail = detail


class MustWait(Exception):
    """Raised out of a handler when the call sleeps; only :class:`WaitQueue.sleep
    <kernel_daemon.sync.WaitQueue.sleep>` raises it, and it never crosses the wire.

    ``register(wake)`` puts ``wake`` on the wait queue and returns a function that takes
    it off again.  When woken, the dispatcher calls ``resume`` (the rest of the call, as
    the kernel's loop around a sleep goes on with what it already holds, e.g. the file
    ``open`` opened before ``break_lease``) or, without one, runs the handler again from
    the start.  ``aborts`` undo what the call holds when it ends without resuming
    (EINTR, an error, the caller's death), innermost first.
    """

    def __init__(self, register: Callable[[Callable[[], None]], Callable[[], None]],
                 resume: Callable[[], object] | None = None,
                 abort: Callable[[], None] | None = None) -> None:
        super().__init__("must wait")
        self.register = register
        self.resume = resume
        self.aborts: list[Callable[[], None]] = [abort] if abort is not None else []

    def add_abort(self, abort: Callable[[], None]) -> None:
        """Also run ``abort`` if the call ends without resuming (once, in order)."""
        if abort not in self.aborts:
            self.aborts.append(abort)

    def abort(self) -> None:
        """The sleep ended for good: undo what the call holds."""
        aborts, self.aborts = self.aborts, []
        for abort in aborts:
            abort()


def resume_at(attempt: Callable[[], object], abort: Callable[[], None]) -> object:
    """Run ``attempt``; if it sleeps, ``attempt`` is what runs again when woken.

    ``abort`` runs if the attempt fails, or later if the sleep ends without success.
    """
    try:
        return attempt()
    except MustWait as wait:
        wait.resume = attempt
        wait.add_abort(abort)
        raise
    except BaseException:
        abort()
        raise
