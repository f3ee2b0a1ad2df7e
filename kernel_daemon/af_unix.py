"""The receive queue of a bound datagram socket (``struct unix_sock``'s queue).

The system calls that use it are in :mod:`kemu.kernel_daemon.syscalls.ipc`; the queues live
in the kernel (:attr:`Kernel.mailboxes <kernel_daemon.kernel.Kernel.mailboxes>`), so a
message sent is never lost when its sender is killed the next instant.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING

from kemu.kernel_daemon.sync import WaitQueue

if TYPE_CHECKING:
    from kemu.kernel_daemon.kernel import Inflight


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
