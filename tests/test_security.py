"""Identity and isolation: a process is only ever itself (issue 11).

Each test performs an attack as issue 11 describes it, with real processes against a
real kernel daemon: a child made by a raw ``os.fork()`` that inherited its parent's
secret, a thief of a secret who sends one frame with a high sequence number, a process
that opens a queue pair's ring and doorbell, another uid that opens a run's files.
``docs/security.md`` states the model these tests hold the daemon to.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import select
import signal
from collections.abc import Callable
from typing import Any

import msgpack
import pytest
import zmq

from kemu.agents.launcher.daemon_process import DaemonProcess
from kemu.agents.lib.runtime import Connection
from kemu.protocol import linux, wire
from kemu.protocol.errors import ProtocolError

CHILD_TIMEOUT = 10.0


def in_raw_child(fn: Callable[[], Any]) -> Any:
    """Run ``fn`` in a child made by a raw ``os.fork()`` (no ``fork_prepare``: the
    daemon is not told) and return what it returned (or raise what it raised)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        os.close(r)
        try:
            out: tuple[str, Any] = ("ok", fn())
        except BaseException as exc:  # reported to the parent
            out = ("raised", repr(exc))
        try:
            os.write(w, pickle.dumps(out))
        finally:
            os._exit(0)
    os.close(w)
    try:
        data = b""
        while True:
            ready, _, _ = select.select([r], [], [], CHILD_TIMEOUT)
            if not ready:
                os.kill(pid, signal.SIGKILL)
                raise AssertionError(f"the raw fork child did not answer in {CHILD_TIMEOUT} s")
            chunk = os.read(r, 65536)
            if not chunk:
                break
            data += chunk
    finally:
        os.close(r)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)
    kind, value = pickle.loads(data)
    if kind == "raised":
        raise AssertionError(f"the child raised {value}")
    return value


def forged_call(endpoint: str, pid: int, secret: bytes, seq: int, call: str,
                *args: Any, sock: zmq.Socket[bytes] | None = None) -> dict[str, Any]:
    """Send one call sealed with ``secret`` in the name of ``pid`` on a socket of the
    calling process (a DEALER of its own, or ``sock``) and return the answer's body."""
    ctx = None
    if sock is None:
        ctx = zmq.Context()
        sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(endpoint)
    try:
        body = {"v": list(wire.PROTOCOL_VERSION), "k": wire.CALL, "pid": pid, "seq": seq,
                "id": 4242, "call": call, "args": list(args)}
        sock.send(wire.seal(body, secret))
        assert sock.poll(5000), "the daemon did not answer"
        frame = sock.recv()
        answer = msgpack.unpackb(frame[: -wire.MAC_LEN], raw=False)
        assert isinstance(answer, dict)
        return answer
    finally:
        if ctx is not None:
            sock.close(0)
            ctx.term()


def make_file(conn: Connection, path: str) -> None:
    fd = conn.call("open", path, linux.O_RDWR | linux.O_CREAT, 0o644)
    conn.call("close", fd)


# --- a raw fork() child is another process --------------------------------------------


def test_a_raw_fork_child_cannot_unlink_as_its_parent(conn: Connection) -> None:
    """The child has the parent's secret (inherited memory) and makes a socket of its
    own, as a library's helper process would; its frames are refused, naming the
    request, and the parent's file stays."""
    make_file(conn, "/precious")
    seq = conn._seq + 1

    def child() -> dict[str, Any]:
        return forged_call(conn.endpoint, conn.pid, conn.secret, seq, "unlink", "/precious")

    answer = in_raw_child(child)
    assert answer.get("error") == wire.E_AUTH, answer
    assert answer.get("id") == 4242
    assert "SO_PEERCRED" in answer.get("detail", "")
    assert conn.call("stat", "/precious")["st_nlink"] == 1


