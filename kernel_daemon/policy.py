"""The competing kernel designs, as policy objects with hooks.

One daemon runs one policy (``--policy``).  Each hook sits where the designs differ:
``reg_mr`` (may a long-term pin be taken?), ``before_layout_change`` (truncate, hole
punch: what must happen before blocks are freed?), and the places later designs add
(mmap with MAP_DIRECT, F_SETLEASE with layout flags, last close, exit, passing a
descriptor).  See ``../shared/spec/designs.md`` and ``docs/policies.md``.
"""

from __future__ import annotations

import errno
from collections.abc import Callable

from kernel_daemon import layout, mm, rdma, signals
from kernel_daemon.errors import KernelError, MustWait
from kernel_daemon.kernel import Kernel
from kernel_daemon.locks import FL_LAYOUT, FL_UNLOCK_PENDING, Lease, leases_of
from kernel_daemon.syscalls.lease import may_lease
from kernel_daemon.task import File, Task
from kernel_daemon.vfs import Inode
from protocol import linux


class Policy:
    """The hooks, with the behaviour every design shares."""

    name = "base"

    def install(self, k: Kernel) -> None:
        """Wire the policy's hooks into the kernel."""
        k.ext["policy"] = self

    def reg_mr(self, k: Kernel, task: Task, mr: rdma.MR) -> None:
        """May ``mr`` be registered?  Raise a KernelError to refuse."""

    def before_layout_change(self, k: Kernel, task: Task, inode: Inode, first: int,
                             end: int | None, kind: str) -> None:
        """Before file pages ``[first, end)`` lose their blocks (truncate, punch)."""


class Legacy(Policy):
    """Before any fix: long-term pins of DAX memory are allowed and nobody is told;
    truncate and punch free blocks the card still holds."""

    name = "legacy"


class Upstream(Policy):
    """What Linux shipped: no long-term pin of a DAX file mapping (EOPNOTSUPP unless on
    demand paging); truncate and punch wait until no short-term pin (direct I/O) holds
    the range's blocks."""

    name = "upstream"

    def reg_mr(self, k: Kernel, task: Task, mr: rdma.MR) -> None:
        """``FOLL_LONGTERM`` on a DAX vma fails (``vma_is_fsdax`` in mm/gup.c)."""
        if not mr.odp and any(m.file is not None for m in mr.mappings):
            raise KernelError(errno.EOPNOTSUPP)

    def before_layout_change(self, k: Kernel, task: Task, inode: Inode, first: int,
                             end: int | None, kind: str) -> None:
        """``dax_layout_busy_page``: sleep (interruptibly) while a short-term pin holds a
        block of the range."""
        short = k.ext.setdefault("shortterm_pins", {})
        busy = [b for p, b in inode.blocks.items()
                if p >= first and (end is None or p < end) and short.get(b)]
        if not busy:
            return
        sleepers: list[Callable[[], None]] = k.ext.setdefault("pin_sleepers", [])

        def register(wake: Callable[[], None]) -> Callable[[], None]:
            sleepers.append(wake)
            return lambda: sleepers.remove(wake) if wake in sleepers else None

        k.log.emit("layout-busy", ino=inode.ino, blocks=busy, by=task.pid, kind=kind)
        raise MustWait(register)


POLICIES: dict[str, type[Policy]] = {"legacy": Legacy, "upstream": Upstream}


# --- designs with layout leases ----------------------------------------------------------

def _lease_for(k: Kernel, task: Task, inode: Inode, exclusive: bool | None) -> Lease | None:
    """A layout lease on ``inode`` the calling process itself holds (and still holds the
    file of): exclusive if asked, any otherwise."""
    for lease in layout.layout_leases(inode):
        if lease.pid != task.pid or lease.ext.get("by") != "F_SETLEASE":
            continue
        if exclusive is not None and bool(lease.ext.get("exclusive")) != exclusive:
            continue
        if any(e.file is lease.file for _, e in task.fds):
            return lease
    return None


def _pins_of(lease: Lease) -> list[rdma.MR]:
    mrs: list[rdma.MR] = lease.ext.setdefault("mrs", [])
    return [mr for mr in mrs if mr.valid]


