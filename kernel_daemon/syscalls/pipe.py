"""Pipes, FIFOs and socket pairs: descriptors that are not regular files.

``pipe`` and ``mkfifo`` follow fs/pipe.c (``do_pipe2``, ``fifo_open``, ``pipe_read``,
``pipe_write``) and fs/namei.c (``do_mknodat``); ``socketpair`` follows
net/socket.c ``__sys_socketpair`` as far as the descriptors go (their data path is not
emulated).  None of them can hold a lease: ``generic_setlease`` refuses a file that is
not regular (EINVAL), after the owner check.  A write with no reader is EPIPE without
SIGPIPE: the agents run Python, which ignores SIGPIPE, as on the host.
"""

from __future__ import annotations

import errno
from dataclasses import dataclass, field

from kemu.kernel_daemon import cred as dac
from kemu.kernel_daemon.errors import KernelError
from kemu.kernel_daemon.kernel import Kernel
from kemu.kernel_daemon.sync import WaitQueue
from kemu.kernel_daemon.syscalls.table import syscall
from kemu.kernel_daemon.task import File, Task
from kemu.kernel_daemon.vfs import Inode
from kemu.protocol import linux

#: a pipe's capacity (16 pages, the default of fs/pipe.c)
PIPE_SIZE = 65536


@dataclass(eq=False)
class Pipe:
    """``struct pipe_inode_info``: the bytes in the pipe and who sleeps on them."""

    buf: bytearray = field(default_factory=bytearray)
    #: readers waiting for data or for the last writer to go (``rd_wait``)
    rd_wait: WaitQueue[None] = field(default_factory=WaitQueue)
    #: writers waiting for room, and opens of a FIFO waiting for the other end
    wr_wait: WaitQueue[None] = field(default_factory=WaitQueue)


def _pipe_of(inode: Inode) -> Pipe:
    if inode.i_pipe is None:
        inode.i_pipe = Pipe()
    return inode.i_pipe


def _install(k: Kernel, t: Task, files: list[File], cloexec: bool) -> list[int]:
    """Install ``files`` at the lowest free numbers, all or none (EMFILE)."""
    fds: list[int] = []
    try:
        for _ in files:
            fds.append(t.fds.reserve())
    except KernelError:
        for fd in fds:
            t.fds.unreserve(fd)
        for file in files:
            k.fput(file)
        raise
    for fd, file in zip(fds, files, strict=True):
        t.fds.install(fd, file, cloexec)
    return fds


def _flags(flags: int) -> tuple[int, bool]:
    if flags & ~(linux.O_CLOEXEC | linux.O_NONBLOCK | linux.O_DIRECT):
        raise KernelError(errno.EINVAL)
    return flags & (linux.O_NONBLOCK | linux.O_DIRECT), bool(flags & linux.O_CLOEXEC)


@syscall("pipe2", linux="fs/pipe.c do_pipe2()", support="partial",
         note="O_CLOEXEC, O_NONBLOCK; no packet mode (O_DIRECT is kept, not honoured)")
def sys_pipe2(k: Kernel, t: Task, flags: int = 0) -> list[int]:
    """pipe2(2): [read end, write end] on one new pipe inode."""
    status, cloexec = _flags(flags)
    inode = k.fs.anon_inode(linux.S_IFIFO | 0o600, t.cred.fsuid, t.cred.fsgid)
    _pipe_of(inode)
    ends = [k.open_file(inode, linux.O_RDONLY | status, "pipe:"),
            k.open_file(inode, linux.O_WRONLY | status, "pipe:")]
    return _install(k, t, ends, cloexec)


@syscall("socketpair", linux="net/socket.c __sys_socketpair()", support="partial",
         note="AF_UNIX SOCK_STREAM descriptors (fstat, fcntl, close, passing); no data path "
              "(read and write are EOPNOTSUPP)")
def sys_socketpair(k: Kernel, t: Task, flags: int = 0) -> list[int]:
    """socketpair(AF_UNIX, SOCK_STREAM | flags): two connected socket descriptors."""
    status, cloexec = _flags(flags)
    ends = [k.open_file(k.fs.anon_inode(linux.S_IFSOCK | 0o777, t.cred.fsuid, t.cred.fsgid),
                        linux.O_RDWR | status, "socket:") for _ in range(2)]
    return _install(k, t, ends, cloexec)


