"""The kernel's state and the operations every system-call family shares.

``Kernel`` holds the pmem device, the filesystem, the tasks, descriptors in flight,
pending forks, timers, the pin and shoot-down tables, the RDMA device and the design
(``policy``).  It builds state only: the composition root (:mod:`kemu.kernel_daemon.boot`)
registers the system-call families' lifecycle hooks and gives it its design.  It knows
nothing of sockets: replies to parked calls and events go out through a
:class:`KernelIO` the daemon loop provides (and unit tests replace), so the kernel's
objects can be tested in-process.
"""

from __future__ import annotations

import errno
import functools
import heapq
import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from kemu.kernel_daemon.cred import Cred
from kemu.kernel_daemon.errors import KernelError
from kemu.kernel_daemon.eventlog import EventLog
from kemu.kernel_daemon.pins import PinTable
from kemu.kernel_daemon.pmem import Owner, Pmem
from kemu.kernel_daemon.rdma import ForeignWrite, RdmaDevice
from kemu.kernel_daemon.sync import WaitQueue
from kemu.kernel_daemon.task import KEPT_FLAGS, File, Task
from kemu.kernel_daemon.vfs import Filesystem, Inode
from kemu.protocol import linux
from kemu.protocol.config import DaemonConfig

if TYPE_CHECKING:
    from kemu.kernel_daemon.af_unix import Mailbox
    from kemu.kernel_daemon.mm import MMSnapshot, Shootdown, TlbWord
    from kemu.kernel_daemon.policy import Policy

#: the daemon's settings (one dataclass, shared with the launcher: protocol.config)
Config = DaemonConfig


class KernelIO(Protocol):
    """What the kernel needs from the loop: answer a parked call, push an event."""

    def reply(self, task: Task, rid: int, value: Any = None, err: int | None = None) -> None:
        """Answer request ``rid`` of ``task`` with ``value`` or errno ``err``."""

    def event(self, task: Task, body: dict[str, Any]) -> None:
        """Push an unsolicited event to ``task``'s agent."""

    def watch_pid(self, pid: int, on_death: Callable[[], None]) -> bool:
        """Call ``on_death`` once ``pid`` (not a task) dies; False if it is gone already."""

    def revoke_after_reply(self, task: Task) -> None:
        """After the reply to the call being dispatched, accept no message from ``task``
        until its process registers again (exec's point of no return)."""


@dataclass
class Inflight:
    """A message in a socket's receive queue: data and files passed with SCM_RIGHTS."""

    sender: int
    dest: int
    files: list[File]
    data: bytes = b""


@dataclass
class PendingFork:
    """A fork announced by ``parent``: the descriptor table as it was at the fork."""

    token: bytes
    parent: int
    snapshot: list[tuple[int, File, bool]]
    child: int | None = None
    timer: Timer | None = None
    #: the parent's address space at the fork (``dup_mmap``'s copy)
    mm: MMSnapshot | None = None


@dataclass(order=True)
class Timer:
    """A deadline in the timer heap; cancelled timers stay in the heap, inert."""

    when: float
    seq: int
    callback: Callable[[], None] = field(compare=False)
    cancelled: bool = field(default=False, compare=False)

    def cancel(self) -> None:
        """Make the timer inert."""
        self.cancelled = True


