"""The process's side of a queue pair: post work requests, wait for completions.

As with rdma-core, ``ibv_post_send`` is no system call: the work request goes into the
send queue (a shared ring the kernel daemon created, see ``protocol/ring.py`` and
``kernel_daemon/qp.py``) and a doorbell rings (one byte into a pipe the daemon's loop
watches).  The card writes each completion's status into its slot and a byte into the
completion pipe, which :meth:`AgentQP.poll` waits on.  Ring and pipes have no name:
the creator took them by descriptor, and its fork children do not inherit the ring's
mapping.
"""

from __future__ import annotations

import contextlib
import errno
import os
import select
import struct
import time
from typing import Any

from kemu.protocol import shm
from kemu.protocol.errors import os_error
from kemu.protocol.ring import HEADER, OPCODE_NAME, PENDING, SLOT, STATUS_AT, STATUS_NAME, WQE

#: how long :meth:`AgentQP.poll` busy-polls before it sleeps on the completion FIFO
SPIN = 0.0002


class AgentQP:
    """A queue pair this process created (``ibv_create_qp``), opened and mapped."""

    def __init__(self, info: dict[str, Any], fds: list[int]) -> None:
        """``info`` is ``ibv_create_qp``'s answer, ``fds`` the ring's memfd, the
        doorbell's write end and the completion pipe's read end, as
        :func:`~agents.lib.runtime.attach_qp` took them."""
        self.qpn = int(info["qpn"])
        self.slots = int(info["slots"])
        ring_fd, self.db, self.cq = fds
        self.ring = shm.Segment(fd=ring_fd)  # mapped; the descriptor is closed
        # not inherited by a child (ib_uverbs_mmap's VM_DONTCOPY): a fork child of the
        # creator cannot post to its queue pair
        self.ring.dontfork()
        self.address = self.ring.address()
        self.buf: memoryview = self.ring.buf
        self.produced = 0
        self.polled = 0

    def post(self, opcode: int, rkey: int, offset: int, sge: dict[str, int],
             wr_id: int = 0) -> None:
        """``ibv_post_send`` of one RDMA WRITE or READ whose local side is ``sge``
        (``{lkey, addr, length}``); ENOMEM when the send queue is full, EINVAL for
        values no work request can carry."""
        if opcode not in OPCODE_NAME:
            raise os_error(errno.EINVAL)
        if self.produced - self.polled >= self.slots:
            raise os_error(errno.ENOMEM)
        at = HEADER + (self.produced % self.slots) * SLOT
        try:
            WQE.pack_into(self.buf, at, opcode, rkey, offset, sge["lkey"], 0, sge["addr"],
                          sge["length"], wr_id)
        except (struct.error, KeyError, TypeError):
            raise os_error(errno.EINVAL) from None
        self.buf[at + STATUS_AT : at + STATUS_AT + 4] = PENDING.to_bytes(4, "little")
        self.produced += 1
        self.buf[0:8] = self.produced.to_bytes(8, "little")
        with contextlib.suppress(BlockingIOError):  # a full FIFO rings anyway
            os.write(self.db, b"d")

    def poll(self, timeout: float | None = None) -> dict[str, Any]:
        """Wait for the oldest outstanding completion: ``{wr_id, status, opcode}``.

        EAGAIN when nothing is outstanding; ``TimeoutError`` after ``timeout`` seconds.
        """
        if self.polled >= self.produced:
            raise os_error(errno.EAGAIN)
        at = HEADER + (self.polled % self.slots) * SLOT
        # busy-poll first, as verbs programs poll a completion queue: a completion that
        # comes within SPIN seconds is seen without sleeping (and being woken)
        with self.buf[at + STATUS_AT : at + STATUS_AT + 4].cast("I") as status:
            spin_until = time.perf_counter() + SPIN
            while status[0] == PENDING and time.perf_counter() < spin_until:
                pass
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            code = int.from_bytes(self.buf[at + STATUS_AT : at + STATUS_AT + 4], "little")
            if code != PENDING:
                break
            wait = 1.0 if deadline is None else max(0.0, min(1.0, deadline - time.monotonic()))
            ready, _, _ = select.select([self.cq], [], [], wait)
            if ready:
                with contextlib.suppress(BlockingIOError):
                    os.read(self.cq, 4096)
            elif deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"no completion on QP {self.qpn}")
        opcode, *_, wr_id = WQE.unpack_from(self.buf, at)
        self.polled += 1
        return {"wr_id": wr_id, "status": STATUS_NAME.get(code, str(code)),
                "opcode": OPCODE_NAME.get(opcode, str(opcode))}

    def forget(self) -> None:
        """In a fork child, before anything else maps memory: the ring was not inherited
        (``MADV_DONTFORK``), so its place is taken by an inaccessible placeholder (the
        ring's object unmaps that, not whatever might come to live there), and the
        inherited descriptors are closed."""
        shm.placeholder(self.address, self.ring.size)
        for fd in (self.db, self.cq):
            with contextlib.suppress(OSError):
                os.close(fd)

    def close(self) -> None:
        """Close the pipes and unmap the ring (the daemon keeps its own ends)."""
        for fd in (self.db, self.cq):
            with contextlib.suppress(OSError):
                os.close(fd)
        self.buf.release()
        self.ring.close()
