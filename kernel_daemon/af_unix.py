"""The receive queue of a bound datagram socket (``struct unix_sock``'s queue).

The system calls that use it are in :mod:`kemu.kernel_daemon.syscalls.ipc`; the queues live
in the kernel (:attr:`Kernel.mailboxes <kernel_daemon.kernel.Kernel.mailboxes>`), so a
message sent is never lost when its sender is killed the next instant.
"""

from __future__ import annotations

import weakref
from collections import deque
from typing import TYPE_CHECKING

from kemu.kernel_daemon.sync import WaitQueue

if TYPE_CHECKING:
    from kemu.kernel_daemon.kernel import Inflight, Kernel

#: ``/proc/sys/net/core/wmem_default``: a socket's send buffer (``sk_sndbuf``)
SNDBUF = 212992
#: ``/proc/sys/net/unix/max_dgram_qlen``: a receive queue is full once it holds more
#: (``unix_recvq_full()``), so it takes this many plus one
MAX_DGRAM_QLEN = 10
#: bytes an skb costs beyond its data (``SKB_TRUESIZE`` overhead, x86-64): what the
#: sender's ``sk_wmem_alloc`` is charged per datagram besides the payload
SKB_OVERHEAD = 768

#: per kernel: PID -> bytes of its datagrams still queued (the sender's
#: ``sk_wmem_alloc``); changed by :func:`charge` and :func:`uncharge` only
_wmem: weakref.WeakKeyDictionary[Kernel, dict[int, int]] = weakref.WeakKeyDictionary()


def truesize(msg: Inflight) -> int:
    """What one queued datagram costs its sender's send buffer."""
    return len(msg.data) + SKB_OVERHEAD


def wmem(k: Kernel, pid: int) -> int:
    """Bytes of ``pid``'s datagrams not yet received."""
    return _wmem.setdefault(k, {}).get(pid, 0)


def charge(k: Kernel, msg: Inflight) -> None:
    """A datagram was queued: its sender's send buffer holds it."""
    table = _wmem.setdefault(k, {})
    table[msg.sender] = table.get(msg.sender, 0) + truesize(msg)


def uncharge(k: Kernel, msg: Inflight) -> None:
    """A datagram left its queue (received, or released with the receiver)."""
    table = _wmem.setdefault(k, {})
    left = table.get(msg.sender, 0) - truesize(msg)
    if left > 0:
        table[msg.sender] = left
    else:
        table.pop(msg.sender, None)


def forget(k: Kernel, pid: int) -> None:
    """The sender exited: a new process with its PID starts with an empty buffer."""
    _wmem.setdefault(k, {}).pop(pid, None)


class Mailbox:
    """The receive queue of one bound socket, and the receivers sleeping on it."""

    def __init__(self, name: str, owner: int) -> None:
        self.name = name
        #: the PID of the process that bound the name
        self.owner = owner
        #: messages not yet received, oldest first (files in flight hold references)
        self.queue: deque[Inflight] = deque()
        #: receivers sleeping until a message comes (``sk_sleep``)
        self.readers: WaitQueue[None] = WaitQueue()

    def wake(self) -> None:
        """Wake every receiver sleeping on this queue (they retry recvmsg)."""
        self.readers.wake_all()
