"""The functions a scenario line may call, as the scripted agent executes them.

Each takes the acting :class:`~agents.scenario.scripted.Actor` and the evaluated arguments and
returns a value that travels back to the launcher (ints, bytes, str, lists, maps).  The
same function runs on both targets, through the actor's :class:`~agents.lib.api.System`.
"""

from __future__ import annotations

import contextlib
import errno
import os
import select
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from kemu.agents.scenario import strace
from kemu.agents.scenario.parse import Scenario, ScenarioError
from kemu.protocol import linux
from kemu.protocol.errors import os_error

if TYPE_CHECKING:
    from kemu.agents.scenario.scripted import Actor

#: stat fields a transcript shows (the rest differ between any two runs)
STAT_FIELDS = ("st_mode", "st_size", "st_nlink")


def stat_view(value: Any) -> dict[str, int]:
    """The comparable part of a stat result (os.stat_result or the daemon's map)."""
    if isinstance(value, os.stat_result):
        return {f: int(getattr(value, f)) for f in STAT_FIELDS}
    return {f: int(value[f]) for f in STAT_FIELDS}


def fd_view(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The comparable part of a descriptor listing: number, path, offset, flags, and
    the fdinfo ``lock:`` lines (kind, state, type, pid) of a leased description."""
    out = []
    for e in entries:
        view = {"fd": e["fd"], "path": e["path"], "pos": e["pos"], "flags": e["flags"]}
        if e.get("locks"):
            view["locks"] = [{k: lk[k] for k in ("kind", "state", "type", "pid")}
                             for lk in e["locks"]]
        out.append(view)
    return out


def wait_status(status: int) -> str:
    """A wait status as strace decodes it: ``WIFEXITED(s) && WEXITSTATUS(s) == 3``,
    ``WIFSIGNALED(s) && WTERMSIG(s) == SIGKILL`` (``&& WCOREDUMP(s)`` with a core)."""
    if os.WIFEXITED(status):
        return f"WIFEXITED(s) && WEXITSTATUS(s) == {os.WEXITSTATUS(status)}"
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        name = strace.signal_name(sig)
        core = " && WCOREDUMP(s)" if os.WCOREDUMP(status) else ""
        return f"WIFSIGNALED(s) && WTERMSIG(s) == {name}{core}"
    if os.WIFSTOPPED(status):
        return f"WIFSTOPPED(s) && WSTOPSIG(s) == {os.WSTOPSIG(status)}"
    return "WIFCONTINUED(s)" if os.WIFCONTINUED(status) else hex(status)


def wait_view(pid: int, status: int) -> Any:
    """waitpid's value: 0 (WNOHANG, nobody has changed state), else the PID and the
    decoded status."""
    if pid == 0:
        return 0
    return {"pid": pid, "status": wait_status(status)}


def _data(value: Any) -> bytes:
    return value.encode() if isinstance(value, str) else bytes(value)


def _open(a: Actor, path: str, flags: int, mode: int = 0o777) -> int:
    return a.system.open(path, flags, mode)


def _close(a: Actor, fd: int) -> int:
    a.system.close(fd)
    return 0


def _write(a: Actor, fd: int, data: Any) -> int:
    return a.system.write(fd, _data(data))


def _pwrite(a: Actor, fd: int, data: Any, offset: int) -> int:
    return a.system.pwrite(fd, _data(data), offset)


def _zero(fn: Callable[..., Any]) -> Callable[..., int]:
    def call(a: Actor, *args: Any) -> int:
        fn(a.system, *args)
        return 0

    return call


def _sendfd(a: Actor, to: str, *fds: int) -> int:
    a.mailbox.send(to, None, list(fds))
    return 0


def _send(a: Actor, to: str, value: Any) -> int:
    a.mailbox.send(to, value, None)
    return 0


def _recv(a: Actor) -> Any:
    return a.mailbox.recv(a.step_timeout).value


def _recvfd(a: Actor) -> Any:
    msg = a.mailbox.recv(a.step_timeout)
    if len(msg.fds) == 1:
        return msg.fds[0]
    return msg.fds


def _signal(a: Actor, signum: int, action: str = "record") -> int:
    a.system.signal(signum, action)
    return 0


def _sigwait(a: Actor, signum: int, timeout: float | None = None) -> Any:
    return a.system.sigwait([signum], a.step_timeout if timeout is None else timeout)


def _sigblock(a: Actor, *signums: int) -> int:
    a.system.sigblock(list(signums))
    return 0


def _sigunblock(a: Actor, *signums: int) -> int:
    a.system.sigunblock(list(signums))
    return 0


def _kill(a: Actor, target: str | int, signum: int) -> int:
    """kill(2) among the run's processes only, on either target: the run is the actor's
    PID namespace.  A PID (or, negative, a process group) that is not one of the run's
    actors is ESRCH, as a PID no process of a namespace has; 0 is the caller's group
    and -1 every actor but the caller (``kernel/signal.c kill_something_info()``), each
    only as far as they are the run's."""
    pid = a.pids.get(target, 0) if isinstance(target, str) else target
    if isinstance(pid, bool) or not isinstance(pid, int):
        raise os_error(errno.EINVAL)
    ours = {p for p in a.pids.values() if p > 0} | {os.getpid()}
    if pid == -1:
        others = sorted(ours - {os.getpid()})
        if not others:
            raise os_error(errno.ESRCH)
        for p in others:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p, signum)
        return 0
    group = os.getpgid(0) if pid == 0 else -pid if pid < 0 else 0
    if group:
        members = [p for p in ours if _pgid(p) == group]
        if not members:
            raise os_error(errno.ESRCH)
        if _foreign_in_group(group, ours):  # the launcher's group: its actors only
            for p in members:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(p, signum)
        else:
            os.kill(-group, signum)
        return 0
    if pid not in ours:
        raise os_error(errno.ESRCH)
    os.kill(pid, signum)
    return 0


