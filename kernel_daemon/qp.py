"""Queue pairs: the verbs data path that bypasses the system-call channel.

In rdma-core, ``ibv_post_send`` writes a work request into a send queue the process
has mapped and rings a doorbell (an MMIO write); the card executes it and writes a
completion into a completion queue the process polls.  No system call is involved,
which is why RDMA is fast.  The emulator does the same with what it has: the send queue
and its completions are a small shared-memory ring the daemon creates per queue pair,
the doorbell is a pipe the daemon's epoll loop watches, and a second pipe wakes a
process that waits for a completion (``ibv_poll_cq`` on a completion channel).  None of
them has a name: the creator takes them by descriptor (:func:`attach`), so no other
process can post to the queue pair (or see its completions).  The
daemon, as the card, executes each work request with the same code as ``rdma_write`` /
``rdma_read`` (:func:`kemu.kernel_daemon.rdma.rdma_write`): the same access checks, the same
ledger check of every device write, the same event-log records.

Ring layout (little endian), ``SLOTS`` slots of ``SLOT`` bytes after a 64-byte header::

    header: u64 produced (written by the process), u64 consumed (written by the card)
    slot:   u32 opcode, u32 rkey, u64 remote offset, u32 lkey, u32 -, u64 addr,
            u64 length, u64 wr_id, ..., u32 status at 56 (0 until completed)

Everything in the ring is the process's to scribble on: the card reads each slot once,
checks every field (``IBV_WC_LOC_QP_OP_ERR`` for nonsense) and never trusts an index.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import os
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from kemu.kernel_daemon import rdma
from kemu.kernel_daemon.errors import KernelError
from kemu.kernel_daemon.task import Task
from kemu.protocol import shm
from kemu.protocol.ring import (
    HEADER,
    IBV_WR_RDMA_READ,
    IBV_WR_RDMA_WRITE,
    RING_SIZE,
    SLOT,
    SLOTS,
    STATUS_AT,
    STATUS_CODE,
    WQE,
)

if TYPE_CHECKING:
    from kemu.kernel_daemon.kernel import Kernel

MAX_QPS_PER_TASK = 16
#: how long the card keeps looking at a send queue after it emptied it (seconds)
POLL_AFTER = 0.0001

_qpns = itertools.count(1)


@dataclass(eq=False)
class QP:
    """A queue pair of a context, posted to by the process that created it.

    Its ring and its two pipes have no name anywhere (a ``memfd`` and ``pipe2``): the
    creator takes them by descriptor once (:func:`attach`, ``SCM_RIGHTS`` over the
    registration socket, the caller checked with ``SO_PEERCRED``), as only the holder
    of a uverbs context reaches the doorbell page ``ib_uverbs_mmap()`` maps for it.
    """

    qpn: int
    ctx: rdma.UContext
    task: Task
    ring: shm.Segment
    #: the card's end of the doorbell (read) and of the completion pipe (write)
    db_fd: int
    cq_fd: int
    #: the daemon's own writer of the doorbell: a pipe whose last writer closed reads
    #: EOF and polls EPOLLHUP for ever (fs/pipe.c pipe_poll), which would spin the
    #: loop; with this one open it is quiet until a process rings.  Also the end the
    #: creator is handed (SCM_RIGHTS duplicates it)
    db_keep: int = -1
    #: what the creator takes with :func:`attach` (the ring's memfd, the completion
    #: pipe's read end), None once taken: only the creator, only once
    handout: list[int] | None = None
    consumed: int = 0
    dead: bool = False


def _qps(k: Kernel) -> dict[int, QP]:
    return k.rdma.qps


def create_qp(k: Kernel, task: Task, ctx: rdma.UContext) -> dict[str, Any]:
    """``ibv_create_qp``: the ring, the doorbell and the completion pipe, watched by the
    loop; the creator takes them by descriptor with an ``attach-qp`` record."""
    if ctx.aborted:
        raise KernelError(errno.EIO)
    if sum(1 for q in _qps(k).values() if q.task is task) >= MAX_QPS_PER_TASK:
        raise KernelError(errno.ENOMEM)
    watch = getattr(k.io, "watch_fd", None)
    if watch is None:
        raise KernelError(errno.EOPNOTSUPP, "no loop to watch a doorbell")
    qpn = next(_qpns)
    fds: list[int] = []
    try:
        ring, ring_fd = shm.anonymous(f"kemu-qp{qpn}", RING_SIZE)
        fds.append(ring_fd)
        db_r, db_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        fds += [db_r, db_w]
        cq_r, cq_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        fds += [cq_r, cq_w]
    except OSError as exc:
        for fd in fds:
            os.close(fd)
        raise KernelError(exc.errno or errno.EIO) from None
    qp = QP(qpn=qpn, ctx=ctx, task=task, ring=ring, db_fd=db_r, cq_fd=cq_w, db_keep=db_w,
            handout=[ring_fd, cq_r])
    _qps(k)[qpn] = qp
    ctx.qps.append(qp)
    watch(qp.db_fd, lambda: doorbell(k, qp))
    k.log.emit("create_qp", pid=task.pid, ctx=ctx.cid, qpn=qpn)
    return {"qpn": qpn, "slots": SLOTS}


def attach(k: Kernel, pid: int, qpn: Any) -> list[int]:
    """The descriptors of queue pair ``qpn`` for process ``pid`` (as the host kernel
    vouches for it): the ring's memfd, the doorbell's write end, the completion pipe's
    read end, in that order.  Only its creator may take them, once; the caller passes
    them (``SCM_RIGHTS``) and then calls :func:`handed_out`.  EPERM otherwise, ENOENT
    for no such queue pair."""
    qp = _qps(k).get(qpn) if isinstance(qpn, int) and not isinstance(qpn, bool) else None
    if qp is None or qp.dead:
        raise KernelError(errno.ENOENT, f"no queue pair {qpn!r}")
    if qp.task.pid != pid or k.tasks.get(pid) is not qp.task:
        k.log.emit("qp-error", pid=pid, qpn=qp.qpn, why=f"attach by pid {pid}, not the creator")
        raise KernelError(errno.EPERM, f"queue pair {qpn} is not pid {pid}'s")
    if qp.handout is None:
        raise KernelError(errno.EPERM, f"queue pair {qpn} was taken already")
    ring_fd, cq_r = qp.handout
    return [ring_fd, qp.db_keep, cq_r]


def handed_out(k: Kernel, qpn: int) -> None:
    """The creator has its descriptors: the daemon closes its copies of its ends."""
    qp = _qps(k).get(qpn)
    if qp is not None and qp.handout is not None:
        for fd in qp.handout:
            with contextlib.suppress(OSError):
                os.close(fd)
        qp.handout = None


def destroy_qp(k: Kernel, qp: QP, why: str) -> None:
    """The queue pair goes: no more doorbells, its files and ring removed."""
    if qp.dead:
        return
    qp.dead = True
    _qps(k).pop(qp.qpn, None)
    unwatch = getattr(k.io, "unwatch_fd", None)
    if unwatch is not None:
        unwatch(qp.db_fd)
    for fd in (qp.db_fd, qp.cq_fd, qp.db_keep, *(qp.handout or ())):
        with contextlib.suppress(OSError):
            os.close(fd)
    qp.handout = None
    qp.ring.close()
    lst = qp.ctx.qps
    if qp in lst:
        lst.remove(qp)
    k.log.emit("destroy_qp", pid=qp.task.pid, qpn=qp.qpn, why=why)


def doorbell(k: Kernel, qp: QP) -> None:
    """The doorbell rang: execute every posted work request, complete each in its slot
    and wake the process once per completion."""
    with contextlib.suppress(BlockingIOError, InterruptedError):
        while os.read(qp.db_fd, 4096):
            pass
    if qp.dead:
        return
    buf = qp.ring.buf
    assert buf is not None
    produced = int.from_bytes(buf[0:8], "little")
    pending = produced - qp.consumed
    if pending <= 0:
        return
    if pending > SLOTS:  # the process broke the ring: nothing in it can be trusted
        qp.consumed = produced
        buf[8:16] = produced.to_bytes(8, "little")
        k.log.emit("qp-error", pid=qp.task.pid, qpn=qp.qpn, why="ring overrun")
        return
    alive = k.tasks.get(qp.task.pid) is qp.task and not qp.ctx.dead
    while True:
        while qp.consumed < produced:
            at = HEADER + (qp.consumed % SLOTS) * SLOT
            status = (execute(k, qp, WQE.unpack_from(buf, at)) if alive
                      else rdma.WC_LOC_QP_OP_ERR)
            buf[at + STATUS_AT : at + STATUS_AT + 4] = STATUS_CODE[status].to_bytes(4, "little")
            qp.consumed += 1
            buf[8:16] = qp.consumed.to_bytes(8, "little")
            with contextlib.suppress(BlockingIOError, BrokenPipeError):
                os.write(qp.cq_fd, b"c")
        # as a card keeps fetching from a busy send queue: a work request posted within
        # POLL_AFTER seconds is taken without waiting for the loop to see its doorbell
        until = time.perf_counter() + POLL_AFTER
        while produced == qp.consumed and time.perf_counter() < until:
            produced = int.from_bytes(buf[0:8], "little")
        if produced == qp.consumed or not 0 < produced - qp.consumed <= SLOTS:
            return


def execute(k: Kernel, qp: QP, wqe: tuple[int, ...]) -> str:
    """Execute one work request, with the poster's rights; its completion status."""
    opcode, rkey, offset, lkey, _, addr, length, _wr_id = wqe
    if qp.ctx.aborted or length > rdma.MAX_TRANSFER:
        return rdma.WC_LOC_QP_OP_ERR
    sge = {"lkey": lkey, "addr": addr, "length": length}
    if opcode == IBV_WR_RDMA_WRITE:
        return rdma.rdma_write(k, qp.task, rkey, offset, sge, via=f"qp {qp.qpn}")
    if opcode == IBV_WR_RDMA_READ:
        return str(rdma.rdma_read(k, qp.task, rkey, offset, sge, via=f"qp {qp.qpn}")["status"])
    return rdma.WC_LOC_QP_OP_ERR


def release_task(k: Kernel, task: Task) -> None:
    """The process is gone (exit or exec): its queue pairs go with it."""
    for qp in [q for q in _qps(k).values() if q.task is task]:
        destroy_qp(k, qp, "exit")


def release_all(k: Kernel) -> None:
    """The daemon stops: every queue pair goes."""
    for qp in list(_qps(k).values()):
        destroy_qp(k, qp, "shutdown")


def release_context(k: Kernel, ctx: rdma.UContext) -> None:
    """The context's last reference went: its queue pairs go."""
    for qp in list(ctx.qps):
        destroy_qp(k, qp, "last close of the uverbs context")
