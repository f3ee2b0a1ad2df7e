"""Reliability: a run ends, in bounded time and with its record, whatever dies under it.

* the kernel daemon dies on its own (an outside ``kill -9``): every agent call notices
  (its pidfd), the launcher ends the run within seconds saying how the kernel died, and
  the run folder keeps the kernel's event log up to the death;
* the launcher dies of SIGKILL: its zygote kills the daemon and the actors (fork
  children included end with their launcher link) and removes the pmem segment.
"""

from __future__ import annotations

import contextlib
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from typing import IO

import msgpack
import pytest

from kemu.agents.launcher.daemon_process import DaemonProcess, start_daemon
from kemu.agents.lib.runtime import Connection, DaemonGone
from kemu.protocol.config import STACKS_FILE

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAUNCH = os.path.join(ROOT, "launch.py")

#: B's open breaks A's lease and sleeps for the break time (100 s): the run is "mid-
#: scenario" from B's <unfinished ...> line until long after any test has finished
SLEEPING = """\
# title: B sleeps in the kernel for a long time
set lease_break_time = 100
set step_timeout = 100
A: signal(SIGIO, "record")                      => 0
A: fd = open("/data", O_RDONLY|O_CREAT, 0o644)  => 3
A: fcntl(fd, F_SETLEASE, F_WRLCK)               => 0
A: fork() as C
B: r = open("/data", O_RDONLY) &
B: join                                         => 3
"""


def _alive(pid: int) -> bool:
    """Is ``pid`` a process that has not ended (a zombie has ended)?"""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            stat = fh.read()
    except OSError:
        return False
    return stat[stat.rindex(b")") + 2 :].split()[0] not in (b"Z", b"X")


class Launcher:
    """``python launch.py run FILE`` in a subprocess, its transcript read line by line."""

    def __init__(self, tmp: str, scenario: str) -> None:
        self.runs = os.path.join(tmp, "runs")
        os.makedirs(self.runs)
        path = os.path.join(tmp, "sleeping.scn")
        with open(path, "w") as fh:
            fh.write(scenario)
        env = {**os.environ, "KEMU_RUNS": self.runs}
        self.proc = subprocess.Popen([sys.executable, LAUNCH, "run", path], env=env,
                                     stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, cwd=ROOT)
        assert self.proc.stdout is not None
        self.stdout: IO[bytes] = self.proc.stdout
        self.lines: list[str] = []

    def until(self, pattern: str, timeout: float = 30.0) -> str:
        """Read the transcript until a line matches ``pattern``; that line."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            assert left > 0, f"no line matching {pattern!r} in:\n" + "\n".join(self.lines)
            ready, _, _ = select.select([self.stdout], [], [], left)
            if not ready:
                continue
            raw = self.stdout.readline()
            assert raw, f"launcher ended before {pattern!r}:\n" + "\n".join(self.lines)
            line = raw.decode(errors="replace").rstrip("\n")
            self.lines.append(line)
            if re.search(pattern, line):
                return line

    def run_dir(self) -> str:
        (name,) = os.listdir(self.runs)
        return os.path.join(self.runs, name)

    def daemon_pid(self) -> int:
        """The daemon's PID, from its boot event (written out before it sleeps)."""
        with open(os.path.join(self.run_dir(), "kernel.jsonl.msgpack"), "rb") as fh:
            for rec in msgpack.Unpacker(fh, raw=False):
                if rec.get("ev") == "boot":
                    return int(rec["pid"])
        raise AssertionError("no boot event in the kernel's log")

    def actor_pids(self) -> set[int]:
        """Actors' PIDs as the transcript shows them (a fork child's in its parent's
        ``fork() = PID <C>`` line)."""
        pattern = re.compile(r"^\[\w+ (\d+)\]|= (\d+) <\w+>$")
        return {int(p) for line in self.lines for m in pattern.finditer(line)
                for p in m.groups() if p}

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self.stdout.close()


@pytest.fixture
def launcher() -> Iterator[object]:
    """Start a :class:`Launcher` (in a short folder: a run folder's socket paths must
    fit AF_UNIX's 108 bytes); killed at the end if still running."""
    made: list[Launcher] = []
    tmp = tempfile.mkdtemp(prefix="kr", dir="/tmp")

    def start(scenario: str) -> Launcher:
        made.append(Launcher(tmp, scenario))
        return made[-1]

    yield start
    for lch in made:
        lch.close()
    shutil.rmtree(tmp, ignore_errors=True)


