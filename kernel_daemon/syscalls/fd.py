"""Descriptor calls: dup, dup2, dup3 and fcntl's descriptor and flag commands.

What a duplicate shares (the open file description: offset, status flags) and what it
does not (the close-on-exec flag, which belongs to the descriptor) follows
fs/file.c and fs/fcntl.c.  Lease and owner commands of fcntl are added by other modules
through :data:`FCNTL_COMMANDS`.
"""

from __future__ import annotations

import errno
from collections.abc import Callable
from typing import Any

from kemu.kernel_daemon.errors import KernelError
from kemu.kernel_daemon.kernel import Kernel
from kemu.kernel_daemon.syscalls.table import syscall
from kemu.kernel_daemon.task import SETFL_MASK, Task
from kemu.protocol import linux

FcntlHandler = Callable[[Kernel, Task, int, Any], Any]
#: fcntl commands by number; families register theirs here
FCNTL_COMMANDS: dict[int, FcntlHandler] = {}


def _dup_to(k: Kernel, t: Task, fd: int, newfd: int, cloexec: bool) -> int:
    """Make ``newfd`` name ``fd``'s file, closing what ``newfd`` named (``do_dup2``)."""
    file = k.file_of(t, fd)
    if newfd < 0 or newfd >= t.fds.limit:
        raise KernelError(errno.EBADF)
    old = t.fds.install(newfd, k.fget(file), cloexec)
    if old is not None:
        k.fput(old.file)
    return newfd


@syscall("dup", linux="fs/file.c ksys_dup()")
def sys_dup(k: Kernel, t: Task, fd: int) -> int:
    """dup(2): lowest free number, same description, close-on-exec clear."""
    file = k.file_of(t, fd)
    return k.fd_install(t, k.fget(file), False)


@syscall("dup2", linux="fs/file.c ksys_dup3()")
def sys_dup2(k: Kernel, t: Task, fd: int, newfd: int) -> int:
    """dup2(2): ``dup2(fd, fd)`` checks ``fd`` and returns it."""
    if fd == newfd:
        k.file_of(t, fd)
        return fd
    return _dup_to(k, t, fd, newfd, False)


@syscall("dup3", linux="fs/file.c ksys_dup3()")
def sys_dup3(k: Kernel, t: Task, fd: int, newfd: int, flags: int) -> int:
    """dup3(2): only O_CLOEXEC is accepted; ``fd == newfd`` is ``EINVAL``."""
    if flags & ~linux.O_CLOEXEC:
        raise KernelError(errno.EINVAL)
    if fd == newfd:
        raise KernelError(errno.EINVAL)
    return _dup_to(k, t, fd, newfd, bool(flags & linux.O_CLOEXEC))


def _dupfd(cloexec: bool) -> FcntlHandler:
    def handler(k: Kernel, t: Task, fd: int, arg: Any) -> int:
        file = k.file_of(t, fd)
        start = _int_arg(arg)
        if start < 0 or start >= t.fds.limit:
            raise KernelError(errno.EINVAL)
        return k.fd_install(t, k.fget(file), cloexec, start)

    return handler


def _int_arg(arg: Any) -> int:
    if arg is None:
        return 0
    if not isinstance(arg, int):
        raise KernelError(errno.EINVAL)
    return arg


def _getfd(k: Kernel, t: Task, fd: int, arg: Any) -> int:
    return linux.FD_CLOEXEC if t.fds.get(fd).cloexec else 0


def _setfd(k: Kernel, t: Task, fd: int, arg: Any) -> int:
    t.fds.get(fd).cloexec = bool(_int_arg(arg) & linux.FD_CLOEXEC)
    return 0


def _getfl(k: Kernel, t: Task, fd: int, arg: Any) -> int:
    return k.file_of(t, fd).flags


def _setfl(k: Kernel, t: Task, fd: int, arg: Any) -> int:
    """F_SETFL: only SETFL_MASK flags change; O_PATH files refuse (EBADF)."""
    file = k.file_of(t, fd)
    if file.flags & linux.O_PATH:
        raise KernelError(errno.EBADF)
    value = _int_arg(arg) & 0xFFFFFFFF
    file.flags = (file.flags & ~SETFL_MASK) | (value & SETFL_MASK)
    return 0


FCNTL_COMMANDS.update({
    linux.F_DUPFD: _dupfd(False),
    linux.F_DUPFD_CLOEXEC: _dupfd(True),
    linux.F_GETFD: _getfd,
    linux.F_SETFD: _setfd,
    linux.F_GETFL: _getfl,
    linux.F_SETFL: _setfl,
})

#: commands that work on an O_PATH descriptor (fs/fcntl.c check_fcntl_cmd)
O_PATH_COMMANDS = {linux.F_DUPFD, linux.F_DUPFD_CLOEXEC, linux.F_GETFD, linux.F_SETFD,
                   linux.F_GETFL}


@syscall("fcntl", linux="fs/fcntl.c do_fcntl()", support="partial",
         note="descriptor, flag, owner, signal and lease commands; no record locks (EINVAL)")
def sys_fcntl(k: Kernel, t: Task, fd: int, cmd: int, arg: int | dict[str, Any] | None = None) -> Any:
    """fcntl(2): ``arg`` is an int, or a map for the struct commands (F_SETOWN_EX)."""
    file = k.file_of(t, fd)
    if file.flags & linux.O_PATH and cmd not in O_PATH_COMMANDS:
        raise KernelError(errno.EBADF)
    handler = FCNTL_COMMANDS.get(cmd)
    if handler is None:
        raise KernelError(errno.EINVAL, f"fcntl command {cmd}")
    return handler(k, t, fd, arg)
