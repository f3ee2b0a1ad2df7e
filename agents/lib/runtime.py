"""The agent runtime: registration and the control channel to the kernel daemon.

A :class:`Connection` registers the calling process over the daemon's ``AF_UNIX``
socket (the daemon learns the PID from ``SO_PEERCRED``), keeps the per-process secret,
and exchanges authenticated frames over a ZeroMQ DEALER socket.  Calls are reentrant:
a signal handler may make a call while the main program waits for another, because
every message is one frame and replies are matched by request id.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import resource
import signal
import socket
from collections import deque
from collections.abc import Callable
from typing import Any

import msgpack
import zmq

from kemu.protocol import wire
from kemu.protocol.errors import ProtocolError, VersionMismatch, os_error

#: objects of a ZeroMQ context inherited across fork; never touched, never collected
_ABANDONED: list[Any] = []

EventHandler = Callable[[dict[str, Any]], None]


class DaemonGone(ConnectionError):
    """The kernel daemon died while this process waited for it (or before it asked)."""


#: the lowest descriptor number the daemon's pidfd takes: out of the numbers a
#: program sees (``api.INFRA_FD_BASE``; not imported, api imports this module)
_PIDFD_BASE = 900


def _open_pidfd(pid: int) -> int:
    """A close-on-exec pidfd of ``pid`` at a high number, or -1 if it cannot be had
    (``pid`` 0: an old daemon that does not say its PID; gone already)."""
    if pid <= 0:
        return -1
    try:
        fd = os.pidfd_open(pid)
    except OSError:
        return -1
    try:
        high = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, _PIDFD_BASE)
    except OSError:
        return fd
    os.close(fd)
    return high


def describe_death(pid: int) -> str:
    """How process ``pid`` (which has ended) died, as far as this process can tell.

    Not its parent, it cannot ``waitid`` it; while the process is a zombie (its parent
    has not reaped it yet) ``/proc/PID/stat`` field 52, ``exit_code``, holds the wait
    status ``wait(2)`` would give (Linux ``do_task_stat``).
    """
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            stat = fh.read()
        fields = stat[stat.rindex(b")") + 2 :].split()
        if fields[0] not in (b"Z", b"X"):
            raise ValueError("not a zombie")
        code = int(fields[49])
    except (OSError, ValueError, IndexError):
        return "how is not known here (already reaped)"
    if code & 0x7F:
        try:
            name = signal.Signals(code & 0x7F).name
        except ValueError:
            name = f"signal {code & 0x7F}"
        return f"killed by {name}"
    return f"exited with {code >> 8}"


def register(run_dir: str, hello: dict[str, Any], timeout: float = 10.0) -> dict[str, Any]:
    """Register over ``<run_dir>/register.sock``; returns the daemon's welcome.

    Raises :class:`ProtocolError` (or :class:`~protocol.errors.VersionMismatch`) when the
    daemon refuses.
    """
    body = {"v": list(wire.PROTOCOL_VERSION), **hello}
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC) as s:
        s.settimeout(timeout)
        s.connect(os.path.join(run_dir, "register.sock"))
        s.sendall(wire.encode_record(body))
        reader = wire.RecordReader()
        while True:
            data = s.recv(65536)
            if not data:
                raise ProtocolError(wire.E_MALFORMED, "daemon closed the registration socket")
            answer = reader.feed(data)
            if answer is not None:
                break
    wire.check_version(answer.get("v"))
    if not answer.get("ok"):
        reason, detail = str(answer.get("reason")), str(answer.get("detail", ""))
        if reason == wire.E_VERSION:
            raise VersionMismatch(reason, detail)
        raise ProtocolError(reason, detail)
    return answer


def attach_qp(run_dir: str, qpn: int, timeout: float = 10.0) -> list[int]:
    """Take queue pair ``qpn``'s ring, doorbell and completion pipe from the daemon, by
    descriptor (``SCM_RIGHTS`` over ``<run_dir>/register.sock``): ``[ring, db, cq]``.

    The daemon gives them only to the queue pair's creator (it reads the caller's PID
    with ``SO_PEERCRED``), once; a refusal raises ``OSError`` with its errno.
    """
    return take_fds(run_dir, {"kind": wire.ATTACH_QP, "qpn": qpn}, 3, timeout)


def take_fds(run_dir: str, record: dict[str, Any], count: int,
             timeout: float = 10.0) -> list[int]:
    """Send ``record`` on ``<run_dir>/register.sock`` and take the ``count``
    descriptors the daemon's answer carries (``SCM_RIGHTS``); a refusal raises
    ``OSError`` with its errno."""
    body = {"v": list(wire.PROTOCOL_VERSION), **record}
    fds: list[int] = []
    answer: dict[str, Any] | None = None
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC) as s:
        s.settimeout(timeout)
        s.connect(os.path.join(run_dir, "register.sock"))
        s.sendall(wire.encode_record(body))
        reader = wire.RecordReader()
        while answer is None:
            data, got, _, _ = socket.recv_fds(s, 65536, count, socket.MSG_CMSG_CLOEXEC)
            fds += got
            if not data:
                break
            answer = reader.feed(data)
    if answer is None or not answer.get("ok") or len(fds) != count:
        for fd in fds:
            os.close(fd)
        if answer is not None and isinstance(answer.get("errno"), int):
            raise os_error(answer["errno"])
        raise ProtocolError(wire.E_MALFORMED, f"{record.get('kind')}: nothing handed over")
    return fds


class Connection:
    """This process's registration and control channel."""

    def __init__(self, run_dir: str, kind: str = wire.SPAWN, token: bytes | None = None,
                 name: str = "") -> None:
        umask = os.umask(0)
        os.umask(umask)
        nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        welcome = register(run_dir, {"kind": kind, "token": token, "name": name, "umask": umask,
                                     "nofile": nofile})
        self.run_dir = run_dir
        self.name = name
        #: the process this channel belongs to: a child made by a raw ``fork()`` (not
        #: :meth:`~agents.lib.api.EmuSystem.fork`) is another process the daemon does
        #: not know, and may not speak through it
        self.owner = os.getpid()
        self.pid: int = welcome["pid"]
        self.secret: bytes = welcome["secret"]
        self.endpoint: str = welcome["endpoint"]
        self.pmem: dict[str, Any] = welcome["pmem"]
        self.config: dict[str, Any] = welcome["config"]
        self.daemon_pid: int = int(welcome.get("daemon_pid", 0))
        #: a pidfd of the daemon: readable once it has ended, however it ended (SIGKILL
        #: leaves its socket files behind, so they say nothing); -1 without one.  Taken
        #: before ZeroMQ starts its I/O thread: the first descriptor at a high number
        #: grows the descriptor table, and growing the table of a process that has
        #: threads waits for an RCU grace period (fs/file.c expand_fdtable), 15 ms here
        self.daemon_pidfd = _open_pidfd(self.daemon_pid)
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 2000)
        self.sock.setsockopt(zmq.RCVTIMEO, 1000)
        self.sock.setsockopt(zmq.ROUTING_ID, f"{self.pid}-{os.urandom(4).hex()}".encode())
        self.sock.connect(self.endpoint)
        self._seq = 0
        self._rid = 0
        self._replies: dict[int, dict[str, Any]] = {}
        self.events: deque[dict[str, Any]] = deque()
        self.event_handlers: dict[str, EventHandler] = {}
        self._poller: zmq.Poller | None = None
        self._poller_key: int | None = None
        #: the designs the daemon has built in, as its welcome advertises them
        self.policies: list[str] = list(welcome.get("policies", []))
        #: a descriptor that becomes readable when a signal arrived, and what to do then
        #: (called with the request id being waited for); set by the signal layer
        self.signal_fd: int | None = None
        self.on_signal: Callable[[int | None], None] | None = None
        #: messages received so far; a reply remembers its number (``reply_arrival``) so
        #: that an event received after it (a shoot-down) can be told to be newer
        self.arrivals = 0
        self.reply_arrival = 0
        self.notify("hello")

    # --- sending ----------------------------------------------------------------------

    def _send(self, body: dict[str, Any]) -> None:
        if os.getpid() != self.owner:
            raise ProtocolError(
                wire.E_UNKNOWN_PROCESS,
                f"process {os.getpid()} was made by a fork() the kernel was not told of "
                f"(use the API's fork): it may not speak as process {self.pid}")
        self._seq += 1
        body["v"] = list(wire.PROTOCOL_VERSION)
        body["pid"] = self.pid
        body["seq"] = self._seq
        frame = wire.seal(body, self.secret)
        if len(frame) > wire.MAX_FRAME:  # the daemon would refuse it: refused here, at once
            raise ProtocolError(wire.E_TOO_LARGE, f"{len(frame)} bytes > {wire.MAX_FRAME}")
        self.sock.send(frame)

    def submit(self, call: str, *args: Any) -> int:
        """Send a call without waiting; returns its request id for :meth:`wait`."""
        self._rid += 1
        rid = self._rid
        self._send({"k": wire.CALL, "id": rid, "call": call, "args": list(args)})
        return rid

    def notify(self, what: str, **fields: Any) -> None:
        """Send a message the daemon does not answer."""
        self._send({"k": wire.NOTIFY, "what": what, **fields})

    def call(self, call: str, *args: Any) -> Any:
        """Make a system call and wait for its result; errno failures raise ``OSError``."""
        return self.wait(self.submit(call, *args))

    # --- receiving --------------------------------------------------------------------

    def done(self, rid: int) -> bool:
        """True once the reply to ``rid`` has arrived (reads what is pending)."""
        while rid not in self._replies:
            try:
                self._receive(zmq.NOBLOCK)
            except zmq.Again:
                break
        return rid in self._replies

    def wait(self, rid: int, timeout: float | None = None) -> Any:
        """Wait for the reply to ``rid`` and return its value or raise its error.

        A signal handler that runs meanwhile may make calls of its own; replies it
        reads for others are kept for them.  ``TimeoutError`` after ``timeout`` seconds.
        """
        waited = 0.0
        while rid not in self._replies:
            poller, signal_fd = self._wait_set()
            ready = dict(poller.poll(1000))
            if signal_fd is not None and signal_fd in ready and self.on_signal is not None:
                # a signal must be seen while the call sleeps (EINTR): wait on both
                self.on_signal(rid)
            if self.sock in ready:
                with contextlib.suppress(zmq.Again):
                    self._receive(zmq.NOBLOCK)
                continue
            if self.daemon_pidfd in ready:
                self._daemon_gone(rid)
            if ready:
                continue
            waited += 1.0
            if timeout is not None and waited >= timeout:
                raise TimeoutError(f"no reply to request {rid}")
            self._check_daemon()
        body = self._replies.pop(rid)
        self.reply_arrival = int(body.get("_n", 0))
        return _result(body)

    def pump(self, timeout: float = 0.0) -> None:
        """Read whatever the daemon sent (events are queued and handlers run)."""
        ms = int(timeout * 1000)
        while self.sock.poll(ms):
            self._receive(zmq.NOBLOCK)
            ms = 0

    def _receive(self, flags: int = 0) -> None:
        frame = self.sock.recv(flags)
        payload, tag = frame[: -wire.MAC_LEN], frame[-wire.MAC_LEN :]
        authentic = len(frame) > wire.MAC_LEN and wire.verify(payload, tag, self.secret)
        if authentic:  # the daemon's own, well-formed by construction
            body = msgpack.unpackb(payload, raw=False)
        else:
            try:
                body, _, _ = wire.open_frame(frame)
            except ProtocolError:
                return  # garbage from the wire: dropped
        self.arrivals += 1
        if body["k"] == wire.REPLY:
            rid = body.get("id")
            if not isinstance(rid, int):
                return
            if authentic or "error" in body:
                body["_n"] = self.arrivals
                self._replies[rid] = body
        elif body["k"] == wire.EVENT and authentic:
            self.events.append(body)
            handler = self.event_handlers.get(str(body.get("event")))
            if handler is not None:
                handler(body)

    def _wait_set(self) -> tuple[zmq.Poller, int | None]:
        """What :meth:`wait` sleeps on: the socket, the signal descriptor (once the
        signal layer set one) and the daemon's pidfd; built again when they change."""
        signal_fd = self.signal_fd if self.on_signal is not None else None
        if self._poller is None or self._poller_key != signal_fd:
            poller = zmq.Poller()
            poller.register(self.sock, zmq.POLLIN)
            if signal_fd is not None:
                poller.register(signal_fd, zmq.POLLIN)
            if self.daemon_pidfd >= 0:
                poller.register(self.daemon_pidfd, zmq.POLLIN)
            self._poller, self._poller_key = poller, signal_fd
        return self._poller, signal_fd

    def _daemon_gone(self, rid: int) -> None:
        """The daemon's pidfd is readable: it has ended.  A reply it sent before it died
        is still taken; else :class:`DaemonGone`, saying how it died."""
        with contextlib.suppress(zmq.Again):
            while rid not in self._replies:
                self._receive(zmq.NOBLOCK)
        if rid not in self._replies:
            raise DaemonGone(f"the kernel daemon (pid {self.daemon_pid}) died while "
                             f"request {rid} waited for it: {describe_death(self.daemon_pid)}")

    def _check_daemon(self) -> None:
        path = os.path.join(self.run_dir, "register.sock")
        if not os.path.exists(path):
            raise DaemonGone("the kernel daemon is gone")

    # --- process lifecycle ------------------------------------------------------------

    def reconnect_after_fork(self, token: bytes, name: str) -> None:
        """In a fork child: abandon the parent's context and register with ``token``."""
        _ABANDONED.extend([self.sock, self.ctx])
        inherited = self.daemon_pidfd
        fresh = Connection(self.run_dir, wire.FORK, token, name)
        self.__dict__.update(fresh.__dict__)
        if inherited >= 0 and inherited != self.daemon_pidfd:
            os.close(inherited)  # the parent's copy; the child has its own now

    def close(self) -> None:
        """Close the channel (the process is about to exit or exec)."""
        self.sock.close(linger=500)
        self.ctx.term()
        if self.daemon_pidfd >= 0:
            os.close(self.daemon_pidfd)
            self.daemon_pidfd = -1
        self._poller = None


def _result(body: dict[str, Any]) -> Any:
    if "error" in body:
        raise ProtocolError(str(body["error"]), str(body.get("detail", "")))
    if "errno" in body:
        code = body["errno"]
        raise os_error(code if isinstance(code, int) else errno.EIO)
    return body.get("ok")