def real_ppid(pid: int) -> int:
    """The host's parent PID of ``pid`` (field 4 of /proc/<pid>/stat), 0 if unknown."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            stat = fh.read()
        return int(stat[stat.rindex(b")") + 2 :].split()[1])
    except (OSError, ValueError, IndexError):
        return 0


class Kernel:
    """All kernel state of one daemon.  Built by :func:`kemu.kernel_daemon.boot.boot`."""

    def __init__(self, config: DaemonConfig, io: KernelIO, policy: Policy,
                 log: EventLog | None = None) -> None:
        self.config = config
        self.io = io
        self.log = log or EventLog(None)
        #: the design this kernel runs (``--policy``); every point where designs differ
        #: calls one of its methods
        self.policy = policy
        self.pmem = Pmem(config.pmem_name, config.nblocks, config.block_size, self._on_block)
        self.pmem.hold = self.hold_block
        self.pmem.reown = self.block_holder
        self.fs = Filesystem(self.pmem)
        self.tasks: dict[int, Task] = {}
        #: processes that exited and that their (registered) parent has not reaped yet
        #: (``EXIT_ZOMBIE``): they hold nothing but their PID, which F_GETOWN still
        #: finds (``pid_task``); the parent's ``wait4`` or its own exit releases them
        self.zombies: dict[int, Task] = {}
        #: long- and short-term pins of device blocks
        self.pins = PinTable(self.pmem)
        #: TLB shoot-downs pushed to processes and not yet acknowledged, by number
        self.shootdowns: dict[int, Shootdown] = {}
        #: the TLB word of each process that took one (``attach-mm``), by PID, and
        #: whether the timer that watches their store windows is set
        self.tlb_words: dict[int, TlbWord] = {}
        self.window_poll_armed = False
        #: the RDMA card: keys, queue pairs, the uverbs device
        self.rdma = RdmaDevice()
        #: bound datagram sockets by name (descriptor passing between processes)
        self.mailboxes: dict[str, Mailbox] = {}
        #: device writes that landed in a block another file owns, or nobody: the first
        #: ``rdma.FOREIGN_MAX`` (a region written in a loop after its blocks went would
        #: grow the list, and every reply of ``foreign_writes()``, without end); the
        #: others are counted, and each is still in the event log
        self.foreign_writes: list[ForeignWrite] = []
        self.foreign_dropped = 0
        self.pending_forks: dict[bytes, PendingFork] = {}
        #: callers of wait_exit sleeping until a process's exit is done, by PID
        self.exit_waiters: dict[int, WaitQueue[None]] = {}
        self.timers: list[Timer] = []
        self._timer_seq = itertools.count()
        #: the call being dispatched: (task, request id, call name)
        self.current: tuple[Task, int, str] | None = None
        self.clock: Callable[[], float] = time.monotonic
        #: the host's parent PID of a process (replaceable in unit tests)
        self.host_ppid: Callable[[int], int] = real_ppid
        # Lifecycle hooks: what the families do at points of a process's or a file's
        # life that are not a design's business.  Registered in one place,
        # kernel_daemon.boot; designs use the Policy methods instead.
        #: a block was given to a file page (the zero page is unmapped there)
        self.block_alloc_hooks: list[Callable[[Owner], None]] = []
        #: a File's last reference went (leases, uverbs contexts)
        self.file_release_hooks: list[Callable[[File], None]] = []
        #: a task exits, before its descriptors are closed
        self.exit_hooks: list[Callable[[Task], None]] = []
        #: a fork child registered: hook(parent or None, child, the fork)
        self.fork_hooks: list[Callable[[Task | None, Task, PendingFork], None]] = []
        #: fork_prepare (parent, pending fork), and an unclaimed fork dropped
        self.fork_prepare_hooks: list[Callable[[Task, PendingFork], None]] = []
        self.fork_drop_hooks: list[Callable[[PendingFork], None]] = []
        #: exec's point of no return, before close-on-exec descriptors close
        self.exec_hooks: list[Callable[[Task], None]] = []
        #: the daemon stops
        self.shutdown_hooks: list[Callable[[], None]] = []
        #: handlers of NOTIFY messages by their "what" (signal delivered, shoot-down ack)
        self.notify_handlers: dict[str, Callable[[Task, dict[str, Any]], None]] = {}

    # --- events -----------------------------------------------------------------------

    def _on_block(self, what: str, block: int, owner: Owner | None) -> None:
        if what == "alloc" and owner is not None:
            for hook in self.block_alloc_hooks:
                hook(owner)
        if self.log.enabled:
            # a block freed while a device still pins it: where a foreign write can land;
            # for a long-term pin, what became of the address space it was taken from,
            # and whether a peer has reached the region (it may write there next)
            pinned: dict[str, str | bool] = {}
            if what == "free" and self.pins.pinned(block):
                pinned["pinned"] = "longterm" if block in self.pins.longterm else "shortterm"
                gone = self.rdma.pin_owner(block)
                if gone is not None:
                    pinned["owner"], pinned["peer"] = gone
            self.log.emit(
                f"block-{what}", block=block,
                ino=owner.ino if owner else None, pgoff=owner.pgoff if owner else None,
                **pinned,
            )

    def block_holder(self, block: int) -> Owner | None:
        """A file that still maps ``block`` (a reflinked extent one sharer let go of),
        or None: the owner the ledger names while it still has the block, else the
        first other file that has it.  The sharer that lets go has dropped its page
        first (``inode.blocks`` no longer names the block), so it is never the answer;
        on Linux the extent's remaining references hold it (``fs/xfs/xfs_refcount.c``),
        nothing stays allocated to nobody.  Only shared blocks ask, so the walk over
        the files is rare."""
        owner = self.pmem.ledger[block]
        if owner is not None:
            inode = self.fs.inodes.get(owner.ino)
            if inode is not None and inode.blocks.get(owner.pgoff) == block:
                return owner
        for inode in self.fs.inodes.values():
            for page, b in inode.blocks.items():
                if b == block:
                    return Owner(inode.ino, page)
        return None

    def hold_block(self, block: int, owner: Owner) -> bool:
        """A block's last owner lets go of it: keep it busy (off the free list) while a
        device holds it?  An anonymous page always stays while long-term pinned (the pin
        holds a page reference); a file block as the design says
        (:meth:`Policy.busy_extent <kernel_daemon.policy.Policy.busy_extent>`)."""
        if owner.ino == 0:
            return block in self.pins.longterm
        if not self.pins.pinned(block):
            return False
        return self.policy.busy_extent(self, owner, block)

    # --- timers -----------------------------------------------------------------------

    def add_timer(self, delay: float, callback: Callable[[], None]) -> Timer:
        """Run ``callback`` ``delay`` seconds from now (from the loop, never nested)."""
        timer = Timer(self.clock() + max(0.0, delay), next(self._timer_seq), callback)
        heapq.heappush(self.timers, timer)
        return timer

    def next_deadline(self) -> float | None:
        """Seconds until the next live timer, or None."""
        while self.timers and self.timers[0].cancelled:
            heapq.heappop(self.timers)
        if not self.timers:
            return None
        return max(0.0, self.timers[0].when - self.clock())

    def run_timers(self) -> None:
        """Fire every timer whose deadline has passed."""
        now = self.clock()
        while self.timers and (self.timers[0].cancelled or self.timers[0].when <= now):
            timer = heapq.heappop(self.timers)
            if not timer.cancelled:
                timer.cancelled = True
                timer.callback()

    # --- the call being dispatched ---------------------------------------------------

    def current_rid(self) -> int | None:
        """The request id of the call being dispatched, if any."""
        return self.current[1] if self.current is not None else None

    # --- files ------------------------------------------------------------------------

    def open_file(self, inode: Inode, flags: int, path: str) -> File:
        """A new open file description on ``inode`` (``alloc_file``), one reference."""
        file = File(inode=inode, flags=flags & KEPT_FLAGS, path=path)
        if file.writable and inode.writecount < 0:
            # get_write_access(): a running program's file (deny_write_access)
            raise KernelError(errno.ETXTBSY)
        self.fs.get(inode)
        if file.writable:
            inode.writecount += 1
        elif file.readable:
            inode.readcount += 1
        file.refs = 1
        return file

    @staticmethod
    def fget(file: File) -> File:
        """Take a reference on ``file`` (``get_file``)."""
        file.refs += 1
        return file

    def fput(self, file: File) -> None:
        """Drop a reference; the last one releases the file (``__fput``)."""
        file.refs -= 1
        assert file.refs >= 0, "file reference count underflow"
        if file.refs == 0:
            for hook in self.file_release_hooks:
                hook(file)
            if file.writable:
                file.inode.writecount -= 1
            elif file.readable:
                file.inode.readcount -= 1
            self.fs.put(file.inode)

    def fd_install(self, task: Task, file: File, cloexec: bool, start: int = 0) -> int:
        """Give ``file`` (already referenced for this slot) the lowest free fd >= start."""
        fd = task.fds.lowest_free(start)
        task.fds.install(fd, file, cloexec)
        return fd

    def close_fd(self, task: Task, fd: int) -> None:
        """close(2) of one descriptor: the slot goes, then its file reference."""
        entry = task.fds.remove(fd)
        self.fput(entry.file)

    def file_of(self, task: Task, fd: int) -> File:
        """The file behind ``fd`` in ``task`` (``fdget``), or ``EBADF``."""
        return task.fds.get(fd).file

    # --- processes --------------------------------------------------------------------

    def new_task(
        self, pid: int, ppid: int, uid: int, gid: int, name: str,
        inherit: list[tuple[int, File, bool]] | None, creds: Cred | None = None,
    ) -> Task:
        """Create the task of a freshly registered process.

        A spawned process gets descriptors 0, 1 and 2 on one O_RDWR open of the
        console, as a process started from a login shell has; a fork child gets the references of its snapshot.
        ``creds`` are the process's real credentials (else every id is ``uid``/``gid``).
        """
        task = Task(pid=pid, ppid=ppid, name=name, cred=creds or Cred.of(uid, gid))
        if inherit is None:
            # one open file description shared by 0, 1 and 2, as a login terminal is
            console = self.open_file(self.fs.console, linux.O_RDWR | linux.O_LARGEFILE,
                                     "/dev/console")
            console.refs = 3
            for fd in (0, 1, 2):
                task.fds.install(fd, console, False)
        else:
            for fd, file, cloexec in inherit:
                task.fds.install(fd, file, cloexec)  # the snapshot's reference moves here
        self.tasks[pid] = task
        return task

    def exit_task(self, task: Task, why: str) -> None:
        """Everything the kernel does when a process dies (``do_exit``).

        Parked calls are cancelled, descriptors closed, passes addressed to it released,
        and whoever waited for it woken.  Nothing of the task is left afterwards.
        """
        if self.tasks.get(task.pid) is not task:
            return
        self.log.emit("exit", pid=task.pid, name=task.name, why=why)
        for cancel in list(task.parked.values()):
            cancel()
        task.parked.clear()
        for hook in self.exit_hooks:
            hook(task)
        for fd, _ in list(task.fds):
            self.close_fd(task, fd)
        if self.log.enabled:
            # regions it registered that outlive it, their context held by another process
            # (or passed and not yet received): ib_umem_get() took a reference to the
            # address space (umem->owning_mm), which is kept, pinned, after the exit;
            # remote: one of them has a remote key (a peer can still reach the pages)
            mrs = [mr for mr in self.rdma.lkeys.values() if mr.task is task and not mr.odp]
            if mrs:
                self.log.emit("mm-held", pid=task.pid, by="ib_umem",
                              pin=",".join(sorted({mr.pin for mr in mrs})),
                              remote=any(mr.rkey for mr in mrs))
        for pending in list(self.pending_forks.values()):
            if pending.parent == task.pid and pending.child is None:
                # The child may still register; give it a while, then drop the snapshot.
                pending.timer = self.add_timer(
                    self.config.fork_claim_timeout, functools.partial(self.drop_fork, pending.token)
                )
        del self.tasks[task.pid]
        if task.ppid in self.tasks:
            # exit_notify(): a zombie until the parent reaps it (a parent outside the
            # emulation, the launcher's zygote, reaps at once: no zombie kept)
            task.exit_state = "zombie"
            self.zombies[task.pid] = task
        else:
            task.exit_state = "dead"
        for child in self.tasks.values():
            if child.ppid == task.pid:
                # reparented, as by forget_original_parent(): to whoever the host says
                parent = self.host_ppid(child.pid)
                child.ppid = parent if parent in self.tasks else 0
        for zombie in [z for z in self.zombies.values() if z.ppid == task.pid]:
            # reparented to a reaper outside the emulation, which reaps it
            self.release_task(zombie)
        waiters = self.exit_waiters.pop(task.pid, None)
        if waiters is not None:
            waiters.wake_all()

    def release_task(self, task: Task) -> None:
        """``release_task``: a zombie is reaped; its PID names nobody any more."""
        if self.zombies.get(task.pid) is task:
            del self.zombies[task.pid]
            task.exit_state = "dead"
            self.log.emit("reap", pid=task.pid)

    def drop_fork(self, token: bytes) -> None:
        """Release a fork snapshot nobody will claim."""
        pending = self.pending_forks.pop(token, None)
        if pending is None:
            return
        if pending.timer:
            pending.timer.cancel()
        for _, file, _ in pending.snapshot:
            self.fput(file)
        for hook in self.fork_drop_hooks:
            hook(pending)
        self.log.emit("fork-dropped", parent=pending.parent, child=pending.child)

    def watch_unregistered_child(self, token: bytes, child: int) -> None:
        """Drop a fork snapshot if the child dies before it registers."""

        def on_death() -> None:
            pending = self.pending_forks.get(token)
            if pending is not None and pending.child == child:
                self.drop_fork(token)

        if not self.io.watch_pid(child, on_death):
            on_death()

    def task_of(self, pid: int) -> Task:
        """The live task with ``pid``, or ``ESRCH``."""
        task = self.tasks.get(pid)
        if task is None:
            raise KernelError(errno.ESRCH)
        return task

    def fdinfo(self, task: Task) -> list[dict[str, Any]]:
        """``/proc/<pid>/fd`` and ``fdinfo`` of ``task``: one map per descriptor."""
        out = []
        paths = self.fs.paths() if len(task.fds) > 8 else None
        for fd, entry in task.fds:
            f = entry.file
            if f.inode.anon:
                path = f.path  # pipefs, sockfs: "pipe:", "socket:"
            elif f.inode.nlink or f.inode.is_chr:
                path = paths.get(f.inode.ino, f.path) if paths else self.fs.path_of(f.inode)
            else:
                path = f"{f.path} (deleted)"
            out.append({
                "fd": fd,
                "path": path,
                "pos": f.pos,
                "flags": f.flags | (linux.O_CLOEXEC if entry.cloexec else 0),
                "ino": f.inode.ino,
                "file": f.fid,
            })
        return out

    def shutdown(self) -> None:
        """Release what the subsystems hold outside the process (queue pairs' rings and
        FIFOs), then the device (the daemon is stopping)."""
        for hook in self.shutdown_hooks:
            hook()
        self.pmem.close(unlink=True)
