"""Forged, replayed, malformed and oversized input to a real kernel daemon.

Every attack gets a clear, machine-readable answer (or, for what cannot be answered,
none) and changes nothing: the daemon's object counts and process list are the same
before and after, and a normal call still works.  Raw attacks go through a DEALER socket
of the test's own; error replies to unauthenticated messages are unsigned (msgpack
followed by 32 zero bytes).
"""

from __future__ import annotations

import contextlib
import errno
import os
import select
import socket
from collections.abc import Iterator
from typing import Any

import msgpack
import pytest
import zmq

from kemu.agents.launcher.daemon_process import DaemonProcess
from kemu.agents.lib.runtime import Connection
from kemu.protocol import linux, wire
from kemu.protocol.errors import ProtocolError
from kemu.protocol.linux import MSG_DONTWAIT

ANSWER_TIMEOUT_MS = 5000

# --- fixtures and helpers ----------------------------------------------------------------


@pytest.fixture
def raw(conn: Connection) -> Iterator[zmq.Socket[bytes]]:
    """A DEALER socket of our own on the daemon's control endpoint."""
    ctx = zmq.Context()
    sock: zmq.Socket[bytes] = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(conn.endpoint)
    try:
        yield sock
    finally:
        sock.close(0)
        ctx.term()


def answer(sock: zmq.Socket[bytes]) -> tuple[dict[str, Any], bytes]:
    """The next frame the daemon sends to ``sock``: (body, mac)."""
    assert sock.poll(ANSWER_TIMEOUT_MS), "the daemon did not answer"
    frame = sock.recv()
    body = msgpack.unpackb(frame[: -wire.MAC_LEN], raw=False)
    assert isinstance(body, dict)
    return body, frame[-wire.MAC_LEN :]


def answered(sock: zmq.Socket[bytes], daemon: DaemonProcess) -> bool:
    """Wait for input on ``sock``: True when it came, False if the daemon died first."""
    pidfd = os.pidfd_open(daemon.proc.pid)
    try:
        poller = zmq.Poller()
        poller.register(sock, zmq.POLLIN)
        poller.register(pidfd, zmq.POLLIN)
        ready = dict(poller.poll(ANSWER_TIMEOUT_MS))
        assert ready, "neither an answer nor the daemon's death"
        return sock in ready
    finally:
        os.close(pidfd)


def unsigned_error(sock: zmq.Socket[bytes]) -> dict[str, Any]:
    """The next answer, which must be an unsigned protocol-error reply."""
    body, mac = answer(sock)
    assert mac == bytes(wire.MAC_LEN), "an error to an unauthenticated message is unsigned"
    assert body["k"] == wire.REPLY and "error" in body
    assert body["v"] == list(wire.PROTOCOL_VERSION)
    return body


def state(conn: Connection) -> tuple[dict[str, int], list[dict[str, Any]]]:
    """What an attack must not change: object counts and the process list."""
    return conn.call("kernel_stats"), conn.call("proc_list")


def still_serving(conn: Connection, daemon: DaemonProcess,
                  before: tuple[dict[str, int], list[dict[str, Any]]]) -> None:
    assert daemon.proc.poll() is None, "the daemon died"
    assert state(conn) == before
    assert conn.call("getpid") == os.getpid()
    fd = conn.call("open", "/probe", linux.O_RDWR | linux.O_CREAT, 0o644)
    assert conn.call("write", fd, b"ok") == 2
    conn.call("close", fd)
    conn.call("unlink", "/probe")
    assert state(conn) == before


def header(pid: int, seq: int, **body: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"v": list(wire.PROTOCOL_VERSION), "k": wire.CALL, "pid": pid,
                           "seq": seq, "id": 7, "call": "getpid", "args": []}
    out.update(body)
    return out


def take_seq(conn: Connection, ahead: int = 1) -> int:
    """A sequence number above the connection's, which the connection then skips.

    A frame we forge with the connection's secret advances the daemon's replay guard;
    the connection must not reuse the numbers it consumed.
    """
    conn._seq += ahead
    return conn._seq


# --- raw control frames ------------------------------------------------------------------

