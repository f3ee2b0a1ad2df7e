"""Signals: the file owner (``F_SETOWN``), ``send_sigio`` and per-process pending queues.

Follows fs/fcntl.c (``f_setown``, ``send_sigio``, ``send_sigio_to_task``) and the parts of
kernel/signal.c that decide what a second signal does: a standard signal already pending
is dropped (``legacy_queue``), a real-time one queues.  Delivery is real: the daemon
queues the siginfo it would have written into the process (pushed to the agent as an
event) and then ``os.kill``s the process, so default dispositions stay real (no SIGIO
handler: the process dies of it).  The agent acknowledges each signal it takes
(``sigdelivered``), which ends its pending state, as delivery does in the kernel.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from kemu.kernel_daemon.cred import Cred
from kemu.kernel_daemon.errors import KernelError
from kemu.kernel_daemon.task import File, SigHand, Task
from kemu.protocol import linux

if TYPE_CHECKING:
    from kemu.kernel_daemon.kernel import Kernel

#: si_band for each POLL_* reason (fs/fcntl.c band_table, mangle_poll on x86-64)
BAND = {
    linux.POLL_IN: linux.POLLIN | linux.POLLRDNORM,
    linux.POLL_OUT: linux.POLLOUT | linux.POLLWRNORM | linux.POLLWRBAND,
    linux.POLL_MSG: linux.POLLIN | linux.POLLRDNORM | linux.POLLMSG,
    linux.POLL_ERR: linux.POLLERR,
    linux.POLL_PRI: linux.POLLPRI | linux.POLLRDBAND,
    linux.POLL_HUP: linux.POLLHUP | linux.POLLERR,
}
#: signals whose si_code values are signal-specific (kernel/signal.c sig_specific_sicodes)
SIG_SPECIFIC_SICODES = {linux.SIGILL, linux.SIGFPE, linux.SIGSEGV, linux.SIGBUS, linux.SIGTRAP,
                        linux.SIGCHLD, linux.SIGIO, linux.SIGSYS}

# dispositions as the agent reports them (rt_sigaction)
DEFAULT, IGNORE, HANDLER = "default", "ignore", "handler"
#: signals whose default action is to ignore them (kernel/signal.c SIG_KERNEL_IGNORE_MASK)
DEFAULT_IGNORED = {linux.SIGCHLD, linux.SIGURG, linux.SIGWINCH}


@dataclass(frozen=True)
class Siginfo:
    """The ``siginfo_t`` the kernel would write for one signal instance (the fields the
    emulated calls produce); pushed to the agent before the real signal is sent."""

    si_signo: int
    si_code: int
    si_band: int = 0
    si_fd: int = 0
    #: the faulting address of SIGBUS/SIGSEGV (None: not a fault)
    si_addr: int | None = None

    def asdict(self) -> dict[str, int]:
        """The siginfo as the wire and the event log carry it."""
        out = {"si_signo": self.si_signo, "si_code": self.si_code, "si_band": self.si_band,
               "si_fd": self.si_fd}
        if self.si_addr is not None:
            out["si_addr"] = self.si_addr
        return out


@dataclass(eq=False)
class FOwner:
    """``struct fown_struct``: who a file's signals go to.

    ``kind`` is F_OWNER_TID, F_OWNER_PID or F_OWNER_PGRP; ``task`` pins the identity
    of a process owner, so a later process reusing the PID is never signalled (the
    kernel holds a ``struct pid``, not a number).
    """

    kind: int
    pid: int
    task: Task | None
    #: credentials of the process that set the owner: ``fown->uid`` (real) and
    #: ``fown->euid`` (effective; None: the same as ``uid``)
    uid: int = 0
    euid: int | None = None
    #: a process owner that exists on the machine but not in the emulation: its start
    #: time (``/proc/<pid>/stat`` field 22), which pins its identity as the kernel's
    #: ``struct pid`` does; 0 for an emulated owner
    outside: int = 0


def owner_of(file: File) -> FOwner | None:
    """The file's owner, or None."""
    return file.f_owner


def signum_of(file: File) -> int:
    """The F_SETSIG signal of the file (0: plain SIGIO)."""
    return file.f_signum


def _pgid(pid: int) -> int:
    try:
        return os.getpgid(pid)
    except OSError:
        return -1


