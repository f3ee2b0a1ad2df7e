"""Passing descriptors between processes with SCM_RIGHTS semantics.

``sendfds`` puts references to the files behind the given descriptors in flight,
addressed to one process, and returns an unguessable token the sender hands to the
receiver over the peer channel; ``recvfds`` installs them at the receiver's lowest free
numbers.  As with a Unix socket's queue (net/core/scm.c, net/unix/af_unix.c), a file in
flight stays open even if the sender closes its descriptor or dies, and is released if
the receiver dies before taking it.
"""

from __future__ import annotations

import errno
import secrets

from kernel_daemon.errors import KernelError
from kernel_daemon.kernel import Inflight, Kernel
from kernel_daemon.syscalls.table import syscall
from kernel_daemon.task import Task
from protocol import linux

#: SCM_MAX_FD: the most descriptors one message may carry
SCM_MAX_FD = 253


@syscall("sendfds", linux="net/core/scm.c scm_fp_copy()", support="emulator",
         note="sendmsg(2) with SCM_RIGHTS to one process; returns the in-flight token")
def sys_sendfds(k: Kernel, t: Task, dest: int, fds: list[int]) -> bytes:
    """Put the files behind ``fds`` in flight to process ``dest``."""
    if not fds or len(fds) > SCM_MAX_FD:
        raise KernelError(errno.EINVAL)
    if dest not in k.tasks:
        raise KernelError(errno.ECONNREFUSED)
    files = [k.file_of(t, fd) for fd in fds]  # EBADF before any reference is taken
    token = secrets.token_bytes(16)
    k.inflight[token] = Inflight(token, t.pid, dest, [k.fget(f) for f in files])
    k.log.emit("pass", pid=t.pid, dest=dest, fds=fds, files=[f.fid for f in files])
    return token


@syscall("recvfds", linux="net/core/scm.c scm_detach_fds()", support="emulator",
         note="recvmsg(2) of an SCM_RIGHTS message; flags may hold O_CLOEXEC (MSG_CMSG_CLOEXEC)")
def sys_recvfds(k: Kernel, t: Task, token: bytes, flags: int = 0) -> list[int]:
    """Install the files of in-flight message ``token`` at the lowest free numbers."""
    flight = k.inflight.get(token)
    if flight is None or flight.dest != t.pid:
        raise KernelError(errno.EINVAL, "no such message for this process")
    if flags & ~linux.O_CLOEXEC:
        raise KernelError(errno.EINVAL)
    if len(t.fds) + len(flight.files) > t.fds.limit:
        raise KernelError(errno.EMFILE)
    del k.inflight[token]
    fds = [k.fd_install(t, f, bool(flags & linux.O_CLOEXEC)) for f in flight.files]
    k.log.emit("receive", pid=t.pid, sender=flight.sender, fds=fds,
               files=[f.fid for f in flight.files])
    return fds


@syscall("dropfds", linux="net/unix/af_unix.c unix_release_sock()", support="emulator",
         note="discard an in-flight message addressed to the caller without installing it")
def sys_dropfds(k: Kernel, t: Task, token: bytes) -> int:
    """Release an in-flight message addressed to the caller (its socket was closed)."""
    flight = k.inflight.get(token)
    if flight is None or flight.dest != t.pid:
        raise KernelError(errno.EINVAL)
    del k.inflight[token]
    for f in flight.files:
        k.fput(f)
    return 0
