"""Messages between agents: values, and descriptors passed with SCM_RIGHTS semantics.

Every actor has a mailbox named after it in the run directory.  On the emulator the
mailbox is a ZeroMQ PULL socket and a descriptor travels as a token of the daemon's
in-flight table (``sendfds``/``recvfds``), so the file stays open while in flight even if
the sender closes it.  On the host the mailbox is an ``AF_UNIX`` datagram socket and
descriptors travel for real in ``SCM_RIGHTS`` ancillary data.
"""

from __future__ import annotations

import array
import contextlib
import os
import socket
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

import msgpack
import zmq

from agents.api import EmuSystem, move_high

MAX_FDS = 253


@dataclass
class Message:
    """A received message: who sent it, the value, and the descriptors installed."""

    sender: str
    value: Any
    fds: list[int]


def _pack(sender: str, value: Any, extra: dict[str, Any]) -> bytes:
    return msgpack.packb({"from": sender, "value": value, **extra}, use_bin_type=True)  # type: ignore[no-any-return]


class Mailbox(ABC):
    """An actor's mailbox; ``send`` never blocks, ``recv`` waits for the next message."""

    def __init__(self, run_dir: str, name: str) -> None:
        self.run_dir = run_dir
        self.name = name
        os.makedirs(os.path.join(run_dir, "peers"), exist_ok=True)

    def _addr(self, name: str, suffix: str) -> str:
        return os.path.join(self.run_dir, "peers", f"{name}.{suffix}")

    def publish_pid(self, pid: int) -> None:
        """Record this actor's PID where senders of descriptors look it up."""
        path = self._addr(self.name, "pid")
        tmp = f"{path}.{pid}.tmp"
        with open(tmp, "w") as fh:
            fh.write(str(pid))
        os.replace(tmp, path)

    def pid_of(self, name: str) -> int:
        """The PID actor ``name`` published (``ECONNREFUSED`` if it has none)."""
        try:
            with open(self._addr(name, "pid")) as fh:
                return int(fh.read())
        except (OSError, ValueError):
            raise ConnectionRefusedError(111, os.strerror(111), name) from None

    @abstractmethod
    def send(self, to: str, value: Any, fds: list[int] | None = None) -> None:
        """Send ``value`` (and the files behind ``fds``) to actor ``to``."""

    @abstractmethod
    def recv(self, timeout: float | None = None) -> Message:
        """The next message; ``TimeoutError`` after ``timeout`` seconds."""

    @abstractmethod
    def close(self) -> None:
        """Close the mailbox (messages still queued are dropped, their files released)."""


class EmuMailbox(Mailbox):
    """Mailbox of an emulated process: ZeroMQ, descriptors through the daemon."""

    def __init__(self, run_dir: str, name: str, system: EmuSystem) -> None:
        super().__init__(run_dir, name)
        self.system = system
        self.ctx = zmq.Context()
        self.pull = self.ctx.socket(zmq.PULL)
        self.pull.setsockopt(zmq.LINGER, 0)
        self.pull.bind(f"ipc://{self._addr(name, 'ipc')}")
        self.pushes: dict[str, zmq.Socket[bytes]] = {}
        self.publish_pid(system.conn.pid)

    def send(self, to: str, value: Any, fds: list[int] | None = None) -> None:
        token = None
        if fds:
            token = self.system.conn.call("sendfds", self.pid_of(to), list(fds))
        sock = self.pushes.get(to)
        if sock is None:
            sock = self.ctx.socket(zmq.PUSH)
            sock.setsockopt(zmq.LINGER, 2000)
            sock.connect(f"ipc://{self._addr(to, 'ipc')}")
            self.pushes[to] = sock
        sock.send(_pack(self.name, value, {"token": token}))

    def recv(self, timeout: float | None = None) -> Message:
        if not self.pull.poll(None if timeout is None else int(timeout * 1000)):
            raise TimeoutError("no message")
        body = msgpack.unpackb(self.pull.recv(), raw=False)
        fds: list[int] = []
        if body.get("token"):
            fds = list(self.system.conn.call("recvfds", body["token"]))
        return Message(body["from"], body["value"], fds)

    def close(self) -> None:
        for s in self.pushes.values():
            s.close()
        self.pull.close()
        self.ctx.term()


class HostMailbox(Mailbox):
    """Mailbox of a host process: an AF_UNIX datagram socket carrying SCM_RIGHTS."""

    def __init__(self, run_dir: str, name: str) -> None:
        super().__init__(run_dir, name)
        path = self._addr(name, "sock")
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        raw = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        raw.bind(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM, fileno=move_high(raw.detach()))
        self.publish_pid(os.getpid())

    def send(self, to: str, value: Any, fds: list[int] | None = None) -> None:
        anc = []
        if fds:
            if len(fds) > MAX_FDS:
                raise OSError(22, os.strerror(22))
            anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds).tobytes())]
        self.sock.sendmsg([_pack(self.name, value, {"nfds": len(fds or [])})], anc, 0,
                          self._addr(to, "sock"))

    def recv(self, timeout: float | None = None) -> Message:
        self.sock.settimeout(timeout)
        try:
            data, anc, _, _ = self.sock.recvmsg(1 << 16, socket.CMSG_SPACE(MAX_FDS * 4))
        except TimeoutError:
            raise TimeoutError("no message") from None
        fds: list[int] = []
        for level, kind, payload in anc:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                arr = array.array("i")
                arr.frombytes(payload[: len(payload) - len(payload) % 4])
                fds.extend(arr)
        body = msgpack.unpackb(data, raw=False)
        return Message(body["from"], body["value"], fds)

    def close(self) -> None:
        self.sock.close()