def _pgid(pid: int) -> int:
    """The process group of ``pid`` (0 when it is gone)."""
    try:
        return os.getpgid(pid)
    except OSError:
        return 0


def _foreign_in_group(group: int, ours: set[int]) -> bool:
    """Does process group ``group`` hold a process that is not the run's?"""
    with contextlib.suppress(OSError):
        for name in os.listdir("/proc"):
            if name.isdigit() and int(name) not in ours:
                try:
                    with open(f"/proc/{name}/stat", "rb") as fh:
                        stat = fh.read()
                except OSError:
                    continue
                if int(stat[stat.rindex(b")") + 2 :].split()[2]) == group:
                    return True
    return False


def _setpgid(a: Actor, pid: int = 0, pgid: int = 0) -> int:
    os.setpgid(pid, pgid)
    return 0


def _pause(a: Actor, seconds: float) -> int:
    """Let time pass in a scenario (to show what has not happened by then); signals
    that arrive meanwhile are taken as usual."""
    deadline = time.monotonic() + float(seconds)
    rec = getattr(a.system, "_recorder", None)
    while (left := deadline - time.monotonic()) > 0:
        if rec is None:
            time.sleep(left)
        else:
            select.select([rec.fileno()], [], [], left)
            a.system.process_signals()
    return 0


def _emu(a: Actor) -> Any:
    """The daemon channel: RDMA and the ledger exist on the emulator only."""
    call = getattr(a.system, "call", None)
    if call is None:
        raise OSError(errno.EOPNOTSUPP, "RDMA and pmem exist on the emulator only")
    return a.system


def _fallocate(a: Actor, fd: int, mode: int, offset: int, length: int) -> int:
    a.system.fallocate(fd, mode, offset, length)
    return 0


def _clone(a: Actor, src: int, dst: int) -> int:
    """ioctl(dst, FICLONE, src): reflink the whole of src into dst."""
    a.system.ficlone(src, dst)
    return 0


def _handle(mr: Any) -> int:
    return int(mr["handle"]) if isinstance(mr, dict) else int(mr)


