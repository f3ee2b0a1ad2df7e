"""Anonymous and private memory across fork, and under a long-term pin.

Fork semantics are Linux's, so those scenarios run on the host kernel first (the
oracle) and then on the emulator: a private anonymous page is the child's own copy,
a shared anonymous page is shared.  A long-term pin (``ibv_reg_mr``) of private memory
breaks copy-on-write, as ``pin_user_pages(FOLL_WRITE | FOLL_LONGTERM)`` does: the card
writes into the process's own page, never into the file behind a private mapping, and
the page stays the device's until the pin goes, even after munmap.
"""

from __future__ import annotations

import pytest
from dual import same_on_both_targets

from kemu.agents.launcher.runner import run_scenario
from kemu.agents.scenario.parse import parse

BOTH = {
    "private_anonymous_pages_are_copied_at_fork_shared_ones_shared": """
A: q = mmap(8192, PROT_READ|PROT_WRITE, MAP_PRIVATE|MAP_ANONYMOUS, -1, 0) => ok
A: s = mmap(8192, PROT_READ|PROT_WRITE, MAP_SHARED|MAP_ANONYMOUS, -1, 0) => ok
A: store(q, "parent")                               => 6
A: store(s + 4096, "before")                        => 6
A: fork() as C
C: load(q, 6)                                       => b"parent"
C: store(q, "child!")                               => 6
A: load(q, 6)                                       => b"parent"
A: store(q + 4096, "late")                          => 4
C: load(q + 4096, 4)                                => b"\\x00\\x00\\x00\\x00"
C: load(s + 4096, 6)                                => b"before"
C: store(s, "shared")                               => 6
A: load(s, 6)                                       => b"shared"
A: munmap(s, 8192)                                  => 0
C: load(s, 6)                                       => b"shared"
C: exit(0)
A: load(q, 6)                                       => b"parent"
""",
    "private_file_pages_are_the_processs_own": """
A: fd = open("/f", O_RDWR|O_CREAT, 0o644)           => 3
A: pwrite(fd, "original", 0)                        => 8
A: p = mmap(4096, PROT_READ|PROT_WRITE, MAP_PRIVATE, fd, 0) => ok
A: store(p, "mine")                                 => 4
A: fork() as C
C: load(p, 8)                                       => b"mineinal"
C: store(p, "kid!")                                 => 4
A: load(p, 8)                                       => b"mineinal"
A: pread(fd, 8, 0)                                  => b"original"
""",
}

