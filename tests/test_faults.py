"""Processes killed at awkward moments: nothing of a dead process may be left behind.

Each test starts real agent processes (``python -c`` children running
``kemu.agents.lib.api.EmuSystem``, never ``multiprocessing`` forks, which would carry this
process's ZeroMQ state), lets them reach a point, which they report with a line on
stdout, SIGKILLs them there, waits with the daemon's ``wait_exit`` until the daemon has
finished the exit, and then checks the daemon's object counts and process list from
this process's own connection.  The daemon must keep serving after each fault.
"""

from __future__ import annotations

import contextlib
import errno
import os
import select
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator

import pytest

from kemu.agents.launcher.daemon_process import DaemonProcess
from kemu.agents.lib.runtime import Connection
from kemu.protocol import linux
from kemu.protocol.linux import MSG_DONTWAIT

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LINE_TIMEOUT = 20.0

#: the start of every child program: argv is [-c, run_dir, name, *extra]
PRELUDE = """\
import os, sys
from kemu.agents.lib.api import EmuSystem
from kemu.protocol import linux
run_dir, name = sys.argv[1], sys.argv[2]
extra = sys.argv[3:]
emu = EmuSystem(run_dir, name)
RW = linux.O_RDWR | linux.O_CREAT

def say(*words):
    sys.stdout.write(" ".join(str(w) for w in words) + "\\n")
    sys.stdout.flush()

def wait_for_test():
    sys.stdin.readline()  # the test never writes: this blocks until SIGKILL
"""


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


