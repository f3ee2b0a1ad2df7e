"""The design interface: every point where a kernel design may differ, and the parts of
the kernel a design may use.

A design is a subclass of :class:`Policy` in one file, which imports nothing of the
daemon but this module.  Every method has a default that is the Linux common ground
(it does nothing, or refuses nothing); a design overrides the points it changes.  The
daemon runs one design for a whole run (``--policy NAME`` or ``--policy
path/to/design.py[:ClassName]``); the kernel calls ``k.policy.method(...)`` at each
point.  ``docs/designs.md`` documents the interface with a complete worked example and
a hook × design table generated from the built-in designs.

Besides the class, this module re-exports what a design needs: the kernel's objects
(:class:`Kernel`, :class:`Task`, :class:`File`, :class:`Inode`, :class:`Mapping`,
:class:`MR`, :class:`Lease`, :class:`LayoutLease`), :class:`KernelError` to fail the
call with an errno, and the kernel operations designs are built from (breaking layout
leases, adding and removing them, revoking a memory region, zapping mappings, the
SIGIO owner).
"""

from __future__ import annotations

import enum
from typing import ClassVar

from kemu.kernel_daemon.errors import KernelError
from kemu.kernel_daemon.kernel import Kernel
from kemu.kernel_daemon.layout import (
    LayoutChange,
    LayoutLease,
    add_layout_lease,
    break_layout,
    layout_leases,
    remove_lease,
)
from kemu.kernel_daemon.locks import FL_UNLOCK_PENDING, Lease, leases_of, may_lease
from kemu.kernel_daemon.mm import Mapping, zap
from kemu.kernel_daemon.pmem import Owner
from kemu.kernel_daemon.rdma import MR, UContext, abort_context, async_event, revoke
from kemu.kernel_daemon.signals import f_setown
from kemu.kernel_daemon.task import File, Task
from kemu.kernel_daemon.vfs import Inode
from kemu.protocol import linux

__all__ = [
    "FL_UNLOCK_PENDING", "HOOKS", "MR", "File", "Inode", "Kernel", "KernelError",
    "LayoutChange", "LayoutLease", "Lease", "Mapping", "Owner", "Policy", "Promise", "Task",
    "UContext", "abort_context", "add_layout_lease", "async_event", "break_layout",
    "f_setown", "layout_leases", "leases_of", "linux", "may_lease", "remove_lease", "revoke",
    "zap",
]


class Promise(enum.Enum):
    """What a design guarantees; ``explore`` and ``find`` check it after every run."""

    #: no device write through a long-term pin (an MR) lands in another file's block
    NO_FOREIGN_WRITE_LONGTERM = "no foreign write from long-term pins"
    #: no device write through a short-term pin (direct I/O) lands in another file's block
    NO_FOREIGN_WRITE_SHORTTERM = "no foreign write from short-term pins"


class Policy:
    """A kernel design.  Subclass it and override the points where yours differs."""

    #: the design's name (``--policy NAME``, the matrix column)
    name: ClassVar[str] = "base"
    #: where the design comes from (the thread, the series), for the docs and reports
    source: ClassVar[str] = ""
    #: what the design guarantees (checked by ``explore``)
    promises: ClassVar[frozenset[Promise]] = frozenset()
    #: extra ``MAP_*`` flags ``mmap`` accepts under ``MAP_SHARED_VALIDATE``
    #: (``MAP_DIRECT``); unknown flags there are ``EOPNOTSUPP``, as ``do_mmap`` says
    map_flags: ClassVar[int] = 0

    def setlease(self, k: Kernel, task: Task, file: File, fd: int, arg: int) -> bool:
        """``fcntl(fd, F_SETLEASE, arg)``, before Linux's own handling
        (``fcntl_setlease``).  Return True if the design handled ``arg`` (a lease flag
        of its own, such as ``F_LAYOUT``); False lets Linux handle it (``F_RDLCK``,
        ``F_WRLCK``, ``F_UNLCK``; anything else is ``EINVAL``).  May raise."""
        return False

    def mmap(self, k: Kernel, task: Task, mapping: Mapping, fd: int) -> None:
        """``mmap`` of a file or anonymous memory, after Linux's checks and before the
        mapping is inserted (``do_mmap`` / ``->mmap``).  May refuse (raise), drop a
        flag from ``mapping.flags``, or take a lease for the mapping."""

    def munmap(self, k: Kernel, mapping: Mapping) -> None:
        """A mapping goes: ``munmap``, exec, exit (``remove_vma``).  Never fails."""

    def vma_copy(self, k: Kernel, old: Mapping, new: Mapping) -> None:
        """``fork`` copied ``old`` (the parent's, as it was at the fork) into ``new``
        (the child's), ``dup_mmap``.  Never fails."""

    def exec(self, k: Kernel, task: Task) -> None:
        """``execve``'s point of no return, before the old image's mappings and
        close-on-exec descriptors go (``begin_new_exec``).  Never fails."""

    def layout_change(self, k: Kernel, task: Task, inode: Inode, change: LayoutChange,
                      first: int, end: int | None) -> None:
        """Before file pages ``[first, end)`` (``end`` None: to the end) change: a write,
        a size change, a hole punch, a reflink, a fallocate (``xfs_break_layouts``,
        ``dax_layout_busy_page``).  May refuse (raise ``ETXTBSY``...), or sleep (break
        layout leases and wait, wait for pins).  Then the kernel unmaps the pages and
        waits for the TLB shoot-downs before any block is freed."""

    def reg_mr(self, k: Kernel, task: Task, mr: MR) -> None:
        """``ibv_reg_mr``, before the pages are pinned (``ib_umem_get`` with
        ``FOLL_LONGTERM``).  Raise to refuse (``EOPNOTSUPP``, ``EPERM``...); may tie the
        region to a lease (``mr.leases``)."""

    def dereg_mr(self, k: Kernel, mr: MR) -> None:
        """A memory region goes (``ibv_dereg_mr``, the context's last close, a failed
        registration), before its pins are released.  Never fails."""

    def lease_removed(self, k: Kernel, lease: Lease) -> None:
        """A lease was removed: ``F_UNLCK``, the break deadline, the last close
        (``lease_modify``).  Never fails."""

    def busy_extent(self, k: Kernel, owner: Owner, block: int) -> bool:
        """A file's block is about to go back to the allocator (truncate, punch,
        reflink, last unlink) while a device pin holds it.  True keeps it off the free
        list, owned by nobody, until the last pin on it goes (XFS's busy extents);
        False (Linux) frees it now, and the next file may get it."""
        return False


#: every point a design may change, in the order of the class
HOOKS = ("setlease", "mmap", "munmap", "vma_copy", "exec", "layout_change", "reg_mr",
         "dereg_mr", "lease_removed", "busy_extent")
