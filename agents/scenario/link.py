"""The launcher's link to each actor: length-prefixed msgpack over an AF_UNIX stream.

The actor's end of the link sits at a descriptor number >= ``INFRA_FD_BASE`` and is
close-on-exec, so it never disturbs the descriptor numbers the scenario observes.
"""

from __future__ import annotations

import select
import socket
from typing import Any

from kemu.agents.lib.api import move_high
from kemu.protocol import wire

#: the largest record either end accepts
LINK_LIMIT = 16 * 1024 * 1024
#: an echoed string or byte string keeps this many items (strace shows 32), a list
#: or dict this many
ECHO_CHARS = 64
ECHO_ITEMS = 4096


def echoed(value: Any, depth: int = 0) -> Any:
    """``value`` as a reply echoes it back to the launcher: strings, byte strings and
    lists cut (strings to :data:`ECHO_CHARS`: the transcript shows 32 and ``...``, as
    ``strace -s 32`` does), so an argument of 20 MB never outgrows the link."""
    if isinstance(value, str | bytes | bytearray):
        return value if len(value) <= ECHO_CHARS else value[:ECHO_CHARS]
    if isinstance(value, list | tuple) and depth < 32:
        return [echoed(v, depth + 1) for v in value[:ECHO_ITEMS]]
    if isinstance(value, dict) and depth < 32:
        return {k: echoed(v, depth + 1) for k, v in list(value.items())[:ECHO_ITEMS]}
    return value


class LinkClosed(ConnectionError):
    """The other end of a link went away (the actor died or exec'd)."""


class Watched(Exception):
    """The descriptor :meth:`Link.recv` was also told to watch became readable first."""


class Link:
    """One end of a launcher-actor link."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.reader = wire.RecordReader(limit=LINK_LIMIT)

    @classmethod
    def connect(cls, path: str) -> Link:
        """The actor's end: connect to the launcher and move the socket out of the way."""
        raw = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        raw.connect(path)
        return cls(socket.socket(socket.AF_UNIX, socket.SOCK_STREAM, fileno=move_high(raw.detach())))

    def fileno(self) -> int:
        """For select()."""
        return self.sock.fileno()

    def send(self, body: dict[str, Any]) -> None:
        """Send one record."""
        try:
            self.sock.sendall(wire.encode_record(body))
        except OSError as exc:
            raise LinkClosed(str(exc)) from None

    def recv(self, timeout: float | None = None, watch: int = -1) -> dict[str, Any]:
        """Receive one record; ``TimeoutError`` after ``timeout`` s, ``LinkClosed`` at EOF,
        :class:`Watched` if descriptor ``watch`` (a pidfd: the kernel daemon's) becomes
        readable while nothing has come."""
        while True:
            rec = self.reader.next()
            if rec is not None:
                return rec
            if timeout is not None or watch >= 0:
                fds = [self.sock.fileno(), *([watch] if watch >= 0 else [])]
                ready, _, _ = select.select(fds, [], [], timeout)
                if not ready:
                    raise TimeoutError("no record")
                if self.sock.fileno() not in ready:
                    raise Watched(watch)
            try:
                data = self.sock.recv(1 << 16)
            except OSError as exc:
                raise LinkClosed(str(exc)) from None
            if not data:
                raise LinkClosed("EOF")
            self.reader.buf += data

    def close(self) -> None:
        """Close this end."""
        self.sock.close()