@pytest.mark.timeout(30)
def test_a_call_waiting_for_a_dead_daemon_raises_daemon_gone(
        kemu_run_dir: str, kemu_daemon: DaemonProcess) -> None:
    """Before: the agent looked only for register.sock, which a SIGKILLed daemon leaves
    behind, and waited for ever.  Now its pidfd of the daemon ends the wait."""
    conn = Connection(kemu_run_dir, name="waiter")
    try:
        assert conn.daemon_pid == kemu_daemon.pid
        rid = conn.submit("wait_exit", os.getpid())  # parks: this process does not exit
        conn.call("getpid")  # answered after the wait_exit was parked (one socket)
        os.kill(kemu_daemon.pid, signal.SIGKILL)
        assert os.path.exists(os.path.join(kemu_run_dir, "register.sock"))
        start = time.monotonic()
        with pytest.raises(DaemonGone, match=rf"pid {kemu_daemon.pid}\) died.*"
                                             r"(killed by SIGKILL|already reaped)"):
            conn.wait(rid)
        assert time.monotonic() - start < 5.0
        with pytest.raises(DaemonGone):  # and every later call too
            conn.call("getpid")
    finally:
        conn.close()


@pytest.mark.timeout(60)
def test_a_daemon_killed_from_outside_ends_the_run(launcher: object) -> None:
    """Before: "actor B ... did not finish within 20 s", then the launcher could hang in
    its own calls.  Now the run ends at once, saying the kernel died and how."""
    lch = launcher(SLEEPING)  # type: ignore[operator]
    lch.until(r"open\(\"/data\", O_RDONLY\) <unfinished")
    pid = lch.daemon_pid()
    os.kill(pid, signal.SIGKILL)
    start = time.monotonic()
    try:
        code = lch.proc.wait(15)
    except subprocess.TimeoutExpired:
        pytest.fail("the launcher did not end within 15 s of the kernel's death")
    took = time.monotonic() - start
    out = "\n".join(lch.lines) + lch.stdout.read().decode(errors="replace")
    assert code == 1, out
    assert took < 5.0, out
    assert f"the kernel daemon (pid {pid}) died" in out and "killed by SIGKILL" in out, out
    assert "Traceback" not in out
    # the record up to the death: the kernel parked B's open before it died
    run_dir = lch.run_dir()
    with open(os.path.join(run_dir, "events.jsonl")) as fh:
        text = fh.read()
    assert '"src":"kernel","ev":"park"' in text and '"call":"open"' in text
    assert '"ev":"kernel-died"' in text
    assert os.path.exists(os.path.join(run_dir, "kernel.jsonl"))  # converted
    assert not any(_alive(p) for p in lch.actor_pids())
    assert not any(n.startswith(f"kemu-{pid}-") for n in os.listdir("/dev/shm"))


@pytest.mark.timeout(60)
def test_a_launcher_killed_leaves_nothing_behind(launcher: object) -> None:
    """SIGKILL of ``launch.py run`` mid-run: its zygote (its socket at end of file) kills
    the daemon and the actors and removes the daemon's segments; the fork child (not the
    zygote's) ends with its launcher link."""
    lch = launcher(SLEEPING)  # type: ignore[operator]
    lch.until(r"open\(\"/data\", O_RDONLY\) <unfinished")
    daemon = lch.daemon_pid()
    pids = lch.actor_pids() | {daemon}
    assert len(pids) == 4  # A, its child C, B, the daemon
    assert any(n.startswith(f"kemu-{daemon}-") for n in os.listdir("/dev/shm"))
    lch.proc.send_signal(signal.SIGKILL)
    lch.proc.wait()
    deadline = time.monotonic() + 10.0
    left: list[str] = []
    while time.monotonic() < deadline:  # polling process states, with a deadline
        left = [f"pid {p}" for p in sorted(pids) if _alive(p)]
        left += [n for n in os.listdir("/dev/shm") if n.startswith(f"kemu-{daemon}-")]
        if not left:
            break
        time.sleep(0.05)
    assert not left, f"left behind 10 s after the launcher's SIGKILL: {left}"
    with contextlib.suppress(FileNotFoundError):
        assert "register.sock" not in os.listdir(lch.run_dir()) or not _alive(daemon)


# --- a call too large for one frame ---------------------------------------------------------

BIG_WRITE = """\
# title: a write larger than one call moves
A: fd = open("/f", O_RDWR|O_CREAT, 0o644)   => 3
A: write(fd, "x" * SIZE)                    => 1048576
A: fstat(fd)                                => {"st_size": 1048576}
"""


