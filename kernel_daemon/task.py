"""Processes, descriptor tables and open file descriptions.

``Task`` is a process (``struct task_struct`` seen as a whole process), ``FdTable`` its
``struct files_struct``, ``File`` an open file description (``struct file``).  A
``File`` is shared by ``dup``, ``fork`` and descriptor passing, and carries the offset
and status flags; the close-on-exec flag belongs to the descriptor, in the table.  A
``File`` is kept alive by every descriptor that names it, by passes in flight, by
pending fork snapshots, and later by mappings and pins; when the last reference goes
the file is released (``__fput``).
"""

from __future__ import annotations

import errno
import itertools
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from kemu.kernel_daemon.cred import ROOT, Cred
from kemu.kernel_daemon.errors import KernelError
from kemu.kernel_daemon.vfs import Inode
from kemu.protocol import linux

if TYPE_CHECKING:
    from kemu.kernel_daemon.mm import Mapping
    from kemu.kernel_daemon.rdma import UContext
    from kemu.kernel_daemon.signals import FOwner, Siginfo

#: status flags F_SETFL may change (fs/fcntl.c SETFL_MASK).  O_ASYNC is not among them:
#: only a file's ->fasync sets it, and regular files have none (leases set it directly)
SETFL_MASK = linux.O_APPEND | linux.O_NONBLOCK | linux.O_DIRECT | linux.O_NOATIME
#: flags kept in f_flags after open (what F_GETFL may report)
KEPT_FLAGS = (
    linux.O_ACCMODE
    | linux.O_APPEND
    | linux.O_NONBLOCK
    | linux.O_ASYNC
    | linux.O_DIRECT
    | linux.O_NOATIME
    | linux.O_LARGEFILE
    | linux.O_DSYNC
    | linux.O_SYNC
    | linux.O_DIRECTORY
    | linux.O_NOFOLLOW
    | linux.O_PATH
)

_file_ids = itertools.count(1)


@dataclass(eq=False)
class File:
    """``struct file``: an open file description.

    ``flags`` is ``f_flags`` (access mode and status flags, what F_GETFL reports);
    ``pos`` the shared offset.  ``refs`` counts every holder; only
    :meth:`Kernel.fget`/:meth:`Kernel.fput` change it.
    """

    inode: Inode
    flags: int
    #: the path the file was opened by (for transcripts and /proc-like listings)
    path: str
    pos: int = 0
    refs: int = 0
    #: a stable id, so introspection can show which descriptors share a description
    fid: int = field(default_factory=lambda: next(_file_ids))
    #: ``f_owner``: who SIGIO and lease-break signals of this file go to (F_SETOWN*,
    #: F_SETLEASE); None until someone sets it.  Changed by :mod:`kemu.kernel_daemon.signals`
    f_owner: FOwner | None = None
    #: ``f_owner.signum``: the F_SETSIG signal (0: plain SIGIO); cleared with the lease
    f_signum: int = 0
    #: ``private_data``: the uverbs context of a file of /dev/infiniband/uverbs0
    private_data: UContext | None = None

    @property
    def readable(self) -> bool:
        """FMODE_READ."""
        acc = self.flags & linux.O_ACCMODE
        return not self.flags & linux.O_PATH and acc in (linux.O_RDONLY, linux.O_RDWR)

    @property
    def writable(self) -> bool:
        """FMODE_WRITE."""
        acc = self.flags & linux.O_ACCMODE
        return not self.flags & linux.O_PATH and acc in (linux.O_WRONLY, linux.O_RDWR)


@dataclass
class FdEntry:
    """One slot of a descriptor table: the file and the close-on-exec flag."""

    file: File
    cloexec: bool = False