class LayoutLeasePolicy(Policy):
    """Explicit layout leases with two levels (the 2019 RFC v2)."""

    name = "layout-lease"
    exclusive_checked = False

    def install(self, k: Kernel) -> None:
        """Layout leases through F_SETLEASE; breaks on layout changes; pins hold leases."""
        super().install(k)
        k.ext["setlease_hook"] = lambda t, file, fd, arg: self.setlease(k, t, file, fd, arg)
        k.ext_write_hooks.append(
            lambda t, file, off, n: layout.break_layout(k, t, file.inode, "write"))
        k.ext_truncate_hooks.append(
            lambda t, inode, length: layout.break_layout(k, t, inode, "truncate"))
        k.ext.setdefault("dereg_mr_hooks", []).append(lambda mr: self.unpin(k, mr))

    def setlease(self, k: Kernel, t: Task, file: File, fd: int, arg: int) -> bool:
        """F_SETLEASE with F_LAYOUT[|F_EXCLUSIVE]; F_UNLCK of a pinned lease is EBUSY."""
        mine = next((le for le in leases_of(file.inode) if le.file is file), None)
        if arg == linux.F_UNLCK:
            if mine is not None and mine.flags & FL_LAYOUT and _pins_of(mine):
                raise KernelError(errno.EBUSY)  # (decision) pins hold the lease
            return False
        if not arg & linux.F_LAYOUT:
            return False
        if arg & ~(linux.F_LAYOUT | linux.F_EXCLUSIVE):
            raise KernelError(errno.EINVAL)
        may_lease(k, t, file)
        exclusive = bool(arg & linux.F_EXCLUSIVE)
        if exclusive and self.exclusive_checked:
            for other in layout.layout_leases(file.inode):
                if other.ext.get("exclusive") and other.file is not file:
                    raise KernelError(errno.EAGAIN)  # (decision) option exclusive-checked
        if mine is not None and mine.flags & FL_LAYOUT:
            mine.ext["exclusive"] = exclusive
            mine.ext["no_timeout"] = exclusive
            mine.fa_fd = fd
            return True
        if mine is not None:
            raise KernelError(errno.EAGAIN)  # an ordinary lease on this description
        lease = layout.add_layout_lease(k, t, file, fd, exclusive=exclusive,
                                        no_timeout=exclusive, by="F_SETLEASE")
        file.flags |= linux.O_ASYNC
        signals.f_setown(k, file, linux.F_OWNER_PID, t.pid, force=False, setter_uid=t.uid)
        del lease
        return True

    def reg_mr(self, k: Kernel, task: Task, mr: rdma.MR) -> None:
        """A long-term pin of a DAX range needs the caller's own exclusive layout lease."""
        for mapping in mr.mappings:
            if mapping.file is None or mr.odp:
                continue
            lease = _lease_for(k, task, mapping.file.inode, exclusive=True)
            if lease is None:
                raise KernelError(errno.EPERM)
            self.pin(k, mr, lease)

    @staticmethod
    def pin(k: Kernel, mr: rdma.MR, lease: Lease) -> None:
        """The MR holds the leased open file: the lease lives while the pin does."""
        lease.ext.setdefault("mrs", []).append(mr)
        mr.ext.setdefault("leases", []).append(lease)
        mr.files.append(k.fget(lease.file))

    def unpin(self, k: Kernel, mr: rdma.MR) -> None:
        """Dereg: the MR lets go of its leases (the file reference goes with mr.files)."""
        for lease in mr.ext.get("leases", []):
            mrs = lease.ext.get("mrs", [])
            if mr in mrs:
                mrs.remove(mr)

    def before_layout_change(self, k: Kernel, task: Task, inode: Inode, first: int,
                             end: int | None, kind: str) -> None:
        """Punch and reflink break layout leases (truncate broke them already)."""
        layout.break_layout(k, task, inode, kind)


class ExclusiveCheckedPolicy(LayoutLeasePolicy):
    """layout-lease with option exclusive-checked: a second exclusive lease is EAGAIN."""

    name = "layout-lease-exclusive-checked"
    exclusive_checked = True


