"""The control socket's connections: what the daemon holds for processes it does not know.

libzmq accepts every connection to the ROUTER's ``ipc://`` endpoint in its I/O thread
and aborts the whole daemon when an ``accept`` fails with EMFILE
(``src/ipc_listener.cpp``): about 1,100 plain connects, or 510 real agents, used to kill
it.  The daemon therefore watches the socket's monitor (``ZMQ_EVENT_ACCEPTED`` and
``ZMQ_EVENT_DISCONNECTED``, whose value is the connection's descriptor) and, for each
connection, reads the connecting process with ``SO_PEERCRED``:

* a connection from a registered process (agents register first, then connect) is
  kept, up to ``PER_PROCESS`` of them (an exec's new image may connect before the
  old image's connection is seen gone); more count as unregistered;
* at most ``max_unregistered`` connections from processes that are not registered are
  held, each for at most ``REGISTRATION_TIMEOUT`` seconds; the rest are shut down at
  once (the peer reads end of file);
* connections altogether stay under half the daemon's ``RLIMIT_NOFILE`` (raised to its
  hard limit at start), and registration is refused past a quarter of it
  (:func:`max_processes`), so the descriptors a registered process costs (its
  connection, its pidfd, its queue pairs' FIFOs) are always there.

Dropping a connection is a ``shutdown(2)`` of a duplicate of its descriptor, after
checking that the descriptor still is the socket the event named (its inode): libzmq
may have closed and reused the number in between.
"""

from __future__ import annotations

import contextlib
import logging
import os
import resource
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass

import zmq
from zmq.utils.monitor import parse_monitor_message

log = logging.getLogger("kernel_daemon")

#: the registration refusal past :func:`max_processes`
E_TOO_MANY = "too-many-processes"
_UCRED = struct.Struct("3i")
_EVENTS = int(zmq.EVENTS)
_POLLIN = int(zmq.POLLIN)
#: connections a registered process holds as its own
PER_PROCESS = 2
_ACCEPTED = int(zmq.EVENT_ACCEPTED)
_DISCONNECTED = int(zmq.EVENT_DISCONNECTED)


def raise_nofile() -> int:
    """Raise this process's ``RLIMIT_NOFILE`` soft limit to its hard one; the limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def nofile() -> int:
    """The daemon's descriptor limit now (a test may lower it with ``prlimit``)."""
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def max_processes() -> int:
    """How many processes the daemon registers at once: a quarter of its descriptors
    (each registered process holds a connection and a pidfd, and may hold FIFOs)."""
    return max(1, nofile() // 4)


@dataclass
class _Conn:
    """One accepted connection: its descriptor's inode and the connecting PID."""

    ino: int
    pid: int
    registered: bool


class ConnectionGuard:
    """Keeps the ROUTER's connections within what the daemon can hold (see module)."""

    def __init__(self, router: zmq.Socket[bytes], endpoint: str,
                 is_registered: Callable[[int], bool],
                 add_timer: Callable[[float, Callable[[], None]], object],
                 max_unregistered: int, timeout: float) -> None:
        self.path = endpoint.removeprefix("ipc://")
        self.is_registered = is_registered
        self.add_timer = add_timer
        self.max_unregistered = max_unregistered
        self.timeout = timeout
        self.monitor = router.get_monitor_socket(_ACCEPTED | _DISCONNECTED)
        #: the monitor's edge-triggered descriptor, for the daemon's epoll set
        self.fd = int(self.monitor.get(zmq.FD))
        #: descriptor -> connection, as the monitor's events say
        self.conns: dict[int, _Conn] = {}
        #: connections shut down because the daemon would not hold them
        self.dropped = 0
        self._router = router

    @property
    def unregistered(self) -> int:
        """Connections held for processes that are not registered."""
        return sum(1 for c in self.conns.values() if not c.registered)

    def drain(self) -> None:
        """Handle every monitor event queued (the descriptor is edge-triggered)."""
        while int(self.monitor.get(_EVENTS)) & _POLLIN:
            try:
                msg = self.monitor.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            try:
                event = parse_monitor_message(msg)
            except Exception:  # not an event this libzmq version sends as expected
                continue
            fd = int(event["value"])
            if event["event"] == _ACCEPTED:
                self._accepted(fd)
            elif event["event"] == _DISCONNECTED:
                self.conns.pop(fd, None)

    def _accepted(self, fd: int) -> None:
        info = self._inspect(fd)
        if info is None:
            return  # already gone (or no longer this socket)
        ino, pid = info
        conn = _Conn(ino, pid, self._may_hold(pid))
        self.conns[fd] = conn
        if conn.registered:
            if len(self.conns) > nofile() // 2:
                log.warning("control connections at half the descriptor limit")
            return
        if self.unregistered > self.max_unregistered or len(self.conns) > nofile() // 2:
            self._drop(fd, conn)
            return
        self.add_timer(self.timeout, lambda: self._expire(fd, conn))

    def _expire(self, fd: int, conn: _Conn) -> None:
        """A connection of a process that did not register in time is shut down."""
        if self.conns.get(fd) is not conn:
            return
        if self._may_hold(conn.pid):
            conn.registered = True
            return
        self._drop(fd, conn)

    def _may_hold(self, pid: int) -> bool:
        """Is one more connection of ``pid`` one of its own (registered, and fewer than
        PER_PROCESS held for it)?"""
        if not self.is_registered(pid):
            return False
        return sum(1 for c in self.conns.values() if c.pid == pid and c.registered) < PER_PROCESS

    def _inspect(self, fd: int) -> tuple[int, int] | None:
        """(inode, peer PID) of descriptor ``fd`` if it is a connection to our endpoint."""
        try:
            dup = os.dup(fd)
        except OSError:
            return None
        try:
            with socket.socket(fileno=dup) as s:
                if s.family != socket.AF_UNIX or s.getsockname() != self.path:
                    return None
                creds = s.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
                return os.fstat(s.fileno()).st_ino, _UCRED.unpack(creds)[0]
        except OSError:
            return None

    def _drop(self, fd: int, conn: _Conn) -> None:
        """Shut the connection down (libzmq then closes it and reports it gone)."""
        self.conns.pop(fd, None)
        try:
            dup = os.dup(fd)
        except OSError:
            return
        with socket.socket(fileno=dup) as s:
            try:
                if os.fstat(dup).st_ino != conn.ino:
                    return  # the number was reused meanwhile: not ours to touch
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                return
        self.dropped += 1

    def close(self) -> None:
        """Stop monitoring (before the ROUTER closes)."""
        with contextlib.suppress(zmq.ZMQError):
            self._router.disable_monitor()
        self.monitor.close(0)
