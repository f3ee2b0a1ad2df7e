"""The card's data path: RDMA WRITE from the peer's own registered memory (an SGE), its
local checks, and the ledger check on every path (a run of pinned blocks copied at once
must still report a foreign write once a block of it changed hands)."""

from __future__ import annotations

import pytest

from agents.scenario.parse import parse
from agents.scenario.runner import run_scenario

SCENARIOS = {
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