def f_setown(k: Kernel, file: File, kind: int, pid: int, force: bool,
             setter_uid: int = 0, setter: Cred | None = None) -> None:
    """``__f_setown``: set the owner (unless one is set and ``force`` is false).

    ``pid`` 0 clears the owner.  As ``find_vpid()`` the PID must name a process
    (ESRCH): a registered one, a zombie of one, or a process of the machine outside
    the emulation (PID 1, the launcher), which is accepted and named by F_GETOWN while
    it lives but is never signalled (:func:`send_sigio` logs ``signal-outside``).
    A group owner needs a registered process in the group or, outside, a process
    whose PID the number is.
    """
    current = owner_of(file)
    if not force and current is not None and current.pid != 0:
        return
    # f_modown(): the setter's real and effective uid (``setter``, else ``setter_uid``)
    ruid, euid = (setter.uid, setter.euid) if setter is not None else (setter_uid, setter_uid)
    if pid == 0:
        file.f_owner = FOwner(linux.F_OWNER_PID, 0, None)
        return
    if kind == linux.F_OWNER_PGRP:
        if not any(_pgid(t.pid) == pid for t in k.tasks.values()) and not _start_time(pid):
            raise KernelError(errno.ESRCH)
        file.f_owner = FOwner(kind, pid, None, ruid, euid)
        return
    task = k.tasks.get(pid) or k.zombies.get(pid)  # find_vpid() finds a zombie too
    if task is None:
        start = _start_time(pid)
        if not start:
            raise KernelError(errno.ESRCH)
        file.f_owner = FOwner(kind, pid, None, ruid, euid, outside=start)
        return
    file.f_owner = FOwner(kind, pid, task, ruid, euid)


def _start_time(pid: int) -> int:
    """The start time of machine process ``pid`` (clock ticks since boot), 0 if there
    is none.  Read from /proc, never by sending it anything."""
    if pid <= 0:
        return 0
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            stat = fh.read()
        return int(stat[stat.rindex(b")") + 2 :].split()[19])
    except (OSError, ValueError, IndexError):
        return 0


def f_delown(file: File) -> None:
    """``f_delown``: forget the owner (F_GETOWN_EX then reads F_OWNER_PID, 0)."""
    file.f_owner = FOwner(linux.F_OWNER_PID, 0, None)


def targets(k: Kernel, owner: FOwner) -> list[Task]:
    """The live processes an owner names (every registered member of a group)."""
    if owner.pid == 0:
        return []
    if owner.kind == linux.F_OWNER_PGRP:
        return [t for t in k.tasks.values() if _pgid(t.pid) == owner.pid]
    task = owner.task
    if task is not None and k.tasks.get(task.pid) is task:
        return [task]
    return []


def owner_exists(k: Kernel, owner: FOwner) -> bool:
    """``pid_task(f_owner.pid, type)`` is not NULL: the owner names a process that
    runs or is a zombie not reaped yet (F_GETOWN answers its PID until the reaping)."""
    if targets(k, owner):
        return True
    if owner.pid == 0:
        return False
    if owner.kind == linux.F_OWNER_PGRP:
        return any(_pgid(z.pid) == owner.pid for z in k.zombies.values()) or (
            _start_time(owner.pid) > 0 and _pgid(owner.pid) == owner.pid)
    if owner.outside:
        return _start_time(owner.pid) == owner.outside
    return owner.task is not None and k.zombies.get(owner.task.pid) is owner.task


def send_sigio(k: Kernel, file: File, fd: int, reason: int) -> None:
    """``send_sigio``: signal the file's owner about ``fd`` with POLL_* ``reason``."""
    owner = owner_of(file)
    if owner is None or owner.pid == 0:
        return
    signum = signum_of(file)
    if owner.outside and _start_time(owner.pid) == owner.outside:
        # a process outside the emulation: Linux would signal it; the emulator never
        # signals a process it does not run, and records that it did not
        k.log.emit("signal-outside", pid=owner.pid, signo=signum or linux.SIGIO, fd=fd)
        return
    for task in targets(k, owner):
        if sigio_perm(task, owner):
            send_sigio_to_task(k, task, signum, fd, reason)


def sigio_perm(task: Task, owner: FOwner) -> bool:
    """``sigio_perm``: the owner's setter had effective uid 0, or its effective or
    real uid is the target's real or saved uid."""
    euid = owner.uid if owner.euid is None else owner.euid
    mine = (task.cred.uid, task.cred.suid)
    return euid == 0 or euid in mine or owner.uid in mine


