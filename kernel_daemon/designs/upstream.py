"""``upstream``: what Linux shipped.

No long-term pin of a DAX file mapping (``FOLL_LONGTERM`` on a DAX vma fails, unless the
region uses on-demand paging); truncate and hole punch wait until no short-term pin
(direct I/O) holds a block of the range (``dax_layout_busy_page``).  ``F_LAYOUT`` is
``EINVAL`` and ``MAP_DIRECT`` unknown, as in Linux.
"""

from __future__ import annotations

import errno

from kemu.kernel_daemon.policy import (
    MR,
    Inode,
    Kernel,
    KernelError,
    LayoutChange,
    Policy,
    Promise,
    Task,
)


class Upstream(Policy):
    """Linux since 5.x: long-term DAX pins refused, short-term pins waited for."""

    name = "upstream"
    source = "mm/gup.c check_vma_flags (vma_is_fsdax), fs/dax.c dax_layout_busy_page"
    promises = frozenset({Promise.NO_FOREIGN_WRITE_LONGTERM, Promise.NO_FOREIGN_WRITE_SHORTTERM})

    def reg_mr(self, k: Kernel, task: Task, mr: MR) -> None:
        """``FOLL_LONGTERM`` on a DAX vma fails (``vma_is_fsdax`` in mm/gup.c)."""
        if not mr.odp and any(m.file is not None for m in mr.mappings):
            raise KernelError(errno.EOPNOTSUPP)

    def layout_change(self, k: Kernel, task: Task, inode: Inode, change: LayoutChange,
                      first: int, end: int | None) -> None:
        """``dax_layout_busy_page``: sleep (interruptibly) while a short-term pin holds a
        block of the range; writes do not wait."""
        if change in (LayoutChange.WRITE, LayoutChange.EXTEND):
            return
        busy = [b for p, b in inode.blocks.items()
                if p >= first and (end is None or p < end) and b in k.pins.shortterm]
        if busy:
            k.log.emit("layout-busy", ino=inode.ino, blocks=busy, by=task.pid,
                       kind=change.value)
            k.pins.released.sleep()
