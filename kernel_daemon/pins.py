"""The kernel's pin table: which device blocks a device holds, and for how long.

A *long-term* pin (``pin_user_pages(FOLL_LONGTERM)``, taken by ``ibv_reg_mr``) lasts
until the memory region goes; a *short-term* pin (``FOLL_PIN``, taken by a direct-I/O
transfer) until the DMA lands.  While a block is pinned, the device may write into it
whatever the file's block map says: that is the hazard every design addresses.  A block
whose last owner let go of it while pinned is *busy* (:attr:`Pmem.busy
<kernel_daemon.pmem.Pmem.busy>`): owned by nobody and never handed out; it goes back
to the allocator when its last pin goes.  Anonymous pages always behave so (a pin holds
a page reference); for file blocks the design decides (:meth:`Policy.busy_extent
<kernel_daemon.policy.Policy.busy_extent>`).
"""

from __future__ import annotations

from kemu.kernel_daemon.pmem import Pmem
from kemu.kernel_daemon.sync import WaitQueue


class PinTable:
    """Pin counts per block.  Changed by :mod:`kemu.kernel_daemon.rdma` (long-term) and the
    direct-I/O path (short-term) only."""

    def __init__(self, pmem: Pmem) -> None:
        self.pmem = pmem
        #: block -> number of long-term pins (memory regions) on it
        self.longterm: dict[int, int] = {}
        #: block -> number of short-term pins (direct-I/O transfers in flight) on it
        self.shortterm: dict[int, int] = {}
        #: callers sleeping until short-term pins go (``dax_layout_busy_page`` waiters)
        self.released: WaitQueue[None] = WaitQueue()

    def __len__(self) -> int:
        """Blocks pinned now, by either kind."""
        return len(self.longterm.keys() | self.shortterm.keys())

    def pinned(self, block: int) -> bool:
        """Does any pin hold ``block``?"""
        return block in self.longterm or block in self.shortterm

    def pin(self, block: int, longterm: bool) -> None:
        """One more pin of ``block``."""
        table = self.longterm if longterm else self.shortterm
        table[block] = table.get(block, 0) + 1

    def unpin(self, block: int, longterm: bool) -> None:
        """One pin of ``block`` goes; the last pin of a busy block frees it."""
        table = self.longterm if longterm else self.shortterm
        table[block] -= 1
        if not table[block]:
            del table[block]
            if not self.pinned(block):
                self.pmem.release_busy(block)
            if not longterm:
                self.released.wake_all()
