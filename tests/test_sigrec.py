"""kemu.agents.lib.sigrec: real signals recorded with their full siginfo, checked on the host kernel.

Processes are ordered with pipes, ``os.waitpid`` and, where a process must be asleep in a
system call before it is signalled, ``/proc/<pid>/syscall``; never with sleeps.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import errno
import fcntl
import json
import os
import select
import signal
import tempfile
import threading
import time
import traceback
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from kemu.agents.lib.sigrec import FD_FLOOR, RING_SIZE, SigInfo, SignalRecorder, recorder
from kemu.protocol.linux import POLL_MSG, SI_KERNEL, SI_TKILL, SI_USER

pytestmark = pytest.mark.timeout(30)

SIGUSR1 = int(signal.SIGUSR1)
SIGUSR2 = int(signal.SIGUSR2)
SIGIO = int(signal.SIGIO)  # 29
SIGRT1 = int(signal.SIGRTMIN) + 1  # 35
USED = (SIGUSR1, SIGUSR2, SIGIO, SIGRT1)
BAND_MSG = 0x441  # POLLIN | POLLRDNORM | POLLMSG: the band of a lease break

libc = ctypes.CDLL(None, use_errno=True)
libc.read.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t]
libc.read.restype = ctypes.c_ssize_t
libc.pthread_kill.argtypes = [ctypes.c_ulong, ctypes.c_int]
libc.pthread_kill.restype = ctypes.c_int
libc.fork.restype = ctypes.c_int


@pytest.fixture
def rec() -> Iterator[SignalRecorder]:
    """The recorder, emptied; every signal a test uses back to SIG_DFL, unblocked, after."""
    r = recorder()
    r.take()
    r.drain_wakeups()
    yield r
    for s in USED:
        r.ignore(s)  # discards a pending instance, so unblocking it cannot kill pytest
    r.unblock(USED)
    for s in USED:
        r.default(s)
    r.take()
    r.drain_wakeups()


@pytest.fixture
def tmp() -> Iterator[str]:
    with open("/proc/sys/fs/leases-enable") as f:
        enabled = f.read().strip() == "1"
    if not enabled:
        pytest.skip("leases are disabled (/proc/sys/fs/leases-enable)")
    with tempfile.TemporaryDirectory(prefix="sigrec-", dir="/tmp") as d:
        yield d


class Child:
    """A forked child running ``body(self)``; JSON lines both ways over two pipes.

    The child always ends with ``os._exit``: 0 when ``body`` returned, 1 after sending
    the traceback of its exception (re-raised by the parent's :meth:`recv`).
    """

    def __init__(self, body: Callable[[Child], None]) -> None:
        p2c_r, p2c_w = os.pipe()
        c2p_r, c2p_w = os.pipe()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # 3.12+: fork with threads
            pid = os.fork()
        if pid == 0:
            code = 1
            try:
                os.close(p2c_w)
                os.close(c2p_r)
                self._in, self._out = os.fdopen(p2c_r, "r"), c2p_w
                body(self)
                code = 0
            except BaseException:
                with contextlib.suppress(BaseException):
                    self.send({"error": traceback.format_exc()})
            finally:
                os._exit(code)
        os.close(p2c_r)
        os.close(c2p_w)
        self.pid = pid
        self._in, self._out = os.fdopen(c2p_r, "r"), p2c_w
        self._status: int | None = None

    def send(self, obj: Any) -> None:
        os.write(self._out, (json.dumps(obj) + "\n").encode())

    def recv(self) -> Any:
        line = self._in.readline()
        if not line:
            raise EOFError("the other side closed its pipe")
        obj = json.loads(line)
        if isinstance(obj, dict) and "error" in obj:
            raise AssertionError("child failed:\n" + obj["error"])
        return obj

    def join(self) -> int:
        """Reap the child; its raw wait status."""
        _, self._status = os.waitpid(self.pid, 0)
        return self._status

    def __enter__(self) -> Child:
        return self

    def __exit__(self, *exc: object) -> None:
        self._in.close()
        os.close(self._out)
        if self._status is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
            os.waitpid(self.pid, 0)


def wait_blocked_in_read(pid: int, fd: int) -> None:
    """Return once process ``pid``'s main thread is asleep in ``read(fd, ...)``.

    ``/proc/<pid>/syscall`` shows the system call of a sleeping task only ("running"
    otherwise); without ptrace access to it, fall back on the task state ``S``.
    """
    want = f"0 {fd:#x} "  # __NR_read == 0 on x86-64, then the first argument
    deadline = time.monotonic() + 10
    while True:
        try:
            with open(f"/proc/{pid}/syscall") as f:
                if f.read().startswith(want):
                    return
        except PermissionError:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] == "S":
                    return
        if time.monotonic() > deadline:
            raise TimeoutError(f"process {pid} never blocked in read({fd})")
        os.sched_yield()


def make_files(d: str, n: int) -> list[str]:
    paths = []
    for i in range(n):
        p = os.path.join(d, f"f{i}")
        with open(p, "wb") as f:
            f.write(b"data")
        paths.append(p)
    return paths


def lease_holder(paths: list[str], setsig: int | None, block: bool) -> Callable[[Child], None]:
    """A child body: write leases on ``paths`` (opened O_RDONLY), reports their breaks."""
    sig = SIGIO if setsig is None else setsig

    def body(ch: Child) -> None:
        rec = recorder()
        rec.record(sig)
        if block:
            rec.block([sig])
        fds = []
        for p in paths:
            fd = os.open(p, os.O_RDONLY)
            if setsig is not None:
                fcntl.fcntl(fd, fcntl.F_SETSIG, setsig)
            fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_WRLCK)
            fds.append(fd)
        ch.send({"fds": fds})
        pending: list[int] = []
        early: list[SigInfo] = []
        if block:
            assert ch.recv() == "broken"
            pending = sorted(rec.pending())
            early = rec.take()
            rec.unblock([sig])
            infos = rec.take()
        else:
            info = rec.wait({sig}, 10)
            infos = [] if info is None else [info]
        during = [fcntl.fcntl(fd, fcntl.F_GETLEASE) for fd in fds]
        for fd in fds:
            fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_UNLCK)
            os.close(fd)
        ch.send({"infos": [dataclasses.astuple(i) for i in infos], "pending": pending,
                 "early": len(early), "during": during})

    return body


def break_leases(body: Callable[[Child], None], paths: list[str],
                 block: bool) -> tuple[list[int], dict[str, Any]]:
    """Run a lease holder, break each lease with a non-blocking O_RDWR open; its report."""
    with Child(body) as ch:
        fds: list[int] = ch.recv()["fds"]
        for p in paths:
            with pytest.raises(BlockingIOError) as ei:
                os.open(p, os.O_RDWR | os.O_NONBLOCK)
            assert ei.value.errno == errno.EAGAIN  # the break has started all the same
        if block:
            ch.send("broken")
        report: dict[str, Any] = ch.recv()
        assert ch.join() == 0
    for p in paths:  # released: an open no longer breaks anything
        os.close(os.open(p, os.O_RDWR | os.O_NONBLOCK))
    return fds, report


# -- signals sent by kill --------------------------------------------------------------


def test_kill_self_records_si_user(rec: SignalRecorder) -> None:
    rec.record(SIGUSR1)
    os.kill(os.getpid(), SIGUSR1)
    pid, uid = os.getpid(), os.getuid()
    # si_fd/si_band are read raw: for SI_USER the union holds si_pid, si_uid, then zeros
    assert rec.wait({SIGUSR1}, 5) == SigInfo(SIGUSR1, SI_USER, 0, pid, uid, 0, pid | uid << 32)
    assert rec.take() == []


def test_wakeup_pipe_descriptors(rec: SignalRecorder) -> None:
    rfd = rec.fileno()
    assert rfd >= FD_FLOOR
    ends = [int(n) for n in os.listdir("/proc/self/fd")
            if int(n) >= FD_FLOOR and os.readlink(f"/proc/self/fd/{n}") == os.readlink(
                f"/proc/self/fd/{rfd}")]
    assert len(ends) == 2  # the read end and the handler's write end, both >= FD_FLOOR
    for fd in ends:
        assert fcntl.fcntl(fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC
        assert fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_NONBLOCK
    assert select.select([rfd], [], [], 0)[0] == []
    rec.record(SIGUSR2)
    os.kill(os.getpid(), SIGUSR2)
    assert select.select([rfd], [], [], 5)[0] == [rfd]
    assert os.read(rfd, 16) == bytes([SIGUSR2])  # one byte per signal: its number
    assert rec.drain_wakeups() == 0
    assert [i.signo for i in rec.take()] == [SIGUSR2]


def test_wait_keeps_other_signals_queued(rec: SignalRecorder) -> None:
    rec.record(SIGUSR1)
    rec.record(SIGUSR2)
    os.kill(os.getpid(), SIGUSR1)
    os.kill(os.getpid(), SIGUSR2)
    got = rec.wait({SIGUSR2}, 5)
    assert got is not None and got.signo == SIGUSR2
    assert rec.wait({SIGUSR2}, 0) is None
    assert rec.wait({SIGUSR2}, 0.05) is None
    assert [i.signo for i in rec.take()] == [SIGUSR1]
    assert rec.wait(None, 0) is None


def test_block_pending_unblock(rec: SignalRecorder) -> None:
    rec.record(SIGUSR2)
    assert SIGUSR2 not in rec.block([SIGUSR2])
    try:
        assert SIGUSR2 in rec.blocked()
        # to this thread, which blocks it: kill(2) of the process could go to another
        # thread of the test process, where the handler would take it at once
        signal.pthread_kill(threading.get_ident(), SIGUSR2)
        signal.pthread_kill(threading.get_ident(), SIGUSR2)  # a standard signal: coalesces
        assert SIGUSR2 in rec.pending()
        assert rec.take() == []
    finally:
        assert SIGUSR2 in rec.unblock([SIGUSR2])
    assert [i.signo for i in rec.take()] == [SIGUSR2]  # delivered before unblock returned
    assert SIGUSR2 not in rec.pending()
    assert SIGUSR2 not in rec.blocked()


def test_ignore_and_default(rec: SignalRecorder) -> None:
    def body(ch: Child) -> None:
        r = recorder()
        r.record(SIGUSR1)
        r.ignore(SIGUSR1)
        os.kill(os.getpid(), SIGUSR1)
        ch.send({"after_ignore": len(r.take())})
        r.default(SIGUSR1)
        os.kill(os.getpid(), SIGUSR1)  # SIG_DFL for SIGUSR1 terminates
        ch.send({"survived": True})

    with Child(body) as ch:
        assert ch.recv() == {"after_ignore": 0}
        status = ch.join()
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == SIGUSR1


def test_refuses_sigkill_sigstop_and_bad_numbers(rec: SignalRecorder) -> None:
    for sig in (signal.SIGKILL, signal.SIGSTOP, 0, 65):
        with pytest.raises(ValueError):
            rec.record(sig)
        with pytest.raises(ValueError):
            rec.default(sig)
        with pytest.raises(ValueError):
            rec.ignore(sig)
        with pytest.raises(ValueError):
            rec.block([sig])
        with pytest.raises(ValueError):
            rec.unblock([sig])


def test_one_recorder_per_process(rec: SignalRecorder) -> None:
    assert recorder() is rec
    with pytest.raises(RuntimeError):
        SignalRecorder()


# -- lease breaks ----------------------------------------------------------------------


def test_lease_break_with_setsig_sigio(tmp: str) -> None:
    paths = make_files(tmp, 1)
    fds, report = break_leases(lease_holder(paths, SIGIO, block=False), paths, block=False)
    [info] = [SigInfo(*t) for t in report["infos"]]
    assert info.signo == SIGIO
    assert info.code == POLL_MSG
    assert info.fd == fds[0]
    assert info.band == BAND_MSG
    assert (info.pid, info.uid) == (BAND_MSG, 0)  # si_pid/si_uid overlap si_band
    assert report["during"] == [fcntl.F_UNLCK]  # F_GETLEASE during a break: the target type


def test_lease_break_plain_sigio(tmp: str) -> None:
    paths = make_files(tmp, 1)
    _, report = break_leases(lease_holder(paths, None, block=False), paths, block=False)
    # without F_SETSIG the kernel sends a bare SIGIO (SEND_SIG_PRIV): SI_KERNEL, no fd
    assert [SigInfo(*t) for t in report["infos"]] == [SigInfo(SIGIO, SI_KERNEL, 0, 0, 0, 0, 0)]


def test_lease_breaks_queue_rt_signal_while_blocked(tmp: str) -> None:
    paths = make_files(tmp, 2)
    fds, report = break_leases(lease_holder(paths, SIGRT1, block=True), paths, block=True)
    assert SIGRT1 in report["pending"]
    assert report["early"] == 0
    infos = [SigInfo(*t) for t in report["infos"]]
    assert [(i.signo, i.code, i.fd, i.band) for i in infos] == [
        (SIGRT1, POLL_MSG, fds[0], BAND_MSG), (SIGRT1, POLL_MSG, fds[1], BAND_MSG)]


def test_lease_breaks_coalesce_standard_sigio_while_blocked(tmp: str) -> None:
    paths = make_files(tmp, 2)
    fds, report = break_leases(lease_holder(paths, SIGIO, block=True), paths, block=True)
    assert SIGIO in report["pending"]
    assert report["early"] == 0
    infos = [SigInfo(*t) for t in report["infos"]]
    # a standard signal already pending is not queued again: the first break's siginfo stays
    assert [(i.signo, i.code, i.fd, i.band) for i in infos] == [(SIGIO, POLL_MSG, fds[0], BAND_MSG)]


# -- interrupted system calls ----------------------------------------------------------


def test_eintr_without_sa_restart(rec: SignalRecorder) -> None:
    rec.record(SIGUSR1, restart=False)
    r, w = os.pipe()
    buf = ctypes.create_string_buffer(1)
    ppid = os.getpid()

    def body(ch: Child) -> None:
        wait_blocked_in_read(ppid, r)
        os.kill(ppid, SIGUSR1)

    try:
        with Child(body) as ch:
            ctypes.set_errno(0)
            n = libc.read(r, buf, 1)
            err = ctypes.get_errno()
            assert (n, err) == (-1, errno.EINTR)
            assert ch.join() == 0
    finally:
        os.close(r)
        os.close(w)
    info = rec.wait({SIGUSR1}, 5)
    assert info is not None and (info.code, info.pid) == (SI_USER, ch.pid)


def test_sa_restart_restarts_read(rec: SignalRecorder) -> None:
    rec.record(SIGUSR1, restart=True)
    r, w = os.pipe()
    buf = ctypes.create_string_buffer(1)
    ppid = os.getpid()
    wake = os.dup(rec.fileno())  # the child learns from it that the parent's handler ran

    def body(ch: Child) -> None:
        wait_blocked_in_read(ppid, r)
        os.kill(ppid, SIGUSR1)
        seen = b""
        while bytes([SIGUSR1]) not in seen:
            if not select.select([wake], [], [], 10)[0]:
                raise TimeoutError("the parent's handler never ran")
            seen += os.read(wake, 64)
        wait_blocked_in_read(ppid, r)  # restarted: asleep in the same read again
        os.write(w, b"x")

    try:
        with Child(body) as ch:
            os.close(wake)
            ctypes.set_errno(0)
            n = libc.read(r, buf, 1)
            assert (n, ctypes.get_errno(), buf.raw) == (1, 0, b"x")
            assert ch.join() == 0
    finally:
        os.close(r)
        os.close(w)
    info = rec.wait({SIGUSR1}, 5)
    assert info is not None and (info.code, info.pid) == (SI_USER, ch.pid)


# -- fork, threads, overflow -----------------------------------------------------------


def test_fork_child_has_own_pipe_and_no_parent_entries(rec: SignalRecorder) -> None:
    rec.record(SIGUSR1)
    os.kill(os.getpid(), SIGUSR1)  # recorded in the parent, not taken before the fork
    parent_fd = rec.fileno()
    parent_pipe = os.fstat(parent_fd).st_ino

    def body(ch: Child) -> None:
        r = recorder()
        assert r is rec
        assert r.fileno() == parent_fd  # same number, new pipe
        assert os.fstat(r.fileno()).st_ino != parent_pipe
        assert r.take() == []  # the parent's entry is not the child's
        os.kill(os.getpid(), SIGUSR1)  # the disposition was inherited
        info = r.wait({SIGUSR1}, 5)
        ch.send(None if info is None else dataclasses.astuple(info))

    with Child(body) as ch:
        got = ch.recv()
        assert ch.join() == 0
    assert SigInfo(*got).pid == ch.pid
    assert rec.drain_wakeups() == 1  # the parent's own byte only, not the child's
    [mine] = rec.take()
    assert mine.pid == os.getpid()


def test_fork_outside_os_fork_is_detected(rec: SignalRecorder) -> None:
    """A fork through libc (no at-fork hook ran) is noticed by the pid check."""
    rec.record(SIGUSR1)
    os.kill(os.getpid(), SIGUSR1)
    parent_pipe = os.fstat(rec.fileno()).st_ino
    r, w = os.pipe()
    pid = libc.fork()
    if pid == 0:
        code = 1
        try:
            c = recorder()
            ok = os.fstat(c.fileno()).st_ino != parent_pipe and c.take() == []
            os.kill(os.getpid(), SIGUSR1)
            info = c.wait({SIGUSR1}, 5)
            ok = ok and info is not None and info.pid == os.getpid()
            os.write(w, b"ok" if ok else b"no")
            code = 0
        finally:
            os._exit(code)
    os.close(w)
    try:
        assert os.read(r, 2) == b"ok"
    finally:
        os.close(r)
        assert os.waitpid(pid, 0)[1] == 0
    [mine] = rec.take()
    assert mine.pid == os.getpid()


def test_handler_runs_on_another_thread(rec: SignalRecorder) -> None:
    rec.record(SIGUSR1)
    got: list[SigInfo | None] = []
    t = threading.Thread(target=lambda: got.append(rec.wait({SIGUSR1}, 10)))
    t.start()  # the thread inherits an unblocked SIGUSR1
    rec.block([SIGUSR1])
    try:
        os.kill(os.getpid(), SIGUSR1)  # process-directed: Linux picks a thread not blocking it
        t.join(15)
    finally:
        rec.unblock([SIGUSR1])
    assert len(got) == 1 and got[0] is not None
    assert (got[0].signo, got[0].pid) == (SIGUSR1, os.getpid())


def test_two_waiting_threads_each_get_their_signal(rec: SignalRecorder) -> None:
    rec.record(SIGUSR1)
    rec.record(SIGUSR2)
    got: dict[int, SigInfo | None] = {}

    def waiter(sig: int) -> None:
        got[sig] = rec.wait({sig}, 10)

    threads = [threading.Thread(target=waiter, args=(s,)) for s in (SIGUSR1, SIGUSR2)]
    for t in threads:
        t.start()
    os.kill(os.getpid(), SIGUSR2)
    os.kill(os.getpid(), SIGUSR1)
    for t in threads:
        t.join(15)
    assert {s: (i.signo if i else None) for s, i in got.items()} == {
        SIGUSR1: SIGUSR1, SIGUSR2: SIGUSR2}


def test_concurrent_handlers_on_two_threads(rec: SignalRecorder) -> None:
    rec.record(SIGUSR1)
    dropped = rec.dropped()
    n = 1500  # 2n < RING_SIZE
    barrier = threading.Barrier(2)

    def hammer() -> None:
        me = threading.get_ident()
        barrier.wait()
        for _ in range(n):  # through ctypes: the handler runs inside the call, without the GIL
            assert libc.pthread_kill(me, SIGUSR1) == 0

    threads = [threading.Thread(target=hammer) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    infos = rec.take()
    assert len(infos) == 2 * n
    assert set(infos) == {SigInfo(SIGUSR1, SI_TKILL, 0, os.getpid(), os.getuid(), 0,
                                  os.getpid() | os.getuid() << 32)}
    assert rec.dropped() == dropped
    assert rec.drain_wakeups() == 2 * n


def test_ring_overflow_counts_dropped(rec: SignalRecorder) -> None:
    rec.record(SIGUSR1)
    before = rec.dropped()
    me = threading.get_ident()
    for _ in range(RING_SIZE + 100):  # thread-directed to itself: delivered before it returns
        signal.pthread_kill(me, SIGUSR1)
    assert rec.dropped() - before == 100
    assert rec.drain_wakeups() == RING_SIZE + 100  # dropped signals still wake
    infos = rec.take()
    assert len(infos) == RING_SIZE
    assert {(i.signo, i.code) for i in infos} == {(SIGUSR1, SI_TKILL)}
    os.kill(os.getpid(), SIGUSR1)  # room again
    info = rec.wait({SIGUSR1}, 5)
    assert info is not None and info.code == SI_USER
    assert rec.dropped() - before == 100
