"""Messages between agents: values, and descriptors passed with SCM_RIGHTS semantics.

Every actor has a mailbox named after it.  On the emulator it is a datagram socket the
daemon keeps (``bind``/``sendmsg``/``recvmsg`` over the control channel), so a message
and the files it carries sit in the receiver's queue in the kernel from the moment
``send`` returns.  On the host it is an ``AF_UNIX`` datagram socket in the run directory
and descriptors travel for real in ``SCM_RIGHTS`` ancillary data.
"""

from __future__ import annotations

import array
import contextlib
import errno
import os
import socket
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

import msgpack

from kemu.agents.lib.api import EmuSystem, move_high
from kemu.protocol.errors import os_error
from kemu.protocol.linux import SCM_MAX_FD


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
    """Mailbox of an emulated process: a socket bound to the actor's name in the daemon.

    The daemon queues a message (and the files of its descriptors) before ``send``
    returns, so it survives the sender's death the next instant, as on Linux.
    """

    def __init__(self, run_dir: str, name: str, system: EmuSystem) -> None:
        super().__init__(run_dir, name)
        self.system = system
        system.conn.call("bind", name)

    def send(self, to: str, value: Any, fds: list[int] | None = None) -> None:
        self.system.conn.call("sendmsg", to, _pack(self.name, value, {}), list(fds or []))

    def recv(self, timeout: float | None = None) -> Message:
        conn = self.system.conn
        reply = conn.wait(conn.submit("recvmsg", self.name, 0), timeout)
        body = msgpack.unpackb(reply["data"], raw=False)
        return Message(body["from"], body["value"], list(reply["fds"]))

    def close(self) -> None:
        """Nothing to do: the daemon unbinds the name when the process exits."""


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

    def send(self, to: str, value: Any, fds: list[int] | None = None) -> None:
        anc = []
        if fds:
            if len(fds) > SCM_MAX_FD:
                raise os_error(errno.EINVAL)
            anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds).tobytes())]
        self.sock.sendmsg([_pack(self.name, value, {"nfds": len(fds or [])})], anc, 0,
                          self._addr(to, "sock"))

    def recv(self, timeout: float | None = None) -> Message:
        self.sock.settimeout(timeout)
        try:
            data, anc, _, _ = self.sock.recvmsg(1 << 16, socket.CMSG_SPACE(SCM_MAX_FD * 4))
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