EMULATOR = {
    # an O_DIRECT read into a private file mapping: pin_user_pages(FOLL_WRITE) breaks
    # copy-on-write, the data lands in the process's copy and the file keeps its own
    "direct_io_into_a_private_file_mapping_lands_in_the_processs_copy": """
set dio_time = 0.05
A: fd = open("/f", O_RDWR|O_CREAT, 0o644)           => 3
A: pwrite(fd, "a" * 8192, 0)                        => 8192
A: src = open("/g", O_RDWR|O_CREAT, 0o644)          => 4
A: pwrite(src, "b" * 8192, 0)                       => 8192
A: p = mmap(8192, PROT_READ|PROT_WRITE, MAP_PRIVATE, fd, 0) => ok
A: store(p + 4096, "mine")                          => 4
A: dio_read(src, p, 8192, 0)                        => 8192
A: load(p, 4)                                       => b"bbbb"
A: load(p + 4096, 4)                                => b"bbbb"
A: pread(fd, 4, 0)                                  => b"aaaa"
A: pread(fd, 4, 4096)                               => b"aaaa"
A: fork() as C
C: load(p, 4)                                       => b"bbbb"
A: foreign_writes()                                 => []
A: q = mmap(4096, PROT_READ, MAP_PRIVATE, fd, 0)    => ok
A: dio_read(src, q, 4096, 0)                        => EFAULT
A: pread(fd, 4, 0)                                  => b"aaaa"
""",
    # reg_mr of a private file mapping: the card writes into the process's copy
    "pin_of_a_private_file_page_breaks_copy_on_write": """
A: fd = open("/f", O_RDWR|O_CREAT, 0o644)           => 3
A: pwrite(fd, "original", 0)                        => 8
A: p = mmap(8192, PROT_READ|PROT_WRITE, MAP_PRIVATE, fd, 0) => ok
A: store(p, "mine")                                 => 4
A: ctx = ibv_open_device()                          => 4
A: signal(SIGBUS, "record")                         => 0
A: ibv_reg_mr(ctx, p, 8192, IBV_ACCESS_LOCAL_WRITE|IBV_ACCESS_REMOTE_WRITE) => EFAULT
A: signals()                                        => []
A: kernel_stats()                                   => {"pinned_blocks": 0}
A: mr = ibv_reg_mr(ctx, p, 4096, IBV_ACCESS_LOCAL_WRITE|IBV_ACCESS_REMOTE_WRITE|IBV_ACCESS_REMOTE_READ) => ok
A: load(p, 8)                                       => b"mineinal"
A: send(R, mr)                                      => 0
R: m = recv()                                       => *
R: rdma_write(m.rkey, 4, "XX")                      => "IBV_WC_SUCCESS"
R: rdma_read(m.rkey, 0, 8)                          => {"status": "IBV_WC_SUCCESS", "data": b"mineXXal"}
A: load(p, 8)                                       => b"mineXXal"
A: store(p + 6, "YY")                               => 2
R: rdma_read(m.rkey, 0, 8)                          => {"status": "IBV_WC_SUCCESS", "data": b"mineXXYY"}
A: pread(fd, 8, 0)                                  => b"original"
A: fork() as C
C: load(p, 8)                                       => b"mineXXYY"
C: store(p, "kid!")                                 => 4
R: rdma_read(m.rkey, 0, 4)                          => {"status": "IBV_WC_SUCCESS", "data": b"mine"}
R: foreign_writes()                                 => []
""",
    # private anonymous memory (malloc'd, as RDMA programs register it)
    "rdma_into_private_anonymous_memory": """
A: q = mmap(8192, PROT_READ|PROT_WRITE, MAP_PRIVATE|MAP_ANONYMOUS, -1, 0) => ok
A: store(q, "hello")                                => 5
A: ctx = ibv_open_device()                          => 3
A: mr = ibv_reg_mr(ctx, q, 8192, IBV_ACCESS_LOCAL_WRITE|IBV_ACCESS_REMOTE_WRITE|IBV_ACCESS_REMOTE_READ) => ok
A: send(R, mr)                                      => 0
R: m = recv()                                       => *
R: rdma_read(m.rkey, 0, 5)                          => {"status": "IBV_WC_SUCCESS", "data": b"hello"}
R: rdma_write(m.rkey, 4096, "HELLO")                => "IBV_WC_SUCCESS"
A: load(q + 4096, 5)                                => b"HELLO"
""",
    # munmap of pinned anonymous memory: the page stays the device's until dereg, so
    # nobody else gets it and the card's write lands nowhere foreign
    "a_pinned_anonymous_page_outlives_munmap": """
A: q = mmap(4096, PROT_READ|PROT_WRITE, MAP_SHARED|MAP_ANONYMOUS, -1, 0) => ok
A: store(q, "pinned")                               => 6
A: ctx = ibv_open_device()                          => 3
A: mr = ibv_reg_mr(ctx, q, 4096, IBV_ACCESS_LOCAL_WRITE|IBV_ACCESS_REMOTE_WRITE|IBV_ACCESS_REMOTE_READ) => ok
A: send(R, mr)                                      => 0
R: m = recv()                                       => *
A: munmap(q, 4096)                                  => 0
B: g = open("/g", O_RDWR|O_CREAT, 0o644)            => 3
B: pwrite(g, "G" * 4096, 0)                         => 4096
R: rdma_write(m.rkey, 0, "card")                    => "IBV_WC_SUCCESS"
R: rdma_read(m.rkey, 0, 6)                          => {"status": "IBV_WC_SUCCESS", "data": b"carded"}
B: pread(g, 4, 0)                                   => b"GGGG"
R: foreign_writes()                                 => []
A: ibv_dereg_mr(ctx, mr)                            => 0
R: kernel_stats()                                   => {"pinned_blocks": 0}
""",
}


@pytest.mark.host
@pytest.mark.timeout(120)
@pytest.mark.parametrize("name", sorted(BOTH))
def test_fork_and_anonymous_memory_on_both_targets(name: str) -> None:
    same_on_both_targets(parse(BOTH[name], name))


@pytest.mark.timeout(60)
@pytest.mark.parametrize("name", sorted(EMULATOR))
def test_pinned_private_memory(name: str) -> None:
    outcome = run_scenario(parse(EMULATOR[name], name), "emulator", "legacy", show_pids=False)
    assert outcome.passed, "\n".join(outcome.failures + outcome.transcript)
