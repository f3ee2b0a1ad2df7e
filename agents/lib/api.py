"""The system-call API an agent program uses, on the emulator or on the host kernel.

Both targets offer the same methods with ``os``-like names and signatures and the raw
Linux semantics of the system call (not Python's PEP 446 wrappers: ``open`` and ``dup``
here do not add ``O_CLOEXEC``).  Failures raise the ``OSError`` subclass ``os`` would.

* :class:`EmuSystem` sends each call to the kernel daemon.
* :class:`HostSystem` calls libc through ``ctypes``, inside a private directory that
  stands for ``/``, so a scenario runs unchanged against the host kernel.

Infrastructure descriptors of the host target (the director link, the peer socket) are
moved to numbers at or above :data:`INFRA_FD_BASE`, so the numbers a program sees
below that are exactly the ones the kernel would hand out to it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import fcntl
import os
import select
import struct
import time
from abc import ABC, abstractmethod
from collections.abc import Iterable
from typing import Any, NoReturn

from kemu.agents.lib.mm import AgentMM
from kemu.agents.lib.runtime import Connection, attach_qp
from kemu.agents.lib.sigrec import SigInfo, SignalRecorder, recorder
from kemu.agents.lib.verbs import AgentQP
from kemu.protocol import linux, wire
from kemu.protocol.errors import os_error
from kemu.protocol.linux import F_GETOWN_EX, F_SETOWN_EX, FICLONE

#: host-target infrastructure descriptors live at or above this number
INFRA_FD_BASE = 900
EXEC_TOKEN_ENV = "KEMU_EXEC_TOKEN"


def move_high(fd: int) -> int:
    """Move an infrastructure descriptor to >= INFRA_FD_BASE, close-on-exec; returns it."""
    new = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, INFRA_FD_BASE)
    os.close(fd)
    return new


#: signals whose positive si_code values are their own, not POLL_* (Linux's
#: sig_specific_sicodes() but SIGPOLL, whose own codes are the POLL_* ones)
SIG_SPECIFIC = frozenset({linux.SIGILL, linux.SIGTRAP, linux.SIGBUS, linux.SIGFPE,
                          linux.SIGSEGV, linux.SIGCHLD, linux.SIGSYS})


def siginfo_view(signo: int, code: int, fd: int, band: int, pid: int,
                 addr: int | None = None) -> dict[str, Any]:
    """The fields of a siginfo that mean something for its si_code (the union's other
    members are noise): si_fd and si_band for POLL_* and SI_SIGIO, si_pid for SI_USER,
    si_addr for a fault."""
    si: dict[str, Any] = {"si_signo": signo, "si_code": code}
    if signo in SIG_SPECIFIC and code > 0:
        if addr is not None:
            si["si_addr"] = addr
    elif linux.POLL_IN <= code <= linux.POLL_HUP or code == linux.SI_SIGIO:
        si["si_band"] = band
        si["si_fd"] = fd
    elif code <= linux.SI_USER:
        si["si_pid"] = pid
    return si


def stat_result(d: dict[str, Any]) -> os.stat_result:
    """An ``os.stat_result`` from the daemon's map of stat fields."""
    head = tuple(d[k] for k in ("st_mode", "st_ino", "st_dev", "st_nlink", "st_uid", "st_gid",
                                "st_size"))
    times = (int(d["st_atime"]), int(d["st_mtime"]), int(d["st_ctime"]))
    extra = {"st_atime": d["st_atime"], "st_mtime": d["st_mtime"], "st_ctime": d["st_ctime"],
             "st_blksize": d["st_blksize"], "st_blocks": d["st_blocks"]}
    return os.stat_result(head + times, extra)


