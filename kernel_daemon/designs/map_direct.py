"""``map-direct`` and ``map-direct-sealed``: a layout lease taken at ``mmap`` (Dan
Williams, "MAP_DIRECT and block-map-atomic files", 2017).

``mmap(MAP_SHARED_VALIDATE | MAP_DIRECT)`` of a DAX file takes a layout lease owned by
the mappings (fork shares it, the last munmap ends it), records the mmap descriptor for
``si_fd`` and makes the mapper the owner.  Any ``write(2)``, size change, punch or
reflink breaks it: SIGIO, the breaker sleeps; at the deadline the mappings are
invalidated (SIGBUS) and the lease removed.  ``ibv_reg_mr`` needs a MAP_DIRECT mapping
(``EOPNOTSUPP``) whose lease is intact (``ENXIO``) and takes a silent lease of its own,
revoked at the deadline.

The sealed version (the series' earlier one): MAP_DIRECT needs ``PROT_WRITE``
(``EACCES``); while a MAP_DIRECT mapping exists every size change, fallocate and
reflink of the file is ``ETXTBSY``; no lease, no signal, no deadline.
"""

from __future__ import annotations

import errno
from dataclasses import dataclass, field

from kemu.kernel_daemon.policy import (
    FL_UNLOCK_PENDING,
    MR,
    Inode,
    Kernel,
    KernelError,
    LayoutChange,
    LayoutLease,
    Mapping,
    Policy,
    Promise,
    Task,
    add_layout_lease,
    break_layout,
    f_setown,
    layout_leases,
    linux,
    remove_lease,
    revoke,
    zap,
)


@dataclass(eq=False)
class MapDirectLease(LayoutLease):
    """The layout lease of the MAP_DIRECT mappings of one open file."""

    mappings: list[Mapping] = field(default_factory=list)

    def lm_expire(self, k: Kernel) -> None:
        """At the deadline the mappings are invalidated: every later fault gets SIGBUS."""
        for m in self.mappings:
            m.invalid = True
        self.mappings = []
        zap(k, self.file.inode, 0, None)


@dataclass(eq=False)
class RegionLease(LayoutLease):
    """The silent layout lease a memory region over MAP_DIRECT memory takes."""

    mr: MR | None = None

    def lm_break(self, k: Kernel) -> None:
        """Nobody is told: the region relies on the mapping's SIGIO."""

    def lm_expire(self, k: Kernel) -> None:
        """At the deadline the region is revoked."""
        if self.mr is not None:
            revoke(k, self.mr, "lease deadline")


def lease_of(mapping: Mapping) -> MapDirectLease | None:
    """The MAP_DIRECT lease a mapping belongs to (None once it expired or went)."""
    if mapping.file is None:
        return None
    return next((le for le in layout_leases(mapping.file.inode)
                 if isinstance(le, MapDirectLease) and mapping in le.mappings), None)


