"""``busy-extent``: Christoph Hellwig's proposal in the review of "dax: fix dma vs
truncate/hole-punch" (v3, October 2017).

Truncate and hole punch of a DAX file succeed at once, but a block a device still pins
is not given back to the allocator: it goes on a busy-extent list (as XFS keeps freed
extents busy until the transaction that freed them is on disk) and is freed when the
last pin on it goes.  No lease, no signal, no new errno.  The card's writes after the
truncate land in a block that belongs to no file and is not reused, so the next file
is intact.

Decisions: short-term pins (direct I/O) keep a block busy exactly as long-term ones do;
a pin lasts as long as its memory region, so a uverbs context passed to another process
keeps the blocks busy until that process deregisters, closes or dies, and the blocks of
a killed process's regions are freed at its exit (its context's last reference goes).
The cost is space: a pinned truncated file holds its blocks, and a device that never
lets go makes them unusable until it does (ENOSPC for others).
"""

from __future__ import annotations

from kemu.kernel_daemon.policy import Kernel, Owner, Policy, Promise


class BusyExtent(Policy):
    """Freed-but-pinned blocks stay busy until the last pin goes."""

    name = "busy-extent"
    source = "Christoph Hellwig, review of 'dax: fix dma vs truncate/hole-punch' v3, Oct 2017"
    promises = frozenset({Promise.NO_FOREIGN_WRITE_LONGTERM, Promise.NO_FOREIGN_WRITE_SHORTTERM})

    def busy_extent(self, k: Kernel, owner: Owner, block: int) -> bool:
        """Every pinned block a file lets go of becomes busy (``xfs_extent_busy_insert``)."""
        return True