class System(ABC):
    """The calls a program makes.  Subclasses: :class:`EmuSystem`, :class:`HostSystem`."""

    target: str

    @abstractmethod
    def getpid(self) -> int:
        """getpid(2)."""

    @abstractmethod
    def open(self, path: str, flags: int, mode: int = 0o777) -> int:
        """open(2)."""

    @abstractmethod
    def close(self, fd: int) -> None:
        """close(2)."""

    @abstractmethod
    def read(self, fd: int, count: int) -> bytes:
        """read(2)."""

    @abstractmethod
    def write(self, fd: int, data: bytes) -> int:
        """write(2)."""

    @abstractmethod
    def pread(self, fd: int, count: int, offset: int) -> bytes:
        """pread(2)."""

    @abstractmethod
    def pwrite(self, fd: int, data: bytes, offset: int) -> int:
        """pwrite(2)."""

    @abstractmethod
    def lseek(self, fd: int, offset: int, whence: int) -> int:
        """lseek(2)."""

    @abstractmethod
    def ftruncate(self, fd: int, length: int) -> None:
        """ftruncate(2)."""

    @abstractmethod
    def truncate(self, path: str, length: int) -> None:
        """truncate(2)."""

    @abstractmethod
    def fallocate(self, fd: int, mode: int, offset: int, length: int) -> None:
        """fallocate(2): allocate, punch (``FALLOC_FL_PUNCH_HOLE``) or zero a range."""

    @abstractmethod
    def ficlone(self, src: int, dst: int) -> None:
        """``ioctl(dst, FICLONE, src)``: reflink the whole of ``src`` into ``dst``
        (the scenario language's ``clone``; not clone(2))."""

    @abstractmethod
    def unlink(self, path: str) -> None:
        """unlink(2)."""

    @abstractmethod
    def rename(self, old: str, new: str) -> None:
        """rename(2)."""

    @abstractmethod
    def mkdir(self, path: str, mode: int = 0o777) -> None:
        """mkdir(2)."""

    @abstractmethod
    def rmdir(self, path: str) -> None:
        """rmdir(2)."""

    @abstractmethod
    def stat(self, path: str) -> os.stat_result:
        """stat(2)."""

    @abstractmethod
    def fstat(self, fd: int) -> os.stat_result:
        """fstat(2)."""

    @abstractmethod
    def listdir(self, path: str) -> list[str]:
        """The names in a directory, sorted."""

    @abstractmethod
    def dup(self, fd: int) -> int:
        """dup(2)."""

    @abstractmethod
    def dup2(self, fd: int, fd2: int) -> int:
        """dup2(2)."""

    @abstractmethod
    def dup3(self, fd: int, fd2: int, flags: int) -> int:
        """dup3(2)."""

    @abstractmethod
    def fcntl(self, fd: int, cmd: int, arg: Any = 0) -> Any:
        """fcntl(2); ``arg`` is an int (a map for the struct commands)."""

    @abstractmethod
    def umask(self, mask: int) -> int:
        """umask(2)."""

    @abstractmethod
    def fork(self, name: str = "") -> int:
        """fork(2) for real; the child returns 0 with this object re-attached."""

    @abstractmethod
    def execv(self, argv: list[str], env: dict[str, str] | None = None) -> NoReturn:
        """execve(2) of ``argv`` (a Python agent program) for real; never returns."""

    def exec_program(self, path: str, argv: list[str]) -> NoReturn:
        """execve(2) of the program file ``path`` with ``argv``; never returns."""
        raise os_error(errno.ENOEXEC)

    @abstractmethod
    def fds(self) -> list[dict[str, Any]]:
        """This process's descriptors like /proc/self/fd + fdinfo: fd, path, pos, flags."""

    @abstractmethod
    def locks(self) -> list[dict[str, Any]]:
        """The lease lines of /proc/locks for this system's files: state, type, pid,
        path (None for a blocked breaker's line), waiter."""

    @abstractmethod
    def setuid(self, uid: int) -> None:
        """setuid(2) for real (and, on the emulator, the daemon told)."""

    # --- credentials and file attributes (the real call first on both targets) ---

    @abstractmethod
    def setresuid(self, ruid: int, euid: int, suid: int) -> None:
        """setresuid(2) for real (and, on the emulator, the daemon told)."""

    @abstractmethod
    def setgid(self, gid: int) -> None:
        """setgid(2) for real (and, on the emulator, the daemon told)."""

    @abstractmethod
    def setgroups(self, groups: list[int]) -> None:
        """setgroups(2) for real (and, on the emulator, the daemon told)."""

    @abstractmethod
    def faccessat(self, dirfd: int, path: str, mode: int, flags: int = 0) -> None:
        """faccessat2(2): raises the errno the permission check gives (access(2) is
        ``faccessat(AT_FDCWD, path, mode, 0)``)."""

    @abstractmethod
    def pipe2(self, flags: int = 0) -> list[int]:
        """pipe2(2): [read end, write end]."""

    @abstractmethod
    def socketpair(self, flags: int = 0) -> list[int]:
        """socketpair(AF_UNIX, SOCK_STREAM | flags, 0)."""

    @abstractmethod
    def mkfifo(self, path: str, mode: int) -> None:
        """mkfifo(3)."""

    @abstractmethod
    def utime(self, path: str, times: tuple[float, float] | None = None) -> None:
        """utime(2): (atime, mtime) in seconds, or None for now."""

    @abstractmethod
    def setxattr(self, path: str, name: str, value: bytes, flags: int = 0) -> None:
        """setxattr(2)."""

    @abstractmethod
    def getxattr(self, path: str, name: str) -> bytes:
        """getxattr(2)."""

    @abstractmethod
    def link(self, old: str, new: str) -> None:
        """link(2)."""

    @abstractmethod
    def symlink(self, target: str, path: str) -> None:
        """symlink(2); ``target`` is a scenario path (or relative), kept as given."""

    @abstractmethod
    def readlink(self, path: str) -> str:
        """readlink(2): the target as symlink was given it."""

    @abstractmethod
    def waitpid(self, pid: int, options: int = 0) -> tuple[int, int]:
        """wait4(2) for a child (the real call: the host reaps it): (pid, status),
        (0, 0) with WNOHANG when no child has changed state."""

    @abstractmethod
    def getrlimit(self, resource: int) -> tuple[int, int]:
        """getrlimit(2): (soft, hard); RLIM_INFINITY as the kernel's all-ones value."""

    @abstractmethod
    def setrlimit(self, resource: int, soft: int, hard: int) -> None:
        """setrlimit(2) for real (and, on the emulator, the daemon told)."""

    @abstractmethod
    def chmod(self, path: str, mode: int) -> None:
        """chmod(2)."""

    @abstractmethod
    def fchmod(self, fd: int, mode: int) -> None:
        """fchmod(2)."""

    @abstractmethod
    def chown(self, path: str, uid: int, gid: int) -> None:
        """chown(2); -1 leaves an id as it is."""

    @abstractmethod
    def fchown(self, fd: int, uid: int, gid: int) -> None:
        """fchown(2)."""

    def mmap(self, length: int, prot: int, flags: int, fd: int, offset: int = 0) -> int:
        """mmap(2) of a pmem (DAX) file; returns the address.  Emulator only."""
        raise os_error(errno.ENODEV)

    def munmap(self, addr: int, length: int) -> None:
        """munmap(2)."""
        raise os_error(errno.EINVAL)

    def store(self, addr: int, data: bytes) -> int:
        """CPU stores of ``data`` at ``addr`` through a mapping."""
        raise os_error(errno.EFAULT)

    def load(self, addr: int, count: int) -> bytes:
        """CPU loads of ``count`` bytes at ``addr`` through a mapping."""
        raise os_error(errno.EFAULT)

    # --- signals: real dispositions, real delivery, siginfo as the kernel gives it ---

    #: siginfo of signals taken, oldest first (what ``signals()`` returns)
    recorded: list[dict[str, Any]]
    #: siginfo of every signal taken since :meth:`take_delivered` last ran (a log of the
    #: deliveries, which ``signals()`` and ``sigwait()`` do not consume)
    delivered: list[dict[str, Any]]

    def _rec(self) -> SignalRecorder:
        rec = getattr(self, "_recorder", None)
        if rec is None:
            rec = recorder()
            self._recorder: SignalRecorder | None = rec
            self.recorded = []
            self.delivered = []
            self._restart: dict[int, bool] = {}
            self._attach_recorder(rec)
        return rec

    def _attach_recorder(self, rec: SignalRecorder) -> None:  # noqa: B027 (optional hook)
        """Hook the recorder's wake-up descriptor into the target's waits."""

    def signal(self, signum: int, action: str) -> None:
        """sigaction(2): ``default``, ``ignore``, ``record`` (a handler that records the
        siginfo; a sleeping call returns EINTR) or ``record-restart`` (SA_RESTART)."""
        rec = self._rec()
        if action == "default":
            rec.default(signum)
        elif action == "ignore":
            rec.ignore(signum)
        elif action in ("record", "record-restart"):
            rec.record(signum, restart=action == "record-restart")
            self._restart[signum] = action == "record-restart"
        else:
            raise ValueError(f"unknown signal action {action!r}")
        self._tell_disposition(signum, "handler" if action.startswith("record") else action)

    def _tell_disposition(self, signum: int, action: str) -> None:  # noqa: B027 (optional hook)
        """Let the kernel know the disposition (the emulator's daemon keeps a copy)."""

    def sigblock(self, signums: list[int]) -> None:
        """sigprocmask(SIG_BLOCK)."""
        self._rec().block(signums)

    def sigunblock(self, signums: list[int]) -> None:
        """sigprocmask(SIG_UNBLOCK); pending signals are delivered now."""
        self._rec().unblock(signums)
        self.process_signals()

    def process_signals(self, rid: int | None = None) -> None:
        """Take the signals the handler recorded, turn them into siginfo, keep them."""
        rec = getattr(self, "_recorder", None)
        if rec is None:
            return
        rec.drain_wakeups()
        for raw in rec.take():
            self._took(self._siginfo(raw))

    #: a program's own reaction to a delivered signal (the scripted agent's ``on SIG:``
    #: handlers): called with the siginfo; True if it took the signal, which is then not
    #: kept for ``signals()``/``sigwait()``
    reaction: Any = None

    def _took(self, si: dict[str, Any]) -> None:
        """A signal was delivered (its handler ran): keep its siginfo, unless the
        program's :attr:`reaction` takes it."""
        if self.reaction is not None and self.reaction(si):
            return
        self.recorded.append(si)
        self.delivered.append(si)

    def sigtimedwait(self, signums: Iterable[int], timeout: float | None = None) -> dict[str, Any]:
        """sigtimedwait(2): take one of ``signums``, which the caller has blocked, from
        the pending signals without a handler running (Linux kernel/signal.c
        do_sigtimedwait()); EAGAIN after ``timeout`` seconds (None: no limit), EINTR if
        a handler of another signal ran meanwhile."""
        raw = self._rec().sigtimedwait(signums, timeout)
        if raw is None:
            raise os_error(errno.EAGAIN)
        return self._siginfo(raw)

    def take_delivered(self) -> list[dict[str, Any]]:
        """The siginfo of the signals delivered since the last call, oldest first (the
        scripted agent reports them with each answer, for the transcript's
        ``--- SIGIO {...} ---`` lines)."""
        self.process_signals()
        out = list(getattr(self, "delivered", []))
        self.delivered = []
        return out

    def _siginfo(self, raw: SigInfo) -> dict[str, Any]:
        return siginfo_view(raw.signo, raw.code, raw.fd, raw.band, raw.pid)

    def signals(self) -> list[dict[str, Any]]:
        """The siginfo of every signal taken since the last call, oldest first."""
        self.process_signals()
        out, self.recorded = list(getattr(self, "recorded", [])), []
        return out

    def sigwait(self, signums: int | Iterable[int],
                timeout: float | None = None) -> dict[str, Any] | None:
        """Wait for a recorded signal among ``signums`` (one signal number or several);
        its siginfo, or None on timeout."""
        signums = {int(signums)} if isinstance(signums, int) else {int(s) for s in signums}
        rec = self._rec()
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            self.process_signals()
            for i, si in enumerate(self.recorded):
                if si["si_signo"] in signums:
                    return self.recorded.pop(i)
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return None
            select.select([rec.fileno()], [], [], left)