CALLS: dict[str, Callable[..., Any]] = {
    "open": _open,
    "close": _close,
    "read": lambda a, fd, n: a.system.read(fd, n),
    "write": _write,
    "pread": lambda a, fd, n, off: a.system.pread(fd, n, off),
    "pwrite": _pwrite,
    "lseek": lambda a, fd, off, whence: a.system.lseek(fd, off, whence),
    "ftruncate": _zero(lambda s, fd, n: s.ftruncate(fd, n)),
    "truncate": _zero(lambda s, p, n: s.truncate(p, n)),
    "unlink": _zero(lambda s, p: s.unlink(p)),
    "rename": _zero(lambda s, o, n: s.rename(o, n)),
    "mkdir": _zero(lambda s, p, mode=0o777: s.mkdir(p, mode)),
    "rmdir": _zero(lambda s, p: s.rmdir(p)),
    "stat": lambda a, p: stat_view(a.system.stat(p)),
    "fstat": lambda a, fd: stat_view(a.system.fstat(fd)),
    "listdir": lambda a, p: a.system.listdir(p),
    "dup": lambda a, fd: a.system.dup(fd),
    "dup2": lambda a, fd, fd2: a.system.dup2(fd, fd2),
    "dup3": lambda a, fd, fd2, fl: a.system.dup3(fd, fd2, fl),
    "fcntl": lambda a, fd, cmd, arg=0: a.system.fcntl(fd, cmd, arg),
    "umask": lambda a, m: a.system.umask(m),
    "getpid": lambda a: a.system.getpid(),
    "fds": lambda a: fd_view(a.system.fds()),
    "send": _send,
    "sendfd": _sendfd,
    "recv": _recv,
    "recvfd": _recvfd,
    "signal": _signal,
    "signals": lambda a: a.system.signals(),
    "sigwait": _sigwait,
    "sigblock": _sigblock,
    "sigunblock": _sigunblock,
    "kill": _kill,
    "locks": lambda a: a.system.locks(),
    "setpgid": _setpgid,
    "getpgid": lambda a: os.getpgid(0),
    "setuid": _zero(lambda s, uid: s.setuid(uid)),
    "pause": _pause,
    "mmap": lambda a, length, prot, flags, fd, off=0: a.system.mmap(length, prot, flags, fd, off),
    "munmap": _zero(lambda s, addr, length: s.munmap(addr, length)),
    "store": lambda a, addr, data: a.system.store(addr, _data(data)),
    "load": lambda a, addr, n: a.system.load(addr, n),
    "maps": lambda a: a.system.call("proc_maps", a.system.getpid()),
    "ibv_open_device": lambda a: _emu(a).call("ibv_open_device"),
    "ibv_alloc_pd": lambda a, ctx: _emu(a).call("ibv_alloc_pd", ctx),
    "ibv_reg_mr": lambda a, ctx, addr, n, access, pd=0: _emu(a).call("ibv_reg_mr", ctx, addr, n,
                                                                       access, pd),
    "ibv_dereg_mr": lambda a, ctx, mr: _emu(a).call("ibv_dereg_mr", ctx, _handle(mr)) or 0,
    "ibv_get_async_event": lambda a, ctx: _emu(a).call("ibv_get_async_event", ctx),
    "rdma_write": lambda a, rkey, off, data: _emu(a).call(
        "rdma_write", rkey, off, data if isinstance(data, dict) else _data(data)),
    "rdma_read": lambda a, rkey, off, n: _emu(a).call("rdma_read", rkey, off, n),
    "dio_read": lambda a, fd, addr, n, off: _emu(a).call("dio_read", fd, addr, n, off),
    "ibv_create_qp": lambda a, ctx: _emu(a).ibv_create_qp(ctx),
    "ibv_destroy_qp": lambda a, ctx, qp: _emu(a).ibv_destroy_qp(ctx, qp) or 0,
    "ibv_post_send": lambda a, qp, opcode, rkey, off, sge, wr_id=0: _emu(a).ibv_post_send(
        qp, opcode, rkey, off, sge, wr_id) or 0,
    "ibv_poll_cq": lambda a, qp: _emu(a).ibv_poll_cq(qp, 20.0),
    "fallocate": _fallocate,
    "clone": _clone,
    "foreign_writes": lambda a: _emu(a).call("foreign_writes"),
    "file_pins": lambda a, pid=None: _emu(a).call("file_pins", pid or a.system.getpid()),
    "kernel_stats": lambda a: a.system.call("kernel_stats"),
    "pin_audit": lambda a: _emu(a).call("pin_audit"),
    # --- credentials and file attributes (issue 10, section 2) ---
    "setresuid": _zero(lambda s, r, e, su: s.setresuid(r, e, su)),
    "setgid": _zero(lambda s, gid: s.setgid(gid)),
    "setgroups": _zero(lambda s, *groups: s.setgroups(list(groups))),
    "access": _zero(lambda s, p, mode: s.faccessat(linux.AT_FDCWD, p, mode, 0)),
    "faccessat": _zero(lambda s, dirfd, p, mode, flags=0: s.faccessat(dirfd, p, mode, flags)),
    "chmod": _zero(lambda s, p, mode: s.chmod(p, mode)),
    "fchmod": _zero(lambda s, fd, mode: s.fchmod(fd, mode)),
    "chown": _zero(lambda s, p, uid, gid: s.chown(p, uid, gid)),
    "fchown": _zero(lambda s, fd, uid, gid: s.fchown(fd, uid, gid)),
    "waitpid": lambda a, pid, options=0: wait_view(*a.system.waitpid(pid, options)),
    "getrlimit": lambda a, res: list(a.system.getrlimit(res)),
    "pipe": lambda a, flags=0: a.system.pipe2(flags),
    "socketpair": lambda a, flags=0: a.system.socketpair(flags),
    "mkfifo": _zero(lambda s, p, mode=0o666: s.mkfifo(p, mode)),
    "utime": _zero(lambda s, p, times=None: s.utime(p, times)),
    "setxattr": _zero(lambda s, p, name, value, flags=0: s.setxattr(p, name, _data(value),
                                                                    flags)),
    "getxattr": lambda a, p, name: a.system.getxattr(p, name),
    "link": _zero(lambda s, old, new: s.link(old, new)),
    "symlink": _zero(lambda s, target, path: s.symlink(target, path)),
    "readlink": lambda a, p: a.system.readlink(p),
    "setrlimit": _zero(lambda s, res, soft, hard: s.setrlimit(res, soft, hard)),
    # --- the scenario language of issue 10, section 3 ---
    "sigtimedwait": lambda a, signum, timeout=None: a.system.sigtimedwait(
        [signum], a.step_timeout if timeout is None else timeout),
}