def test_the_inherited_connection_refuses_in_a_raw_fork_child(conn: Connection) -> None:
    """A raw fork child that calls through the parent's Connection object gets a clear
    error at once (the object belongs to the parent), and nothing is done."""
    make_file(conn, "/kept")

    def child() -> str:
        try:
            conn.call("unlink", "/kept")
        except ProtocolError as exc:
            return f"{exc.reason}: {exc.detail}"
        return "unlinked"

    said = in_raw_child(child)
    assert said.startswith(wire.E_UNKNOWN_PROCESS), said
    assert "fork" in said
    assert conn.call("stat", "/kept")["st_nlink"] == 1


def test_a_registered_process_cannot_send_for_another(conn: Connection,
                                                      daemon: DaemonProcess) -> None:
    """A child that registered as itself and holds its parent's secret sends a frame in
    the parent's name on its own, authenticated connection: refused."""
    make_file(conn, "/mine")
    seq = conn._seq + 1

    def child() -> dict[str, Any]:
        own = Connection(daemon.run_dir, name="thief")
        return forged_call(conn.endpoint, conn.pid, conn.secret, seq, "unlink", "/mine",
                           sock=own.sock)

    answer = in_raw_child(child)
    assert answer.get("error") == wire.E_AUTH, answer
    assert conn.call("stat", "/mine")["st_nlink"] == 1


# --- a stolen secret does not lock its owner out --------------------------------------


def test_a_stolen_secret_does_not_lock_its_owner_out(conn: Connection) -> None:
    """One frame with a far higher sequence number under the victim's secret, from
    another process: the victim's own later calls still succeed (no ``replay``)."""

    def child() -> dict[str, Any]:
        return forged_call(conn.endpoint, conn.pid, conn.secret, 2**62, "getpid")

    answer = in_raw_child(child)
    for _ in range(3):
        assert conn.call("getpid") == os.getpid()
    assert answer.get("error") == wire.E_AUTH, answer


# --- queue pairs: only the creator posts ----------------------------------------------

#: an attacker that never registered: it looks for a queue pair's ring and doorbell
#: where a same-user process can reach them (/dev/shm, FIFOs in the run directory),
#: posts an RDMA WRITE whose source is the victim's lkey into the victim-exposed rkey,
#: then asks the daemon for the queue pair's descriptors as if it were the creator
ATTACK = r"""
import errno, json, mmap, os, select, stat, sys, time
from kemu.protocol import ring
run_dir, pmem = sys.argv[1], sys.argv[2]
qpn, lkey, addr, rkey = map(int, sys.argv[3:])
found = {"rings": [], "fifos": [], "posted": None, "attach": None}
for n in os.listdir("/dev/shm"):  # this run's: named after its device, if named at all
    if n.startswith(pmem) and os.stat("/dev/shm/" + n).st_size == ring.RING_SIZE:
        found["rings"].append(n)
for n in os.listdir(run_dir):
    if stat.S_ISFIFO(os.stat(os.path.join(run_dir, n)).st_mode):
        found["fifos"].append(n)
dbs = [n for n in found["fifos"] if n.endswith(".db")]
if found["rings"] and dbs:
    fd = os.open("/dev/shm/" + found["rings"][0], os.O_RDWR)
    buf = mmap.mmap(fd, ring.RING_SIZE)
    ring.WQE.pack_into(buf, ring.HEADER, ring.IBV_WR_RDMA_WRITE, rkey, 0, lkey, 0, addr, 64, 1)
    buf[ring.HEADER + ring.STATUS_AT : ring.HEADER + ring.STATUS_AT + 4] = bytes(4)
    buf[0:8] = (int.from_bytes(buf[0:8], "little") + 1).to_bytes(8, "little")
    os.write(os.open(os.path.join(run_dir, dbs[0]), os.O_WRONLY | os.O_NONBLOCK), b"d")
    deadline = time.monotonic() + 5
    while buf[ring.HEADER + ring.STATUS_AT] == 0 and time.monotonic() < deadline:
        select.select([], [], [], 0.001)
    found["posted"] = ring.STATUS_NAME.get(buf[ring.HEADER + ring.STATUS_AT])
try:
    from kemu.agents.lib.runtime import attach_qp
    attach_qp(run_dir, qpn)
    found["attach"] = "taken"
except ImportError:
    found["attach"] = "no such request"
except OSError as exc:
    found["attach"] = errno.errorcode[exc.errno]
print(json.dumps(found))
"""