@pytest.mark.timeout(60)
@pytest.mark.parametrize("size", [5_000_000, 20_000_000])
def test_a_write_over_the_per_call_limit_is_a_short_write(launcher: object, size: int) -> None:
    """Before: the 5 MB frame was refused as too-large without its id, the actor waited
    for ever and the line hit the step timeout.  Now it is a short write of MAX_IO
    (1 MiB, docs/syscalls.md), at once.  At 20 MB the actor's echo of its argument
    outgrew the launcher link (16 MiB) and the launcher died of a traceback: the echo
    is cut as strace cuts a string."""
    lch = launcher(BIG_WRITE.replace("SIZE", str(size)))  # type: ignore[operator]
    code = lch.proc.wait(50)
    out = "\n".join(lch.lines) + lch.stdout.read().decode(errors="replace")
    assert code == 0, out
    assert "=== PASS ===" in out, out


@pytest.mark.timeout(30)
def test_a_refused_frame_names_its_request(kemu_run_dir: str,
                                           kemu_daemon: DaemonProcess) -> None:
    """A frame over MAX_FRAME: the agent refuses to send it (ProtocolError at once), and
    one sent anyway is refused by the daemon with the request's id, so the waiter wakes."""
    from kemu.protocol import wire
    from kemu.protocol.errors import ProtocolError

    conn = Connection(kemu_run_dir, name="big")
    try:
        with pytest.raises(ProtocolError, match="too-large"):
            conn.call("sendmsg", "nobody", b"x" * (wire.MAX_FRAME + 1))
        # bypass the agent's check: the daemon itself must name request 77
        conn._seq += 1
        body = {"k": wire.CALL, "id": 77, "call": "write",
                "args": [1, b"x" * (wire.MAX_FRAME + 1)], "v": list(wire.PROTOCOL_VERSION),
                "pid": conn.pid, "seq": conn._seq}
        conn.sock.send(wire.seal(body, conn.secret))
        with pytest.raises(ProtocolError, match="too-large"):
            conn.wait(77, timeout=10)
        assert conn.call("getpid") == conn.pid  # still served
    finally:
        conn.close()


@pytest.mark.timeout(30)
def test_deeply_nested_arguments_are_refused_at_the_door(kemu_run_dir: str,
                                                          kemu_daemon: DaemonProcess) -> None:
    """A thousand nested lists in one authenticated call: refused as malformed at once,
    the daemon goes on serving and stops cleanly (its event log converts)."""
    from kemu.protocol.errors import ProtocolError

    deep: list[object] = []
    for _ in range(1000):
        deep = [deep]
    conn = Connection(kemu_run_dir, name="deep")
    try:
        with pytest.raises(ProtocolError, match="nested deeper"):
            conn.call("fstat", deep)
        assert conn.call("getpid") == conn.pid  # still served
    finally:
        conn.close()
    assert kemu_daemon.stop() == 0  # a clean stop: the log converted, nothing left
    assert not [n for n in os.listdir("/dev/shm") if n.startswith(kemu_daemon.pmem_name)]