class MrLeasePolicy(LayoutLeasePolicy):
    """The memory region holds the lease (proposed in review, never written)."""

    name = "mr-lease"

    def install(self, k: Kernel) -> None:
        """As layout-lease, and an MR found to outlive its lease aborts its context."""
        super().install(k)
        k.ext.setdefault("lease_removed_hooks", []).append(
            lambda lease: self.lease_gone(k, lease))

    def setlease(self, k: Kernel, t: Task, file: File, fd: int, arg: int) -> bool:
        """As layout-lease, but F_UNLCK of a lease MRs hold is allowed **(decision)**:
        the holder may let go, and the MRs that outlive the lease abort their context."""
        if arg == linux.F_UNLCK:
            return False
        return super().setlease(k, t, file, fd, arg)

    @staticmethod
    def lease_gone(k: Kernel, lease: Lease) -> None:
        """A lease went while valid MRs still hold it: each such MR's whole context is
        aborted (every MR in it fenced, a fatal event to its owner)."""
        for mr in _pins_of(lease):
            rdma.abort_context(k, mr.ctx, "an MR outlived its layout lease")

    def reg_mr(self, k: Kernel, task: Task, mr: rdma.MR) -> None:
        """A long-term pin needs a layout lease held by the caller; the MR references it,
        and a break of it is told to the MR's context, then fenced at the deadline."""
        for mapping in mr.mappings:
            if mapping.file is None or mr.odp:
                continue
            lease = _lease_for(k, task, mapping.file.inode, exclusive=None)
            if lease is None:
                raise KernelError(errno.EPERM)
            self.pin(k, mr, lease)
            lease.ext["lm_break"] = lambda le: self.notify_mrs(k, le)
            lease.ext["on_expire"] = lambda le: self.fence(k, le)
            lease.ext["no_timeout"] = bool(lease.ext.get("exclusive"))

    @staticmethod
    def notify_mrs(k: Kernel, lease: Lease) -> None:
        """A break is told per MR, as an asynchronous event on its context."""
        mrs = _pins_of(lease)
        if not mrs:
            from kernel_daemon.locks import lm_break

            lease.ext.pop("lm_break", None)
            lm_break(k, lease)
            return
        for mr in mrs:
            rdma.async_event(mr.ctx, {"event_type": "IBV_EVENT_LEASE_BREAK", "mr": mr.handle})
            k.log.emit("mr-lease-break", pid=mr.task.pid, ctx=mr.ctx.cid, mr=mr.handle)

    @staticmethod
    def fence(k: Kernel, lease: Lease) -> None:
        """At the deadline: every MR on the lease is invalidated, then the lease goes."""
        for mr in _pins_of(lease):
            rdma.revoke(k, mr, "lease break deadline")


