"""refuse-pinned-truncate: a design of one file, the worked example of docs/designs.md.

Long-term pins of DAX memory are allowed (as legacy), but a truncate, hole punch or
reflink that would take a block from under a pin fails with ETXTBSY, as a running
executable refuses writes.  Nobody is told, nothing waits.

    python launch.py run scenarios/threads/S05_pin_truncate_reuse.scn \\
        --policy docs/examples/refuse_truncate.py
"""

from __future__ import annotations

import errno

from kemu.kernel_daemon.policy import (
    Inode,
    Kernel,
    KernelError,
    LayoutChange,
    Policy,
    Promise,
    Task,
)


class RefusePinnedTruncate(Policy):
    """Layout changes over pinned blocks are ETXTBSY."""

    name = "refuse-pinned-truncate"
    source = "docs/designs.md, the worked example"
    promises = frozenset({Promise.NO_FOREIGN_WRITE_LONGTERM})

    def layout_change(self, k: Kernel, task: Task, inode: Inode, change: LayoutChange,
                      first: int, end: int | None) -> None:
        """Refuse a change that would free a block a memory region pins."""
        if not change.frees_blocks:
            return  # writes, extensions and fallocate free nothing
        for page, block in inode.blocks.items():
            if page >= first and (end is None or page < end) and block in k.pins.longterm:
                k.log.emit("layout-refused", ino=inode.ino, by=task.pid, kind=change.value,
                           errno="ETXTBSY")
                raise KernelError(errno.ETXTBSY)