MALFORMED_FRAMES = {
    "garbage": os.urandom(16) + b"\xc1" + os.urandom(64),
    "empty": b"",
    "shorter-than-mac": b"\x80" * 10,
    "exactly-a-mac": bytes(wire.MAC_LEN),
    "not-a-map": msgpack.packb([1, "call", 2]) + bytes(wire.MAC_LEN),
    "truncated": wire.pack(header(1, 1))[:-3] + bytes(wire.MAC_LEN),
    "unknown-kind": wire.pack(header(1, 1, k="shout")) + bytes(wire.MAC_LEN),
    "no-seq": wire.pack({"v": list(wire.PROTOCOL_VERSION), "k": "call", "pid": 1})
    + bytes(wire.MAC_LEN),
    "bad-version-field": wire.pack(header(1, 1, v="1.0")) + bytes(wire.MAC_LEN),
}


def test_malformed_frames(conn: Connection, raw: zmq.Socket[bytes],
                          daemon: DaemonProcess) -> None:
    for what, frame in MALFORMED_FRAMES.items():
        before = state(conn)
        raw.send(frame)
        body = unsigned_error(raw)
        assert body["error"] == wire.E_MALFORMED, what
        assert body["id"] is None, what
        still_serving(conn, daemon, before)


def test_multi_frame_message_is_dropped_without_answer(
        conn: Connection, raw: zmq.Socket[bytes], daemon: DaemonProcess) -> None:
    before = state(conn)
    # Were it answered, the answer would name request 777 ("unknown-process").
    forged = wire.seal(header(0x7FFFFFF0, 1, id=777), os.urandom(32))
    raw.send_multipart([forged, forged])
    # One socket's messages are handled in order: the answer to this marker comes first
    # unless the two-frame message was answered, which would then come before it.
    raw.send(b"marker")
    body = unsigned_error(raw)
    assert body["error"] == wire.E_MALFORMED and body["id"] is None
    assert not raw.poll(0)
    still_serving(conn, daemon, before)


def test_wrong_major_version(conn: Connection, raw: zmq.Socket[bytes],
                             daemon: DaemonProcess) -> None:
    before = state(conn)
    raw.send(wire.seal(header(conn.pid, take_seq(conn), v=[wire.PROTOCOL_VERSION[0] + 1, 0]), conn.secret))
    body = unsigned_error(raw)
    assert body["error"] == wire.E_VERSION
    still_serving(conn, daemon, before)


def test_unregistered_pid(conn: Connection, raw: zmq.Socket[bytes],
                          daemon: DaemonProcess) -> None:
    before = state(conn)
    for pid in (0x7FFFFFF0, 0, -1, os.getppid()):
        raw.send(wire.seal(header(pid, 1, id=31), os.urandom(32)))
        body = unsigned_error(raw)
        assert body["error"] == wire.E_UNKNOWN_PROCESS
        assert body["id"] == 31
    still_serving(conn, daemon, before)


def test_forged_message_for_a_registered_pid(conn: Connection, raw: zmq.Socket[bytes],
                                             daemon: DaemonProcess) -> None:
    before = state(conn)
    # a huge seq: were the forgery accepted, every later call of conn would be a replay
    forged = header(conn.pid, 2**62, call="close", args=[0])
    raw.send(wire.seal(forged, os.urandom(wire.SECRET_LEN)))
    body = unsigned_error(raw)
    assert body["error"] == wire.E_AUTH and body["id"] == 7
    # the same body under conn's secret with one bit of the MAC flipped
    frame = bytearray(wire.seal(forged, conn.secret))
    frame[-1] ^= 1
    raw.send(bytes(frame))
    assert unsigned_error(raw)["error"] == wire.E_AUTH
    # a MAC that is right for other bytes than the ones sent
    good = wire.seal(header(conn.pid, 2**62, call="getpid"), conn.secret)
    payload = wire.pack(forged)
    raw.send(payload + good[-wire.MAC_LEN :])
    assert unsigned_error(raw)["error"] == wire.E_AUTH
    still_serving(conn, daemon, before)  # descriptor 0 is still open, seq not advanced
    assert any(e["fd"] == 0 for e in conn.call("proc_fds", conn.pid))


def test_replayed_frame(conn: Connection, raw: zmq.Socket[bytes],
                        daemon: DaemonProcess) -> None:
    before = state(conn)
    seq = take_seq(conn, 1000)
    frame = wire.seal(header(conn.pid, seq, id=4242), conn.secret)
    raw.send(frame)
    body, mac = answer(raw)  # genuine: answered, signed with conn's secret
    assert body["id"] == 4242 and body["ok"] == conn.pid
    assert wire.verify(wire.pack(body), mac, conn.secret)
    raw.send(frame)
    body = unsigned_error(raw)
    assert body["error"] == wire.E_REPLAY and body["id"] == 4242
    # an older sequence number is a replay too
    raw.send(wire.seal(header(conn.pid, seq - 1, id=4243), conn.secret))
    assert unsigned_error(raw)["error"] == wire.E_REPLAY
    still_serving(conn, daemon, before)