class MapDirect(Policy):
    """MAP_DIRECT: a layout lease taken at mmap, owned by the mappings (2017 series)."""

    name = "map-direct"
    source = "Dan Williams, 'MAP_DIRECT and block-map-atomic files', v2-v9, 2017"
    promises = frozenset({Promise.NO_FOREIGN_WRITE_LONGTERM})
    map_flags = linux.MAP_DIRECT
    sealed = False

    def __init__(self) -> None:
        #: sealed version: MAP_DIRECT mappings per inode, and which mappings are sealing
        self.seals: dict[Inode, int] = {}
        self.sealing: set[Mapping] = set()

    def mmap(self, k: Kernel, task: Task, mapping: Mapping, fd: int) -> None:
        """MAP_DIRECT under MAP_SHARED_VALIDATE: checks, then the mapping's lease."""
        if not mapping.flags & linux.MAP_DIRECT:
            return
        if mapping.flags & linux.MAP_TYPE != linux.MAP_SHARED_VALIDATE:
            mapping.flags &= ~linux.MAP_DIRECT  # plain MAP_SHARED drops it silently
            return
        file = mapping.file
        if file is None or file.inode.reflink:
            raise KernelError(errno.EPERM)
        if task.uid not in (0, file.inode.uid):
            raise KernelError(errno.EACCES)
        if self.sealed:
            if not mapping.prot & linux.PROT_WRITE:
                raise KernelError(errno.EACCES)
            self._seal(mapping)
            return
        lease = next((le for le in layout_leases(file.inode)
                      if le.file is file and isinstance(le, MapDirectLease)), None)
        if lease is None:
            lease = MapDirectLease(file=file, type=linux.F_RDLCK, pid=task.pid, fa_fd=fd,
                                   by="MAP_DIRECT")
            add_layout_lease(k, lease)
            f_setown(k, file, linux.F_OWNER_PID, task.pid, force=True, setter_uid=task.uid)
        lease.mappings.append(mapping)

    def _seal(self, mapping: Mapping) -> None:
        assert mapping.file is not None
        inode = mapping.file.inode
        self.seals[inode] = self.seals.get(inode, 0) + 1
        self.sealing.add(mapping)

    def vma_copy(self, k: Kernel, old: Mapping, new: Mapping) -> None:
        """fork shares the MAP_DIRECT lease (or the seal) with the child's copy."""
        lease = lease_of(old)
        if lease is not None:
            lease.mappings.append(new)
        if old in self.sealing and old.file is not None:
            self._seal(new)

    def munmap(self, k: Kernel, mapping: Mapping) -> None:
        """The lease (or the seal) lives as long as the last MAP_DIRECT mapping."""
        if mapping in self.sealing and mapping.file is not None:
            self.sealing.discard(mapping)
            inode = mapping.file.inode
            self.seals[inode] -= 1
            if not self.seals[inode]:
                del self.seals[inode]
        lease = lease_of(mapping)
        if lease is None:
            return
        lease.mappings.remove(mapping)
        if not lease.mappings:
            remove_lease(k, lease, "last MAP_DIRECT mapping gone")

    def layout_change(self, k: Kernel, task: Task, inode: Inode, change: LayoutChange,
                      first: int, end: int | None) -> None:
        """Any write, size change, punch, reflink or fallocate: a sealed file refuses
        everything but a write inside it (ETXTBSY); else the layout leases break, and
        every write breaks whatever the flavour."""
        if self.sealed:
            if self.seals.get(inode) and change is not LayoutChange.WRITE:
                raise KernelError(errno.ETXTBSY)
            return
        break_layout(k, task, inode, change, always=change is LayoutChange.WRITE)

    def reg_mr(self, k: Kernel, task: Task, mr: MR) -> None:
        """Only over MAP_DIRECT mappings (EOPNOTSUPP), whose lease is intact (ENXIO); the
        MR takes a silent layout lease of its own, revoked at the break deadline."""
        for mapping in mr.mappings:
            if mapping.file is None or mr.odp:
                continue
            if not mapping.flags & linux.MAP_DIRECT:
                raise KernelError(errno.EOPNOTSUPP)
            lease = lease_of(mapping)
            if mapping.invalid or (not self.sealed and (
                    lease is None or lease.flags & FL_UNLOCK_PENDING)):
                raise KernelError(errno.ENXIO)  # its lease is broken, or gone at the deadline
            if self.sealed:
                continue  # the sealed version had no lease for the region
            own = RegionLease(file=mapping.file, type=linux.F_RDLCK, pid=task.pid, by="MR",
                              mr=mr)
            add_layout_lease(k, own)
            mr.leases.append(own)

    def dereg_mr(self, k: Kernel, mr: MR) -> None:
        """The MR's own lease goes with it."""
        for lease in mr.leases:
            remove_lease(k, lease, "ibv_dereg_mr")


class MapDirectSealed(MapDirect):
    """map-direct, option sealed (the earlier version): no lease, no signal, no deadline;
    while a MAP_DIRECT mapping exists every size change, fallocate and reflink of the
    file fails with ETXTBSY."""

    name = "map-direct-sealed"
    promises = frozenset()
    sealed = True
