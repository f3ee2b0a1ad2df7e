"""File leases, as Linux's fs/locks.c has them.

A lease (``struct file_lease``) belongs to an open file description.  Each inode keeps
its leases in insertion order.  Breaking follows ``__break_lease``: conflicting leases
are marked pending (``FL_UNLOCK_PENDING`` for a writer, ``FL_DOWNGRADE_PENDING`` for a
reader), their owner is signalled once, and the breaker sleeps on the first lease until
it is released or its break time passes, then looks again.  Expiry is lazy, as in the
kernel: ``time_out_leases`` runs when someone breaks, takes or asks about a lease, or when
a sleeping breaker's time is up.  A ``lease_break_time`` of 0 means a broken lease never
expires.  Releasing a lease (``F_UNLCK``, expiry, last close) clears the file's owner, its
``F_SETSIG`` signal and ``O_ASYNC``, as ``lease_modify`` does.
"""

from __future__ import annotations

import errno
import itertools
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from kemu.kernel_daemon import cred, signals
from kemu.kernel_daemon.errors import KernelError
from kemu.kernel_daemon.sync import WaitQueue
from kemu.kernel_daemon.task import File, Task
from kemu.kernel_daemon.vfs import Inode
from kemu.protocol import linux

if TYPE_CHECKING:
    from kemu.kernel_daemon.kernel import Kernel

FL_UNLOCK_PENDING = 0x1
FL_DOWNGRADE_PENDING = 0x2
FL_LAYOUT = 0x4

_order = itertools.count(1)


@dataclass(eq=False)
class Breaker:
    """A process sleeping in ``__break_lease`` on a lease (a blocked ``new_fl``)."""

    task: Task
    want_write: bool


@dataclass(eq=False)
class Lease:
    """``struct file_lease``, with its ``lease_manager_operations`` as methods.

    An ordinary lease (``F_SETLEASE`` with ``F_RDLCK``/``F_WRLCK``) uses these
    operations as they are; layout leases (:class:`kemu.kernel_daemon.layout.LayoutLease`)
    and the leases designs define subclass it and override ``lm_break`` (how the holder
    is told) and ``lm_expire`` (what the kernel does when the break time passes).
    Fields are changed only through this module and :mod:`kemu.kernel_daemon.layout`.
    """

    file: File
    #: flc_type: F_RDLCK or F_WRLCK (stays F_WRLCK while a downgrade is pending)
    type: int
    #: flc_pid: the process that took the lease (shown in /proc/locks)
    pid: int
    flags: int = 0
    #: when a pending unlock is forced (monotonic seconds); 0: never
    break_time: float = 0.0
    #: when a pending downgrade is forced; 0: never
    downgrade_time: float = 0.0
    #: the fasync entry's descriptor: si_fd of the break signal (last F_SETLEASE's fd)
    fa_fd: int | None = None
    #: breakers sleeping on this lease (``flc_blocked_requests``)
    blocked: WaitQueue[Breaker] = field(default_factory=WaitQueue)
    #: a broken lease that is never forced at a deadline (an exclusive layout lease)
    no_timeout: bool = False
    #: global order, for /proc/locks
    order: int = field(default_factory=lambda: next(_order))

    def lm_break(self, k: Kernel) -> None:
        """``lm_break`` / ``lease_break_callback``: tell the holder the lease is being
        broken.  Linux: ``kill_fasync(&fl->fl_fasync, SIGIO, POLL_MSG)``."""
        if self.fa_fd is not None:
            signals.send_sigio(k, self.file, self.fa_fd, linux.POLL_MSG)

    def lm_expire(self, k: Kernel) -> None:
        """The break time passed (``time_out_leases``), just before the lease is removed:
        what the kernel does to the holder (nothing for an ordinary lease; a design may
        revoke a memory region or invalidate mappings)."""


def leases_of(inode: Inode) -> list[Lease]:
    """The inode's lease list (``ctx->flc_lease``)."""
    return inode.flc


def lease_breaking(lease: Lease) -> bool:
    """True while an unlock or a downgrade is pending."""
    return bool(lease.flags & (FL_UNLOCK_PENDING | FL_DOWNGRADE_PENDING))


def target_leasetype(lease: Lease) -> int:
    """What the lease is becoming: F_UNLCK, F_RDLCK, or its own type (F_GETLEASE)."""
    if lease.flags & FL_UNLOCK_PENDING:
        return linux.F_UNLCK
    if lease.flags & FL_DOWNGRADE_PENDING:
        return linux.F_RDLCK
    return lease.type


