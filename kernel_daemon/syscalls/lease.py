"""fcntl's lease, owner and signal commands, and the signal system calls.

``F_SETLEASE``/``F_GETLEASE`` follow fs/locks.c (``fcntl_setlease``, ``generic_setlease``,
``fcntl_getlease``); ``F_SETOWN``/``F_GETOWN``/``F_SETOWN_EX``/``F_GETOWN_EX``/
``F_SETSIG``/``F_GETSIG`` follow fs/fcntl.c.  ``rt_sigaction`` records the disposition
the agent really installed, so the daemon drops signals a process ignores as the kernel
does.
"""

from __future__ import annotations

import errno
from typing import Any

from kemu.kernel_daemon import locks, signals
from kemu.kernel_daemon.errors import KernelError
from kemu.kernel_daemon.kernel import Kernel
from kemu.kernel_daemon.syscalls.fd import FCNTL_COMMANDS
from kemu.kernel_daemon.syscalls.table import syscall
from kemu.kernel_daemon.task import Task
from kemu.protocol import linux

INT_MIN = -(1 << 31)


def _int(arg: Any) -> int:
    if arg is None:
        return 0
    if not isinstance(arg, int) or isinstance(arg, bool):
        raise KernelError(errno.EINVAL)
    return arg


def f_setlease(k: Kernel, t: Task, fd: int, arg: Any) -> int:
    """F_SETLEASE.  Linux: fs/locks.c fcntl_setlease()."""
    file = k.file_of(t, fd)
    lease_type = _int(arg)
    if k.policy.setlease(k, t, file, fd, lease_type):
        return 0  # the design handled it (layout leases)
    if lease_type == linux.F_UNLCK:
        locks.may_lease(t, file)
        locks.generic_delete_lease(k, file)
        return 0
    if lease_type not in (linux.F_RDLCK, linux.F_WRLCK):
        raise KernelError(errno.EINVAL)
    locks.may_lease(t, file)
    locks.generic_add_lease(k, t, file, fd, lease_type)
    return 0


def f_getlease(k: Kernel, t: Task, fd: int, arg: Any) -> int:
    """F_GETLEASE.  Linux: fs/locks.c fcntl_getlease()."""
    return locks.fcntl_getlease(k, k.file_of(t, fd))


def f_setown(k: Kernel, t: Task, fd: int, arg: Any) -> int:
    """F_SETOWN: a PID, or minus a process group.  Linux: fs/fcntl.c f_setown()."""
    file = k.file_of(t, fd)
    who = _int(arg)
    if who == INT_MIN:
        raise KernelError(errno.EINVAL)
    if who < 0:
        signals.f_setown(k, file, linux.F_OWNER_PGRP, -who, force=True, setter=t.cred)
    else:
        signals.f_setown(k, file, linux.F_OWNER_PID, who, force=True, setter=t.cred)
    return 0


def f_getown(k: Kernel, t: Task, fd: int, arg: Any) -> int:
    """F_GETOWN: the PID, minus the group, or 0."""
    owner = signals.owner_of(k.file_of(t, fd))
    if owner is None or not signals.owner_exists(k, owner):
        return 0  # no owner, or pid_task() finds nobody any more (reaped)
    return -owner.pid if owner.kind == linux.F_OWNER_PGRP else owner.pid


def f_setown_ex(k: Kernel, t: Task, fd: int, arg: Any) -> int:
    """F_SETOWN_EX with ``{"type": F_OWNER_*, "pid": n}``.  Linux: f_setown_ex()."""
    file = k.file_of(t, fd)
    if not isinstance(arg, dict):
        raise KernelError(errno.EFAULT)
    kind, pid = arg.get("type"), arg.get("pid")
    if kind not in (linux.F_OWNER_TID, linux.F_OWNER_PID, linux.F_OWNER_PGRP):
        raise KernelError(errno.EINVAL)
    if not isinstance(pid, int) or isinstance(pid, bool):
        raise KernelError(errno.EINVAL)
    if pid == 0:
        file.f_owner = signals.FOwner(kind, 0, None, t.cred.uid, t.cred.euid)
        return 0
    signals.f_setown(k, file, kind, pid, force=True, setter=t.cred)
    return 0


def f_getown_ex(k: Kernel, t: Task, fd: int, arg: Any) -> dict[str, int]:
    """F_GETOWN_EX: ``{"type", "pid"}``; a file never given an owner reads {0, 0}."""
    owner = signals.owner_of(k.file_of(t, fd))
    if owner is None:
        return {"type": 0, "pid": 0}
    return {"type": owner.kind, "pid": owner.pid if signals.owner_exists(k, owner) else 0}


def f_setsig(k: Kernel, t: Task, fd: int, arg: Any) -> int:
    """F_SETSIG: the signal sent instead of SIGIO, with siginfo (0: plain SIGIO)."""
    file = k.file_of(t, fd)
    sig = _int(arg)
    if not 0 <= sig < linux.NSIG:
        raise KernelError(errno.EINVAL)
    file.f_signum = sig
    return 0


def f_getsig(k: Kernel, t: Task, fd: int, arg: Any) -> int:
    """F_GETSIG."""
    return signals.signum_of(k.file_of(t, fd))


FCNTL_COMMANDS.update({
    linux.F_SETLEASE: f_setlease,
    linux.F_GETLEASE: f_getlease,
    linux.F_SETOWN: f_setown,
    linux.F_GETOWN: f_getown,
    linux.F_SETOWN_EX: f_setown_ex,
    linux.F_GETOWN_EX: f_getown_ex,
    linux.F_SETSIG: f_setsig,
    linux.F_GETSIG: f_getsig,
})


@syscall("rt_sigaction", linux="kernel/signal.c do_sigaction()", support="partial",
         note="records the disposition (default, ignore, handler) the agent installed for real")
def sys_rt_sigaction(k: Kernel, t: Task, signo: int, action: str) -> str:
    """Record the disposition of ``signo``; returns the previous one."""
    return signals.set_action(t, signo, action)


@syscall("proc_locks", linux="fs/locks.c locks_show()", support="partial",
         note="the lease lines of /proc/locks, with the blocked breakers")
def sys_proc_locks(k: Kernel, t: Task) -> list[dict[str, Any]]:
    """/proc/locks as maps (id, state, type, pid, inode, path) and as text lines."""
    return locks.proc_locks(k)


@syscall("sigdelivered", linux="kernel/signal.c dequeue_signal()", support="emulator",
         note="the agent took a signal: its pending state ends (ours: one the daemon sent)")
def sys_sigdelivered(k: Kernel, t: Task, signo: int, ours: int = 1) -> int:
    """Dequeue ``signo``: answered, so the agent knows the kernel saw it before it goes
    on (an asynchronous note could be overtaken by another process's call)."""
    signals.signal_delivered(k, t, {"signo": signo, "ours": bool(ours)})
    return 0
