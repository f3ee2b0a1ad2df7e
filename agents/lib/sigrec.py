"""Real signals with their full ``siginfo_t``, for agents.

Python cannot show an agent the kernel's siginfo: ``signal.signal`` handlers get no
siginfo at all, ``signal.sigwaitinfo``'s ``struct_siginfo`` has no ``si_fd``/``si_band``,
and a ctypes callback cannot serve as a signal handler (it takes the GIL).  The C
extension :mod:`kemu.agents.lib._sigrec` (``agents/lib/_sigrec.c``) therefore installs a real
``sigaction(SA_SIGINFO)`` handler that copies every delivered ``siginfo_t`` into a
lock-free ring buffer (:data:`RING_SIZE` entries; overflow is counted, see
:meth:`SignalRecorder.dropped`) and writes one byte, the signal number, to a
non-blocking wake-up pipe.  :class:`SignalRecorder` wraps it: one per process, reached
through :func:`recorder`.  The ``si_code`` values are named in :mod:`kemu.protocol.linux`
(``SI_*``, ``POLL_*``, ``BUS_*``, ``SEGV_*``).

Building
--------
``pip install -e .`` (or a plain ``pip install .``) compiles the extension: ``setup.py``
declares it and pyproject.toml's setuptools backend builds it.  After editing the C file
in a development tree, rebuild it in place with::

    python setup.py build_ext --inplace

which leaves ``agents/lib/_sigrec.*.so`` next to the sources (ignored by git).

Descriptors
-----------
Both ends of the wake-up pipe are non-blocking and close-on-exec, and are moved to
descriptor numbers >= :data:`FD_FLOOR` (900) with ``fcntl(F_DUPFD_CLOEXEC)``, so that
they never take a number that a program under test would get from ``open`` (the lowest
free one).  This needs ``RLIMIT_NOFILE`` above 901.

Fork and exec
-------------
Like Linux, a fork child keeps the parent's dispositions (recorded signals stay
recorded) and signal mask, and starts with no pending signal.  The child also inherits
both descriptors of the parent's wake-up pipe, as it inherits every descriptor; an
``os.register_at_fork`` hook gives the child's recorder a new pipe of its own, put in
place of the inherited copies with ``dup3`` (so :meth:`SignalRecorder.fileno` keeps its
number across fork), so parent and child never steal each other's wake-ups.  For forks
that bypass ``os.fork``, a pid check on every call does the same with new numbers.  Entries the parent had
recorded but not yet taken are discarded in the child: the ring tags every entry with
the pid that received it, and the Python-side queue is cleared.  A test may keep a
``dup`` of the parent's read end in the child on purpose, to learn when the parent's
handler has run.

``execve`` starts everything anew, as Linux does: the handler and the ring are gone,
recorded signals revert to ``SIG_DFL``, the pipe is closed (close-on-exec), while
ignored signals stay ignored and the signal mask and pending signals are kept.  The new
program calls :func:`recorder` again if it wants to record.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import select
import signal
import threading
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import ClassVar

from kemu.agents.lib import _sigrec

#: the wake-up pipe's descriptors are moved to numbers at or above this one
FD_FLOOR = 900
#: how many undelivered siginfos the ring buffer holds; more are counted as dropped
RING_SIZE: int = _sigrec.RING_SIZE

_MODE_DEFAULT = 0
_MODE_IGNORE = 1
_MODE_RECORD = 2
_MODE_RECORD_RESTART = 3
_UNCATCHABLE = frozenset({int(signal.SIGKILL), int(signal.SIGSTOP)})


@dataclass(frozen=True, slots=True)
class SigInfo:
    """One delivered signal, as the kernel's ``siginfo_t`` described it.

    ``pid``/``uid`` (``si_pid``/``si_uid``) and ``fd``/``band`` (``si_fd``/``si_band``)
    are read raw from the same union, as Linux lays it out on x86-64: for a ``POLL_*``
    code (a queued SIGIO from ``F_SETSIG``), ``band`` and ``fd`` are meaningful and
    ``pid``/``uid`` are the low/high halves of ``band``; for any other code ``pid`` and
    ``uid`` are meaningful and ``band`` is ``pid | uid << 32`` (with ``fd`` the next word).
    """

    signo: int
    code: int
    errno: int
    pid: int
    uid: int
    fd: int
    band: int


def _check_signum(signum: int) -> int:
    """Validate a signal number (1..SIGRTMAX); SIGKILL and SIGSTOP are refused.

    Linux refuses to change SIGKILL's or SIGSTOP's disposition (``sigaction`` fails with
    EINVAL) and silently leaves them out of any signal mask; here both are a ValueError.
    """
    n = int(signum)
    if not 1 <= n <= int(signal.SIGRTMAX):
        raise ValueError(f"signal number {n} out of range 1..{int(signal.SIGRTMAX)}")
    if n in _UNCATCHABLE:
        raise ValueError(f"signal {n} (SIGKILL/SIGSTOP) cannot be caught, ignored or blocked")
    return n


def _high_fd(fd: int) -> int:
    """Move ``fd`` to the lowest free number >= FD_FLOOR (close-on-exec); closes ``fd``."""
    try:
        return fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, FD_FLOOR)
    except OSError as e:
        raise OSError(e.errno, f"cannot move the wake-up pipe to a descriptor >= {FD_FLOOR} "
                               f"(RLIMIT_NOFILE too low?): {e.strerror}") from e
    finally:
        os.close(fd)


def _make_pipe() -> tuple[int, int]:
    """A non-blocking, close-on-exec pipe with both ends at numbers >= FD_FLOOR."""
    r, w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        r = _high_fd(r)
    except OSError:
        os.close(w)
        raise
    try:
        w = _high_fd(w)
    except OSError:
        os.close(r)
        raise
    return r, w


class SignalRecorder:
    """Records real signals with their siginfo; one per process (see :func:`recorder`).

    Dispositions are process-wide (``sigaction``); the signal mask is per thread
    (``pthread_sigmask``), so :meth:`block`/:meth:`unblock` act on the calling thread.
    Recorded siginfos are kept in arrival order, first in the C ring, then in a Python
    queue from which :meth:`take` and :meth:`wait` remove them.

    Use either :meth:`wait` or an event loop that watches :meth:`fileno` and then calls
    :meth:`drain_wakeups` and :meth:`take`, not both from different threads at once: a
    drain by another thread can consume the byte that a :meth:`wait` in select needs.
    Several threads may :meth:`wait` at once: one selects, the others wait for it.
    """

    _instance: ClassVar[SignalRecorder | None] = None

    def __init__(self) -> None:
        if SignalRecorder._instance is not None:
            raise RuntimeError("one SignalRecorder per process: use agents.lib.sigrec.recorder()")
        self._pid = os.getpid()
        self._cond = threading.Condition(threading.Lock())
        self._queue: deque[SigInfo] = deque()
        self._selecting = False
        self._rfd, self._wfd = _make_pipe()
        _sigrec.set_wakeup(self._wfd)
        SignalRecorder._instance = self

    # -- fork ------------------------------------------------------------------------

    def _after_fork(self, keep_numbers: bool = True) -> None:
        """In a fork child: a new wake-up pipe of its own, no entries of the parent's.

        With ``keep_numbers`` (the at-fork hook, which runs before any code of the child)
        the new pipe takes over the inherited descriptors' numbers with ``dup3``, which
        closes the inherited copies, so a :meth:`fileno` cached before the fork stays
        right.  Never raises (it runs from an at-fork hook); on failure the inherited
        copies are closed and the next call retries and raises there.
        """
        _sigrec.set_wakeup(-1)
        self._cond = threading.Condition(threading.Lock())
        self._queue.clear()
        self._selecting = False
        old = (self._rfd, self._wfd)
        self._rfd = self._wfd = -1
        self._pid = -1  # stale until a new pipe is in place
        try:
            if keep_numbers and min(old) >= 0:
                r, w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
                try:
                    os.dup2(r, old[0], inheritable=False)
                    os.dup2(w, old[1], inheritable=False)
                finally:
                    os.close(r)
                    os.close(w)
                self._rfd, self._wfd = old
            else:
                self._close(old)
                old = (-1, -1)
                self._rfd, self._wfd = _make_pipe()
        except OSError:
            self._close(old)
            return
        _sigrec.set_wakeup(self._wfd)
        self._pid = os.getpid()

    @staticmethod
    def _close(fds: tuple[int, int]) -> None:
        for fd in fds:
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)

    def _current(self) -> None:
        """Re-initialise if this process is a fork child the at-fork hook did not see."""
        if self._pid != os.getpid():
            # a fork the hook did not see (not through os.fork): the child's own code may
            # have reused the inherited numbers already, so take new ones
            self._after_fork(keep_numbers=False)
            if self._pid != os.getpid():
                self._rfd, self._wfd = _make_pipe()  # raises the error the hook swallowed
                _sigrec.set_wakeup(self._wfd)
                self._pid = os.getpid()

    # -- dispositions ----------------------------------------------------------------

    def record(self, signum: int, restart: bool = False) -> None:
        """``sigaction(signum)`` with the recording handler, ``sa_mask`` empty.

        Without ``restart`` the flags are ``SA_SIGINFO`` only, so a blocking system call
        the signal interrupts fails with EINTR, as signal(7) describes; with ``restart``
        ``SA_RESTART`` is added and such a call is restarted.  While the handler runs,
        Linux blocks ``signum`` itself (no ``SA_NODEFER``) and nothing else.
        """
        self._current()
        _sigrec.install(_check_signum(signum),
                        _MODE_RECORD_RESTART if restart else _MODE_RECORD)

    def default(self, signum: int) -> None:
        """``sigaction(signum, SIG_DFL)``: the default action of signal(7) again."""
        self._current()
        _sigrec.install(_check_signum(signum), _MODE_DEFAULT)

    def ignore(self, signum: int) -> None:
        """``sigaction(signum, SIG_IGN)``: Linux discards the signal, even a pending one."""
        self._current()
        _sigrec.install(_check_signum(signum), _MODE_IGNORE)

    # -- mask ------------------------------------------------------------------------

    def block(self, signums: Iterable[int]) -> set[int]:
        """``pthread_sigmask(SIG_BLOCK)`` for the calling thread; returns the old mask.

        Linux keeps a blocked signal pending: one instance of a standard signal (later
        ones coalesce with it), every instance of a real-time one (queued in order), and
        delivers them when unblocked.
        """
        self._current()
        return set(_sigrec.sigmask(signal.SIG_BLOCK, [_check_signum(s) for s in signums]))

    def unblock(self, signums: Iterable[int]) -> set[int]:
        """``pthread_sigmask(SIG_UNBLOCK)`` for the calling thread; returns the old mask.

        Pending signals that become unblocked are delivered (and recorded) before this
        returns, standard signals first, then real-time ones lowest number first, as Linux
        does on the way back to user space.
        """
        self._current()
        return set(_sigrec.sigmask(signal.SIG_UNBLOCK, [_check_signum(s) for s in signums]))

    def blocked(self) -> set[int]:
        """The calling thread's signal mask (``pthread_sigmask(SIG_BLOCK, {})``)."""
        return set(_sigrec.sigmask(signal.SIG_BLOCK, []))

    def pending(self) -> set[int]:
        """``sigpending()``: signals pending for the calling thread or the process."""
        return set(_sigrec.pending())

    def sigtimedwait(self, signums: Iterable[int],
                     timeout: float | None = None) -> SigInfo | None:
        """``sigtimedwait(2)``: dequeue one of ``signums`` (blocked by the calling thread)
        from the pending signals, without a handler running; None after ``timeout``
        seconds (None: no limit).  The siginfo is the kernel's own, ``si_fd`` included.
        Raises ``InterruptedError`` when a handler of another signal ran meanwhile."""
        self._current()
        raw = _sigrec.sigtimedwait([_check_signum(s) for s in signums],
                                   -1.0 if timeout is None else max(0.0, float(timeout)))
        return None if raw is None else SigInfo(*raw)

    def dropped(self) -> int:
        """How many signals were delivered but not recorded because the ring was full.

        The count is since the extension was loaded (it is inherited across fork, like
        the rest of the process's memory).  A dropped signal still writes its wake-up byte.
        """
        return _sigrec.dropped()

    # -- reading ---------------------------------------------------------------------

    def fileno(self) -> int:
        """The read end of the wake-up pipe (non-blocking, close-on-exec, >= FD_FLOOR).

        It becomes readable when a signal is recorded (one byte per signal, the signal
        number; bytes are dropped, never the siginfo, when the pipe is full).  After it
        polls readable, call :meth:`drain_wakeups` and then :meth:`take`, in that order.
        """
        self._current()
        return self._rfd

    def drain_wakeups(self) -> int:
        """Read every byte waiting in the wake-up pipe; returns how many there were."""
        self._current()
        n = 0
        while True:
            try:
                data = os.read(self._rfd, 4096)
            except BlockingIOError:
                return n
            if not data:  # cannot happen while we hold the write end
                return n
            n += len(data)

    def _pull(self) -> None:
        """Move the ring's entries to the queue (caller holds ``_cond``)."""
        for t in _sigrec.take():
            self._queue.append(SigInfo(*t))

    def _pop(self, wanted: frozenset[int] | None) -> SigInfo | None:
        """Remove and return the oldest queued entry in ``wanted`` (caller holds ``_cond``)."""
        for i, info in enumerate(self._queue):
            if wanted is None or info.signo in wanted:
                del self._queue[i]
                return info
        return None

    def take(self) -> list[SigInfo]:
        """Every recorded siginfo not yet taken, oldest first, removing them.

        The order is the order of delivery, which for signals pending together is Linux's:
        standard signals by number, then real-time signals by number, each real-time
        signal's instances in the order they were sent.
        """
        self._current()
        with self._cond:
            self._pull()
            out = list(self._queue)
            self._queue.clear()
        return out

    def wait(self, signums: Iterable[int] | None = None,
             timeout: float | None = None) -> SigInfo | None:
        """The oldest recorded siginfo whose signal is in ``signums`` (any if None).

        Entries for other signals stay queued for later :meth:`take`/:meth:`wait` calls.
        If none is there yet, blocks in ``select`` on the wake-up pipe (never sleep-polls)
        until one is recorded or ``timeout`` seconds pass (None: no limit; 0: just look);
        returns None on timeout.  Like ``sigtimedwait`` for signals that stay unblocked:
        the signals must be recorded (see :meth:`record`) to be seen here.
        """
        self._current()
        wanted = None if signums is None else frozenset(int(s) for s in signums)
        deadline = None if timeout is None else time.monotonic() + max(0.0, timeout)
        with self._cond:
            while True:
                if not self._selecting:  # only the selecting thread may drain the pipe
                    self.drain_wakeups()
                    self._pull()
                found = self._pop(wanted)
                if found is not None:
                    return found
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return None
                if self._selecting:
                    self._cond.wait(remaining)
                    continue
                self._selecting = True
                rfd = self._rfd
                self._cond.release()
                try:
                    select.select([rfd], [], [], remaining)
                finally:
                    self._cond.acquire()
                    self._selecting = False
                    self._cond.notify_all()


_create_lock = threading.Lock()


def recorder() -> SignalRecorder:
    """This process's :class:`SignalRecorder`, created on first use.

    In a fork child it is the same object, re-initialised for the child (see the module
    docstring); after ``execve`` the new program gets a new one.
    """
    with _create_lock:
        inst = SignalRecorder._instance
        if inst is None:
            inst = SignalRecorder()
    inst._current()
    return inst


def _after_fork_in_child() -> None:
    global _create_lock
    _create_lock = threading.Lock()  # another thread of the parent may have held it
    inst = SignalRecorder._instance
    if inst is not None:
        inst._after_fork()


os.register_at_fork(after_in_child=_after_fork_in_child)