def _past(k: Kernel, then: float) -> bool:
    return bool(then) and k.clock() >= then


def time_out_leases(k: Kernel, inode: Inode) -> None:
    """Force pending downgrades and unlocks whose time has come (lazily, as Linux)."""
    for lease in list(leases_of(inode)):
        if _past(k, lease.downgrade_time):
            lease_modify(k, lease, linux.F_RDLCK, "downgraded at the deadline")
        if lease in leases_of(inode) and _past(k, lease.break_time):
            lease.lm_expire(k)  # a design's fence: revoke regions, invalidate mappings
            if lease in leases_of(inode):
                lease_modify(k, lease, linux.F_UNLCK, "removed at the deadline")


def lease_modify(k: Kernel, lease: Lease, arg: int, why: str = "") -> None:
    """``lease_modify``: change the type; F_UNLCK removes the lease and clears the
    file's owner, signal and O_ASYNC.  Breakers sleeping on it wake up."""
    # lease_clear_pending(): only the flags; the break times stay, and time_out_leases
    # honours a stale one later (a re-taken write lease is still downgraded on time)
    if arg == linux.F_UNLCK:
        lease.flags &= ~FL_UNLOCK_PENDING
    if arg in (linux.F_UNLCK, linux.F_RDLCK):
        lease.flags &= ~FL_DOWNGRADE_PENDING
    lease.blocked.wake_all()
    inode = lease.file.inode
    if arg == linux.F_UNLCK:
        file = lease.file
        signals.f_delown(file)
        file.f_signum = 0
        file.flags &= ~linux.O_ASYNC
        lease.fa_fd = None
        lst = leases_of(inode)
        if lease in lst:
            lst.remove(lease)
        k.log.emit("lease-removed", ino=inode.ino, file=file.fid, why=why or "F_UNLCK")
        k.policy.lease_removed(k, lease)
    else:
        lease.type = arg
        k.log.emit("lease-changed", ino=inode.ino, file=lease.file.fid,
                   type=_TYPE_NAME.get(arg, arg), why=why)


_TYPE_NAME = {linux.F_RDLCK: "READ", linux.F_WRLCK: "WRITE", linux.F_UNLCK: "UNLCK"}


def leases_conflict(lease: Lease, want_write: bool, layout: bool = False) -> bool:
    """``leases_conflict``: layout and ordinary leases never conflict; else a writer on
    either side conflicts."""
    if bool(lease.flags & FL_LAYOUT) != layout:
        return False
    return want_write or lease.type == linux.F_WRLCK


def break_lease(k: Kernel, task: Task, inode: Inode, mode: int, layout: bool = False) -> None:
    """``__break_lease``: start breaking conflicting leases, then sleep or fail.

    Raises ``EWOULDBLOCK`` for an ``O_NONBLOCK`` breaker (the break goes on), or
    :class:`MustWait` to sleep until the first lease goes or its break time passes;
    the call then runs again from the start and looks again.
    """
    lst = leases_of(inode)
    if not lst:
        return
    want_write = (mode & linux.O_ACCMODE) != linux.O_RDONLY
    time_out_leases(k, inode)
    if not any(leases_conflict(le, want_write, layout) for le in lst):
        return
    lbt = k.config.lease_break_time
    when = k.clock() + lbt if lbt > 0 else 0.0
    for lease in list(lst):
        if not leases_conflict(lease, want_write, layout):
            continue
        if want_write:
            if lease.flags & FL_UNLOCK_PENDING:
                continue
            lease.flags |= FL_UNLOCK_PENDING
            lease.break_time = when
        else:
            if lease_breaking(lease):
                continue
            lease.flags |= FL_DOWNGRADE_PENDING
            lease.downgrade_time = when
        k.log.emit("lease-break", ino=inode.ino, file=lease.file.fid, by=task.pid,
                   to=_TYPE_NAME[target_leasetype(lease)], lbt=lbt if when else 0.0)
        lease.lm_break(k)
        # A breaker already asleep on the lease with no fl_break_time polls (one jiffy
        # at a time); its next look finds the new deadline and sleeps until that one
        # (an escalation holds a reader until the lease is resolved for the writer)
        lease.blocked.wake_all()
    # Linux sleeps on the first lease of the list and, if that one is not being broken
    # (a layout lease, which never conflicts here), wakes every jiffy to look again; the
    # breaker sleeps on the first conflicting lease instead, woken when it changes
    first = next((le for le in lst if leases_conflict(le, want_write, layout)), None)
    if first is None:
        return
    if mode & linux.O_NONBLOCK:
        raise KernelError(errno.EWOULDBLOCK)
    sleep_on_lease(k, task, inode, first, want_write)


