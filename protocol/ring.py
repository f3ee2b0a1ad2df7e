"""The layout of a queue pair's ring, shared by the card (the daemon) and the process.

A 64-byte header (u64 produced, written by the process; u64 consumed, written by the
card), then ``SLOTS`` slots of ``SLOT`` bytes: a work request as :data:`WQE` packs it,
and at :data:`STATUS_AT` a u32 completion status: :data:`PENDING` (0) until the card
completed it, then its :class:`~protocol.linux.WcStatus` plus one.  See
``kernel_daemon/qp.py`` and ``docs/protocol.md``.
"""

from __future__ import annotations

import struct

from kemu.protocol.linux import IBV_WR_RDMA_READ, IBV_WR_RDMA_WRITE, WcStatus

HEADER = 64
SLOT = 64
SLOTS = 63
RING_SIZE = HEADER + SLOT * SLOTS
#: opcode, rkey, remote offset, lkey, (pad), addr, length, wr_id
WQE = struct.Struct("<IIQIIQQQ")
STATUS_AT = 56
#: the status word of a work request the card has not completed yet
PENDING = 0
#: the status word of each completion status, by name (as the card reports statuses)
STATUS_CODE: dict[str, int] = {s.name: s.value + 1 for s in WcStatus}
#: the completion status of each status word but PENDING
STATUS_NAME: dict[int, str] = {v: k for k, v in STATUS_CODE.items()}
OPCODE_NAME = {IBV_WR_RDMA_WRITE: "IBV_WR_RDMA_WRITE", IBV_WR_RDMA_READ: "IBV_WR_RDMA_READ"}
__all__ = ["HEADER", "IBV_WR_RDMA_READ", "IBV_WR_RDMA_WRITE", "OPCODE_NAME", "PENDING",
           "RING_SIZE", "SLOT", "SLOTS", "STATUS_AT", "STATUS_CODE", "STATUS_NAME", "WQE",
           "WcStatus"]