class FdTable:
    """``struct files_struct``: descriptor numbers to files, lowest free number first.

    The table only records references; the caller takes and drops the ``File``
    references with :meth:`Kernel.fget`/:meth:`Kernel.fput` around install and remove.
    """

    def __init__(self, limit: int = linux.RLIMIT_NOFILE_DEFAULT) -> None:
        self.limit = limit
        self.slots: dict[int, FdEntry] = {}
        #: numbers taken by calls still in progress (get_unused_fd_flags before fd_install)
        self.reserved: set[int] = set()

    def __len__(self) -> int:
        return len(self.slots)

    def __iter__(self) -> Iterator[tuple[int, FdEntry]]:
        return iter(sorted(self.slots.items()))

    def get(self, fd: int) -> FdEntry:
        """The entry for ``fd``, or ``EBADF``."""
        entry = self.slots.get(fd)
        if entry is None:
            raise KernelError(errno.EBADF)
        return entry

    def lowest_free(self, start: int = 0) -> int:
        """The lowest unused number >= ``start`` (``alloc_fd``); ``EMFILE`` when none."""
        fd = start
        while fd in self.slots or fd in self.reserved:
            fd += 1
        if fd >= self.limit:
            raise KernelError(errno.EMFILE)
        return fd

    def reserve(self) -> int:
        """Take the lowest free number for a call that installs it later (EMFILE now)."""
        fd = self.lowest_free()
        self.reserved.add(fd)
        return fd

    def unreserve(self, fd: int) -> None:
        """Give back a reserved number the call did not install."""
        self.reserved.discard(fd)

    def install(self, fd: int, file: File, cloexec: bool) -> FdEntry | None:
        """Put ``file`` at ``fd``; returns the entry it replaced (the caller fputs it)."""
        self.reserved.discard(fd)
        old = self.slots.get(fd)
        self.slots[fd] = FdEntry(file, cloexec)
        return old

    def remove(self, fd: int) -> FdEntry:
        """Take ``fd`` out of the table (``EBADF`` if unused); the caller fputs it."""
        entry = self.slots.pop(fd, None)
        if entry is None:
            raise KernelError(errno.EBADF)
        return entry

    def fds_of(self, file: File) -> list[int]:
        """Every descriptor number naming ``file`` in this table."""
        return sorted(fd for fd, e in self.slots.items() if e.file is file)


@dataclass(eq=False)
class MM:
    """``struct mm_struct``: a process's address space, as far as the kernel keeps it.

    Changed by :mod:`kemu.kernel_daemon.mm` only.
    """

    #: the mappings (``mm->mmap``) by id; a fork child's copies keep the parent's ids
    vmas: dict[int, Mapping] = field(default_factory=dict)
    #: where the next mapping goes (``mmap_base`` growing up, with a guard page)
    mmap_next: int = 0x7F0000000000
    #: the last mapping id handed out
    next_vid: int = 0


@dataclass(eq=False)
class SigHand:
    """``struct sighand_struct`` and the shared pending set of a process.

    ``action`` is the disposition the agent really installed (``default``, ``ignore``,
    ``handler``), recorded by ``rt_sigaction``; ``pending`` is, per signal, the siginfo
    queued for delivery (one for a standard signal, up to RLIMIT_SIGPENDING for a
    real-time one).  Changed by :mod:`kemu.kernel_daemon.signals` only.
    """

    action: dict[int, str] = field(default_factory=dict)
    pending: dict[int, deque[Siginfo]] = field(default_factory=dict)


@dataclass(eq=False)
class Task:
    """A registered process, keyed by its real PID.

    Created at registration (spawn, fork child, exec'd image); removed when its pidfd
    says it died.  How its messages are authenticated is the daemon's business (a peer
    record there), not the kernel's.  Fields other than ``fds`` are changed by the
    daemon loop only.
    """

    pid: int
    ppid: int
    name: str
    #: ``task->cred``: the process's real credentials, read from the host at
    #: registration and after each setuid/setgid/setgroups (:mod:`kemu.kernel_daemon.cred`)
    cred: Cred = ROOT
    fds: FdTable = field(default_factory=FdTable)
    #: pidfd held in the daemon's poller, so death is seen at once
    pidfd: int = -1
    #: request id -> cancel callback of each parked (waiting) call
    parked: dict[int, Callable[[], None]] = field(default_factory=dict)
    #: how many times this PID has exec'd since registration
    execs: int = 0
    #: the address space (``task->mm``)
    mm: MM = field(default_factory=MM)
    #: signal dispositions and pending signals (``task->sighand``, ``->signal``)
    sighand: SigHand = field(default_factory=SigHand)
    #: ``current->fs->umask``
    umask: int = 0o022
    #: the token the next image must register with, between exec_prepare and exec
    exec_token: bytes | None = None
    #: the program file the process runs since it exec'd one (``mm->exe_file``), denied
    #: writers while it runs (``deny_write_access``); None: the agent's own image
    exe: Inode | None = None
    #: names of the datagram sockets the process bound (released at exit)
    bound: list[str] = field(default_factory=list)
    #: ``signal->rlim[RLIMIT_SIGPENDING]``: (soft, hard), the process's real limit, read
    #: at registration and after setrlimit (the descriptor limit is ``fds.limit``)
    rlim_sigpending: tuple[int, int] = (linux.RLIMIT_SIGPENDING_DEFAULT,
                                        linux.RLIMIT_SIGPENDING_DEFAULT)
    #: ``exit_state``: None while it runs, "zombie" once it exited and its registered
    #: parent has not reaped it (``Kernel.zombies``), "dead" once nothing is left
    exit_state: str | None = None

    @property
    def uid(self) -> int:
        """The effective uid (what SO_PEERCRED reports, ``current_euid()``)."""
        return self.cred.euid

    @property
    def gid(self) -> int:
        """The effective gid (``current_egid()``)."""
        return self.cred.egid
