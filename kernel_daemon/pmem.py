"""The emulated persistent-memory device, its block allocator and the block ledger.

The device is one POSIX shared-memory segment (:mod:`kemu.protocol.shm`) of ``nblocks`` blocks of
``block_size`` bytes, which agents attach to so that loads and stores through a DAX
mapping touch it for real.  The allocator is deterministic: the free list is a stack,
so the block freed last is the next one handed out, and a use-after-free of a block
shows at once instead of by luck.  The ledger records, for every block, which inode and
file page own it now; every device write (RDMA, direct I/O) is checked against it.
"""

from __future__ import annotations

import contextlib
import errno
from array import array
from collections.abc import Callable
from dataclasses import dataclass

from kemu.kernel_daemon.errors import KernelError
from kemu.protocol import shm


@dataclass(frozen=True)
class Owner:
    """Who owns a block now: inode number and page index within the file."""

    ino: int
    pgoff: int


class Pmem:
    """The device: a shared-memory segment, a LIFO block allocator and the ledger.

    Only the daemon allocates and frees.  ``on_change`` is called with
    ``("alloc"|"free", block, owner)`` for the event log.
    """

    def __init__(
        self,
        name: str | None,
        nblocks: int,
        block_size: int,
        on_change: Callable[[str, int, Owner | None], None] | None = None,
    ) -> None:
        if nblocks <= 0 or block_size <= 0 or block_size % 512:
            raise ValueError("pmem needs a positive block count and a block size multiple of 512")
        self.nblocks = nblocks
        self.block_size = block_size
        # the daemon unlinks it at shutdown; the launcher removes it should the daemon
        # die without one (DaemonProcess)
        self.shm = shm.Segment(name, create=True, size=nblocks * block_size)
        self.buf: memoryview = self.shm.buf
        #: owner of each block, or None when free (the ledger)
        self.ledger: list[Owner | None] = [None] * nblocks
        #: files sharing each block (reflink); a block is freed when the last lets go
        self.refs: list[int] = [0] * nblocks
        #: how many times each block was freed: a device agent that cached a block (a
        #: long-term pin) compares a slice of this with its snapshot in one C-level step
        #: to learn that no block of a run changed hands since
        self.gen = array("Q", bytes(8 * nblocks))
        #: free blocks; the top of the stack (end of the list) is handed out next
        self._free: list[int] = list(range(nblocks - 1, -1, -1))
        self._on_change = on_change
        #: blocks their last owner let go of while a device still holds them (a busy
        #: extent): owned by nobody, never handed out, freed by :meth:`release_busy`
        self.busy: set[int] = set()
        #: asked when a block's last owner lets go: True keeps it busy (the kernel
        #: answers from its pin table and the design)
        self.hold: Callable[[int, Owner], bool] | None = None
        #: asked when a file lets go of a block other files still share (reflink): who
        #: owns it now (the kernel looks for a file that still maps it)
        self.reown: Callable[[int], Owner | None] | None = None

    @property
    def name(self) -> str:
        """The shared-memory name agents attach to."""
        return self.shm.name

    @property
    def free_blocks(self) -> int:
        """Number of blocks not owned by any file."""
        return len(self._free)

    def alloc(self, owner: Owner) -> int:
        """Take the most recently freed block for ``owner``, zeroed.  ENOSPC when full;
        ENOMEM for anonymous memory (inode 0), as the page allocator says."""
        if not self._free:
            if owner.ino == 0:
                raise KernelError(errno.ENOMEM, "pmem device full (anonymous memory)")
            raise KernelError(errno.ENOSPC, "pmem device full")
        block = self._free.pop()
        start = block * self.block_size
        self.buf[start : start + self.block_size] = bytes(self.block_size)
        self.ledger[block] = owner
        self.refs[block] = 1
        if self._on_change:
            self._on_change("alloc", block, owner)
        return block

    def share(self, block: int) -> None:
        """One more file uses ``block`` (reflink)."""
        self.refs[block] += 1

    def free(self, block: int) -> None:
        """Let go of ``block``; the last user returns it (the next one handed out).

        A file lets go of a block only after its page no longer names it (the page is
        gone or names its copy): while others share the block, :attr:`reown` looks
        for the files that still have it, and the one letting go must not be among
        them, or the ledger would keep naming it once it is gone."""
        owner = self.ledger[block]
        if owner is None:
            raise AssertionError(f"double free of pmem block {block}")
        self.refs[block] -= 1
        if self.refs[block] > 0:
            # a shared extent outlives the file that let go: the ledger names a file
            # that still has it, as the remaining reference owns it on Linux
            heir = self.reown(block) if self.reown is not None else None
            if heir is not None and heir != owner:
                self.ledger[block] = heir
                if self._on_change:
                    self._on_change("reown", block, heir)
            return
        self.ledger[block] = None
        if self.hold is not None and self.hold(block, owner):
            self.busy.add(block)
            if self._on_change:
                self._on_change("busy", block, owner)
            return
        self.gen[block] += 1
        self._free.append(block)
        if self._on_change:
            self._on_change("free", block, owner)

    def release_busy(self, block: int) -> None:
        """The last device reference to a busy block went: back to the allocator."""
        if block not in self.busy:
            return
        self.busy.discard(block)
        self.gen[block] += 1
        self._free.append(block)
        if self._on_change:
            self._on_change("free", block, None)

    def view(self, block: int) -> memoryview:
        """The bytes of ``block`` in the segment."""
        start = block * self.block_size
        return self.buf[start : start + self.block_size]

    def close(self, unlink: bool = True) -> None:
        """Detach, and unlink the segment unless told otherwise."""
        del self.buf
        self.shm.close()
        if unlink:
            with contextlib.suppress(FileNotFoundError):
                self.shm.unlink()