@syscall("mkfifo", linux="fs/namei.c do_mknodat() (S_IFIFO)")
def sys_mkfifo(k: Kernel, t: Task, path: str, mode: int) -> int:
    """mkfifo(3) (mknod S_IFIFO): EEXIST, then ``may_create``; the umask applies."""
    parent, name = k.fs.lookup_parent(path, t.cred)
    if name in ("", ".", "..") or path.endswith("/"):
        raise KernelError(errno.EEXIST if name else errno.ENOENT)
    assert parent.children is not None
    if name in parent.children:
        raise KernelError(errno.EEXIST)
    dac.may_create(t.cred, parent)
    inode = k.fs.create(parent, name, mode & ~t.umask & 0o7777, t.cred.fsuid, t.cred.fsgid,
                        kind=linux.S_IFIFO)
    k.log.emit("create", pid=t.pid, ino=inode.ino, path=path)
    return 0


def fifo_open(k: Kernel, file: File) -> None:
    """``fifo_open`` for a file just opened on a FIFO (it already counts as a reader
    or writer): O_WRONLY|O_NONBLOCK with no reader is ENXIO; a blocking open of one end
    sleeps until the other end is open; O_RDWR never waits.  Called again when woken."""
    inode = file.inode
    pipe = _pipe_of(inode)
    acc = file.flags & linux.O_ACCMODE
    if acc == linux.O_RDONLY:
        if not inode.writecount and not file.flags & linux.O_NONBLOCK:
            pipe.wr_wait.sleep()
    elif acc == linux.O_WRONLY and not inode.readcount:
        if file.flags & linux.O_NONBLOCK:
            raise KernelError(errno.ENXIO)
        pipe.wr_wait.sleep()
    pipe.wr_wait.wake_all()  # the other end's opens waiting for this one
    pipe.rd_wait.wake_all()


def pipe_read(k: Kernel, file: File, count: int) -> bytes:
    """``pipe_read``: what is there (at most ``count``); 0 bytes when no writer is left;
    EAGAIN with O_NONBLOCK, else sleep until data or the last writer goes."""
    if count < 0:
        raise KernelError(errno.EINVAL)
    if file.inode.is_sock:
        raise KernelError(errno.EOPNOTSUPP, "socket data")
    pipe = _pipe_of(file.inode)
    if count == 0:
        return b""
    if not pipe.buf:
        if not file.inode.writecount:
            return b""
        if file.flags & linux.O_NONBLOCK:
            raise KernelError(errno.EAGAIN)
        pipe.rd_wait.sleep()
    data = bytes(pipe.buf[:count])
    del pipe.buf[:count]
    pipe.wr_wait.wake_all()
    return data


def pipe_write(k: Kernel, file: File, data: bytes) -> int:
    """``pipe_write``: EPIPE with no reader (SIGPIPE is ignored by the agents); what
    fits, EAGAIN with O_NONBLOCK when nothing does; a blocking write sleeps until all of
    it fits (a write larger than the pipe writes what fits)."""
    if file.inode.is_sock:
        raise KernelError(errno.EOPNOTSUPP, "socket data")
    pipe = _pipe_of(file.inode)
    if not file.inode.readcount:
        raise KernelError(errno.EPIPE)
    if not data:
        return 0
    room = PIPE_SIZE - len(pipe.buf)
    if room < len(data) and not file.flags & linux.O_NONBLOCK and room < PIPE_SIZE \
            and len(data) <= PIPE_SIZE:
        pipe.wr_wait.sleep()
    if room <= 0:
        raise KernelError(errno.EAGAIN)
    pipe.buf += data[:room]
    pipe.rd_wait.wake_all()
    return min(room, len(data))


def release_file(k: Kernel, file: File) -> None:
    """An end of a pipe or FIFO goes (``pipe_release``): sleepers look again (a reader
    finds EOF once the last writer is gone; a writer EPIPE)."""
    pipe = file.inode.i_pipe
    if pipe is not None:
        # the woken calls run after the release has dropped this end's count
        pipe.rd_wait.wake_all()
        pipe.wr_wait.wake_all()
