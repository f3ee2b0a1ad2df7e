"""``layout-lease`` and ``layout-lease-exclusive-checked``: explicit layout leases with
two levels (Ira Weiny's RFC v2, "ext4/xfs: add layout lease / F_LAYOUT", 2019).

``F_SETLEASE`` takes ``F_LAYOUT`` or ``F_LAYOUT|F_EXCLUSIVE`` (no open-mode check;
``F_GETLEASE`` answers ``F_LAYOUT``).  Layout changes break them; "exclusive" is
checked only when breaking: another process's exclusive lease fails the breaker with
``ETXTBSY``, the breaker's own with ``EDEADLK``.  Exclusive leases never time out.  A
long-term pin of DAX memory needs the caller's own exclusive lease (``EPERM``), and the
region then holds the leased open file, so a lease can outlive every descriptor and
mapping of it (a zombie lease).  ``F_UNLCK`` while pinned is ``EBUSY`` **(decision)**.
The ``-exclusive-checked`` option refuses a second exclusive lease with ``EAGAIN``
**(decision)**.
"""

from __future__ import annotations

import errno
from dataclasses import dataclass, field

from kemu.kernel_daemon.policy import (
    MR,
    File,
    Inode,
    Kernel,
    KernelError,
    LayoutChange,
    LayoutLease,
    Policy,
    Promise,
    Task,
    add_layout_lease,
    break_layout,
    f_setown,
    layout_leases,
    leases_of,
    linux,
    may_lease,
)


@dataclass(eq=False)
class PinnedLease(LayoutLease):
    """A layout lease taken with ``F_SETLEASE``; memory regions that pin its file's
    blocks hold it (and, through ``mr.files``, its open file)."""

    mrs: list[MR] = field(default_factory=list)

    def pins(self) -> list[MR]:
        """The valid memory regions holding the lease."""
        return [mr for mr in self.mrs if mr.valid]


def own_lease(task: Task, inode: Inode, exclusive: bool | None) -> PinnedLease | None:
    """A layout lease on ``inode`` the calling process itself took (and still holds the
    file of): exclusive if asked, any level otherwise."""
    for lease in layout_leases(inode):
        if lease.pid != task.pid or not isinstance(lease, PinnedLease):
            continue
        if exclusive is not None and lease.exclusive != exclusive:
            continue
        if any(e.file is lease.file for _, e in task.fds):
            return lease
    return None


class LayoutLeasePolicy(Policy):
    """Explicit layout leases with two levels (the 2019 RFC v2)."""

    name = "layout-lease"
    source = "Ira Weiny, RFC v2 'ext4/xfs: add layout lease / F_LAYOUT', 2019"
    promises = frozenset({Promise.NO_FOREIGN_WRITE_LONGTERM})
    #: a second exclusive lease on a file is EAGAIN (the -exclusive-checked option)
    exclusive_checked = False
    #: the lease type F_SETLEASE with F_LAYOUT creates
    lease_type: type[PinnedLease] = PinnedLease
    #: the level of the caller's own lease a long-term pin needs (True: exclusive;
    #: None: either)
    pin_needs_exclusive: bool | None = True

    def setlease(self, k: Kernel, task: Task, file: File, fd: int, arg: int) -> bool:
        """F_SETLEASE with F_LAYOUT[|F_EXCLUSIVE]; F_UNLCK of a pinned lease is EBUSY."""
        mine = next((le for le in leases_of(file.inode) if le.file is file), None)
        if arg == linux.F_UNLCK:
            if isinstance(mine, PinnedLease) and mine.pins():
                raise KernelError(errno.EBUSY)  # (decision) pins hold the lease
            return False
        if not arg & linux.F_LAYOUT:
            return False
        if arg & ~(linux.F_LAYOUT | linux.F_EXCLUSIVE):
            raise KernelError(errno.EINVAL)
        may_lease(task, file)
        exclusive = bool(arg & linux.F_EXCLUSIVE)
        if exclusive and self.exclusive_checked:
            for other in layout_leases(file.inode):
                if other.exclusive and other.file is not file:
                    raise KernelError(errno.EAGAIN)  # (decision) option exclusive-checked
        if isinstance(mine, LayoutLease):
            mine.exclusive = mine.no_timeout = exclusive
            mine.fa_fd = fd
            return True
        if mine is not None:
            raise KernelError(errno.EAGAIN)  # an ordinary lease on this description
        add_layout_lease(k, self.lease_type(file=file, type=linux.F_RDLCK, pid=task.pid,
                                            fa_fd=fd, exclusive=exclusive,
                                            no_timeout=exclusive))
        file.flags |= linux.O_ASYNC
        f_setown(k, file, linux.F_OWNER_PID, task.pid, force=False, setter_uid=task.uid)
        return True

    def reg_mr(self, k: Kernel, task: Task, mr: MR) -> None:
        """A long-term pin of a DAX range needs the caller's own layout lease (exclusive
        unless the design says either level will do); the MR then holds it."""
        for mapping in mr.mappings:
            if mapping.file is None or mr.odp:
                continue
            lease = own_lease(task, mapping.file.inode, exclusive=self.pin_needs_exclusive)
            if lease is None:
                raise KernelError(errno.EPERM)
            self.pin(k, mr, lease)

    @staticmethod
    def pin(k: Kernel, mr: MR, lease: PinnedLease) -> None:
        """The MR holds the leased open file: the lease lives while the pin does."""
        lease.mrs.append(mr)
        mr.leases.append(lease)
        mr.files.append(k.fget(lease.file))

    def dereg_mr(self, k: Kernel, mr: MR) -> None:
        """The MR lets go of its leases (the file reference goes with ``mr.files``)."""
        for lease in mr.leases:
            if isinstance(lease, PinnedLease) and mr in lease.mrs:
                lease.mrs.remove(mr)

    def layout_change(self, k: Kernel, task: Task, inode: Inode, change: LayoutChange,
                      first: int, end: int | None) -> None:
        """Every layout change breaks layout leases (a write counts as a write, whether it
        extends the file or not)."""
        if change is LayoutChange.EXTEND:
            change = LayoutChange.WRITE
        break_layout(k, task, inode, change)


class ExclusiveChecked(LayoutLeasePolicy):
    """layout-lease with option exclusive-checked: a second exclusive lease is EAGAIN."""

    name = "layout-lease-exclusive-checked"
    exclusive_checked = True