def test_oversized_frame(conn: Connection, raw: zmq.Socket[bytes],
                         daemon: DaemonProcess) -> None:
    before = state(conn)
    big = wire.seal(header(conn.pid, take_seq(conn), call="write",
                           args=[1, b"x" * wire.MAX_FRAME]), conn.secret)
    assert len(big) > wire.MAX_FRAME
    raw.send(big)
    assert unsigned_error(raw)["error"] == wire.E_TOO_LARGE
    still_serving(conn, daemon, before)


def test_unhashable_kind_does_not_kill_the_daemon(
        conn: Connection, raw: zmq.Socket[bytes], daemon: DaemonProcess) -> None:
    raw.send(wire.pack(header(1, 1, k=["call"])) + bytes(wire.MAC_LEN))
    assert answered(raw, daemon), "no answer: the daemon died"
    assert unsigned_error(raw)["error"] == wire.E_MALFORMED
    assert daemon.proc.poll() is None


# --- authenticated but wrong ----------------------------------------------------------------


def test_unknown_call_is_enosys(conn: Connection, daemon: DaemonProcess) -> None:
    before = state(conn)
    with pytest.raises(OSError) as info:
        conn.call("no_such_call", 1, 2)
    assert info.value.errno == errno.ENOSYS
    with pytest.raises(OSError) as info:
        conn.call("")
    assert info.value.errno == errno.ENOSYS
    still_serving(conn, daemon, before)


BAD_ARGUMENTS: list[tuple[str, list[Any]]] = [
    ("close", []),
    ("close", [1, 2]),
    ("close", ["1"]),
    ("close", [True]),
    ("close", [1.0]),
    ("close", [None]),
    ("open", [5, 0]),
    ("open", ["/x"]),
    ("open", ["/x", 0, 0o644, 1]),
    ("read", [0, b"1"]),
    ("write", [1, "text, not bytes"]),
    ("dup2", [1, [2]]),
    ("sendmsg", ["me", b"", [True]]),
    ("sendmsg", ["me", b"", 3]),
    ("sendmsg", ["me", "text", []]),
    ("recvmsg", [b"me"]),
    ("bind", [1]),
    ("kernel_stats", [1]),
    ("wait_exit", ["1"]),
    ("fcntl", [0, 1, b"arg"]),
]


def test_bad_arguments(conn: Connection, daemon: DaemonProcess) -> None:
    conn.call("bind", "me")
    for call, args in BAD_ARGUMENTS:
        before = state(conn)
        with pytest.raises(ProtocolError) as info:
            conn.call(call, *args)
        assert info.value.reason == wire.E_BAD_ARGUMENTS, (call, args)
        still_serving(conn, daemon, before)


def test_args_not_a_list(conn: Connection, daemon: DaemonProcess) -> None:
    before = state(conn)
    conn._send({"k": wire.CALL, "id": 900, "call": "getpid", "args": {"a": 1}})
    with pytest.raises(ProtocolError) as info:
        conn.wait(900)
    assert info.value.reason == wire.E_BAD_ARGUMENTS
    still_serving(conn, daemon, before)


BAD_DESCRIPTORS: list[tuple[str, list[Any]]] = [
    ("close", [99]),
    ("close", [-1]),
    ("close", [2**63]),
    ("dup", [500]),
    ("dup2", [500, 3]),
    ("dup2", [0, 1 << 20]),  # the table's size is capped at 2**20
    ("dup2", [0, 2**31]),
    ("dup2", [0, -5]),
    ("dup3", [500, 3, 0]),
    ("read", [99, 10]),
    ("write", [99, b"x"]),
    ("pread", [99, 1, 0]),
    ("lseek", [99, 0, 0]),
    ("fstat", [99]),
    ("ftruncate", [99, 0]),
    ("fcntl", [99, linux.F_GETFD]),
    ("fcntl", [99, linux.F_SETFL, 0]),
    ("sendmsg", ["me", b"", [0, 99]]),
]


def test_bad_descriptors_are_ebadf(conn: Connection, daemon: DaemonProcess) -> None:
    conn.call("bind", "me")
    for call, args in BAD_DESCRIPTORS:
        before = state(conn)
        with pytest.raises(OSError) as info:
            conn.call(call, *args)
        assert info.value.errno == errno.EBADF, (call, args)
        still_serving(conn, daemon, before)


