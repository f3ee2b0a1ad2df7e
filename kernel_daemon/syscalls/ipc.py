"""Messages between processes, and descriptors passed with SCM_RIGHTS semantics.

The emulator models each actor's mailbox as a datagram socket bound to a name in the
kernel (like an abstract ``AF_UNIX`` address): ``bind`` names the caller's socket,
``sendmsg`` queues a message (bytes plus the files behind some descriptors) on the
named socket's receive queue before it returns, and ``recvmsg`` takes the oldest one,
installing its files at the receiver's lowest free numbers, or sleeps until one comes.
As with a Unix socket (net/unix/af_unix.c, net/core/scm.c), a file in flight stays open
even if the sender closes its descriptor or dies, and is released if the receiver dies
before taking it.  The queue lives in the kernel, so a message sent is never lost when
its sender is killed the next instant, which a brokerless ZeroMQ PUSH cannot promise.
"""

from __future__ import annotations

import errno
from typing import Any

from kemu.kernel_daemon import af_unix
from kemu.kernel_daemon.af_unix import Mailbox
from kemu.kernel_daemon.errors import KernelError
from kemu.kernel_daemon.kernel import Inflight, Kernel
from kemu.kernel_daemon.syscalls.table import syscall
from kemu.kernel_daemon.task import File, Task
from kemu.protocol import linux

#: messages a receive queue holds before senders get EAGAIN (net.unix.max_dgram_qlen
#: is 10: the queue is full once it holds more than that)
MAX_QLEN = af_unix.MAX_DGRAM_QLEN + 1
#: the largest datagram: the send buffer less 32 bytes (``unix_dgram_sendmsg()``)
MAX_MESSAGE = af_unix.SNDBUF - 32


def _boxes(k: Kernel) -> dict[str, Mailbox]:
    return k.mailboxes


def release_task_mailboxes(k: Kernel, task: Task) -> None:
    """At exit: unbind the task's sockets and release the files still queued on them."""
    boxes = _boxes(k)
    for name in list(task.bound):
        box = boxes.pop(name, None)
        if box is None:
            continue
        while box.queue:
            msg = box.queue.popleft()
            af_unix.uncharge(k, msg)
            for f in msg.files:
                k.fput(f)
        box.wake()
    af_unix.forget(k, task.pid)


@syscall("bind", linux="net/unix/af_unix.c unix_bind()", support="emulator",
         note="bind the caller's datagram socket to a name; EADDRINUSE if another has it; "
              "EMFILE past RLIMIT_NOFILE names (each stands for a socket)")
def sys_bind(k: Kernel, t: Task, name: str) -> int:
    """Name the caller's mailbox; binding a name it already holds is a no-op (exec).

    Each name stands for a socket of its own, which on Linux is a descriptor: a
    process binds at most its ``RLIMIT_NOFILE`` names (``EMFILE``, as ``socket()``)."""
    if not name or len(name) > 107:
        raise KernelError(errno.EINVAL)
    boxes = _boxes(k)
    box = boxes.get(name)
    if box is not None:
        if box.owner == t.pid:
            return 0
        raise KernelError(errno.EADDRINUSE)
    if len(t.bound) >= t.fds.limit:
        raise KernelError(errno.EMFILE)
    boxes[name] = Mailbox(name, t.pid)
    t.bound.append(name)
    return 0


@syscall("sendmsg", linux="net/unix/af_unix.c unix_dgram_sendmsg()", support="emulator",
         note="queue data and SCM_RIGHTS descriptors on a named socket; EAGAIN when the "
              "receiver holds 11 (max_dgram_qlen 10) or the sender's 212992-byte send "
              "buffer is spent, where a blocking sender on Linux would sleep")
def sys_sendmsg(k: Kernel, t: Task, dest: str, data: bytes, fds: list[int]) -> int:
    """Queue ``data`` and the files behind ``fds`` on socket ``dest``; returns len(data).

    The limits are Linux's (``unix_dgram_sendmsg()``): a datagram larger than the send
    buffer less 32 bytes is ``EMSGSIZE``; a receive queue holding more than
    ``max_dgram_qlen`` (10) is full, and a sender whose queued datagrams fill its send
    buffer (``sock_alloc_send_pskb()``) may send no more until they are received:
    ``EAGAIN`` (as with ``MSG_DONTWAIT``; the emulator's sender never sleeps)."""
    if len(fds) > linux.SCM_MAX_FD or len(data) > MAX_MESSAGE:
        raise KernelError(errno.EINVAL if len(fds) > linux.SCM_MAX_FD else errno.EMSGSIZE)
    box = _boxes(k).get(dest)
    if box is None:
        raise KernelError(errno.ECONNREFUSED)
    files = [k.file_of(t, fd) for fd in fds]  # EBADF before any reference is taken
    if len(box.queue) >= MAX_QLEN or af_unix.wmem(k, t.pid) >= af_unix.SNDBUF:
        raise KernelError(errno.EAGAIN)
    msg = Inflight(t.pid, box.owner, [k.fget(f) for f in files], data)
    box.queue.append(msg)
    af_unix.charge(k, msg)
    if fds:
        k.log.emit("pass", pid=t.pid, dest=box.owner, fds=fds, files=[f.fid for f in files],
                   **_regions(files))
    box.wake()
    return len(data)


def _regions(files: list[File]) -> dict[str, str]:
    """For the event log: what the memory regions of the uverbs contexts among
    ``files`` hold (``pin=fsdax``, ``anon`` or ``odp``, the first that any has), as a
    context passed to another process takes its regions' pins with it."""
    kinds = {mr.pin for f in files if f.private_data is not None
             for mr in f.private_data.mrs.values()}
    return next(({"pin": kind} for kind in ("fsdax", "anon", "odp") if kind in kinds), {})


@syscall("recvmsg", linux="net/unix/af_unix.c unix_dgram_recvmsg()", support="emulator",
         note="take the oldest message; sleeps while none (MSG_DONTWAIT: EAGAIN); "
              "flags may hold O_CLOEXEC for MSG_CMSG_CLOEXEC")
def sys_recvmsg(k: Kernel, t: Task, name: str, flags: int = 0) -> dict[str, Any]:
    """Receive from the caller's socket ``name``: {sender, data, fds}."""
    box = _boxes(k).get(name)
    if box is None or box.owner != t.pid:
        raise KernelError(errno.ENOTCONN)
    if flags & ~(linux.MSG_DONTWAIT | linux.O_CLOEXEC):
        raise KernelError(errno.EINVAL)
    if not box.queue:
        if flags & linux.MSG_DONTWAIT:
            raise KernelError(errno.EAGAIN)
        box.readers.sleep()  # recvmsg runs again when a message comes
    msg = box.queue[0]
    if len(t.fds) + len(msg.files) > t.fds.limit:
        raise KernelError(errno.EMFILE)
    af_unix.uncharge(k, box.queue.popleft())
    fds = [k.fd_install(t, f, bool(flags & linux.O_CLOEXEC)) for f in msg.files]
    if fds:
        k.log.emit("receive", pid=t.pid, sender=msg.sender, fds=fds,
                   files=[f.fid for f in msg.files], **_regions(msg.files))
    return {"sender": msg.sender, "data": msg.data, "fds": fds}