class EmuSystem(System):
    """System calls answered by the kernel daemon."""

    target = "emulator"

    def __init__(self, run_dir: str, name: str = "", conn: Connection | None = None) -> None:
        if conn is None:
            token_hex = os.environ.pop(EXEC_TOKEN_ENV, None)
            if token_hex:
                conn = Connection(run_dir, wire.EXEC, bytes.fromhex(token_hex), name)
            else:
                conn = Connection(run_dir, wire.SPAWN, None, name)
        self.conn = conn
        self.run_dir = run_dir

    def getpid(self) -> int:
        return int(self.conn.call("getpid"))

    def open(self, path: str, flags: int, mode: int = 0o777) -> int:
        return int(self.conn.call("open", path, flags, mode))

    def close(self, fd: int) -> None:
        self.conn.call("close", fd)

    def read(self, fd: int, count: int) -> bytes:
        return bytes(self.conn.call("read", fd, count))

    def write(self, fd: int, data: bytes) -> int:
        # at most MAX_IO a call, a short write at once (as the daemon would return)
        return int(self.conn.call("write", fd, bytes(memoryview(data)[: wire.MAX_IO])))

    def pread(self, fd: int, count: int, offset: int) -> bytes:
        return bytes(self.conn.call("pread", fd, count, offset))

    def pwrite(self, fd: int, data: bytes, offset: int) -> int:
        return int(self.conn.call("pwrite", fd, bytes(memoryview(data)[: wire.MAX_IO]), offset))

    def lseek(self, fd: int, offset: int, whence: int) -> int:
        return int(self.conn.call("lseek", fd, offset, whence))

    def ftruncate(self, fd: int, length: int) -> None:
        self.conn.call("ftruncate", fd, length)

    def truncate(self, path: str, length: int) -> None:
        self.conn.call("truncate", path, length)

    def fallocate(self, fd: int, mode: int, offset: int, length: int) -> None:
        self.conn.call("fallocate", fd, mode, offset, length)

    def ficlone(self, src: int, dst: int) -> None:
        self.conn.call("clone", src, dst)

    def unlink(self, path: str) -> None:
        self.conn.call("unlink", path)

    def rename(self, old: str, new: str) -> None:
        self.conn.call("rename", old, new)

    def mkdir(self, path: str, mode: int = 0o777) -> None:
        self.conn.call("mkdir", path, mode)

    def rmdir(self, path: str) -> None:
        self.conn.call("rmdir", path)

    def stat(self, path: str) -> os.stat_result:
        return stat_result(self.conn.call("stat", path))

    def fstat(self, fd: int) -> os.stat_result:
        return stat_result(self.conn.call("fstat", fd))

    def listdir(self, path: str) -> list[str]:
        return list(self.conn.call("listdir", path))

    def dup(self, fd: int) -> int:
        return int(self.conn.call("dup", fd))

    def dup2(self, fd: int, fd2: int) -> int:
        return int(self.conn.call("dup2", fd, fd2))

    def dup3(self, fd: int, fd2: int, flags: int) -> int:
        return int(self.conn.call("dup3", fd, fd2, flags))

    def fcntl(self, fd: int, cmd: int, arg: Any = 0) -> Any:
        return self.conn.call("fcntl", fd, cmd, arg)

    def umask(self, mask: int) -> int:
        os.umask(mask)
        return int(self.conn.call("umask", mask))

    def fork(self, name: str = "") -> int:
        token = self.conn.call("fork_prepare")
        try:
            pid = os.fork()
        except OSError:
            self.conn.call("fork_done", token, -1)
            raise
        if pid == 0:
            # the parent's queue pairs are the parent's: their rings are not mapped
            # here (MADV_DONTFORK), their descriptors are copies the child lets go
            for agent_qp in self._qps().values():
                agent_qp.forget()
            self._qps().clear()
            self.conn.reconnect_after_fork(token, name or self.conn.name)
            mmu = getattr(self, "_mmu", None)
            if mmu is not None:
                mmu.after_fork(self.conn)
            rec = getattr(self, "_recorder", None)
            if rec is not None:  # the handlers are inherited; hook them to the new channel
                self.recorded = []
                self.delivered = []
                self._attach_recorder(rec)
            return 0
        self.conn.call("fork_done", token, pid)
        return pid

    def execv(self, argv: list[str], env: dict[str, str] | None = None) -> NoReturn:
        token: bytes = self.conn.call("exec_prepare")
        environ = dict(os.environ if env is None else env)
        environ[EXEC_TOKEN_ENV] = token.hex()
        self.conn.close()
        try:
            os.execve(argv[0], argv, environ)
        finally:
            # Past exec_prepare there is no way back, as past begin_new_exec().
            os._exit(127)

    def exec_program(self, path: str, argv: list[str]) -> NoReturn:
        """execve(2) of the emulated program file ``path``: the daemon checks it and
        denies it writers while this process lives (``exec_program``), and the process
        then runs the file's bytes for real (from a memfd, ``fexecve``).  ENOEXEC,
        before the point of no return, for a file that is not an ELF executable."""
        self.conn.call("exec_program", path, 1)  # EACCES, ETXTBSY first
        fd = self.open(path, os.O_RDONLY)
        try:
            data = b""
            while chunk := self.pread(fd, wire.MAX_IO, len(data)):
                data += chunk
        finally:
            self.close(fd)
        if not data.startswith(b"\x7fELF"):
            raise os_error(errno.ENOEXEC)
        self.conn.call("exec_program", path)
        try:
            mem = os.memfd_create("kemu-exec", os.MFD_CLOEXEC)
            os.write(mem, data)
            self.conn.close()
            os.execve(mem, argv, dict(os.environ))
        finally:
            os._exit(127)  # past exec_program there is no way back, as past begin_new_exec()

    def fds(self) -> list[dict[str, Any]]:
        return list(self.conn.call("proc_fds", self.conn.pid))

    def locks(self) -> list[dict[str, Any]]:
        return [{k: e[k] for k in ("state", "type", "pid", "path", "waiter", "depth")}
                for e in self.conn.call("proc_locks")]

    # DAX mappings: loads and stores go to the pmem segment through the agent's TLB
    def _mm(self) -> AgentMM:
        mmu = getattr(self, "_mmu", None)
        if mmu is None:
            mmu = AgentMM(self.conn)
            self._mmu: AgentMM | None = mmu
            # shoot-downs must be taken whenever the program sleeps in a call
        return mmu

    def mmap(self, length: int, prot: int, flags: int, fd: int, offset: int = 0) -> int:
        return self._mm().mmap(length, prot, flags, fd, offset)

    def munmap(self, addr: int, length: int) -> None:
        self._mm().munmap(addr, length)

    def store(self, addr: int, data: bytes) -> int:
        return self._mm().store(addr, data)

    def load(self, addr: int, count: int) -> bytes:
        return self._mm().load(addr, count)

    def setuid(self, uid: int) -> None:
        os.setuid(uid)
        self.conn.call("setuid", uid)

    def setresuid(self, ruid: int, euid: int, suid: int) -> None:
        os.setresuid(ruid, euid, suid)
        self.conn.call("setresuid", ruid, euid, suid)

    def setgid(self, gid: int) -> None:
        os.setgid(gid)
        self.conn.call("setgid", gid)

    def setgroups(self, groups: list[int]) -> None:
        os.setgroups(groups)
        self.conn.call("setgroups", list(groups))

    def faccessat(self, dirfd: int, path: str, mode: int, flags: int = 0) -> None:
        self.conn.call("faccessat", dirfd, path, mode, flags)

    def pipe2(self, flags: int = 0) -> list[int]:
        return [int(fd) for fd in self.conn.call("pipe2", flags)]

    def socketpair(self, flags: int = 0) -> list[int]:
        return [int(fd) for fd in self.conn.call("socketpair", flags)]

    def mkfifo(self, path: str, mode: int) -> None:
        self.conn.call("mkfifo", path, mode)

    def utime(self, path: str, times: tuple[float, float] | None = None) -> None:
        self.conn.call("utime", path, None if times is None else [int(x) for x in times])

    def setxattr(self, path: str, name: str, value: bytes, flags: int = 0) -> None:
        self.conn.call("setxattr", path, name, bytes(value), flags)

    def getxattr(self, path: str, name: str) -> bytes:
        return bytes(self.conn.call("getxattr", path, name))

    def link(self, old: str, new: str) -> None:
        self.conn.call("link", old, new)

    def symlink(self, target: str, path: str) -> None:
        self.conn.call("symlink", target, path)

    def readlink(self, path: str) -> str:
        return str(self.conn.call("readlink", path))

    def getrlimit(self, resource: int) -> tuple[int, int]:
        soft, hard = self.conn.call("getrlimit", resource)
        return int(soft), int(hard)

    def setrlimit(self, resource: int, soft: int, hard: int) -> None:
        _real_setrlimit(resource, soft, hard)
        self.conn.call("setrlimit", resource, soft, hard)

    def waitpid(self, pid: int, options: int = 0) -> tuple[int, int]:
        rpid, status = os.waitpid(pid, options)
        if rpid and (os.WIFEXITED(status) or os.WIFSIGNALED(status)):
            # reaped for real: the daemon's zombie goes too (release_task)
            self.conn.call("wait4", rpid, status)
        return rpid, status

    def chmod(self, path: str, mode: int) -> None:
        self.conn.call("chmod", path, mode)

    def fchmod(self, fd: int, mode: int) -> None:
        self.conn.call("fchmod", fd, mode)

    def chown(self, path: str, uid: int, gid: int) -> None:
        self.conn.call("chown", path, uid, gid)

    def fchown(self, fd: int, uid: int, gid: int) -> None:
        self.conn.call("fchown", fd, uid, gid)

    # signals: the daemon queues the siginfo as an event, then sends the real signal
    def _attach_recorder(self, rec: SignalRecorder) -> None:
        self._events: dict[int, list[dict[str, Any]]] = {}
        self.conn.event_handlers["signal"] = self._on_event
        self.conn.signal_fd = rec.fileno()
        self.conn.on_signal = self.process_signals

    def _on_event(self, body: dict[str, Any]) -> None:
        si = body.get("si")
        if isinstance(si, dict):
            self._events.setdefault(int(si["si_signo"]), []).append(si)

    def _tell_disposition(self, signum: int, action: str) -> None:
        self.conn.call("rt_sigaction", signum, action)

    def process_signals(self, rid: int | None = None) -> None:
        rec = getattr(self, "_recorder", None)
        if rec is None:
            return
        rec.drain_wakeups()
        interrupt = False
        for raw in rec.take():
            self._took(self._siginfo(raw))
            if not self._restart.get(raw.signo, False):
                interrupt = True
        if interrupt and rid is not None:
            # a handler ran: whatever call this process sleeps in returns EINTR
            self.conn.notify("interrupt")

    def _siginfo(self, raw: SigInfo) -> dict[str, Any]:
        if raw.pid != self.conn.daemon_pid or raw.code != linux.SI_USER:
            # a standard signal's delivery ends its pending state
            if raw.signo < linux.KERNEL_SIGRTMIN:
                self.conn.call("sigdelivered", raw.signo, 0)
            return super()._siginfo(raw)
        # Sent by the kernel daemon: the siginfo is the one it queued (its event may
        # still be on the way: the signal can overtake it).
        queue = self._events.setdefault(raw.signo, [])
        deadline = time.monotonic() + 10.0
        while not queue and time.monotonic() < deadline:
            self.conn.pump(0.1)
        self.conn.call("sigdelivered", raw.signo, 1)
        if not queue:
            return super()._siginfo(raw)
        si = queue.pop(0)
        return siginfo_view(si["si_signo"], si["si_code"], si.get("si_fd", 0),
                            si.get("si_band", 0), 0, si.get("si_addr"))

    def call(self, name: str, *args: Any) -> Any:
        """Any call of the daemon's table by name (introspection, emulator-only calls)."""
        return self.conn.call(name, *args)

    # verbs' data path: queue pairs, posted to without a call (agents/lib/verbs.py)
    def ibv_create_qp(self, ctx: int) -> int:
        """``ibv_create_qp`` on the context behind ``ctx``: the queue pair's number."""
        info = self.conn.call("ibv_create_qp", ctx)
        qp = AgentQP(info, attach_qp(self.run_dir, int(info["qpn"])))
        self._qps()[qp.qpn] = qp
        return qp.qpn

    def ibv_destroy_qp(self, ctx: int, qpn: int) -> None:
        """``ibv_destroy_qp``."""
        self.conn.call("ibv_destroy_qp", ctx, qpn)
        qp = self._qps().pop(qpn, None)
        if qp is not None:
            qp.close()

    def ibv_post_send(self, qpn: int, opcode: int, rkey: int, offset: int,
                      sge: dict[str, int], wr_id: int = 0) -> None:
        """``ibv_post_send`` of an RDMA WRITE or READ (no call: a ring and a doorbell)."""
        qp = self._qps().get(qpn)
        if qp is None:
            raise os_error(errno.EINVAL)
        qp.post(opcode, rkey, offset, sge, wr_id)

    def ibv_poll_cq(self, qpn: int, timeout: float | None = None) -> dict[str, Any]:
        """Wait for the queue pair's oldest outstanding completion."""
        qp = self._qps().get(qpn)
        if qp is None:
            raise os_error(errno.EINVAL)
        return qp.poll(timeout)

    def _qps(self) -> dict[int, AgentQP]:
        qps: dict[int, AgentQP] | None = getattr(self, "_qp_table", None)
        if qps is None:
            qps = {}
            self._qp_table = qps
        return qps


