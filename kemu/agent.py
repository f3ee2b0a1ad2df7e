"""The API of an agent program of one's own: an ``os``-like object, the same code on both
targets.

An agent program is an ordinary Python program that makes its system calls through a
:class:`System` instead of :mod:`os`::

    from kemu.agent import connect

    sys = connect()                      # the target and run directory it was started for
    fd = sys.open("/f", os.O_RDWR | os.O_CREAT, 0o644)
    sys.signal(signal.SIGIO, "record")   # real SIGIO, siginfo recorded
    sys.fcntl(fd, F_SETLEASE, F_WRLCK)
    info = sys.sigwait(signal.SIGIO, timeout=5)   # {si_signo, si_code, si_fd, ...}

On the ``emulator`` target every call is answered by the kernel daemon of the run
(:class:`EmuSystem`); on ``host`` it is the real system call, paths resolved inside the
run's root directory (:class:`HostSystem`).  ``connect()`` reads ``KEMU_TARGET`` and
``KEMU_RUN_DIR``, which :func:`kemu.testing`'s ``kemu_spawn`` fixture sets; a program
may also call :func:`make_system` itself.  docs/agents.md has the calls and a worked
example.
"""

from __future__ import annotations

import os

from kemu.agents.lib.api import EmuSystem, HostSystem, System, make_system

TARGET_ENV = "KEMU_TARGET"
RUN_DIR_ENV = "KEMU_RUN_DIR"
NAME_ENV = "KEMU_NAME"


def connect(name: str | None = None) -> System:
    """This process's :class:`System`, for the target and run directory in its
    environment (``KEMU_TARGET``, default ``emulator``; ``KEMU_RUN_DIR``)."""
    run_dir = os.environ.get(RUN_DIR_ENV)
    if not run_dir:
        raise RuntimeError(f"{RUN_DIR_ENV} is not set: start this program with the "
                           "kemu_spawn fixture, or call make_system(target, run_dir)")
    target = os.environ.get(TARGET_ENV, "emulator")
    return make_system(target, run_dir, name or os.environ.get(NAME_ENV, ""))


__all__ = ["EmuSystem", "HostSystem", "System", "connect", "make_system"]