@pytest.mark.kemu_settings(policy="legacy")  # a design that pins DAX memory long-term
def test_a_stranger_cannot_drive_a_queue_pair(daemon: DaemonProcess, run_dir: str) -> None:
    """A process that never registered looks for the queue pair's ring and doorbell
    and, failing that, asks for them by number: it finds nothing and is refused
    (EPERM), the victim's memory stays its own, and the creator's queue pair works."""
    import json
    import subprocess
    import sys

    from kemu.agents.lib.api import EmuSystem

    v = EmuSystem(run_dir, name="victim")
    try:
        ctx = v.call("ibv_open_device")
        secret = v.mmap(4096, linux.PROT_READ | linux.PROT_WRITE,
                        linux.MAP_SHARED | linux.MAP_ANONYMOUS, -1, 0)
        v.store(secret, b"the victim's secret" * 3)
        local = v.call("ibv_reg_mr", ctx, secret, 4096, linux.IBV_ACCESS_LOCAL_WRITE)
        fd = v.open("/loot", linux.O_RDWR | linux.O_CREAT, 0o644)
        v.ftruncate(fd, 4096)
        loot = v.mmap(4096, linux.PROT_READ | linux.PROT_WRITE, linux.MAP_SHARED, fd, 0)
        remote = v.call("ibv_reg_mr", ctx, loot, 4096,
                        linux.IBV_ACCESS_LOCAL_WRITE | linux.IBV_ACCESS_REMOTE_WRITE)
        qpn = v.ibv_create_qp(ctx)
        out = subprocess.run(
            [sys.executable, "-c", ATTACK, run_dir, daemon.pmem_name, str(qpn),
             str(local["lkey"]), str(secret), str(remote["rkey"])],
            capture_output=True, text=True, timeout=30, check=True)
        found = json.loads(out.stdout)
        assert v.pread(fd, 64, 0) == bytes(64), f"the stranger's WRITE landed: {found}"
        assert found == {"rings": [], "fifos": [], "posted": None, "attach": "EPERM"}
        # the creator's own queue pair still works, and it is the one that posts
        v.ibv_post_send(qpn, linux.IBV_WR_RDMA_WRITE, remote["rkey"], 0,
                        {"lkey": local["lkey"], "addr": secret, "length": 19}, 5)
        assert v.ibv_poll_cq(qpn, 5)["status"] == "IBV_WC_SUCCESS"
        assert v.pread(fd, 19, 0) == b"the victim's secret"
    finally:
        v.conn.close()


def test_a_fork_child_does_not_inherit_the_queue_pair(daemon: DaemonProcess,
                                                      run_dir: str) -> None:
    """The ring is not mapped in a child of the creator (MADV_DONTFORK, as uverbs maps
    a doorbell VM_DONTCOPY), and the creator cannot take its descriptors twice."""
    import ctypes

    from kemu.agents.lib.api import EmuSystem
    from kemu.agents.lib.runtime import attach_qp

    v = EmuSystem(run_dir, name="creator")
    try:
        ctx = v.call("ibv_open_device")
        qpn = v.ibv_create_qp(ctx)
        ring_mmap = v._qps()[qpn].ring._mmap
        assert ring_mmap is not None
        cbuf = ctypes.c_char.from_buffer(ring_mmap)
        address = ctypes.addressof(cbuf)
        del cbuf

        def child() -> bool:
            with open("/proc/self/maps") as fh:
                spans = [tuple(int(x, 16) for x in line.split()[0].split("-")) for line in fh]
            return any(lo <= address < hi for lo, hi in spans)

        assert in_raw_child(child) is False
        with pytest.raises(PermissionError):
            attach_qp(run_dir, qpn)
    finally:
        v.conn.close()


# --- a run is its user's alone ----------------------------------------------------------

NOBODY = 65534