class MapDirectPolicy(Policy):
    """MAP_DIRECT: a layout lease taken at mmap, owned by the mappings (2017 series)."""

    name = "map-direct"
    sealed = False

    def install(self, k: Kernel) -> None:
        """MAP_DIRECT accepted; every write, size change, punch and reflink breaks."""
        super().install(k)
        k.ext["extra_map_flags"] = linux.MAP_DIRECT
        k.ext.setdefault("mmap_hooks", []).append(
            lambda t, mapping, fd: self.mmap(k, t, mapping, fd))
        k.ext.setdefault("munmap_hooks", []).append(lambda m: self.munmap(k, m))
        k.ext.setdefault("vma_copy_hooks", []).append(lambda m, copy: self.copy(m, copy))
        k.ext_write_hooks.append(lambda t, file, off, n: self.change(
            k, t, file.inode, "extend" if n and off + n > file.inode.size else "write*"))
        k.ext_truncate_hooks.append(lambda t, inode, n: self.change(k, t, inode, "truncate"))
        k.ext.setdefault("dereg_mr_hooks", []).append(lambda mr: self.dereg(k, mr))

    def mmap(self, k: Kernel, t: Task, mapping: mm.Mapping, fd: int) -> None:
        """MAP_DIRECT under MAP_SHARED_VALIDATE: checks, then the mapping's lease."""
        if not mapping.flags & linux.MAP_DIRECT:
            return
        if mapping.flags & linux.MAP_TYPE != linux.MAP_SHARED_VALIDATE:
            mapping.flags &= ~linux.MAP_DIRECT  # plain MAP_SHARED drops it silently
            return
        file = mapping.file
        if file is None or file.inode.ext.get("reflinked"):
            raise KernelError(errno.EPERM)
        if t.uid not in (0, file.inode.uid):
            raise KernelError(errno.EACCES)
        if self.sealed:
            if not mapping.prot & linux.PROT_WRITE:
                raise KernelError(errno.EACCES)
            file.inode.ext["sealed"] = file.inode.ext.get("sealed", 0) + 1
            mapping.ext["sealed"] = True
            return
        lease = next((le for le in layout.layout_leases(file.inode)
                      if le.file is file and le.ext.get("by") == "MAP_DIRECT"), None)
        if lease is None:
            lease = layout.add_layout_lease(k, t, file, fd, by="MAP_DIRECT", mappings=[])
            signals.f_setown(k, file, linux.F_OWNER_PID, t.pid, force=True, setter_uid=t.uid)
            lease.ext["on_expire"] = lambda le: self.expire(k, le)
        lease.ext["mappings"].append(mapping)
        mapping.ext["mdlease"] = lease

    @staticmethod
    def copy(m: mm.Mapping, copy: mm.Mapping) -> None:
        """fork shares the MAP_DIRECT lease with the child's copy of the mapping."""
        lease = m.ext.get("mdlease")
        if lease is not None:
            lease.ext["mappings"].append(copy)
            copy.ext["mdlease"] = lease
        if m.ext.get("sealed") and m.file is not None:
            m.file.inode.ext["sealed"] = m.file.inode.ext.get("sealed", 0) + 1
            copy.ext["sealed"] = True

    def munmap(self, k: Kernel, m: mm.Mapping) -> None:
        """The lease (or the seal) lives as long as the last MAP_DIRECT mapping."""
        if m.ext.pop("sealed", False) and m.file is not None:
            m.file.inode.ext["sealed"] -= 1
        lease = m.ext.pop("mdlease", None)
        if lease is None:
            return
        if m in lease.ext["mappings"]:
            lease.ext["mappings"].remove(m)
        if not lease.ext["mappings"]:
            layout.remove_lease(k, lease, "last MAP_DIRECT mapping gone")

    def expire(self, k: Kernel, lease: Lease) -> None:
        """At the deadline the mappings are invalidated: every later fault gets SIGBUS."""
        for m in list(lease.ext.get("mappings", [])):
            m.invalid = True
            m.ext.pop("mdlease", None)
        mm.zap(k, lease.file.inode, 0, None)
        lease.ext["mappings"] = []

    def change(self, k: Kernel, t: Task, inode: Inode, kind: str) -> None:
        """Any write, size change, punch or reflink: sealed files refuse (ETXTBSY), else
        the layout leases break."""
        if self.sealed:
            if inode.ext.get("sealed") and kind != "write*":
                raise KernelError(errno.ETXTBSY)
            return
        layout.break_layout(k, t, inode, kind)

    def before_layout_change(self, k: Kernel, task: Task, inode: Inode, first: int,
                             end: int | None, kind: str) -> None:
        """Punch and reflink break (or, sealed, are refused)."""
        self.change(k, task, inode, kind)

    def reg_mr(self, k: Kernel, task: Task, mr: rdma.MR) -> None:
        """Only over MAP_DIRECT mappings (EOPNOTSUPP), whose lease is intact (ENXIO); the
        MR takes a silent layout lease of its own, revoked at the break deadline."""
        for mapping in mr.mappings:
            if mapping.file is None or mr.odp:
                continue
            if not mapping.flags & linux.MAP_DIRECT:
                raise KernelError(errno.EOPNOTSUPP)
            lease = mapping.ext.get("mdlease")
            if mapping.invalid or (not self.sealed and (
                    lease is None or lease.flags & FL_UNLOCK_PENDING)):
                raise KernelError(errno.ENXIO)  # its lease is broken, or gone at the deadline
            if self.sealed:
                continue  # the sealed version had no lease for the region
            own = layout.add_layout_lease(k, task, mapping.file, None, by="MR", mr=mr)
            own.ext["lm_break"] = lambda le: None  # it relies on the mapping's SIGIO
            own.ext["on_expire"] = lambda le: rdma.revoke(k, le.ext["mr"], "lease deadline")
            mr.ext.setdefault("leases", []).append(own)

    def dereg(self, k: Kernel, mr: rdma.MR) -> None:
        """The MR's own lease goes with it."""
        for lease in mr.ext.get("leases", []):
            layout.remove_lease(k, lease, "ibv_dereg_mr")


class SealedPolicy(MapDirectPolicy):
    """map-direct, option sealed (the earlier version): no lease, no signal, no deadline;
    while a MAP_DIRECT mapping exists every size change, fallocate and reflink of the
    file fails with ETXTBSY."""

    name = "map-direct-sealed"
    sealed = True


POLICIES.update({
    "layout-lease": LayoutLeasePolicy,
    "layout-lease-exclusive-checked": ExclusiveCheckedPolicy,
    "mr-lease": MrLeasePolicy,
    "map-direct": MapDirectPolicy,
    "map-direct-sealed": SealedPolicy,
})


def install(k: Kernel) -> Policy:
    """Instantiate and wire the configured policy."""
    try:
        policy = POLICIES[k.config.policy]()
    except KeyError:
        raise ValueError(f"unknown policy {k.config.policy!r}; known: "
                         f"{', '.join(sorted(POLICIES))}") from None
    policy.install(k)
    return policy