def test_wrong_access_mode_is_ebadf(conn: Connection, daemon: DaemonProcess) -> None:
    fd = conn.call("open", "/ro", linux.O_RDONLY | linux.O_CREAT, 0o644)
    wfd = conn.call("open", "/ro", linux.O_WRONLY)
    pfd = conn.call("open", "/ro", linux.O_PATH)
    before = state(conn)
    for call, args in (("write", [fd, b"x"]), ("pwrite", [fd, b"x", 0]), ("read", [wfd, 1]),
                       ("read", [pfd, 1]), ("lseek", [pfd, 0, 0])):
        with pytest.raises(OSError) as info:
            conn.call(call, *args)
        assert info.value.errno == errno.EBADF, call
    still_serving(conn, daemon, before)


def test_messages_an_agent_does_not_send(conn: Connection, daemon: DaemonProcess) -> None:
    """Authentic frames that are still wrong get a signed error, no effect."""
    before = state(conn)
    for body in ({"k": wire.REPLY, "id": 1, "ok": 0},
                 {"k": wire.EVENT, "event": "sigio"},
                 {"k": wire.CALL, "id": "1", "call": "getpid", "args": []},
                 {"k": wire.CALL, "id": True, "call": "getpid", "args": []},
                 {"k": wire.CALL, "id": 5, "call": 12, "args": []},
                 {"k": wire.NOTIFY, "what": "no-such-notification"},
                 {"k": wire.NOTIFY, "what": ["hello"]}):
        conn._send(body)
        assert conn.sock.poll(ANSWER_TIMEOUT_MS), body
        frame = conn.sock.recv()
        reply, payload, mac = wire.open_frame(frame)
        assert wire.verify(payload, mac, conn.secret), "errors to a known sender are signed"
        assert reply["error"] == wire.E_MALFORMED, body
    still_serving(conn, daemon, before)


def test_request_id_in_use(conn: Connection, daemon: DaemonProcess) -> None:
    # park a call for good: our own exit will never come while we wait for it
    rid = conn.submit("wait_exit", conn.pid)
    assert conn.call("kernel_stats")["parked"] == 1
    before = state(conn)
    conn._send({"k": wire.CALL, "id": rid, "call": "getpid", "args": []})
    with pytest.raises(ProtocolError) as info:
        conn.wait(rid, timeout=5)
    assert info.value.reason == wire.E_MALFORMED
    still_serving(conn, daemon, before)
    assert conn.call("kernel_stats")["parked"] == 1  # the parked call is untouched


def test_stale_secret_after_exec_prepare(daemon: DaemonProcess) -> None:
    old = Connection(daemon.run_dir, name="before-exec")
    try:
        keep = old.call("open", "/keep", linux.O_RDWR | linux.O_CREAT, 0o644)
        old.call("open", "/gone", linux.O_RDWR | linux.O_CREAT | linux.O_CLOEXEC, 0o644)
        token = old.call("exec_prepare")
        with pytest.raises(ProtocolError) as info:
            old.call("getpid")  # the old image's secret is no longer accepted
        assert info.value.reason == wire.E_UNKNOWN_PROCESS
        new = Connection(daemon.run_dir, wire.EXEC, token, "after-exec")
    finally:
        old.close()
    try:
        assert new.pid == old.pid and new.secret != old.secret
        assert [e["fd"] for e in new.call("proc_fds", new.pid)] == [0, 1, 2, keep]
        (me,) = new.call("proc_list")
        assert me["name"] == "after-exec"
        with pytest.raises(ProtocolError) as info:  # an exec token is good once
            Connection(daemon.run_dir, wire.EXEC, token, "again")
        assert info.value.reason == wire.E_BAD_TOKEN
    finally:
        new.close()


def test_exec_cancels_the_old_images_parked_calls(daemon: DaemonProcess) -> None:
    old = Connection(daemon.run_dir, name="before-exec")
    try:
        old.call("bind", "box")
        old.submit("recvmsg", "box")  # blocks: nothing queued
        assert old.call("kernel_stats")["parked"] == 1
        token = old.call("exec_prepare")
    finally:
        old.close()
    new = Connection(daemon.run_dir, wire.EXEC, token, "after-exec")
    try:
        assert new.call("kernel_stats")["parked"] == 0  # the old image's calls died with it
        assert new.call("bind", "box") == 0  # the socket survives exec
        new.call("sendmsg", "box", b"for the new image", [])
        msg = new.call("recvmsg", "box", MSG_DONTWAIT)
        assert msg["data"] == b"for the new image"
    finally:
        new.close()


