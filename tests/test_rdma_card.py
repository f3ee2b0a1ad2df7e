"""The card's data path: RDMA WRITE from the peer's own registered memory (an SGE), its
local checks, and the ledger check on every path (a run of pinned blocks copied at once
must still report a foreign write once a block of it changed hands)."""

from __future__ import annotations

import os
import select
import time

import pytest

from kemu.agents.launcher.daemon_process import DaemonProcess
from kemu.agents.launcher.runner import run_scenario
from kemu.agents.lib.api import EmuSystem
from kemu.agents.scenario.parse import parse
from kemu.protocol import ring

SCENARIOS = {
    # verbs' data path: R posts work requests on a queue pair (a ring and a doorbell,
    # no call) and polls their completions
    "queue_pair_write_and_read": """
A: fd = open("/f", O_RDWR|O_CREAT, 0o644)           => 3
A: ftruncate(fd, 8192)                              => 0
A: p = mmap(8192, PROT_READ|PROT_WRITE, MAP_SHARED, fd, 0) => ok
A: ctx = ibv_open_device()                          => 4
A: mr = ibv_reg_mr(ctx, p, 8192, IBV_ACCESS_LOCAL_WRITE|IBV_ACCESS_REMOTE_WRITE|IBV_ACCESS_REMOTE_READ) => ok
A: send(R, mr)                                      => 0
R: m = recv()                                       => *
R: q = mmap(8192, PROT_READ|PROT_WRITE, MAP_SHARED|MAP_ANONYMOUS, -1, 0) => ok
R: store(q, "posted by R")                          => 11
R: rctx = ibv_open_device()                         => 3
R: l = ibv_reg_mr(rctx, q, 8192, IBV_ACCESS_LOCAL_WRITE) => ok
R: qp = ibv_create_qp(rctx)                         => ok
R: ibv_post_send(qp, IBV_WR_RDMA_WRITE, m.rkey, 10, {"lkey": l.lkey, "addr": q, "length": 11}, 1) => 0
R: ibv_post_send(qp, IBV_WR_RDMA_READ, m.rkey, 0, {"lkey": l.lkey, "addr": q + 4096, "length": 21}, 2) => 0
R: ibv_poll_cq(qp)                                  => {"wr_id": 1, "status": "IBV_WC_SUCCESS", "opcode": "IBV_WR_RDMA_WRITE"}
R: ibv_poll_cq(qp)                                  => {"wr_id": 2, "status": "IBV_WC_SUCCESS", "opcode": "IBV_WR_RDMA_READ"}
R: load(q + 4106, 11)                               => b"posted by R"
A: pread(fd, 11, 10)                                => b"posted by R"
R: ibv_post_send(qp, IBV_WR_RDMA_WRITE, m.rkey ^ 1, 0, {"lkey": l.lkey, "addr": q, "length": 4}, 3) => 0
R: ibv_poll_cq(qp)                                  => {"wr_id": 3, "status": "IBV_WC_REM_ACCESS_ERR"}
R: ibv_post_send(qp, IBV_WR_RDMA_WRITE, m.rkey, 0, {"lkey": l.lkey, "addr": q + 8000, "length": 400}, 4) => 0
R: ibv_poll_cq(qp)                                  => {"wr_id": 4, "status": "IBV_WC_LOC_PROT_ERR"}
R: ibv_post_send(qp, 7, m.rkey, 0, {"lkey": l.lkey, "addr": q, "length": 4}) => EINVAL
R: ibv_poll_cq(qp)                                  => EAGAIN
R: kernel_stats()                                   => {"qps": 1}
R: ibv_destroy_qp(rctx, qp)                         => 0
R: ibv_poll_cq(qp)                                  => EINVAL
R: kernel_stats()                                   => {"qps": 0}
R: qp2 = ibv_create_qp(rctx)                        => ok
!kill R
A: kernel_stats()                                   => {"qps": 0}
A: foreign_writes()                                 => []
""",
    # mr-lease (decision): the holder may F_UNLCK a lease MRs hold; the MR then outlives
    # its lease, so its whole context is aborted: every MR fenced (the anonymous one
    # too), a fatal event, no new registration
    "mr_outliving_its_lease_aborts_the_context": """
set policy = mr-lease
A: fd = open("/f", O_RDWR|O_CREAT, 0o644)           => 3
A: ftruncate(fd, 8192)                              => 0
A: fcntl(fd, F_SETLEASE, F_LAYOUT)                  => 0
A: p = mmap(8192, PROT_READ|PROT_WRITE, MAP_SHARED, fd, 0) => ok
A: ctx = ibv_open_device()                          => 4
A: mr = ibv_reg_mr(ctx, p, 8192, IBV_ACCESS_LOCAL_WRITE|IBV_ACCESS_REMOTE_WRITE) => ok
A: q = mmap(4096, PROT_READ|PROT_WRITE, MAP_SHARED|MAP_ANONYMOUS, -1, 0) => ok
A: mr2 = ibv_reg_mr(ctx, q, 4096, IBV_ACCESS_LOCAL_WRITE|IBV_ACCESS_REMOTE_WRITE) => ok
A: send(R, mr)                                      => 0
A: send(R, mr2)                                     => 0
R: m = recv()                                       => *
R: m2 = recv()                                      => *
R: rdma_write(m.rkey, 0, "ok")                      => "IBV_WC_SUCCESS"
A: fcntl(fd, F_SETLEASE, F_UNLCK)                   => 0
A: ibv_get_async_event(ctx)                         => {"event_type": "IBV_EVENT_MR_REVOKED"}
A: ibv_get_async_event(ctx)                         => {"event_type": "IBV_EVENT_MR_REVOKED"}
A: ibv_get_async_event(ctx)                         => {"event_type": "IBV_EVENT_DEVICE_FATAL"}
A: ibv_get_async_event(ctx)                         => EAGAIN
R: rdma_write(m.rkey, 0, "no")                      => "IBV_WC_REM_ACCESS_ERR"
R: rdma_write(m2.rkey, 0, "no")                     => "IBV_WC_REM_ACCESS_ERR"
A: ibv_reg_mr(ctx, q, 4096, IBV_ACCESS_LOCAL_WRITE) => EIO
A: pread(fd, 2, 0)                                  => b"ok"
R: foreign_writes()                                 => []
""",
    # the peer R writes from its own pinned anonymous memory into A's pinned DAX file
    "sge_write_lands_in_the_file": """
A: fd = open("/f", O_RDWR|O_CREAT, 0o644)           => 3
A: ftruncate(fd, 16384)                             => 0
A: p = mmap(16384, PROT_READ|PROT_WRITE, MAP_SHARED, fd, 0) => ok
A: ctx = ibv_open_device()                          => 4
A: mr = ibv_reg_mr(ctx, p, 16384, IBV_ACCESS_LOCAL_WRITE|IBV_ACCESS_REMOTE_WRITE) => ok
A: send(R, mr)                                      => 0
R: m = recv()                                       => *
R: q = mmap(16384, PROT_READ|PROT_WRITE, MAP_SHARED|MAP_ANONYMOUS, -1, 0) => ok
R: store(q, "0123456789" * 1000)                    => 10000
R: rctx = ibv_open_device()                         => 3
R: l = ibv_reg_mr(rctx, q, 16384, IBV_ACCESS_LOCAL_WRITE) => ok
R: rdma_write(m.rkey, 100, {"lkey": l.lkey, "addr": q + 3, "length": 9000}) => "IBV_WC_SUCCESS"
A: pread(fd, 12, 100)                               => b"345678901234"
A: pread(fd, 4, 9098)                               => b"12\\x00\\x00"
A: pread(fd, 4, 9100)                               => b"\\x00\\x00\\x00\\x00"
R: rdma_write(m.rkey, 16000, {"lkey": l.lkey, "addr": q, "length": 1000}) => "IBV_WC_REM_ACCESS_ERR"
R: rdma_write(m.rkey, 0, {"lkey": l.lkey, "addr": q + 16000, "length": 1000}) => "IBV_WC_LOC_PROT_ERR"
R: rdma_write(m.rkey, 0, {"lkey": l.lkey + 1, "addr": q, "length": 10}) => "IBV_WC_LOC_PROT_ERR"
R: rdma_write(m.rkey, 0, {"lkey": l.lkey, "addr": q}) => EINVAL
R: close(rctx)                                      => 0
R: rdma_write(m.rkey, 0, {"lkey": l.lkey, "addr": q, "length": 10}) => "IBV_WC_LOC_PROT_ERR"
R: foreign_writes()                                 => []
""",
    # an RDMA READ into the peer's own memory: needs LOCAL_WRITE on the sink and
    # REMOTE_READ on the source
    "read_into_an_sge": """
A: fd = open("/f", O_RDWR|O_CREAT, 0o644)           => 3
A: pwrite(fd, "remote bytes", 0)                    => 12
A: p = mmap(4096, PROT_READ|PROT_WRITE, MAP_SHARED, fd, 0) => ok
A: ctx = ibv_open_device()                          => 4
A: mr = ibv_reg_mr(ctx, p, 4096, IBV_ACCESS_LOCAL_WRITE|IBV_ACCESS_REMOTE_READ) => ok
A: wo = ibv_reg_mr(ctx, p, 4096, IBV_ACCESS_LOCAL_WRITE|IBV_ACCESS_REMOTE_WRITE) => ok
A: send(R, mr)                                      => 0
A: send(R, wo)                                      => 0
R: m = recv()                                       => *
R: w = recv()                                       => *
R: q = mmap(4096, PROT_READ|PROT_WRITE, MAP_SHARED|MAP_ANONYMOUS, -1, 0) => ok
R: rctx = ibv_open_device()                         => 3
R: l = ibv_reg_mr(rctx, q, 4096, IBV_ACCESS_LOCAL_WRITE) => ok
R: ro = ibv_reg_mr(rctx, q, 4096, 0)                => ok
R: rdma_read(m.rkey, 7, {"lkey": l.lkey, "addr": q + 100, "length": 5}) => {"status": "IBV_WC_SUCCESS", "length": 5}
R: load(q + 100, 5)                                 => b"bytes"
R: rdma_read(m.rkey, 0, {"lkey": ro.lkey, "addr": q, "length": 5}) => {"status": "IBV_WC_LOC_PROT_ERR"}
R: rdma_read(w.rkey, 0, {"lkey": l.lkey, "addr": q, "length": 5}) => {"status": "IBV_WC_REM_ACCESS_ERR"}
R: rdma_read(m.rkey, 0, 6)                          => {"status": "IBV_WC_SUCCESS", "data": b"remote"}
""",
    # an lkey is no capability for another process: A's lkey used by R
    "lkey_of_another_process": """
A: fd = open("/f", O_RDWR|O_CREAT, 0o644)           => 3
A: ftruncate(fd, 4096)                              => 0
A: p = mmap(4096, PROT_READ|PROT_WRITE, MAP_SHARED, fd, 0) => ok
A: ctx = ibv_open_device()                          => 4
A: mr = ibv_reg_mr(ctx, p, 4096, IBV_ACCESS_LOCAL_WRITE|IBV_ACCESS_REMOTE_WRITE) => ok
A: send(R, mr)                                      => 0
R: m = recv()                                       => *
A: send(R, p)                                       => 0
R: pa = recv()                                      => *
R: rdma_write(m.rkey, 0, {"lkey": m.lkey, "addr": pa, "length": 10}) => "IBV_WC_LOC_PROT_ERR"
A: rdma_write(mr.rkey, 0, {"lkey": mr.lkey, "addr": p + 10, "length": 10}) => "IBV_WC_SUCCESS"
""",
    # legacy: truncate frees the pinned run, g takes its blocks; a WRITE of the whole run
    # lands in g page by page, each page reported, and the file's data is untouched
    "foreign_write_through_a_stale_run": """
set policy = legacy
A: fd = open("/f", O_RDWR|O_CREAT, 0o644)           => 3
A: ftruncate(fd, 12288)                             => 0
A: p = mmap(12288, PROT_READ|PROT_WRITE, MAP_SHARED, fd, 0) => ok
A: ctx = ibv_open_device()                          => 4
A: mr = ibv_reg_mr(ctx, p, 12288, IBV_ACCESS_LOCAL_WRITE|IBV_ACCESS_REMOTE_WRITE) => ok
A: send(R, mr)                                      => 0
R: m = recv()                                       => *
R: rdma_write(m.rkey, 0, "a" * 12288)               => "IBV_WC_SUCCESS"
R: foreign_writes()                                 => []
B: truncate("/f", 4096)                             => 0
C: g = open("/g", O_RDWR|O_CREAT, 0o644)            => 3
C: pwrite(g, "G" * 8192, 0)                         => 8192
R: rdma_write(m.rkey, 0, "X" * 12288)               => "IBV_WC_SUCCESS"
C: pread(g, 4, 0)                                   => b"XXXX"
C: pread(g, 4, 4096)                                => b"XXXX"
A: pread(fd, 4, 0)                                  => b"XXXX"
R: foreign_writes()                                 => [{"file": "/f", "offset": 4096, "into": "/g"}, {"file": "/f", "offset": 8192, "into": "/g"}]
""",
}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_card(name: str) -> None:
    scenario = parse(SCENARIOS[name], name)
    policy = str(scenario.settings.get("policy", "legacy"))
    outcome = run_scenario(scenario, "emulator", policy, show_pids=False)
    assert outcome.passed, "\n".join(outcome.failures + outcome.transcript)