def sleep_on_lease(k: Kernel, task: Task, inode: Inode, first: Lease, want_write: bool) -> None:
    """The breaker sleeps on ``first`` (``locks_insert_block``) until it is woken or
    its timeout passes; then the call looks again.  Never returns.

    The timeout is ``__break_lease``'s: ``fl_break_time`` of the lease slept on, and
    only that (a pending downgrade's time does not shorten it: a reader whose break a
    writer escalated sleeps until the unlock is forced).  With no ``fl_break_time``
    Linux sleeps one jiffy and looks again (``time_out_leases`` each time), for as long
    as it takes; that is the same as sleeping until the first deadline of any lease of
    the inode, or until woken when there is none (``lease_break_time`` 0), and
    :func:`break_lease` wakes such sleepers when it sets a new deadline.
    """
    now = k.clock()
    delay: float | None
    if first.break_time:
        delay = max(first.break_time - now, 0.0)
    else:
        future = [d for le in leases_of(inode) for d in (le.break_time, le.downgrade_time)
                  if d > now]
        delay = min(future) - now if future else None
    first.blocked.sleep(Breaker(task, want_write),
                        timeout=(k, delay) if delay is not None else None,
                        on_timeout=lambda: time_out_leases(k, inode))


def may_lease(task: Task, file: File) -> None:
    """``generic_setlease``'s checks: owner or CAP_LEASE (EACCES), regular file (EINVAL)."""
    if task.cred.fsuid != file.inode.uid and not cred.capable(task.cred, linux.CAP_LEASE):
        raise KernelError(errno.EACCES)
    if not file.inode.is_reg:
        raise KernelError(errno.EINVAL)


def check_conflicting_open(lease_file: File, arg: int) -> None:
    """``check_conflicting_open``: a read lease needs no writer anywhere; a write
    lease needs no open of the inode but this description."""
    inode = lease_file.inode
    if arg == linux.F_RDLCK:
        if inode.writecount > 0:
            raise KernelError(errno.EAGAIN)
        return
    self_w = 1 if lease_file.writable else 0
    self_r = 1 if lease_file.readable and not lease_file.writable else 0
    if inode.writecount != self_w or inode.readcount != self_r:
        raise KernelError(errno.EAGAIN)


def generic_add_lease(k: Kernel, task: Task, file: File, fd: int, arg: int) -> None:
    """``generic_add_lease`` and ``lease_setup``: take or change the file's lease."""
    inode = file.inode
    time_out_leases(k, inode)
    check_conflicting_open(file, arg)
    mine = None
    for lease in leases_of(inode):
        if lease.file is file:
            mine = lease
            continue
        if arg == linux.F_WRLCK:
            raise KernelError(errno.EAGAIN)
        if lease.flags & FL_UNLOCK_PENDING:
            raise KernelError(errno.EAGAIN)
    if mine is not None:
        lease_modify(k, mine, arg, "F_SETLEASE")
        lease = mine
    else:
        lease = Lease(file=file, type=arg, pid=task.pid)
        leases_of(inode).append(lease)
        k.log.emit("lease-added", ino=inode.ino, file=file.fid, pid=task.pid,
                   type=_TYPE_NAME[arg], fd=fd)
    # lease_setup: the fasync entry records this fd (si_fd); the caller becomes the
    # owner unless the file has one already
    lease.fa_fd = fd
    file.flags |= linux.O_ASYNC
    signals.f_setown(k, file, linux.F_OWNER_PID, task.pid, force=False, setter=task.cred)


def generic_delete_lease(k: Kernel, file: File) -> None:
    """``generic_delete_lease``: F_UNLCK of the file's lease; ``EAGAIN`` if none."""
    for lease in leases_of(file.inode):
        if lease.file is file:
            lease_modify(k, lease, linux.F_UNLCK, "F_UNLCK")
            return
    raise KernelError(errno.EAGAIN)


