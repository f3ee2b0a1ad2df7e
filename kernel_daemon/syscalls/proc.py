"""Process lifecycle: registration, fork, exec, and the process introspection calls.

``fork`` is two-step because the agent forks for real: the parent announces it and gets
a token naming a snapshot of its descriptor table (``dup_fd``: the same files, the same
close-on-exec flags), the child registers with the token, and the parent reports the
child's PID.  ``exec`` closes close-on-exec descriptors (``do_close_on_exec``) and
invalidates the old image's secret; the new image registers again as the same PID.
"""

from __future__ import annotations

import errno
import secrets
import select
from typing import Any

from kemu.kernel_daemon import cred, locks
from kemu.kernel_daemon.errors import KernelError
from kemu.kernel_daemon.kernel import Kernel, PendingFork
from kemu.kernel_daemon.sync import WaitQueue
from kemu.kernel_daemon.syscalls.table import syscall
from kemu.kernel_daemon.task import Task
from kemu.protocol import linux, wire


class RegistrationRefused(Exception):
    """Registration failed; ``reason`` is a machine-readable protocol reason."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def register(
    k: Kernel, pid: int, uid: int, gid: int, real_ppid: int, hello: dict[str, Any]
) -> Task:
    """Create (or, after exec, renew) the task of a process that registered.

    ``pid``, ``uid`` and ``gid`` come from ``SO_PEERCRED``; ``real_ppid`` from the host's
    process table.  A fork token is honoured only by a real child of the announcing
    parent; an exec token only by the PID that announced the exec.
    """
    kind = hello.get("kind")
    name = hello.get("name", "")
    umask = hello.get("umask", 0o022)
    if (not isinstance(name, str) or not isinstance(umask, int) or not isinstance(kind, str)
            or kind not in wire.KINDS_REGISTER):
        raise RegistrationRefused(wire.E_MALFORMED, "bad hello")
    token = hello.get("token")
    if kind == wire.SPAWN:
        if pid in k.tasks:
            raise RegistrationRefused(wire.E_BAD_TOKEN, f"pid {pid} is already registered")
        ppid = real_ppid if real_ppid in k.tasks else 0
        task = k.new_task(pid, ppid, uid, gid, name, None, cred.from_proc(pid))
    elif kind == wire.FORK:
        pending = k.pending_forks.get(token) if isinstance(token, bytes) else None
        if pending is None or not isinstance(token, bytes):
            raise RegistrationRefused(wire.E_BAD_TOKEN, "unknown fork token")
        if pending.parent != real_ppid:
            raise RegistrationRefused(wire.E_BAD_TOKEN, "fork token of another parent")
        if pid in k.tasks:
            raise RegistrationRefused(wire.E_BAD_TOKEN, f"pid {pid} is already registered")
        del k.pending_forks[token]
        if pending.timer:
            pending.timer.cancel()
        parent = k.tasks.get(pending.parent)
        task = k.new_task(pid, pending.parent, uid, gid, name, pending.snapshot,
                          cred.from_proc(pid))
        for hook in k.fork_hooks:
            hook(parent, task, pending)
    else:  # EXEC
        task_or_none = k.tasks.get(pid)
        expected = task_or_none.exec_token if task_or_none is not None else None
        if (task_or_none is None or not isinstance(token, bytes) or expected is None
                or expected != token):
            raise RegistrationRefused(wire.E_BAD_TOKEN, "unknown exec token")
        task = task_or_none
        task.exec_token = None
        task.name = name or task.name
        task.cred = cred.from_proc(pid) or task.cred  # a set-user-ID image changes it
    zombie = k.zombies.get(pid)
    if zombie is not None and zombie is not task:
        k.release_task(zombie)  # reaped behind the daemon's back; the PID is reused
    task.umask = umask & 0o777
    task.fds.limit = nofile_limit(pid, hello.get("nofile"))
    task.rlim_sigpending = read_rlimit(pid, linux.RLIMIT_SIGPENDING) or task.rlim_sigpending
    k.log.emit("register", pid=pid, kind=kind, name=task.name, ppid=task.ppid)
    return task


#: the most descriptors a process may have when its real limit cannot be read
FALLBACK_NOFILE = 1024
#: the table is a dict: no limit above this, whatever the process's
MAX_NOFILE = 1 << 20


def nofile_limit(pid: int, claimed: object) -> int:
    """The descriptor limit of process ``pid``: its real ``RLIMIT_NOFILE`` soft limit,
    read by the daemon (``prlimit(2)``), never what the process claims at registration
    (a process could claim 2^20 and get as many descriptors); the claim only where the
    real one cannot be read (a made-up PID), then no more than 1024."""
    import resource

    try:
        soft, _ = resource.prlimit(pid, resource.RLIMIT_NOFILE)
    except (OSError, ValueError):
        soft = -1
    if soft == resource.RLIM_INFINITY:
        soft = MAX_NOFILE
    elif soft < 0:
        ok = isinstance(claimed, int) and not isinstance(claimed, bool) and claimed > 0
        soft = min(int(claimed), FALLBACK_NOFILE) if ok else FALLBACK_NOFILE  # type: ignore[call-overload]
    return max(1, min(soft, MAX_NOFILE))


def read_rlimit(pid: int, resource: int) -> tuple[int, int] | None:
    """Process ``pid``'s real limit, RLIM_INFINITY as all ones, from
    ``/proc/<pid>/limits`` (fs/proc/base.c proc_pid_limits(): one row per resource, in
    resource order; readable whoever the process runs as, where prlimit(2) of another
    user's process needs CAP_SYS_RESOURCE); None when it cannot be read."""
    try:
        with open(f"/proc/{pid}/limits") as fh:
            row = fh.read().splitlines()[1 + resource]
        words = row[26:].split()
        soft, hard = (linux.RLIM_INFINITY if w == "unlimited" else int(w) for w in words[:2])
    except (OSError, IndexError, ValueError):
        return None
    return soft, hard


#: the limits the emulator keeps (others are answered from the process's real ones)
RLIMITS = (linux.RLIMIT_NOFILE, linux.RLIMIT_SIGPENDING)


@syscall("getrlimit", linux="kernel/sys.c do_prlimit()", support="partial",
         note="the descriptor and pending-signal limits the emulator applies; other "
              "resources as the host has them")
def sys_getrlimit(k: Kernel, t: Task, resource: int) -> list[int]:
    """getrlimit(2): [soft, hard] (RLIM_INFINITY as all ones); EINVAL for an unknown
    resource."""
    if not 0 <= resource < 16:
        raise KernelError(errno.EINVAL)
    real = read_rlimit(t.pid, resource)
    if resource == linux.RLIMIT_NOFILE:
        return [t.fds.limit, real[1] if real else t.fds.limit]
    if resource == linux.RLIMIT_SIGPENDING:
        return list(t.rlim_sigpending)
    if real is None:
        raise KernelError(errno.ESRCH)
    return list(real)


@syscall("setrlimit", linux="kernel/sys.c do_prlimit()", support="partial",
         note="after the agent's real setrlimit(2): the daemon adopts the limit prlimit(2) "
              "shows (RLIMIT_NOFILE: the descriptor table; RLIMIT_SIGPENDING: the "
              "real-time signal queue)")
def sys_setrlimit(k: Kernel, t: Task, resource: int, soft: int, hard: int) -> int:
    """Adopt the process's limit after a real setrlimit(2) (EPERM if it is not the
    one asked for)."""
    if not 0 <= resource < 16:
        raise KernelError(errno.EINVAL)
    real = read_rlimit(t.pid, resource)
    if real is None:
        raise KernelError(errno.ESRCH)
    want = tuple(linux.RLIM_INFINITY if v == -1 else v for v in (soft, hard))
    if real != want:
        raise KernelError(errno.EPERM)
    if resource == linux.RLIMIT_NOFILE:
        t.fds.limit = MAX_NOFILE if real[0] == linux.RLIM_INFINITY else \
            max(0, min(real[0], MAX_NOFILE))
    elif resource == linux.RLIMIT_SIGPENDING:
        t.rlim_sigpending = real
    return 0


@syscall("fork_prepare", linux="kernel/fork.c copy_process() dup_fd()", support="emulator",
         note="step 1 of fork: snapshot the descriptor table, return a token")
def sys_fork_prepare(k: Kernel, t: Task) -> bytes:
    """Snapshot ``t``'s descriptor table for a child about to be forked."""
    token = secrets.token_bytes(16)
    snapshot = [(fd, k.fget(e.file), e.cloexec) for fd, e in t.fds]
    pending = PendingFork(token=token, parent=t.pid, snapshot=snapshot)
    k.pending_forks[token] = pending
    for hook in k.fork_prepare_hooks:
        hook(t, pending)
    return token


@syscall("fork_done", linux="kernel/fork.c kernel_clone()", support="emulator",
         note="step 3 of fork: the parent reports the child's PID, or -1 when fork failed")
def sys_fork_done(k: Kernel, t: Task, token: bytes, child: int) -> int:
    """Record the child's PID; ``-1`` (fork failed) drops the snapshot.

    ``child`` must be a real child of the caller (the host's process table says so),
    so a parent cannot make the daemon watch an unrelated process.
    """
    pending = k.pending_forks.get(token)
    if child in k.tasks and k.tasks[child].ppid == t.pid:
        return 0  # the child registered first
    if pending is None or pending.parent != t.pid:
        raise KernelError(errno.EINVAL)
    if child == -1:
        k.drop_fork(token)
        return 0
    if child <= 0 or child > 1 << 22 or k.host_ppid(child) != t.pid:
        raise KernelError(errno.EINVAL, "not a child of the caller")
    pending.child = child
    k.watch_unregistered_child(token, child)
    return 0


@syscall("exec_prepare", linux="fs/exec.c begin_new_exec()", support="emulator",
         note="close close-on-exec descriptors, drop the image's state, return a token")
def sys_exec_prepare(k: Kernel, t: Task) -> bytes:
    """The point of no return of execve: close-on-exec descriptors are closed.

    Calls the old image left parked die with it (its other threads are gone).
    """
    for rid, cancel in list(t.parked.items()):
        if rid != k.current_rid():
            cancel()
            t.parked.pop(rid, None)
    for hook in k.exec_hooks:
        hook(t)
    for fd, entry in list(t.fds):
        if entry.cloexec:
            k.close_fd(t, fd)
    token = secrets.token_bytes(16)
    t.exec_token = token
    t.execs += 1
    k.log.emit("exec", pid=t.pid)
    k.io.revoke_after_reply(t)
    return token


@syscall("getpid", linux="kernel/sys.c getpid()")
def sys_getpid(k: Kernel, t: Task) -> int:
    """getpid(2): the PID the host kernel vouched for at registration."""
    return t.pid


@syscall("getppid", linux="kernel/sys.c getppid()", support="partial",
         note="the registered parent, 0 when the parent is not an emulated process")
def sys_getppid(k: Kernel, t: Task) -> int:
    """getppid(2) as the emulator knows it."""
    return t.ppid


@syscall("umask", linux="kernel/sys.c umask()")
def sys_umask(k: Kernel, t: Task, mask: int) -> int:
    """umask(2): set the creation mask, return the old one."""
    old = t.umask
    t.umask = mask & 0o777
    return old


@syscall("proc_fds", linux="fs/proc/fd.c proc_readfd() seq_show()", support="emulator",
         note="/proc/<pid>/fd and fdinfo of any process (as root)")
def sys_proc_fds(k: Kernel, t: Task, pid: int) -> list[dict[str, Any]]:
    """The descriptors of process ``pid``: number, path, offset, flags, file id, and
    the ``lock:`` lines of fdinfo (``show_fd_locks``) where the description has any."""
    task = k.task_of(pid)
    out = k.fdinfo(task)
    for entry in out:
        held = locks.file_locks(k, task.fds.get(entry["fd"]).file)
        if held:
            entry["locks"] = held
    return out


@syscall("proc_list", linux="fs/proc/root.c", support="emulator",
         note="every registered process: pid, parent, name, descriptor count")
def sys_proc_list(k: Kernel, t: Task) -> list[dict[str, Any]]:
    """The registered processes."""
    return [
        {"pid": p.pid, "ppid": p.ppid, "name": p.name, "fds": len(p.fds), "parked": len(p.parked)}
        for p in sorted(k.tasks.values(), key=lambda p: p.pid)
    ]


def orphan_blocks(k: Kernel) -> list[int]:
    """Blocks that are allocated but owned by nothing that exists: a file page of an
    inode that is gone, or an anonymous page no mapping or unclaimed fork holds."""
    anon: set[int] = set()
    for p in k.tasks.values():
        for m in p.mm.vmas.values():
            if m.file is None:
                anon.update(b for b in m.ptes.values() if b >= 0)
            anon.update(m.cow.values())
    for pf in k.pending_forks.values():
        if pf.mm is not None:
            for v in pf.mm.vmas:
                anon.update(b for b in {**v.ptes, **v.cow}.values() if b >= 0)
    out = []
    for block, owner in enumerate(k.pmem.ledger):
        if owner is None:
            continue
        held = block in anon if owner.ino == 0 else owner.ino in k.fs.inodes
        if not held:
            out.append(block)
    return out


@syscall("kernel_stats", linux="(none)", support="emulator",
         note="counts of every kernel object, to check that nothing leaks")
def sys_kernel_stats(k: Kernel, t: Task) -> dict[str, int]:
    """Object counts: tasks, open files, inodes, blocks in use, passes in flight."""
    files = {id(e.file) for p in k.tasks.values() for _, e in p.fds}
    boxes = k.mailboxes.values()
    files |= {id(f) for box in boxes for msg in box.queue for f in msg.files}
    files |= {id(f) for pf in k.pending_forks.values() for _, f, _ in pf.snapshot}
    return {
        "tasks": len(k.tasks),
        "files": len(files),
        "inodes": len(k.fs.inodes),
        "blocks_used": k.pmem.nblocks - k.pmem.free_blocks,
        "inflight": sum(len(box.queue) for box in boxes),
        "pending_forks": len(k.pending_forks),
        "parked": sum(len(p.parked) for p in k.tasks.values()),
        "timers": sum(1 for tm in k.timers if not tm.cancelled),
        "leases": sum(len(i.flc) for i in k.fs.inodes.values()),
        "mappings": sum(len(p.mm.vmas) for p in k.tasks.values()),
        "mrs": len(k.rdma.rkeys),
        "pinned_blocks": len(k.pins.longterm) + len(k.pins.shortterm),
        "busy_blocks": len(k.pmem.busy),
        "orphan_blocks": len(orphan_blocks(k)),
        "shootdowns": len(k.shootdowns),
        "mailboxes": len(k.mailboxes),
        "qps": len(k.rdma.qps),
        "foreign_dropped": k.foreign_dropped,
    }


@syscall("pin_audit", linux="(none)", support="emulator",
         note="the pin table against the regions and transfers that hold pins")
def sys_pin_audit(k: Kernel, t: Task) -> dict[str, Any]:
    """Every long-term pin must belong to a region of a context someone still holds (a
    descriptor, a message in flight, a fork not yet claimed), and every short-term pin
    to a transfer a live process waits for.  ``unattributed`` lists the blocks whose pin
    counts disagree."""
    contexts = []
    # (holding process, file); None: a message in flight, a fork not yet claimed
    holders: list[tuple[int | None, Any]] = [(p.pid, e.file) for p in k.tasks.values()
                                             for _, e in p.fds]
    holders += [(None, f) for box in k.mailboxes.values() for msg in box.queue
                for f in msg.files]
    holders += [(None, f) for pf in k.pending_forks.values() for _, f, _ in pf.snapshot]
    for _, f in holders:
        if f.private_data is not None and f.private_data not in contexts:
            contexts.append(f.private_data)
    expected: dict[int, int] = {}
    for ctx in contexts:
        for mr in ctx.mrs.values():
            for pin in mr.pins:
                expected[pin.block] = expected.get(pin.block, 0) + 1
    bad = sorted(b for b in expected.keys() | k.pins.longterm.keys()
                 if expected.get(b, 0) != k.pins.longterm.get(b, 0))
    waiting = any(p.parked for p in k.tasks.values())
    short = sorted(k.pins.shortterm) if not waiting else []
    if k.log.enabled:
        _log_regions(k, contexts, holders)
    return {"longterm": len(k.pins.longterm), "shortterm": len(k.pins.shortterm),
            "unattributed": bad + short}


def _log_regions(k: Kernel, contexts: list[Any], holders: list[tuple[int | None, Any]]
                 ) -> None:
    """For the event log, at the audit: each kind of region that lives on, once: what it
    pins, what became of its registrar (``owner``), whether something other than the
    registrar holds its context (``shared``: another process's descriptor, a pass in
    flight, a fork not yet claimed; ``holders`` as :func:`sys_pin_audit` found them)
    and a peer has reached it by its rkey (``peer``), and whether it has an rkey
    (``remote``).  A guided ``find`` campaign counts these as the state its program
    left: a region over a DAX file whose registrar is gone, its context held and its
    key in a peer's hands, is one step from a foreign write."""
    held: dict[int, set[int | None]] = {}
    for pid, f in holders:
        if f.private_data is not None:
            held.setdefault(id(f.private_data), set()).add(pid)
    kinds = set()
    for ctx in contexts:
        for mr in ctx.mrs.values():
            shared = bool(held.get(id(ctx), set()) - {mr.task.pid})
            kinds.add((mr.pin, mr.owner, shared, mr.peer, bool(mr.rkey)))
    for pin, owner, shared, peer, remote in sorted(kinds):
        k.log.emit("mr-state", pin=pin, owner=owner, shared=shared, peer=peer, remote=remote)


@syscall("wait4", linux="kernel/exit.c do_wait() release_task()", support="partial",
         note="after the agent's real wait4(2) reaped a child that exited: its zombie is "
              "released (F_GETOWN stops finding it)")
def sys_wait4(k: Kernel, t: Task, pid: int, status: int) -> int:
    """The caller reaped child ``pid`` for real (``status`` is what wait4 gave): the
    zombie goes (``release_task``).  A child whose death the daemon has not seen yet
    (the wait overtook the pidfd) exits first; one that is not dead is EINVAL, another
    process's child ECHILD."""
    task = k.zombies.get(pid)
    live = k.tasks.get(pid)
    if task is None and live is not None:
        if live.ppid != t.pid:
            raise KernelError(errno.ECHILD)
        if live.pidfd < 0 or not select.select([live.pidfd], [], [], 0)[0]:
            raise KernelError(errno.EINVAL, "the child has not exited")
        k.exit_task(live, "died")
        task = k.zombies.get(pid)
    if task is None:
        return 0  # not a registered process's zombie (a child that never registered)
    if task.ppid != t.pid:
        raise KernelError(errno.ECHILD)
    k.release_task(task)
    return 0


@syscall("wait_exit", linux="kernel/exit.c do_wait()", support="emulator",
         note="block until the daemon has finished the exit of process pid")
def sys_wait_exit(k: Kernel, t: Task, pid: int) -> Any:
    """Return once ``pid`` is no longer a task (at once if it is not one now).

    The launcher uses it after killing an actor, so that the next step runs after the
    kernel has cleaned up the dead process, never before.
    """
    if pid not in k.tasks:
        return 0
    k.exit_waiters.setdefault(pid, WaitQueue()).sleep()


@syscall("exec_program", linux="fs/exec.c do_open_execat() deny_write_access(), "
         "begin_new_exec()", support="emulator",
         note="execve(2) of a program file: EACCES unless a regular file with an x bit, "
              "ETXTBSY while open for writing; the file then refuses writers (ETXTBSY) "
              "and write leases until the process ends; the agent runs the program itself")
def sys_exec_program(k: Kernel, t: Task, path: str, check: int = 0) -> bytes:
    """execve(2) of the program file ``path`` up to its point of no return.

    Linux: ``do_open_execat()`` opens the file for execution (``may_open`` with
    MAY_EXEC: a regular file with an execute bit, root included) and
    ``deny_write_access()`` makes ``i_writecount`` negative (ETXTBSY if the file is
    open for writing), so while the process runs it an open for writing or a
    truncate is ETXTBSY and F_WRLCK is EAGAIN (``check_conflicting_open``); the
    process's exit gives the write access back (``allow_write_access``, here an exit
    hook).  Then as :func:`sys_exec_prepare`.  The process never registers again.
    With ``check`` only the checks are made (the agent reads the file's bytes next,
    and refuses with ENOEXEC what is not an executable, as the binary loaders do).
    """
    inode = k.fs.lookup(path)
    if not inode.is_reg or not inode.mode & 0o111:
        raise KernelError(errno.EACCES)
    if inode.writecount > 0:
        raise KernelError(errno.ETXTBSY)
    if check:
        return b""
    k.fs.get(inode)
    inode.writecount -= 1
    t.exe = inode
    k.log.emit("exec-program", pid=t.pid, path=path, ino=inode.ino)
    token: bytes = sys_exec_prepare(k, t)
    return token


def release_exe(k: Kernel, task: Task) -> None:
    """Exit hook: the program file the process ran gets its write access back
    (``allow_write_access`` when ``mm->exe_file`` goes)."""
    inode, task.exe = task.exe, None
    if inode is not None:
        inode.writecount += 1
        k.fs.put(inode)