@pytest.mark.timeout(60)
def test_a_scribbled_ring_harms_nobody(daemon: DaemonProcess, run_dir: str) -> None:
    """The ring is the process's memory: a garbage index or work request is answered
    with an error completion (or ignored), and the daemon goes on serving."""
    s = EmuSystem(run_dir, name="scribbler")
    try:
        ctx = s.call("ibv_open_device")
        q = s.mmap(4096, 3, 0x21, -1, 0)
        s.store(q, b"x" * 64)
        local = s.call("ibv_reg_mr", ctx, q, 4096, 1)
        qpn = s.ibv_create_qp(ctx)
        qp = s._qps()[qpn]
        sge = {"lkey": local["lkey"], "addr": q, "length": 8}
        # a work request with nonsense fields: opcode 99, a length past any region
        ring.WQE.pack_into(qp.buf, ring.HEADER, 99, 1, 2, 3, 0, 4, 5, 6)
        qp.buf[ring.HEADER + ring.STATUS_AT : ring.HEADER + ring.STATUS_AT + 4] = bytes(4)
        qp.produced = 1
        qp.buf[0:8] = (1).to_bytes(8, "little")
        os.write(qp.db, b"d")
        assert qp.poll(5)["status"] == "IBV_WC_LOC_QP_OP_ERR"
        # an index far ahead of anything posted: ignored as a whole, the loop survives
        qp.buf[0:8] = (1 << 40).to_bytes(8, "little")
        os.write(qp.db, b"d")
        assert s.fstat(s.open("/after", os.O_CREAT | os.O_RDWR, 0o644)).st_size == 0
        # the card answers its doorbell on its own schedule: post again only once it
        # has published the overrun (its consumer index), or the next work request
        # would be swallowed by the same overrun
        deadline = time.monotonic() + 10
        while int.from_bytes(qp.buf[8:16], "little") != 1 << 40:
            assert time.monotonic() < deadline, "the card never took the overrun"
            select.select([], [], [], 0.001)
        qp.produced = qp.polled = 1 << 40
        s.ibv_post_send(qpn, ring.IBV_WR_RDMA_WRITE, 12345, 0, sge, 9)
        assert s.ibv_poll_cq(qpn, 5) == {"wr_id": 9, "status": "IBV_WC_REM_ACCESS_ERR",
                                         "opcode": "IBV_WR_RDMA_WRITE"}
        assert s.call("kernel_stats")["qps"] == 1
    finally:
        s.conn.close()