def test_another_user_reaches_nothing_of_a_run(kemu_run_dir: str) -> None:
    """A process of another uid (root's fork child after setuid(65534)) cannot list the
    run folder, open or connect to anything in it, map the device, or reach the queue
    pair's descriptors through /proc; and when the run ends, its segments are gone.
    The folder is made 0755, as the launcher made it for host actors."""
    import socket
    import stat

    from kemu.agents.launcher.daemon_process import start_daemon
    from kemu.agents.lib.api import EmuSystem

    if os.geteuid() != 0:
        pytest.skip("needs root: a helper process must take another uid with setuid()")
    os.chmod(kemu_run_dir, 0o755)
    d = start_daemon(kemu_run_dir, event_log=os.path.join(kemu_run_dir, "kernel.jsonl"),
                     policy="legacy", lease_break_time=0.5)
    pmem = d.pmem_name
    try:
        s = EmuSystem(kemu_run_dir, name="owner")
        try:
            ctx = s.call("ibv_open_device")
            s.ibv_create_qp(ctx)
            fd = s.open("/f", linux.O_RDWR | linux.O_CREAT, 0o644)
            s.ftruncate(fd, 4096)
            s.store(s.mmap(4096, linux.PROT_READ | linux.PROT_WRITE, linux.MAP_SHARED, fd, 0),
                    b"mine")
            paths = [os.path.join(top, n) for top, dirs, files in os.walk(kemu_run_dir)
                     for n in dirs + files]
            shm = [os.path.join("/dev/shm", n) for n in os.listdir("/dev/shm")
                   if n.startswith(pmem) or n.startswith(f"kemu-{d.pid}-")]
            assert shm, "the device's segment is not where it should be"
            mine = [f"/proc/{os.getpid()}/fd/{n}" for n in os.listdir("/proc/self/fd")]

            def stranger() -> list[str]:
                os.setgroups([])
                os.setgid(NOBODY)
                os.setuid(NOBODY)
                reached: list[str] = []
                try:
                    os.listdir(kemu_run_dir)
                    reached.append(f"listdir {kemu_run_dir}")
                except PermissionError:
                    pass
                for path in [kemu_run_dir, *paths, *shm, *mine]:
                    try:
                        if stat.S_ISSOCK(os.stat(path).st_mode):
                            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as c:
                                c.connect(path)
                        else:
                            os.close(os.open(path, os.O_RDONLY | os.O_NONBLOCK))
                        reached.append(path)
                    except (PermissionError, FileNotFoundError):
                        pass
                return reached

            assert in_raw_child(stranger) == []
        finally:
            s.conn.close()
    finally:
        d.stop()
    assert [n for n in os.listdir("/dev/shm") if n.startswith(pmem)] == []
    assert not os.path.exists(os.path.join(kemu_run_dir, "register.sock"))
    assert not os.path.exists(os.path.join(kemu_run_dir, "kernel.ipc"))


# --- a shoot-down needs nothing from its target ----------------------------------------

MAPPER = r"""
import errno, os, sys
from kemu.agents.lib.api import EmuSystem
from kemu.protocol import linux
s = EmuSystem(sys.argv[1], name="mapper")
s.signal(linux.SIGBUS, "record")
fd = s.open("/f", os.O_RDWR | os.O_CREAT, 0o644)
s.ftruncate(fd, 8192)
p = s.mmap(8192, linux.PROT_READ | linux.PROT_WRITE, linux.MAP_SHARED, fd, 0)
s.store(p, b"M" * 8192)            # every translation cached
print("ready", flush=True)
sys.stdin.readline()               # stopped here by the test, then told to go on
try:
    s.store(p, b"X" * 8192)
    print("stored", flush=True)
except OSError as exc:
    print(errno.errorcode[exc.errno], [si["si_signo"] for si in s.signals()], flush=True)
s.conn.close()
"""


def _stopped(pid: int) -> bool:
    with open(f"/proc/{pid}/stat") as fh:
        return fh.read().rsplit(")", 1)[1].split()[0] in ("T", "t")