def test_fork_done_with_an_impossible_child(conn: Connection, daemon: DaemonProcess) -> None:
    before = state(conn)
    token = conn.call("fork_prepare")
    for child in (0, 2**40):
        with pytest.raises(OSError) as info:
            conn.call("fork_done", token, child)
        assert info.value.errno == errno.EINVAL
    with contextlib.suppress(OSError):  # EINVAL if the refusal already dropped it
        conn.call("fork_done", token, -1)
    still_serving(conn, daemon, before)


def test_bytes_keys_in_arguments_do_not_kill_the_daemon(
        conn: Connection, daemon: DaemonProcess) -> None:
    rid = conn.submit("fcntl", 0, linux.F_SETOWN_EX, {b"type": 1})
    assert answered(conn.sock, daemon), "no answer: the daemon died"
    with contextlib.suppress(OSError):  # any errno is fine; dying is not
        conn.wait(rid, timeout=5)
    assert daemon.proc.poll() is None
    assert conn.call("getpid") == os.getpid()


# --- registration ------------------------------------------------------------------------


def reg_raw(run_dir: str, data: bytes) -> dict[str, Any] | None:
    """Send ``data`` on a fresh registration connection; the answer, or None on EOF."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(ANSWER_TIMEOUT_MS / 1000)
        s.connect(os.path.join(run_dir, "register.sock"))
        s.sendall(data)
        reader = wire.RecordReader()
        while True:
            chunk = s.recv(65536)
            if not chunk:
                return None
            got = reader.feed(chunk)
            if got is not None:
                return got


def refused(run_dir: str, data: bytes) -> str:
    got = reg_raw(run_dir, data)
    assert got is not None, "no answer: the daemon closed the connection (or died)"
    assert got["ok"] is False and got["v"] == list(wire.PROTOCOL_VERSION)
    assert "secret" not in got
    return str(got["reason"])


def hello(**fields: Any) -> bytes:
    body: dict[str, Any] = {"v": list(wire.PROTOCOL_VERSION), "kind": wire.SPAWN,
                            "name": "x", "umask": 0o022}
    body.update(fields)
    return wire.encode_record({k: v for k, v in body.items() if v is not None})


REFUSALS: dict[str, tuple[bytes, str]] = {
    "version": (hello(v=[wire.PROTOCOL_VERSION[0] + 1, 0]), wire.E_VERSION),
    "version-missing": (wire.encode_record({"kind": "spawn"}), wire.E_MALFORMED),
    "garbage": (b"\x00\x00\x00\x08" + b"\xc1" * 8, wire.E_MALFORMED),
    "not-a-map": (wire.encode_record([1, 2]), wire.E_MALFORMED),  # type: ignore[arg-type]
    "too-large": ((wire.MAX_RECORD + 1).to_bytes(4, "big") + b"\x80", wire.E_TOO_LARGE),
    "unknown-kind": (hello(kind="clone"), wire.E_MALFORMED),
    "bad-name": (hello(name=5), wire.E_MALFORMED),
    "bad-umask": (hello(umask="022"), wire.E_MALFORMED),
    "fork-unknown-token": (hello(kind=wire.FORK, token=os.urandom(16)), wire.E_BAD_TOKEN),
    "fork-token-not-bytes": (hello(kind=wire.FORK, token="abc"), wire.E_BAD_TOKEN),
    "exec-unknown-token": (hello(kind=wire.EXEC, token=os.urandom(16)), wire.E_BAD_TOKEN),
    "spawn-twice": (hello(), wire.E_BAD_TOKEN),
}


def test_registration_refused(conn: Connection, daemon: DaemonProcess) -> None:
    for attack, (data, reason) in REFUSALS.items():
        before = state(conn)
        assert refused(daemon.run_dir, data) == reason, attack
        still_serving(conn, daemon, before)


def test_registration_refused_before_registering(daemon: DaemonProcess) -> None:
    """From a process that is no task yet: the same refusals, and no task is made."""
    for data, reason in (REFUSALS["version"], REFUSALS["garbage"],
                         REFUSALS["fork-unknown-token"], REFUSALS["exec-unknown-token"]):
        assert refused(daemon.run_dir, data) == reason
    conn = Connection(daemon.run_dir, name="after")
    try:
        stats, procs = state(conn)
        assert stats["tasks"] == 1 and [p["pid"] for p in procs] == [os.getpid()]
    finally:
        conn.close()


def test_second_spawn_registration_of_a_pid_is_refused(
        conn: Connection, daemon: DaemonProcess) -> None:
    before = state(conn)
    with pytest.raises(ProtocolError) as info:
        Connection(daemon.run_dir, name="again")
    assert info.value.reason == wire.E_BAD_TOKEN
    still_serving(conn, daemon, before)
    assert conn.call("proc_list")[0]["name"] == "pytest"


def test_version_refusal_through_the_runtime(daemon: DaemonProcess) -> None:
    from kemu.agents.lib.runtime import register
    from kemu.protocol.errors import VersionMismatch

    with pytest.raises(VersionMismatch) as info:
        register(daemon.run_dir, {"v": [9, 0], "kind": wire.SPAWN, "name": "x"})
    assert info.value.reason == wire.E_VERSION


def test_silent_half_record_does_not_block_registration(daemon: DaemonProcess) -> None:
    path = os.path.join(daemon.run_dir, "register.sock")
    stalled = [socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) for _ in range(3)]
    try:
        record = hello()
        for i, s in enumerate(stalled):
            s.connect(path)
            s.sendall(record[: 2 + i * 5])  # half a header, or a header and part of a map
        conn = Connection(daemon.run_dir, name="unblocked")
        try:
            assert conn.call("getpid") == os.getpid()
            stats = conn.call("kernel_stats")
            # the stalled connections are still open, each with its timeout armed
            assert stats["tasks"] == 1 and stats["timers"] == len(stalled)
        finally:
            conn.close()
    finally:
        for s in stalled:
            s.close()


def test_client_gone_before_the_answer(conn: Connection, daemon: DaemonProcess) -> None:
    """Clients that hang up before reading the answer cost the daemon nothing."""
    stats, procs = state(conn)
    path = os.path.join(daemon.run_dir, "register.sock")
    for data in (hello(), hello(v=[wire.PROTOCOL_VERSION[0] + 1, 0]), b"\x00\x00", b""):
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.connect(path)
            s.sendall(data)
    # The hung-up connections may still be in the daemon's hands (their timers armed)
    # until it reads their end; everything else must be as it was.
    assert refused(daemon.run_dir, hello()) == wire.E_BAD_TOKEN
    after, procs_after = state(conn)
    assert procs_after == procs
    assert {**after, "timers": 0} == {**stats, "timers": 0}
    assert conn.call("getpid") == os.getpid()
    assert daemon.proc.poll() is None


def test_exec_hello_without_token(conn: Connection, daemon: DaemonProcess) -> None:
    before = state(conn)
    assert refused(daemon.run_dir, hello(kind=wire.EXEC)) == wire.E_BAD_TOKEN
    still_serving(conn, daemon, before)


def test_unhashable_registration_kind(conn: Connection, daemon: DaemonProcess) -> None:
    before = state(conn)
    assert refused(daemon.run_dir, hello(kind=["spawn"])) == wire.E_MALFORMED
    still_serving(conn, daemon, before)


# --- the campaign: random and mutated input on every channel, seeded, bounded ----------------

#: seconds the campaign runs (``KEMU_FUZZ_SECONDS``; a long run: 300) and its seed
FUZZ_SECONDS = float(os.environ.get("KEMU_FUZZ_SECONDS", "6"))
FUZZ_SEED = int(os.environ.get("KEMU_FUZZ_SEED", "20261201"))
#: inputs between two checks of the daemon's answers and state, and the most in all
FUZZ_BATCH = 200
FUZZ_MAX_FRAMES = int(os.environ.get("KEMU_FUZZ_MAX_FRAMES", "2000000"))
#: authenticated calls the campaign may make with random arguments: those that change
#: nothing (a random argument to any other would change state legitimately)
READ_ONLY_CALLS = ("stat", "fstat", "listdir", "getpid", "getppid", "proc_fds", "proc_maps",
                   "proc_locks", "proc_list", "kernel_stats", "foreign_writes", "pin_audit",
                   "file_pins", "no_such_call")


def _random_value(rng: Any, depth: int = 0) -> Any:
    """A random msgpack value: what a confused or hostile sender might put anywhere."""
    kind = rng.randrange(10 if depth < 3 else 7)
    if kind == 0:
        return rng.choice([0, 1, -1, 2**31, 2**63 - 1, -(2**63), rng.randrange(-1000, 1000)])
    if kind == 1:
        return rng.choice(["", "/", "/probe", "/..", "x" * rng.randrange(300), "\u00e9\u2603"])
    if kind == 2:
        return rng.randbytes(rng.randrange(40))
    if kind == 3:
        return rng.choice([None, True, False])
    if kind == 4:
        return rng.random() * 10 ** rng.randrange(-5, 20)
    if kind == 5:
        return rng.choice(list(wire.KINDS) + list(wire.KINDS_REGISTER)
                          + [wire.ATTACH_QP, wire.ATTACH_MM, "call", "v", "pid", "seq"])
    if kind == 6:
        return rng.randrange(0, 2**64)
    if kind in (7, 8):
        return [_random_value(rng, depth + 1) for _ in range(rng.randrange(5))]
    return {str(_random_value(rng, depth + 1)): _random_value(rng, depth + 1)
            for _ in range(rng.randrange(5))}


def _mutate(rng: Any, data: bytes) -> bytes:
    """One to four byte-level mutations of ``data``: flips, cuts, insertions, splices,
    repeats; never the same bytes back."""
    out = bytearray(data)
    for _ in range(rng.randrange(1, 5)):
        op = rng.randrange(6)
        at = rng.randrange(len(out) + 1)
        if op == 0 and out:
            out[min(at, len(out) - 1)] ^= 1 << rng.randrange(8)
        elif op == 1:
            del out[at : at + rng.randrange(1, 16)]
        elif op == 2:
            out[at:at] = rng.randbytes(rng.randrange(1, 16))
        elif op == 3 and out:
            out[min(at, len(out) - 1)] = rng.choice([0x00, 0xFF, 0xC1, 0x80, 0xDF, 0xDD])
        elif op == 4:
            out = out[:at]
        else:
            out[at:at] = out[: rng.randrange(1, 64)]
    if bytes(out) == data:
        out.append(0xC1)
    return bytes(out)


def _control_input(rng: Any, conn: Connection) -> bytes:
    """A frame for the control channel: random bytes, a random map, or a mutation of a
    genuine frame of ``conn`` (sealed with its secret, so only the mutation stops it)."""
    choice = rng.randrange(4)
    if choice == 0:
        return rng.randbytes(rng.randrange(0, 200))
    if choice == 1:
        body = {str(_random_value(rng)): _random_value(rng) for _ in range(rng.randrange(6))}
        body.update(rng.choice([{}, header(conn.pid, rng.randrange(2**63))]))
        return wire.pack(body) + rng.choice([bytes(wire.MAC_LEN), rng.randbytes(wire.MAC_LEN)])
    call = rng.choice((*READ_ONLY_CALLS, "unlink", "close", "open", "ftruncate", "exec_prepare"))
    args = [_random_value(rng) for _ in range(rng.randrange(4))]
    genuine = wire.seal(header(conn.pid, conn._seq + 1 + rng.randrange(10**9), call=call,
                               args=args, id=rng.randrange(2**31)), conn.secret)
    return _mutate(rng, genuine)


def _registration_input(rng: Any) -> bytes:
    """Bytes for a registration connection: random, or a mutated hello or attach record."""
    record = {"v": list(wire.PROTOCOL_VERSION),
              "kind": rng.choice([wire.SPAWN, wire.FORK, wire.EXEC, wire.ATTACH_QP,
                                  wire.ATTACH_MM, "x"]),
              "name": "fuzz", "umask": 0o022, "token": rng.randbytes(16),
              "qpn": _random_value(rng)}
    data = wire.encode_record(record)
    return rng.randbytes(rng.randrange(64)) if rng.randrange(4) == 0 else _mutate(rng, data)


def _send_registration(run_dir: str, data: bytes) -> bool:
    """One registration connection with ``data`` and a hang-up; True when the daemon
    answered or closed within the timeout (any descriptors it passed are closed)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(ANSWER_TIMEOUT_MS / 1000)
        s.connect(os.path.join(run_dir, "register.sock"))
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)  # a half record is ended at once, not by its timer
        try:
            while True:
                chunk, fds, _, _ = socket.recv_fds(s, 65536, 4)
                for fd in fds:
                    os.close(fd)
                if not chunk:
                    return True
        except TimeoutError:
            return False


