"""The layout of a queue pair's ring, shared by the card (the daemon) and the process.

A 64-byte header (u64 produced, written by the process; u64 consumed, written by the
card), then ``SLOTS`` slots of ``SLOT`` bytes: a work request as :data:`WQE` packs it,
and at :data:`STATUS_AT` a u32 completion status (0 until the card completed it).  See
``kernel_daemon/qp.py`` and ``docs/protocol.md``.
"""

from __future__ import annotations

import struct

from protocol.linux import IBV_WR_RDMA_READ, IBV_WR_RDMA_WRITE

HEADER = 64
SLOT = 64
SLOTS = 63
RING_SIZE = HEADER + SLOT * SLOTS
#: opcode, rkey, remote offset, lkey, (pad), addr, length, wr_id
WQE = struct.Struct("<IIQIIQQQ")
STATUS_AT = 56
STATUS_CODE = {"IBV_WC_SUCCESS": 1, "IBV_WC_REM_ACCESS_ERR": 2, "IBV_WC_LOC_PROT_ERR": 3,
               "IBV_WC_LOC_QP_OP_ERR": 4}
STATUS_NAME = {v: k for k, v in STATUS_CODE.items()}
__all__ = ["HEADER", "IBV_WR_RDMA_READ", "IBV_WR_RDMA_WRITE", "OPCODE_NAME", "RING_SIZE",
           "SLOT", "SLOTS", "STATUS_AT", "STATUS_CODE", "STATUS_NAME", "WQE"]
OPCODE_NAME = {IBV_WR_RDMA_WRITE: "IBV_WR_RDMA_WRITE", IBV_WR_RDMA_READ: "IBV_WR_RDMA_READ"}