class Child:
    """An agent process running ``PRELUDE + body``; reports by lines on stdout."""

    def __init__(self, run_dir: str, name: str, body: str, *extra: str) -> None:
        code = PRELUDE + textwrap.dedent(body)
        self.proc = subprocess.Popen(
            [sys.executable, "-c", code, run_dir, name, *extra],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=child_env(),
        )
        self.pid = self.proc.pid
        self._buf = b""

    def line(self, timeout: float = LINE_TIMEOUT) -> list[str]:
        """The next line the child writes, split in words (select-guarded)."""
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            ready, _, _ = select.select([fd], [], [], max(0.0, left))
            if not ready:
                raise TimeoutError("the child said nothing")
            chunk = os.read(fd, 4096)
            if not chunk:
                raise EOFError(f"the child exited ({self.proc.wait()}) before saying it")
            self._buf += chunk
        raw, self._buf = self._buf.split(b"\n", 1)
        return raw.decode().split()

    def expect(self, word: str) -> list[str]:
        words = self.line()
        assert words and words[0] == word, words
        return words[1:]

    def tell(self, text: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(text.encode() + b"\n")
        self.proc.stdin.flush()

    def kill(self) -> None:
        """SIGKILL and reap."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def close(self) -> None:
        self.kill()
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None:
                with contextlib.suppress(OSError):
                    pipe.close()


@pytest.fixture
def spawn(daemon: DaemonProcess, conn: Connection) -> Iterator[Callable[..., Child]]:
    """Start children on the fixture daemon; every one is killed and reaped at the end."""
    made: list[Child] = []

    def start(name: str, body: str, *extra: str) -> Child:
        child = Child(daemon.run_dir, name, body, *extra)
        made.append(child)
        return child

    try:
        yield start
    finally:
        for child in made:
            child.close()


def stats(conn: Connection) -> dict[str, int]:
    return dict(conn.call("kernel_stats"))


def pids(conn: Connection) -> dict[int, dict[str, int]]:
    return {p["pid"]: p for p in conn.call("proc_list")}


def reap(conn: Connection, child: Child) -> None:
    """SIGKILL ``child`` and return once the daemon has finished its exit."""
    child.kill()
    assert conn.call("wait_exit", child.pid) == 0
    assert child.pid not in pids(conn)


def assert_serving(conn: Connection, daemon: DaemonProcess) -> None:
    assert daemon.proc.poll() is None, "the daemon died"
    assert conn.call("getpid") == os.getpid()
    fd = conn.call("open", "/after", linux.O_RDWR | linux.O_CREAT, 0o644)
    assert conn.call("pwrite", fd, b"ok", 0) == 2
    assert conn.call("pread", fd, 2, 0) == b"ok"
    conn.call("close", fd)
    conn.call("unlink", "/after")


def wait_until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    """Re-check a daemon-side condition that a daemon *timer* makes true.

    Used only where the daemon acts on its own clock (a claim timeout) or on a host
    event it sees asynchronously; no ordering between our processes rests on it.
    """
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        select.select([], [], [], 0.02)


# --- descriptors and files of a killed process ----------------------------------------------


def test_killed_process_descriptors_are_closed(
        conn: Connection, daemon: DaemonProcess, spawn: Callable[..., Child]) -> None:
    base = stats(conn)
    child = spawn("victim", """
        a = emu.open("/kept", RW, 0o644)
        emu.write(a, b"k" * 5000)
        b = emu.open("/scratch", RW, 0o644)
        emu.write(b, b"s" * 20000)
        emu.unlink("/scratch")  # unlinked but open: its blocks live while b does
        emu.dup2(b, 40)
        emu.dup(a)
        emu.fcntl(b, linux.F_DUPFD_CLOEXEC, 100)
        say("ready", os.getpid())
        wait_for_test()
    """)
    assert child.expect("ready") == [str(child.pid)]
    during = stats(conn)
    me = pids(conn)[child.pid]
    assert me["ppid"] == conn.pid and me["fds"] == 3 + 5
    assert during["tasks"] == base["tasks"] + 1
    assert during["files"] == base["files"] + 3  # console, /kept, /scratch
    assert during["inodes"] == base["inodes"] + 2
    assert during["blocks_used"] == base["blocks_used"] + 2 + 5
    reap(conn, child)
    after = stats(conn)
    assert after == {**base, "inodes": base["inodes"] + 1,
                     "blocks_used": base["blocks_used"] + 2}  # only /kept is left
    assert conn.call("stat", "/kept")["st_size"] == 5000
    assert_serving(conn, daemon)


def test_killed_between_exec_prepare_and_the_new_image(
        conn: Connection, daemon: DaemonProcess, spawn: Callable[..., Child]) -> None:
    base = stats(conn)
    child = spawn("execing", """
        fd = emu.open("/x", RW, 0o644)
        emu.write(fd, b"x")
        emu.unlink("/x")
        emu.conn.call("exec_prepare")  # the old image's secret is gone after this
        say("ready")
        wait_for_test()
    """)
    child.expect("ready")
    assert stats(conn)["blocks_used"] == base["blocks_used"] + 1
    reap(conn, child)
    assert stats(conn) == base
    assert_serving(conn, daemon)


# --- descriptor passing and death ----------------------------------------------------------


def test_pass_to_a_killed_process_is_released(
        conn: Connection, daemon: DaemonProcess, spawn: Callable[..., Child]) -> None:
    base = stats(conn)
    child = spawn("receiver", """
        emu.call("bind", "receiver")
        say("bound")
        wait_for_test()
    """)
    child.expect("bound")
    fd = conn.call("open", "/passed", linux.O_RDWR | linux.O_CREAT, 0o644)
    conn.call("write", fd, b"p" * 9000)
    conn.call("unlink", "/passed")
    assert conn.call("sendmsg", "receiver", b"take this", [fd, fd]) == 9
    conn.call("close", fd)
    during = stats(conn)
    assert during["inflight"] == 1 and during["blocks_used"] == base["blocks_used"] + 3
    reap(conn, child)
    assert stats(conn) == base  # the message and the file it carried are gone
    with pytest.raises(OSError) as info:
        conn.call("sendmsg", "receiver", b"", [])
    assert info.value.errno == errno.ECONNREFUSED  # the name went with its owner
    assert conn.call("bind", "receiver") == 0  # and is free again
    assert_serving(conn, daemon)


def test_pass_from_a_killed_process_survives(
        conn: Connection, daemon: DaemonProcess, spawn: Callable[..., Child]) -> None:
    conn.call("bind", "test")
    base = stats(conn)
    child = spawn("sender", """
        fd = emu.open("/will", RW, 0o644)
        emu.write(fd, b"from the dead")
        emu.unlink("/will")
        emu.call("sendmsg", "test", b"note", [fd])
        emu.close(fd)
        say("sent")
        wait_for_test()
    """)
    child.expect("sent")
    reap(conn, child)
    after = stats(conn)
    assert after["inflight"] == 1 and after["blocks_used"] == base["blocks_used"] + 1
    msg = conn.call("recvmsg", "test", MSG_DONTWAIT)
    assert msg["sender"] == child.pid and msg["data"] == b"note"
    (fd,) = msg["fds"]
    assert conn.call("pread", fd, 100, 0) == b"from the dead"
    conn.call("close", fd)
    assert stats(conn) == base
    assert_serving(conn, daemon)


def test_killed_while_parked_in_recvmsg(
        conn: Connection, daemon: DaemonProcess, spawn: Callable[..., Child]) -> None:
    base = stats(conn)
    child = spawn("sleeper", """
        emu.call("bind", "sleeper")
        emu.conn.submit("recvmsg", "sleeper")  # parks: nothing is queued
        emu.getpid()  # answered after the recvmsg was handled (one socket, in order)
        say("parked")
        wait_for_test()
    """)
    child.expect("parked")
    assert stats(conn)["parked"] == 1 and pids(conn)[child.pid]["parked"] == 1
    reap(conn, child)
    assert stats(conn) == base
    assert conn.call("bind", "sleeper") == 0
    assert_serving(conn, daemon)


# --- parked calls ------------------------------------------------------------------------------


def test_killed_while_parked_in_wait_exit(
        conn: Connection, daemon: DaemonProcess, spawn: Callable[..., Child]) -> None:
    base = stats(conn)
    child = spawn("waiter", """
        emu.conn.submit("wait_exit", int(extra[0]))  # the test process: it never exits
        emu.getpid()  # answered after the wait_exit was parked
        say("parked")
        wait_for_test()
    """, str(os.getpid()))
    child.expect("parked")
    assert stats(conn)["parked"] == 1 and pids(conn)[child.pid]["parked"] == 1
    reap(conn, child)
    assert stats(conn) == base
    assert all(p["parked"] == 0 for p in pids(conn).values())
    assert_serving(conn, daemon)


def test_many_waiters_for_one_death(
        conn: Connection, daemon: DaemonProcess, spawn: Callable[..., Child]) -> None:
    target = spawn("target", """
        say("ready")
        wait_for_test()
    """)
    target.expect("ready")
    waiters = [spawn(f"w{i}", """
        rid = emu.conn.submit("wait_exit", int(extra[0]))
        emu.getpid()
        say("parked")
        say("woken", emu.conn.wait(rid))
        wait_for_test()
    """, str(target.pid)) for i in range(3)]
    for w in waiters:
        w.expect("parked")
    assert stats(conn)["parked"] == 3
    reap(conn, target)
    for w in waiters:
        assert w.expect("woken") == ["0"]
    assert stats(conn)["parked"] == 0
    assert_serving(conn, daemon)


# --- fork -----------------------------------------------------------------------------------


FORKER = """
    keep = emu.open("/shared", RW, 0o644)
    pid = emu.fork("grandchild")
    if pid == 0:
        mine = emu.open("/mine", RW, 0o644)
        emu.unlink("/mine")
        say("child", os.getpid())
        sys.stdin.readline()  # the test writes only once the parent is dead
        n = emu.write(mine, b"alive") + emu.write(keep, b"!")
        say("works", n, emu.getpid(), emu.call("getppid"))
        wait_for_test()
        os._exit(0)
    say("parent", pid)
    wait_for_test()
"""


def start_forker(conn: Connection, spawn: Callable[..., Child]) -> tuple[Child, int]:
    """A process that forked through the emulator; returns (it, its child's pid)."""
    parent = spawn("forker", FORKER)
    said: dict[str, str] = {}
    for _ in range(2):  # either may speak first
        word, value = parent.line()
        said[word] = value
    grandchild = int(said["child"])
    assert int(said["parent"]) == grandchild
    return parent, grandchild


def test_killing_the_parent_leaves_the_fork_child_working(
        conn: Connection, daemon: DaemonProcess, spawn: Callable[..., Child]) -> None:
    base = stats(conn)
    parent, grandchild = start_forker(conn, spawn)
    procs = pids(conn)
    assert procs[parent.pid]["ppid"] == conn.pid
    assert procs[grandchild]["ppid"] == parent.pid  # a task, child of the forker
    assert procs[grandchild]["fds"] == procs[parent.pid]["fds"] + 1
    assert stats(conn)["pending_forks"] == 0
    reap(conn, parent)
    assert grandchild in pids(conn)
    parent.tell("go")  # only the grandchild still reads the shared stdin
    words = parent.expect("works")
    assert words[:2] == ["6", str(grandchild)]
    assert conn.call("stat", "/shared")["st_size"] == 1
    os.kill(grandchild, signal.SIGKILL)  # not our child: the daemon tells us it is done
    assert conn.call("wait_exit", grandchild) == 0
    after = stats(conn)
    assert after == {**base, "inodes": base["inodes"] + 1, "blocks_used": base["blocks_used"] + 1}
    assert_serving(conn, daemon)


def test_orphan_is_reparented(
        conn: Connection, daemon: DaemonProcess, spawn: Callable[..., Child]) -> None:
    parent, grandchild = start_forker(conn, spawn)
    reap(conn, parent)
    assert pids(conn)[grandchild]["ppid"] != parent.pid
    parent.tell("go")
    assert parent.expect("works")[2] != str(parent.pid)


def test_fork_snapshot_of_a_parent_killed_before_forking(
        conn: Connection, daemon: DaemonProcess, spawn: Callable[..., Child]) -> None:
    base = stats(conn)
    child = spawn("prepared", """
        fd = emu.open("/snap", RW, 0o644)
        emu.write(fd, b"s")
        emu.unlink("/snap")
        emu.conn.call("fork_prepare")  # and die before os.fork()
        say("ready")
        wait_for_test()
    """)
    child.expect("ready")
    reap(conn, child)
    # the snapshot waits for a child that may still register, under a claim timer
    held = stats(conn)
    assert held["pending_forks"] == 1 and held["timers"] == 1
    assert held["blocks_used"] == base["blocks_used"] + 1
    assert_serving(conn, daemon)


def test_fork_child_dead_before_registering(
        conn: Connection, daemon: DaemonProcess, spawn: Callable[..., Child]) -> None:
    base = stats(conn)
    child = spawn("forker", """
        emu.open("/snap2", RW, 0o644)
        token = emu.conn.call("fork_prepare")
        pid = os.fork()
        if pid == 0:
            os._exit(0)  # dies without ever registering
        emu.conn.call("fork_done", token, pid)
        os.waitpid(pid, 0)
        say("done")
        wait_for_test()
    """)
    child.expect("done")
    # the daemon learns of the death from a pidfd, asynchronously to our calls
    wait_until(lambda: stats(conn)["pending_forks"] == 0)
    assert stats(conn)["files"] == base["files"] + 2  # console and /snap2 of the forker
    reap(conn, child)
    assert stats(conn) == {**base, "inodes": base["inodes"] + 1}
    assert_serving(conn, daemon)


# --- the claim timeout, on a daemon that allows a short one ------------------------------------


DAEMON_CODE = """\
import resource, sys
from kemu.kernel_daemon.daemon import Daemon
from kemu.kernel_daemon.kernel import Config
run_dir, claim, nofile, ready = sys.argv[1], float(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
if nofile:
    resource.setrlimit(resource.RLIMIT_NOFILE,
                       (nofile, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
Daemon(Config(run_dir=run_dir, fork_claim_timeout=claim)).serve(ready)
"""


def start_custom_daemon(run_dir: str, fork_claim_timeout: float = 10.0,
                        nofile: int = 0) -> DaemonProcess:
    """A daemon built from a non-default Config (the command line has no such option),
    optionally with a small RLIMIT_NOFILE."""
    r, w = os.pipe()
    proc = subprocess.Popen([sys.executable, "-c", DAEMON_CODE, run_dir,
                             str(fork_claim_timeout), str(nofile), str(w)],
                            pass_fds=(w,), env=child_env(), stdin=subprocess.DEVNULL)
    os.close(w)
    line = b""
    try:
        while not line.endswith(b"\n"):
            ready, _, _ = select.select([r], [], [], LINE_TIMEOUT)
            if not ready:
                proc.kill()
                proc.wait()
                raise TimeoutError("the daemon did not become ready")
            chunk = os.read(r, 256)
            if not chunk:
                proc.wait()
                raise RuntimeError("the daemon exited before it was ready")
            line += chunk
    finally:
        os.close(r)
    _, pid, pmem = line.decode().split()
    return DaemonProcess(run_dir, proc, int(pid), pmem)


def test_fork_snapshot_expires_after_the_claim_timeout(run_dir: str) -> None:
    d = start_custom_daemon(run_dir, fork_claim_timeout=0.3)
    conn = Connection(run_dir, name="pytest")
    child = None
    try:
        base = stats(conn)
        child = Child(run_dir, "prepared", """
            fd = emu.open("/snap", RW, 0o644)
            emu.write(fd, b"s" * 5000)
            emu.unlink("/snap")
            emu.conn.call("fork_prepare")
            say("ready")
            wait_for_test()
        """)
        child.expect("ready")
        reap(conn, child)
        assert stats(conn)["pending_forks"] == 1
        wait_until(lambda: stats(conn)["pending_forks"] == 0)
        assert stats(conn) == base  # the snapshot's files and their blocks are gone
        assert_serving(conn, d)
    finally:
        if child is not None:
            child.close()
        conn.close()
        d.stop()


def test_fork_claim_timeout_is_a_command_line_option() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "kemu.kernel_daemon", "--fork-claim-timeout", "0.3",
         "--syscall-table"],
        env=child_env(), stdin=subprocess.DEVNULL, capture_output=True, timeout=30,
    )
    assert done.returncode == 0


# --- the daemon itself runs out of descriptors ------------------------------------------------


def test_daemon_survives_running_out_of_descriptors(run_dir: str) -> None:
    d = start_custom_daemon(run_dir, nofile=64)
    path = os.path.join(run_dir, "register.sock")
    flood = [socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) for _ in range(100)]
    try:
        for s in flood:
            s.connect(path)  # the listen backlog (256) takes them all
        for s in flood:
            s.close()
        # the daemon must still be there once the flood has drained
        conn = Connection(run_dir, name="after-flood")
        try:
            assert conn.call("getpid") == os.getpid()
        finally:
            conn.close()
        assert d.proc.poll() is None
    finally:
        for s in flood:
            s.close()
        d.stop()
