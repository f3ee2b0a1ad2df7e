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

from kernel_daemon import rdma
from kernel_daemon.errors import KernelError, MustWait
from kernel_daemon.kernel import Kernel
from kernel_daemon.task import Task
from kernel_daemon.vfs import Inode


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


def install(k: Kernel) -> Policy:
    """Instantiate and wire the configured policy."""
    try:
        policy = POLICIES[k.config.policy]()
    except KeyError:
        raise ValueError(f"unknown policy {k.config.policy!r}; known: "
                         f"{', '.join(sorted(POLICIES))}") from None
    policy.install(k)
    return policy
