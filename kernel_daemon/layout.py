"""Layout leases (``FL_LAYOUT``) and breaking them on layout changes.

A layout lease never conflicts with an ordinary lease and is never broken by ``open``;
only layout changes break it: truncate, hole punch, reflink, and on the ``xfs`` flavour
every ``write(2)`` and ``fallocate`` (``ext4``: only truncate and punch, and only while
the file is mapped).  Who takes layout leases, and what an "exclusive" one does, is the policies'
business: this module gives them the common break (``break_layout``) with hooks per lease:

* ``lease.ext["exclusive"]``: breaking fails at once, ``ETXTBSY`` for another process's
  lease and ``EDEADLK`` for the breaker's own (after the normal leases met in the same
  scan were marked and told);
* ``lease.ext["lm_break"]``: how the holder is told (default SIGIO to the file's owner);
* ``lease.ext["on_expire"]``: what the kernel does when the break time passes (revoke a
  memory region, invalidate a mapping) before the lease is removed (run by
  ``time_out_leases``);
* ``lease.ext["no_timeout"]``: the lease never times out.
"""

from __future__ import annotations

import errno

from kernel_daemon.errors import KernelError
from kernel_daemon.kernel import Kernel
from kernel_daemon.locks import (
    FL_LAYOUT,
    FL_UNLOCK_PENDING,
    Lease,
    leases_of,
    lm_break,
    sleep_on_lease,
    time_out_leases,
)
from kernel_daemon.task import File, Task
from kernel_daemon.vfs import Inode
from protocol import linux


def layout_leases(inode: Inode) -> list[Lease]:
    """The inode's layout leases, in order."""
    return [le for le in leases_of(inode) if le.flags & FL_LAYOUT]


def add_layout_lease(k: Kernel, task: Task, file: File, fd: int | None, **ext: object) -> Lease:
    """Insert a layout lease on ``file`` held by ``task`` (a read lease with FL_LAYOUT)."""
    lease = Lease(file=file, type=linux.F_RDLCK, pid=task.pid, flags=FL_LAYOUT, fa_fd=fd)
    lease.ext.update(ext)
    leases_of(file.inode).append(lease)
    k.log.emit("lease-added", ino=file.inode.ino, file=file.fid, pid=task.pid, type="LAYOUT",
               exclusive=bool(ext.get("exclusive")), fd=fd, by=ext.get("by", "F_SETLEASE"))
    return lease


def breaks_on(k: Kernel, inode: Inode, kind: str) -> bool:
    """Does a layout change of ``kind`` break layout leases on this flavour?"""
    if kind == "write":
        return k.config.flavour == "xfs"
    if kind == "write*":  # MAP_DIRECT: every write breaks, whatever the filesystem
        return True
    if kind == "fallocate":  # xfs_file_fallocate breaks layouts for every mode
        return k.config.flavour == "xfs"
    if k.config.flavour == "ext4":
        from kernel_daemon import mm

        return bool(mm.inode_vmas(inode))
    return True


def break_layout(k: Kernel, task: Task, inode: Inode, kind: str, nonblock: bool = False) -> None:
    """Break the inode's layout leases before a layout change of ``kind``.

    Normal leases are marked pending and told once; the breaker sleeps until they are
    gone or their break time passes.  An exclusive lease makes the breaker fail.
    """
    if not layout_leases(inode) or not breaks_on(k, inode, kind):
        return
    time_out_leases(k, inode)
    lbt = k.config.lease_break_time
    refuse = 0
    for lease in layout_leases(inode):
        if lease.ext.get("exclusive"):
            refuse = refuse or (errno.EDEADLK if lease.pid == task.pid else errno.ETXTBSY)
            continue
        if lease.flags & FL_UNLOCK_PENDING:
            continue
        lease.flags |= FL_UNLOCK_PENDING
        lease.break_time = 0.0 if lease.ext.get("no_timeout") or lbt <= 0 else k.clock() + lbt
        k.log.emit("layout-break", ino=inode.ino, file=lease.file.fid, by=task.pid, kind=kind)
        lm_break(k, lease)
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
    from kernel_daemon.locks import lease_modify

    if lease in leases_of(lease.file.inode):
        lease_modify(k, lease, linux.F_UNLCK, why)