class _Rlimit(ctypes.Structure):
    _fields_ = [("rlim_cur", ctypes.c_uint64), ("rlim_max", ctypes.c_uint64)]


def _prlimit(resource: int, new: tuple[int, int] | None) -> tuple[int, int]:
    """prlimit64(2) of this process, the raw call (Python's ``resource`` turns EPERM
    into ValueError): sets ``new`` if given, returns the old (soft, hard)."""
    lib = ctypes.CDLL(None, use_errno=True)
    old = _Rlimit()
    want = None if new is None else ctypes.byref(
        _Rlimit(new[0] & linux.RLIM_INFINITY, new[1] & linux.RLIM_INFINITY))
    if lib.prlimit64(0, resource, want, ctypes.byref(old)) != 0:
        raise os_error(ctypes.get_errno())
    return int(old.rlim_cur), int(old.rlim_max)


def _real_setrlimit(resource: int, soft: int, hard: int) -> None:
    """setrlimit(2) for real (-1 is RLIM_INFINITY, as the kernel's all-ones)."""
    _prlimit(resource, (soft, hard))


class _Libc:
    """libc entry points with Linux's raw semantics, errno-checked."""

    def __init__(self) -> None:
        lib = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        self.lib = lib
        i64, i, sz = ctypes.c_int64, ctypes.c_int, ctypes.c_size_t
        lib.lseek64.restype = i64
        lib.lseek64.argtypes = [i, i64, i]
        lib.pread64.restype = ctypes.c_ssize_t
        lib.pread64.argtypes = [i, ctypes.c_char_p, sz, i64]
        lib.pwrite64.restype = ctypes.c_ssize_t
        lib.pwrite64.argtypes = [i, ctypes.c_char_p, sz, i64]
        lib.read.restype = ctypes.c_ssize_t
        lib.read.argtypes = [i, ctypes.c_char_p, sz]
        lib.write.restype = ctypes.c_ssize_t
        lib.write.argtypes = [i, ctypes.c_char_p, sz]
        lib.ftruncate64.argtypes = [i, i64]
        lib.truncate64.argtypes = [ctypes.c_char_p, i64]
        lib.fallocate64.argtypes = [i, i, i64, i64]
        lib.mmap64.restype = ctypes.c_void_p
        lib.mmap64.argtypes = [ctypes.c_void_p, sz, i, i, i, i64]
        lib.munmap.argtypes = [ctypes.c_void_p, sz]
        u32 = ctypes.c_uint32
        lib.chmod.argtypes = [ctypes.c_char_p, u32]
        lib.fchmod.argtypes = [i, u32]
        lib.chown.argtypes = [ctypes.c_char_p, u32, u32]
        lib.fchown.argtypes = [i, u32, u32]

    @staticmethod
    def check(ret: int, filename: str | None = None) -> int:
        if ret == -1:
            raise os_error(ctypes.get_errno(), filename)
        return ret