def test_a_stopped_mapper_does_not_block_a_truncate(daemon: DaemonProcess,
                                                    run_dir: str) -> None:
    """A process that maps a file is stopped (SIGSTOP) with its translations cached;
    another truncates the file and reuses its blocks for another file.  The truncate
    returns at once; the stopped process, resumed, faults (SIGBUS, EFAULT) instead of
    storing into the blocks that now belong to /g."""
    import subprocess
    import sys
    import time

    from kemu.agents.lib.api import EmuSystem

    child = subprocess.Popen([sys.executable, "-c", MAPPER, run_dir], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    s = EmuSystem(run_dir, name="truncater")
    try:
        assert child.stdout is not None and child.stdin is not None
        assert child.stdout.readline() == "ready\n"
        os.kill(child.pid, signal.SIGSTOP)
        deadline = time.monotonic() + 5
        while not _stopped(child.pid):
            assert time.monotonic() < deadline, "the mapper did not stop"
            select.select([], [], [], 0.001)
        started = time.monotonic()
        s.conn.wait(s.conn.submit("truncate", "/f", 0), timeout=5)
        assert time.monotonic() - started < 4  # at once (a loaded machine aside)
        g = s.open("/g", linux.O_RDWR | linux.O_CREAT, 0o644)
        assert s.pwrite(g, b"G" * 65536, 0) == 65536  # the freed blocks, taken again
        os.kill(child.pid, signal.SIGCONT)
        child.stdin.write("go\n")
        child.stdin.flush()
        said = child.stdout.readline().split(" ", 1)
        assert said[0] == "EFAULT", said
        assert str(linux.SIGBUS) in said[1]
        assert s.pread(g, 65536, 0) == b"G" * 65536
        assert s.call("foreign_writes") == []
    finally:
        s.conn.close()
        if child.poll() is None:
            child.kill()
        child.wait(10)
        for pipe in (child.stdin, child.stdout):
            if pipe is not None:
                pipe.close()


TRUNCATER = r"""
import sys
from kemu.agents.lib.api import EmuSystem
s = EmuSystem(sys.argv[1], name="truncater")
s.truncate("/f", 0)
print("truncated", flush=True)
s.conn.close()
"""


def test_a_store_in_progress_holds_the_blocks(daemon: DaemonProcess, run_dir: str) -> None:
    """The daemon frees no block while a store that began under the old translations
    is in progress (the in-store mark of the process's TLB word): a truncate waits for
    the window to close, and only for that."""
    import subprocess
    import sys
    import time

    from kemu.agents.lib.api import EmuSystem

    a = EmuSystem(run_dir, name="storer")
    try:
        a.signal(linux.SIGBUS, "record")  # the store past EOF at the end gets one
        fd = a.open("/f", linux.O_RDWR | linux.O_CREAT, 0o644)
        a.ftruncate(fd, 4096)
        p = a.mmap(4096, linux.PROT_READ | linux.PROT_WRITE, linux.MAP_SHARED, fd, 0)
        a.store(p, b"a")
        mmu = a._mm()
        gen = mmu._generation()
        mmu.wbuf[8:16] = gen.to_bytes(8, "little")  # as store() does around its copy
        with subprocess.Popen([sys.executable, "-c", TRUNCATER, run_dir],
                              stdout=subprocess.PIPE, text=True) as b:
            assert b.stdout is not None
            deadline = time.monotonic() + 20
            while a.call("kernel_stats")["shootdowns"] == 0:  # the truncate has zapped
                assert time.monotonic() < deadline, "the truncate never shot A's TLB down"
                assert b.poll() is None, "the truncater ended before its shoot-down"
                select.select([], [], [], 0.005)
            ready, _, _ = select.select([b.stdout], [], [], 0.5)
            assert not ready, "the truncate freed blocks under a store in progress"
            assert a.call("kernel_stats")["shootdowns"] == 1
            mmu.wbuf[8:16] = bytes(8)
            ready, _, _ = select.select([b.stdout], [], [], 10)
            assert ready and b.stdout.readline() == "truncated\n"
            assert b.wait(10) == 0
        with pytest.raises(OSError):
            a.store(p, b"b")  # the page is past EOF now: it faults
        assert [si["si_signo"] for si in a.signals()] == [linux.SIGBUS]
    finally:
        a.signal(linux.SIGBUS, "default")
        a.conn.close()