def fcntl_getlease(k: Kernel, file: File) -> int:
    """``fcntl_getlease``: the type the file's lease is becoming, or F_UNLCK."""
    inode = file.inode
    if leases_of(inode):
        time_out_leases(k, inode)
        for lease in leases_of(inode):
            if lease.file is file:
                if lease.flags & FL_LAYOUT:  # either level reads F_LAYOUT (RFC v2)
                    return linux.F_UNLCK if lease.flags & FL_UNLOCK_PENDING else linux.F_LAYOUT
                return target_leasetype(lease)
    return linux.F_UNLCK


def remove_file_leases(k: Kernel, file: File) -> None:
    """``locks_remove_file``: the description's last reference went; so does its lease."""
    for lease in list(leases_of(file.inode)):
        if lease.file is file:
            lease_modify(k, lease, linux.F_UNLCK, "last close")


def breakers_conflict(a: Breaker, b: Breaker) -> bool:
    """``leases_conflict`` of two breakers' requests (``locks_conflict``): a writer
    on either side."""
    return a.want_write or b.want_write


def blocked_tree(lease: Lease) -> list[tuple[Breaker, int]]:
    """The breakers of ``lease`` as ``/proc/locks`` walks them, with their depth.

    ``__locks_insert_block`` puts a new waiter beneath the first waiter it conflicts
    with (and so on down), not beside it: two writers make a chain, a writer behind a
    reader sits under the reader.  The tree is rebuilt here by inserting the sleepers in
    the order they (last) went to sleep; ``locks_show`` prints it depth first, a
    waiter's own waiters before its next sibling."""
    roots: list[tuple[Breaker, list[Any]]] = []
    for b in lease.blocked:
        level = roots
        while True:
            under = next((node for node in level if breakers_conflict(node[0], b)), None)
            if under is None:
                break
            level = under[1]
        level.append((b, []))
    out: list[tuple[Breaker, int]] = []

    def walk(level: list[tuple[Breaker, list[Any]]], depth: int) -> None:
        for b, children in level:
            out.append((b, depth))
            walk(children, depth + 1)

    walk(roots, 1)
    return out


def file_locks(k: Kernel, file: File) -> list[dict[str, Any]]:
    """The ``lock:`` lines of ``/proc/<pid>/fdinfo/<fd>`` for ``file``
    (fs/locks.c ``show_fd_locks``: the leases taken through this description)."""
    out = []
    for lease in leases_of(file.inode):
        if lease.file is file:
            out.append({"kind": "LEASE",
                        "state": "BREAKING" if lease_breaking(lease) else "ACTIVE",
                        "type": _TYPE_NAME[target_leasetype(lease)], "pid": lease.pid})
    return out


def proc_locks(k: Kernel) -> list[dict[str, Any]]:
    """``/proc/locks`` for leases: one entry per lease, then one per blocked breaker
    (``depth`` 1 waits on the lease, 2 behind a waiter, ...; 0 for the lease)."""
    all_leases = sorted((le for ino in k.fs.inodes.values() for le in ino.flc),
                        key=lambda le: le.order)
    out: list[dict[str, Any]] = []
    paths = k.fs.paths()  # one walk, not one per lease
    for n, lease in enumerate(all_leases, 1):
        state = "BREAKING" if lease_breaking(lease) else "ACTIVE"
        typ = _TYPE_NAME[target_leasetype(lease)]
        pid = lease.pid  # in the initial PID namespace the recorded PID, even if dead
        ino = lease.file.inode.ino
        dev = f"{k.fs.DEV >> 8:02x}:{k.fs.DEV & 0xFF:02x}"
        kind = "LEASE"
        out.append({"id": n, "waiter": False, "kind": kind, "state": state, "type": typ,
                    "pid": pid, "ino": ino, "depth": 0,
                    "path": paths.get(ino, f"{lease.file.path} (deleted)"),
                    "line": f"{n}: {kind}  {state:<9} {typ:<5} {pid} {dev}:{ino} 0 EOF"})
        for b, depth in blocked_tree(lease):
            btype = "WRITE" if b.want_write else "READ"
            arrow = " " * (depth - 1) + "-> "
            out.append({"id": n, "waiter": True, "kind": kind, "state": "BREAKER",
                        "type": btype, "pid": b.task.pid, "ino": None, "path": None,
                        "depth": depth,
                        "line": f"{n}: {arrow}{kind}  BREAKER   {btype:<5} {b.task.pid} "
                                "<none>:0 0 EOF"})
    return out