#: openat2(2) (Linux 5.6) and its RESOLVE_IN_ROOT: ``..`` and absolute symlinks stop at
#: the directory the walk starts from, as if it were ``/`` (fs/namei.c nd_jump_root())
SYS_OPENAT2 = 437
RESOLVE_IN_ROOT = 0x10


class _OpenHow(ctypes.Structure):
    """``struct open_how``."""

    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64),
                ("resolve", ctypes.c_uint64)]


def resolve_in_root(root: str, path: str) -> str | None:
    """The host path of directory ``path`` resolved beneath ``root`` as
    ``openat2(RESOLVE_IN_ROOT)`` does, or None when the walk fails (ENOENT, ENOTDIR:
    the call made with the path itself then fails the same way)."""
    libc = ctypes.CDLL(None, use_errno=True)
    rootfd = os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        how = _OpenHow(os.O_PATH | os.O_CLOEXEC | os.O_DIRECTORY, 0, RESOLVE_IN_ROOT)
        fd = libc.syscall(SYS_OPENAT2, rootfd, (path or ".").encode(), ctypes.byref(how),
                          ctypes.sizeof(how))
        if fd < 0:
            return None
        try:
            return os.readlink(f"/proc/self/fd/{fd}")
        finally:
            os.close(fd)
    finally:
        os.close(rootfd)


