"""``mr-lease``: the memory region holds the lease (proposed by Jason Gunthorpe in the
review of the layout-lease RFC, August 2019; never written).

As ``layout-lease``, but a long-term pin needs a layout lease of either level held by
the caller (``EPERM``); the region references it; a break is told per region, as an
asynchronous event (``IBV_EVENT_LEASE_BREAK``) on its context instead of SIGIO; at the
deadline the regions are fenced (``IBV_EVENT_MR_REVOKED``) and the lease dropped.
``F_UNLCK`` of a lease regions hold succeeds **(decision)**, and each region left
without its lease aborts its whole context (``IBV_EVENT_DEVICE_FATAL``).
"""

from __future__ import annotations

from dataclasses import dataclass

from kemu.kernel_daemon.designs.layout_lease import LayoutLeasePolicy, PinnedLease
from kemu.kernel_daemon.policy import (
    File,
    Kernel,
    Lease,
    Task,
    abort_context,
    async_event,
    linux,
    revoke,
)


@dataclass(eq=False)
class MrHeldLease(PinnedLease):
    """A layout lease whose breaks go to the regions that hold it."""

    def lm_break(self, k: Kernel) -> None:
        """A break is told per MR, as an asynchronous event on its context; a lease no
        region holds is broken the Linux way (SIGIO)."""
        mrs = self.pins()
        if not mrs:
            super().lm_break(k)
            return
        for mr in mrs:
            async_event(mr.ctx, {"event_type": "IBV_EVENT_LEASE_BREAK", "mr": mr.handle})
            k.log.emit("mr-lease-break", pid=mr.task.pid, ctx=mr.ctx.cid, mr=mr.handle)

    def lm_expire(self, k: Kernel) -> None:
        """At the deadline: every MR on the lease is fenced, then the lease goes."""
        for mr in self.pins():
            revoke(k, mr, "lease break deadline")


class MrLease(LayoutLeasePolicy):
    """The memory region holds the lease."""

    name = "mr-lease"
    source = "Jason Gunthorpe, review of the layout-lease RFC v2, linux-mm, Aug 2019"
    lease_type = MrHeldLease
    #: a lease of either level authorises a pin; the MR references it, a break of it is
    #: told to the MR's context (MrHeldLease.lm_break), then fenced at the deadline
    pin_needs_exclusive = None

    def setlease(self, k: Kernel, task: Task, file: File, fd: int, arg: int) -> bool:
        """As layout-lease, but F_UNLCK of a lease MRs hold is allowed **(decision)**:
        the holder may let go, and the MRs that outlive the lease abort their context."""
        if arg == linux.F_UNLCK:
            return False
        return super().setlease(k, task, file, fd, arg)

    def lease_removed(self, k: Kernel, lease: Lease) -> None:
        """A lease went while valid MRs still hold it: each such MR's whole context is
        aborted (every MR in it fenced, a fatal event to its owner)."""
        if isinstance(lease, PinnedLease):
            for mr in lease.pins():
                abort_context(k, mr.ctx, "an MR outlived its layout lease")
