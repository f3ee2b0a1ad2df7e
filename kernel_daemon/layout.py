"""Layout leases (``FL_LAYOUT``), layout changes, and breaking the leases on them.

A layout lease never conflicts with an ordinary lease and is never broken by ``open``;
only layout changes break it: truncate, hole punch, reflink, and on the ``xfs`` flavour
every ``write(2)`` and ``fallocate`` (``ext4``: only truncate and punch, and only while
the file is mapped).  Who takes layout leases, and what an "exclusive" one does, is the policies'
business: this module gives them the lease type (:class:`LayoutLease`, which designs
subclass) and the common break (:func:`break_layout`):

* ``exclusive``: breaking fails at once, ``ETXTBSY`` for another process's lease and
  ``EDEADLK`` for the breaker's own (after the normal leases met in the same scan were
  marked and told);
* ``lm_break``: how the holder is told (default SIGIO to the file's owner);
* ``lm_expire``: what the kernel does when the break time passes (revoke a memory
  region, invalidate a mapping) before the lease is removed (run by
  ``time_out_leases``);
* ``no_timeout``: the lease never times out.
"""

from __future__ import annotations

import enum
import errno
from dataclasses import dataclass
from typing import TYPE_CHECKING

from kemu.kernel_daemon.errors import KernelError
from kemu.kernel_daemon.locks import (
    FL_LAYOUT,
    FL_UNLOCK_PENDING,
    Lease,
    lease_modify,
    leases_of,
    sleep_on_lease,
    time_out_leases,
)
from kemu.kernel_daemon.task import Task
from kemu.kernel_daemon.vfs import Inode
from kemu.protocol import linux

if TYPE_CHECKING:
    from kemu.kernel_daemon.kernel import Kernel


class LayoutChange(enum.Enum):
    """What is about to change a file's block layout (the ``kind`` of a layout break).

    Each is a point where a design may act before blocks move (``xfs_break_layouts``
    callers in XFS): :meth:`Policy.layout_change
    <kernel_daemon.policy.Policy.layout_change>` is called with it.
    """

    #: write(2)/pwrite(2) inside the file (``xfs_file_write_checks``)
    WRITE = "write"
    #: write(2)/pwrite(2) that extends the file: a size change too
    EXTEND = "extend"
    #: truncate(2)/ftruncate(2)/O_TRUNC, before the size changes (either way)
    TRUNCATE = "truncate"
    #: fallocate(FALLOC_FL_PUNCH_HOLE)
    PUNCH = "punch"
    #: ioctl(FICLONE), source and destination
    REFLINK = "reflink"
    #: fallocate(2) of any other mode (``xfs_file_fallocate`` breaks layouts for all)
    FALLOCATE = "fallocate"

    @property
    def frees_blocks(self) -> bool:
        """Pages in the range may lose their blocks (truncate, punch, reflink)."""
        return self in (LayoutChange.TRUNCATE, LayoutChange.PUNCH, LayoutChange.REFLINK)


@dataclass(eq=False)
class LayoutLease(Lease):
    """A layout lease (``FL_LAYOUT``, always a read lease): broken only by layout
    changes, never by ``open``.  Designs subclass it for their variants."""

    #: the "exclusive" level of the 2019 RFC: breaking it fails the breaker
    exclusive: bool = False
    #: who took it: ``F_SETLEASE``, ``MAP_DIRECT`` (the mapping's), ``MR`` (a region's)
    by: str = "F_SETLEASE"


def layout_leases(inode: Inode) -> list[LayoutLease]:
    """The inode's layout leases, in order."""
    return [le for le in leases_of(inode) if isinstance(le, LayoutLease)]


def add_layout_lease(k: Kernel, lease: LayoutLease) -> LayoutLease:
    """Insert ``lease`` (built by the caller, ``FL_LAYOUT`` set here) on its file."""
    lease.flags |= FL_LAYOUT
    lease.type = linux.F_RDLCK
    file = lease.file
    leases_of(file.inode).append(lease)
    k.log.emit("lease-added", ino=file.inode.ino, file=file.fid, pid=lease.pid, type="LAYOUT",
               exclusive=lease.exclusive, fd=lease.fa_fd, by=lease.by)
    return lease


def breaks_on(k: Kernel, inode: Inode, change: LayoutChange) -> bool:
    """Does a layout change break layout leases on this flavour?  On ``xfs`` every
    change does; on ``ext4`` writes and fallocate do not, and truncate, punch and
    reflink only while the file is mapped."""
    if change in (LayoutChange.WRITE, LayoutChange.FALLOCATE):
        return k.config.flavour == "xfs"
    if k.config.flavour == "ext4":
        return bool(inode.i_mmap)
    return True


def break_layout(k: Kernel, task: Task, inode: Inode, change: LayoutChange,
                 always: bool = False, nonblock: bool = False) -> None:
    """``break_layout``: break the inode's layout leases before ``change``.

    Normal leases are marked pending and told once; the breaker sleeps until they are
    gone or their break time passes.  An exclusive lease makes the breaker fail.
    ``always`` breaks whatever the flavour says (MAP_DIRECT: every write breaks).
    """
    if not layout_leases(inode) or not (always or breaks_on(k, inode, change)):
        return
    kind = change.value
    time_out_leases(k, inode)
    lbt = k.config.lease_break_time
    refuse = 0
    for lease in layout_leases(inode):
        if lease.exclusive:
            refuse = refuse or (errno.EDEADLK if lease.pid == task.pid else errno.ETXTBSY)
            continue
        if lease.flags & FL_UNLOCK_PENDING:
            continue
        lease.flags |= FL_UNLOCK_PENDING
        lease.break_time = 0.0 if lease.no_timeout or lbt <= 0 else k.clock() + lbt
        k.log.emit("layout-break", ino=inode.ino, file=lease.file.fid, by=task.pid, kind=kind,
                   lbt=lbt if lease.break_time else 0.0)
        lease.lm_break(k)
    if refuse:
        k.log.emit("layout-refused", ino=inode.ino, by=task.pid, kind=kind,
                   errno=linux.errno_name(refuse))
        raise KernelError(refuse)
    pending = layout_leases(inode)
    if not pending:
        return
    if nonblock:
        raise KernelError(errno.EWOULDBLOCK)
    sleep_on_lease(k, task, inode, pending[0], True)


def remove_lease(k: Kernel, lease: Lease, why: str) -> None:
    """Remove a layout lease now (its mappings went, its last pin went)."""
    if lease in leases_of(lease.file.inode):
        lease_modify(k, lease, linux.F_UNLCK, why)