class HostSystem(System):
    """System calls made on the host kernel, under ``root`` standing for ``/``.

    The root is a real one for the scenario's paths: every path is resolved beneath it
    (``..`` at the root stays there, as ``openat2(RESOLVE_IN_ROOT)``), so a host actor,
    which may run as root, never reaches a file of the machine outside its run."""

    target = "host"

    def __init__(self, root: str) -> None:
        self.root = os.path.realpath(root)
        self.libc = _Libc()

    def path(self, path: str) -> bytes:
        """The host path of scenario path ``path``, always inside the root.

        Every component but the last is resolved beneath the root
        (:func:`resolve_in_root`); the last is kept as it is, so the call sees ``.``,
        ``..`` or a trailing slash as Linux would (``rename("/d/sub/..")`` is EBUSY),
        except ``..`` of the root itself, which is the root (``/.`` then).  A parent that
        does not resolve keeps its components with ``..`` clamped at the root: the call
        fails on it as it would on Linux."""
        parts = [p for p in path.split("/") if p]
        if not parts:
            return self.root.encode()
        parent, last = parts[:-1], parts[-1]
        real = resolve_in_root(self.root, "/".join(parent))
        if real is None:
            kept: list[str] = []
            for p in parent:
                if p == "..":
                    if kept:
                        kept.pop()
                elif p != ".":
                    kept.append(p)
            real = os.path.join(self.root, *kept)
        if last == ".." and real == self.root:
            last = "."
        out = os.path.join(real, last)
        if path.endswith("/"):
            out += "/"
        return out.encode()

    def _c(self, ret: int) -> int:
        return _Libc.check(ret)

    def getpid(self) -> int:
        return os.getpid()

    def open(self, path: str, flags: int, mode: int = 0o777) -> int:
        return self._c(self.libc.lib.open(self.path(path), flags, mode))

    def close(self, fd: int) -> None:
        self._c(self.libc.lib.close(fd))

    def read(self, fd: int, count: int) -> bytes:
        if count < 0:
            raise os_error(errno.EINVAL)
        buf = ctypes.create_string_buffer(max(count, 1))
        n = self._c(self.libc.lib.read(fd, buf, count))
        return buf.raw[:n]

    def write(self, fd: int, data: bytes) -> int:
        return self._c(self.libc.lib.write(fd, bytes(data), len(data)))

    def pread(self, fd: int, count: int, offset: int) -> bytes:
        if count < 0:
            raise os_error(errno.EINVAL)
        buf = ctypes.create_string_buffer(max(count, 1))
        n = self._c(self.libc.lib.pread64(fd, buf, count, offset))
        return buf.raw[:n]

    def pwrite(self, fd: int, data: bytes, offset: int) -> int:
        return self._c(self.libc.lib.pwrite64(fd, bytes(data), len(data), offset))

    def mmap(self, length: int, prot: int, flags: int, fd: int, offset: int = 0) -> int:
        """mmap(2) for real: this process's own memory (anonymous or a host file)."""
        addr = self.libc.lib.mmap64(None, length, prot, flags, fd, offset)
        if addr is None or addr == ctypes.c_void_p(-1).value:
            raise os_error(ctypes.get_errno())
        return int(addr)

    def munmap(self, addr: int, length: int) -> None:
        self._c(self.libc.lib.munmap(addr, length))

    def store(self, addr: int, data: bytes) -> int:
        """CPU stores for real: a store to a bad address kills with SIGSEGV/SIGBUS."""
        ctypes.memmove(addr, bytes(data), len(data))
        return len(data)

    def load(self, addr: int, count: int) -> bytes:
        """CPU loads for real."""
        return ctypes.string_at(addr, count)

    def lseek(self, fd: int, offset: int, whence: int) -> int:
        return self._c(self.libc.lib.lseek64(fd, offset, whence))

    def ftruncate(self, fd: int, length: int) -> None:
        self._c(self.libc.lib.ftruncate64(fd, length))

    def truncate(self, path: str, length: int) -> None:
        self._c(self.libc.lib.truncate64(self.path(path), length))

    def fallocate(self, fd: int, mode: int, offset: int, length: int) -> None:
        self._c(self.libc.lib.fallocate64(fd, mode, offset, length))

    def ficlone(self, src: int, dst: int) -> None:
        fcntl.ioctl(dst, FICLONE, src)

    def unlink(self, path: str) -> None:
        self._c(self.libc.lib.unlink(self.path(path)))

    def rename(self, old: str, new: str) -> None:
        self._c(self.libc.lib.rename(self.path(old), self.path(new)))

    def mkdir(self, path: str, mode: int = 0o777) -> None:
        self._c(self.libc.lib.mkdir(self.path(path), mode))

    def rmdir(self, path: str) -> None:
        self._c(self.libc.lib.rmdir(self.path(path)))

    def stat(self, path: str) -> os.stat_result:
        return os.stat(self.path(path))

    def fstat(self, fd: int) -> os.stat_result:
        return os.fstat(fd)

    def listdir(self, path: str) -> list[str]:
        return sorted(os.listdir(self.path(path).decode()))

    def dup(self, fd: int) -> int:
        return self._c(self.libc.lib.dup(fd))

    def dup2(self, fd: int, fd2: int) -> int:
        return self._c(self.libc.lib.dup2(fd, fd2))

    def dup3(self, fd: int, fd2: int, flags: int) -> int:
        return self._c(self.libc.lib.dup3(fd, fd2, flags))

    def fcntl(self, fd: int, cmd: int, arg: Any = 0) -> Any:
        if cmd in (F_SETOWN_EX, F_GETOWN_EX):
            owner = arg if isinstance(arg, dict) else {}
            buf = ctypes.create_string_buffer(
                struct.pack("ii", int(owner.get("type", 0)), int(owner.get("pid", 0))))
            self._c(self.libc.lib.fcntl(fd, cmd, buf))
            if cmd == F_GETOWN_EX:
                kind, pid = struct.unpack("ii", buf.raw[:8])
                return {"type": kind, "pid": pid}
            return 0
        if isinstance(arg, dict):
            raise os_error(errno.EINVAL)
        return self._c(self.libc.lib.fcntl(fd, cmd, ctypes.c_long(arg or 0)))

    def umask(self, mask: int) -> int:
        return os.umask(mask)

    def fork(self, name: str = "") -> int:
        return os.fork()

    def execv(self, argv: list[str], env: dict[str, str] | None = None) -> NoReturn:
        os.execve(argv[0], argv, dict(os.environ if env is None else env))

    def exec_program(self, path: str, argv: list[str]) -> NoReturn:
        """execve(2) of the program file ``path`` (under the root) with ``argv``: the
        process runs it from now on; an error (ENOENT, EACCES, ETXTBSY, ENOEXEC) is
        raised before the point of no return, as execve returns it."""
        os.execve(self.path(path), argv, dict(os.environ))

    def setuid(self, uid: int) -> None:
        os.setuid(uid)

    def setresuid(self, ruid: int, euid: int, suid: int) -> None:
        os.setresuid(ruid, euid, suid)

    def setgid(self, gid: int) -> None:
        os.setgid(gid)

    def setgroups(self, groups: list[int]) -> None:
        os.setgroups(groups)

    def faccessat(self, dirfd: int, path: str, mode: int, flags: int = 0) -> None:
        # the raw system call: glibc's faccessat may answer some flags in user space
        where = self.path(path) if path.startswith("/") or dirfd == linux.AT_FDCWD else path
        self._c(self.libc.lib.syscall(linux.NR_faccessat2, dirfd, where, mode, flags))

    def waitpid(self, pid: int, options: int = 0) -> tuple[int, int]:
        return os.waitpid(pid, options)

    def pipe2(self, flags: int = 0) -> list[int]:
        fds = (ctypes.c_int * 2)()
        self._c(self.libc.lib.pipe2(fds, flags))
        return [fds[0], fds[1]]

    def socketpair(self, flags: int = 0) -> list[int]:
        fds = (ctypes.c_int * 2)()
        self._c(self.libc.lib.socketpair(1, 1 | flags, 0, fds))  # AF_UNIX, SOCK_STREAM
        return [fds[0], fds[1]]

    def mkfifo(self, path: str, mode: int) -> None:
        self._c(self.libc.lib.mkfifo(self.path(path), mode))

    def utime(self, path: str, times: tuple[float, float] | None = None) -> None:
        os.utime(self.path(path), None if times is None else (times[0], times[1]))

    def setxattr(self, path: str, name: str, value: bytes, flags: int = 0) -> None:
        os.setxattr(self.path(path), name, bytes(value), flags)

    def getxattr(self, path: str, name: str) -> bytes:
        return os.getxattr(self.path(path), name)

    def link(self, old: str, new: str) -> None:
        self._c(self.libc.lib.link(self.path(old), self.path(new)))

    def symlink(self, target: str, path: str) -> None:
        # an absolute target names a scenario path: it must point inside the root
        where = self.path(target) if target.startswith("/") else target.encode()
        self._c(self.libc.lib.symlink(where, self.path(path)))

    def readlink(self, path: str) -> str:
        target = os.readlink(self.path(path).decode())
        if target == self.root or target.startswith(self.root + "/"):
            target = target[len(self.root):] or "/"
        return target

    def getrlimit(self, resource: int) -> tuple[int, int]:
        return _prlimit(resource, None)

    def setrlimit(self, resource: int, soft: int, hard: int) -> None:
        _real_setrlimit(resource, soft, hard)

    def chmod(self, path: str, mode: int) -> None:
        self._c(self.libc.lib.chmod(self.path(path), mode))

    def fchmod(self, fd: int, mode: int) -> None:
        self._c(self.libc.lib.fchmod(fd, mode))

    def chown(self, path: str, uid: int, gid: int) -> None:
        self._c(self.libc.lib.chown(self.path(path), uid, gid))

    def fchown(self, fd: int, uid: int, gid: int) -> None:
        self._c(self.libc.lib.fchown(fd, uid, gid))

    def locks(self) -> list[dict[str, Any]]:
        paths: dict[int, str] = {}
        for top, dirs, files in os.walk(self.root):
            for n in dirs + files:
                full = os.path.join(top, n)
                try:
                    paths[os.lstat(full).st_ino] = full[len(self.root):]
                except OSError:
                    continue
        dev = os.stat(self.root).st_dev
        want = f"{os.major(dev):02x}:{os.minor(dev):02x}:"
        out: list[dict[str, Any]] = []
        ours: set[str] = set()
        with open("/proc/locks") as fh:
            for line in fh:
                head, _, rest = line.partition(":")
                words = rest.split()
                if not words:
                    continue
                if words[0] == "->":
                    if head in ours and len(words) >= 5 and words[1] in ("LEASE", "DELEG"):
                        # lock_get_status(): "-> " indented by one space per level below 1
                        depth = len(rest) - len(rest.lstrip(" ")) or 1
                        out.append({"state": words[2], "type": words[3], "pid": int(words[4]),
                                    "path": None, "waiter": True, "depth": depth})
                    continue
                if words[0] != "LEASE" or len(words) < 5 or not words[4].startswith(want):
                    continue
                ino = int(words[4].rsplit(":", 1)[1])
                if ino not in paths:
                    # unlinked, or renamed over: the name a descriptor of the lease's
                    # holder still shows, "/f (deleted)" (only files of this root)
                    gone = self._deleted_path(int(words[3]), dev, ino)
                    if gone is None:
                        continue
                    paths[ino] = gone
                ours.add(head)
                out.append({"state": words[1], "type": words[2], "pid": int(words[3]),
                            "path": paths[ino], "waiter": False, "depth": 0})
        return out

    def _deleted_path(self, pid: int, dev: int, ino: int) -> str | None:
        """The path, under this root, that a descriptor of process ``pid`` shows for
        the unlinked inode ``dev:ino`` (``/proc/<pid>/fd`` links end in " (deleted)")."""
        try:
            names = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            return None
        for name in names:
            try:
                st = os.stat(f"/proc/{pid}/fd/{name}")
                target = os.readlink(f"/proc/{pid}/fd/{name}")
            except OSError:
                continue
            if (st.st_dev, st.st_ino) == (dev, ino) and target.startswith(self.root + "/"):
                return target[len(self.root):]
        return None

    def fds(self) -> list[dict[str, Any]]:
        out = []
        for name in os.listdir("/proc/self/fd"):
            fd = int(name)
            if fd >= INFRA_FD_BASE:
                continue
            try:
                target = os.readlink(f"/proc/self/fd/{fd}")
                with open(f"/proc/self/fdinfo/{fd}") as fh:
                    lines = fh.read().splitlines()
                info = dict(line.split(":\t", 1) for line in lines if ":\t" in line)
            except OSError:
                continue  # the descriptor listdir itself used
            held = []
            for line in lines:  # show_fd_locks(): "lock:\t1: LEASE  ACTIVE    READ 12 ..."
                if line.startswith("lock:"):
                    words = line.split(":", 2)[2].split()
                    if len(words) >= 4 and words[0] in ("LEASE", "DELEG"):
                        held.append({"kind": words[0], "state": words[1], "type": words[2],
                                     "pid": int(words[3])})
            pos = int(info.get("pos", "0"))
            if target.startswith(("pipe:[", "socket:[")):
                target = target.split("[", 1)[0]  # pipefs, sockfs: "pipe:", "socket:"
            elif target.startswith(self.root + "/") or target == self.root:
                target = target[len(self.root):] or "/"
            else:
                # outside the scenario's root: the standard streams the launcher gave us,
                # shown as the emulator shows its console
                target, pos = "/dev/console", 0
            entry: dict[str, Any] = {"fd": fd, "path": target, "pos": pos,
                                     "flags": int(info.get("flags", "0"), 8),
                                     "ino": int(info.get("ino", "0"))}
            if held:
                entry["locks"] = held
            out.append(entry)
        return sorted(out, key=lambda d: d["fd"])


def make_system(target: str, run_dir: str, name: str = "") -> System:
    """The System of ``target`` (``emulator`` or ``host``) for a run directory."""
    if target == "emulator":
        return EmuSystem(run_dir, name)
    if target == "host":
        return HostSystem(os.path.join(run_dir, "root"))
    raise ValueError(f"unknown target {target!r}")


__all__ = ["INFRA_FD_BASE", "EmuSystem", "HostSystem", "System", "make_system", "move_high"]