#: the system call a background call sleeps in (x86-64 numbers), to know it is asleep
SLEEPS_IN = {"open": linux.NR_openat, "truncate": linux.NR_truncate,
             "ftruncate": linux.NR_ftruncate, "fcntl": linux.NR_fcntl, "read": linux.NR_read,
             "write": linux.NR_write, "pread": linux.NR_pread64, "pwrite": linux.NR_pwrite64,
             "recvfd": linux.NR_recvmsg, "recv": linux.NR_recvmsg, "sigwait": linux.NR_select}

#: calls the scripted agent handles itself (they change the process)
PROCESS_CALLS = frozenset({"fork", "exec", "exit"})

#: how a background call's raw daemon result becomes the scenario's value
EMU_BACKGROUND: dict[str, Callable[[Any], Any]] = {
    "open": int, "read": bytes, "write": int, "pread": bytes, "pwrite": int, "lseek": int,
    "ftruncate": lambda v: 0, "truncate": lambda v: 0, "unlink": lambda v: 0,
    "rename": lambda v: 0, "mkdir": lambda v: 0, "rmdir": lambda v: 0,
    "stat": stat_view, "fstat": stat_view, "fcntl": lambda v: v, "close": lambda v: 0,
    "dup": int, "dup2": int, "dup3": int, "fallocate": lambda v: 0, "dio_read": int,
    "clone": lambda v: 0,
}


def render_calls(width: int = 88) -> str:
    """The README's list of what a scenario line may call, every name of :data:`CALLS`
    and :data:`PROCESS_CALLS` in the order the table has them (``tests/test_docs.py``
    keeps the README equal to it)."""
    names = [*CALLS, *sorted(PROCESS_CALLS - set(CALLS))]
    lines: list[str] = []
    line = ""
    for name in names:
        word = f"`{name}`"
        if line and len(line) + 1 + len(word) > width:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}" if line else word
    lines.append(line)
    return "\n".join(lines)


def known(name: str) -> bool:
    """True if a scenario may call ``name``."""
    return name in CALLS or name in PROCESS_CALLS


#: calls the scripted agent makes itself, not through :data:`CALLS`
PROCESS_CALLS = frozenset({"fork", "exec", "exit"})


def check_calls(scenario: Scenario) -> None:
    """Refuse, before any process starts, a line that calls a function the scripted
    agent does not have (it would fail only when its line runs)."""
    for step in [*scenario.steps, *(h for s in scenario.steps for h in s.handler)]:
        if step.kind == "call" and step.call not in CALLS and step.call not in PROCESS_CALLS \
                and not (step.call == "on" and step.handler):
            raise ScenarioError(f"{scenario.name}:{step.lineno}: unknown function "
                                f"{step.call!r}")