def _digest(conn: Connection) -> Any:
    """What the campaign must not change: object counts (registration timers aside:
    connections being torn down), processes, this process's descriptors, the files."""
    stats = conn.call("kernel_stats")
    stats.pop("timers", None)
    return (stats, conn.call("proc_list"), conn.call("proc_fds", conn.pid),
            conn.call("listdir", "/"), conn.call("foreign_writes"))


@pytest.mark.timeout(FUZZ_SECONDS + 90)
def test_campaign_of_random_and_mutated_input(conn: Connection, raw: zmq.Socket[bytes],
                                              daemon: DaemonProcess) -> None:
    """Seeded, bounded in time and count: random and mutated frames on the control
    channel (unauthenticated and mutations of genuine frames), authenticated calls
    with random arguments that change nothing, random and mutated registration and
    attach records, scribbles over a queue pair's ring and bytes into its doorbell.
    After every batch the daemon answers correctly and its state is what it was.
    Prints the counts (``-s``); ``KEMU_FUZZ_SECONDS=300`` for a long run."""
    import random
    import time

    from kemu.agents.lib.runtime import attach_qp
    from kemu.protocol import ring

    rng = random.Random(FUZZ_SEED)
    fd = conn.call("open", "/probe", linux.O_RDWR | linux.O_CREAT, 0o644)
    conn.call("write", fd, b"the campaign must not change this")
    ctx = conn.call("ibv_open_device")
    qpn = conn.call("ibv_create_qp", ctx)["qpn"]
    ring_fd, db, cq = attach_qp(daemon.run_dir, qpn)
    import mmap

    ring_map = mmap.mmap(ring_fd, ring.RING_SIZE)
    os.close(ring_fd)
    baseline = _digest(conn)
    counts = {"control": 0, "authenticated": 0, "registration": 0, "ring": 0, "doorbell": 0,
              "crashes": 0, "hangs": 0, "state_changes": 0, "batches": 0}
    deadline = time.monotonic() + FUZZ_SECONDS
    sent = 0
    try:
        while time.monotonic() < deadline and sent < FUZZ_MAX_FRAMES:
            for _ in range(FUZZ_BATCH):
                channel = rng.randrange(10)
                if channel < 5:
                    raw.send(_control_input(rng, conn))
                    counts["control"] += 1
                    if not raw.poll(ANSWER_TIMEOUT_MS):
                        counts["hangs"] += 1
                    else:
                        raw.recv()
                elif channel < 7:
                    call = rng.choice(READ_ONLY_CALLS)
                    args = [_random_value(rng) for _ in range(rng.randrange(4))]
                    counts["authenticated"] += 1
                    try:
                        conn.wait(conn.submit(call, *args), timeout=5)
                    except (OSError, ProtocolError):
                        pass
                    except TimeoutError:
                        counts["hangs"] += 1
                elif channel < 9:
                    counts["registration"] += 1
                    if not _send_registration(daemon.run_dir, _registration_input(rng)):
                        counts["hangs"] += 1
                else:
                    at = rng.randrange(ring.RING_SIZE)
                    junk = rng.randbytes(rng.randrange(1, 128))[: ring.RING_SIZE - at]
                    ring_map[at : at + len(junk)] = junk
                    counts["ring"] += 1
                    with contextlib.suppress(BlockingIOError):
                        os.write(db, rng.randbytes(rng.randrange(1, 64)))
                    counts["doorbell"] += 1
                sent += 1
            counts["batches"] += 1
            if daemon.proc.poll() is not None:
                counts["crashes"] += 1
                break
            try:
                assert conn.call("getpid") == os.getpid()
                if _digest(conn) != baseline:
                    counts["state_changes"] += 1
            except TimeoutError:
                counts["hangs"] += 1
        print(f"\nfuzz campaign seed {FUZZ_SEED}, {FUZZ_SECONDS:g} s: "
              + ", ".join(f"{k} {v}" for k, v in counts.items()))
        assert counts["crashes"] == counts["hangs"] == counts["state_changes"] == 0, counts
        assert conn.call("pread", fd, 64, 0) == b"the campaign must not change this"
        # registration connections torn down, the ring's queue pair still there
        end = time.monotonic() + 10
        while conn.call("kernel_stats")["timers"] != 0:
            assert time.monotonic() < end, "registration timers left behind"
            select.select([], [], [], 0.05)
        assert conn.call("kernel_stats")["qps"] == 1
    finally:
        ring_map.close()
        os.close(db)
        os.close(cq)