def send_sigio_to_task(k: Kernel, task: Task, signum: int, fd: int, reason: int) -> None:
    """``send_sigio_to_task``: a queued F_SETSIG signal with si_fd, else a bare SIGIO."""
    if signum:
        code = reason
        if signum != linux.SIGIO and signum in SIG_SPECIFIC_SICODES:
            code = linux.SI_SIGIO
        si = Siginfo(signum, code, BAND.get(reason, -1), fd)
        if send_signal(k, task, si):
            return
    # no F_SETSIG (or the real-time queue is full): plain SIGIO, SEND_SIG_PRIV
    send_signal(k, task, Siginfo(linux.SIGIO, linux.SI_KERNEL))


def _state(task: Task) -> tuple[dict[int, str], dict[int, deque[Siginfo]]]:
    return task.sighand.action, task.sighand.pending


def sigpending(k: Kernel, uid: int) -> int:
    """``ucounts[UCOUNT_RLIMIT_SIGPENDING]`` of real user ``uid``: the signals queued
    for every process of that user (those the daemon queued; standard signals count
    too, though they are always queued)."""
    return sum(len(q) for t in k.tasks.values() if t.cred.uid == uid
               for q in t.sighand.pending.values())


def send_signal(k: Kernel, task: Task, si: Siginfo) -> bool:
    """Queue ``si`` for ``task`` and send the real signal; False if it could not queue.

    An ignored signal is dropped; a standard signal already pending is merged into
    it; a real-time signal queues up to the limit.  Returns True in each of those
    cases but the last, as ``do_send_sig_info`` returns 0.
    """
    signo = si.si_signo
    actions, pending = _state(task)
    action = actions.get(signo, DEFAULT)
    if action == IGNORE or (action == DEFAULT and signo in DEFAULT_IGNORED):
        k.log.emit("signal-ignored", pid=task.pid, **si.asdict())
        return True
    queue = pending.setdefault(signo, deque())
    if signo < linux.KERNEL_SIGRTMIN:
        if queue:
            k.log.emit("signal-merged", pid=task.pid, **si.asdict())
            return True
    elif sigpending(k, task.cred.uid) + 1 > task.rlim_sigpending[0]:
        # __sigqueue_alloc(): the receiver's user has RLIMIT_SIGPENDING signals queued
        # (a real-time signal does not override the limit); the caller falls back
        k.log.emit("signal-overflow", pid=task.pid, **si.asdict())
        return False
    queue.append(si)
    k.log.emit("signal", pid=task.pid, **si.asdict())
    if task.pidfd >= 0:
        # through the pidfd the daemon holds: never a process that reused the PID, and
        # never a process that did not register (unit tests use made-up PIDs)
        with contextlib.suppress(ProcessLookupError, OSError):
            signal.pidfd_send_signal(task.pidfd, signo)
    # the siginfo follows the signal: the process's handler runs at once and its agent
    # waits for this event (a signal can overtake its event in any order anyway)
    k.io.event(task, {"event": "signal", "si": si.asdict()})
    return True


def signal_delivered(k: Kernel, task: Task, body: dict[str, Any]) -> None:
    """NOTIFY ``sigdelivered``: the agent took one instance of ``signo``."""
    signo = body.get("signo")
    if not isinstance(signo, int):
        return
    _, pending = _state(task)
    queue = pending.get(signo)
    if not queue:
        return
    if signo < linux.KERNEL_SIGRTMIN:
        queue.clear()  # one delivery ends a standard signal's pending state, whoever sent it
    elif body.get("ours", True):
        queue.popleft()


def set_action(task: Task, signo: int, action: str) -> str:
    """Record the disposition the agent installed; returns the previous one."""
    if not 1 <= signo < linux.NSIG or signo in (linux.SIGKILL, linux.SIGSTOP):
        raise KernelError(errno.EINVAL)
    if action not in (DEFAULT, IGNORE, HANDLER):
        raise KernelError(errno.EINVAL)
    actions, pending = _state(task)
    old = actions.get(signo, DEFAULT)
    actions[signo] = action
    if action == IGNORE or (action == DEFAULT and signo in DEFAULT_IGNORED):
        pending.pop(signo, None)  # setting SIG_IGN discards a pending signal
    return old


def on_exec(task: Task) -> None:
    """execve resets handled signals to their default; ignored ones stay ignored."""
    actions, _ = _state(task)
    for signo, action in list(actions.items()):
        if action == HANDLER:
            actions[signo] = DEFAULT


def on_fork(parent: Task | None, child: Task) -> None:
    """A fork child inherits dispositions, not pending signals."""
    child.sighand = SigHand(action=dict(parent.sighand.action) if parent is not None else {})