def _cpu_ticks(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


@pytest.mark.timeout(30)
def test_a_doorbell_without_writers_leaves_the_daemon_idle(kemu_run_dir: str,
                                                           kemu_daemon: DaemonProcess) -> None:
    """The agent closes its end of a queue pair's doorbell FIFO (its last writer): the
    daemon must not spin on the FIFO's EPOLLHUP; idle means (almost) no CPU."""
    from kemu.agents.lib.api import EmuSystem

    s = EmuSystem(kemu_run_dir, name="qp-owner")
    try:
        ctx = s.call("ibv_open_device")
        qpn = s.ibv_create_qp(ctx)
        os.close(s._qps()[qpn].db)  # the only writer the process had
        assert s.call("getpid") == s.conn.pid  # the loop has seen the hang-up by now
        hz = os.sysconf("SC_CLK_TCK")
        before, t0 = _cpu_ticks(kemu_daemon.pid), time.monotonic()
        select.select([], [], [], 1.0)  # an interval to measure idleness over
        used = (_cpu_ticks(kemu_daemon.pid) - before) / hz
        assert used < 0.1 * (time.monotonic() - t0), f"the daemon used {used:.2f} s of CPU"
        assert s.call("kernel_stats")["qps"] == 1
    finally:
        s.conn.close()


CLAIMS_MORE = r"""
import errno, os, resource, sys
resource.setrlimit(resource.RLIMIT_NOFILE, (64, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
from kemu.agents.lib import runtime
real = runtime.register
runtime.register = lambda run_dir, hello, timeout=10.0: real(run_dir, {**hello, "nofile": 1 << 20}, timeout)
conn = runtime.Connection(sys.argv[1], name="claims")
opened = 0
try:
    while opened < 5000:
        conn.call("open", f"/f{opened}", os.O_CREAT | os.O_RDWR, 0o644)
        opened += 1
except OSError as exc:
    print(errno.errorcode[exc.errno], opened)
else:
    print("none", opened)
conn.close()
"""


@pytest.mark.timeout(60)
def test_the_descriptor_limit_is_the_processs_real_one(kemu_run_dir: str,
                                                        kemu_daemon: DaemonProcess) -> None:
    """A process whose RLIMIT_NOFILE is 64 claims 2^20 at registration: the daemon reads
    the real limit (prlimit of its PID) and the 62nd open is EMFILE, as on Linux."""
    env = {**os.environ, "PYTHONPATH": ROOT}
    out = subprocess.run([sys.executable, "-c", CLAIMS_MORE, kemu_run_dir], env=env,
                         capture_output=True, text=True, timeout=50, check=False)
    assert out.returncode == 0, out.stderr
    word, opened = out.stdout.split()
    assert word == "EMFILE" and int(opened) == 64 - 3, out.stdout  # 0, 1, 2 are taken


@pytest.mark.timeout(60)
def test_a_runs_logs_are_readable_by_its_user_only(kemu_run: object) -> None:
    """The kernel's, the launcher's and the merged event log of a run are mode 0600
    (they were 0644 in a folder other users can traverse)."""
    import stat as stat_mod

    outcome = kemu_run('A: fd = open("/f", O_RDWR|O_CREAT, 0o644) => 3\n')  # type: ignore[operator]
    for name in ("kernel.jsonl", "launcher.jsonl", "events.jsonl"):
        mode = stat_mod.S_IMODE(os.stat(os.path.join(outcome.run_dir, name)).st_mode)
        assert mode == 0o600, f"{name}: {oct(mode)}"


# --- a daemon that does not stop when told ------------------------------------------------

DEAF_DESIGN = '''
"""A design whose daemon never sees SIGTERM: blocked at import, so stop() must kill it."""
import signal

from kemu.policy import Policy

signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})


class Deaf(Policy):
    name = "deaf"
'''


@pytest.mark.timeout(60)
def test_a_daemon_that_does_not_stop_leaves_its_stacks(tmp_path: object) -> None:
    """A daemon that outlives its SIGTERM is killed, but first SIGUSR2 makes it write
    every thread's stack into the run folder (faulthandler), so a hang at shutdown
    says where it hung; the run's failure names the file."""
    design = os.path.join(str(tmp_path), "deaf.py")
    with open(design, "w") as fh:
        fh.write(DEAF_DESIGN)
    run_dir = os.path.join(str(tmp_path), "run")
    daemon = start_daemon(run_dir, policy=design)
    code = daemon.stop(timeout=1.0)
    assert code == -signal.SIGKILL and daemon.hung
    with open(os.path.join(run_dir, STACKS_FILE)) as fh:
        stacks = fh.read()
    assert "Current thread" in stacks or "Thread 0x" in stacks, stacks
    assert "serve" in stacks, stacks  # the loop it was in
    assert oct(os.stat(os.path.join(run_dir, STACKS_FILE)).st_mode & 0o777) == "0o600"


BUSY_CALLER = r"""
import sys
from kemu.agents.lib import runtime
conn = runtime.Connection(sys.argv[1], name="busy")
print("ready", flush=True)
try:
    while True:
        conn.call("getpid")
except Exception:
    pass
"""


@pytest.mark.timeout(120)
def test_sigterm_stops_a_daemon_in_the_middle_of_its_work(tmp_path: object) -> None:
    """SIGTERM while the daemon serves a process that calls it as fast as it can: the
    daemon stops cleanly (status 0, not killed after 10 s), every time.  Its handler
    used to raise an exception, which a C finaliser running at that moment (pyzmq's
    Frame.__dealloc__) swallowed: the daemon served on and was SIGKILLed.  That race
    is rare (once in about 1,000 explore runs under load, and not in these six), so
    this guards the stop under load; kernel-stacks.txt is what caught the race."""
    env = {**os.environ, "PYTHONPATH": ROOT}
    for i in range(6):
        run_dir = os.path.join(str(tmp_path), f"run{i}")
        daemon = start_daemon(run_dir)
        caller = subprocess.Popen([sys.executable, "-c", BUSY_CALLER, run_dir], env=env,
                                  stdout=subprocess.PIPE, text=True)
        try:
            assert caller.stdout is not None and caller.stdout.readline() == "ready\n"
            code = daemon.stop(timeout=5.0)
            assert code == 0 and not daemon.hung, (i, code)
        finally:
            caller.kill()
            caller.wait(10)
            if caller.stdout is not None:
                caller.stdout.close()
