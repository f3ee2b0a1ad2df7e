"""DAX faults in large units and on-demand paging through cached extents: a PMD fault
(``dax_iomap_pmd_fault``) or fault-around (``do_fault_around``) hands out a run of
translations in one reply, and an ODP MR caches its translations as extents
(``ib_umem_odp``); a truncate must still take back every page handed out, before any
block is freed, and no store or device write may land in a freed block."""

from __future__ import annotations

import errno
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import pytest

from kemu.agents.launcher.daemon_process import DaemonProcess
from kemu.agents.lib.api import EmuSystem
from kemu.kernel_daemon import mm
from kemu.kernel_daemon.boot import boot
from kemu.kernel_daemon.errors import KernelError, MustWait
from kemu.kernel_daemon.kernel import Config, Kernel
from kemu.kernel_daemon.pmem import Owner
from kemu.kernel_daemon.syscalls.proc import orphan_blocks
from kemu.kernel_daemon.task import Task
from kemu.protocol import linux
from tests.test_units import FakeIO, sc

RW = linux.PROT_READ | linux.PROT_WRITE
RDWR_CREAT = linux.O_RDWR | linux.O_CREAT
PAGE = 4096
ODP = (linux.IBV_ACCESS_LOCAL_WRITE | linux.IBV_ACCESS_REMOTE_WRITE
       | linux.IBV_ACCESS_ON_DEMAND)


@pytest.fixture
def io() -> FakeIO:
    return FakeIO()


@pytest.fixture
def kernel(tmp_path: Path, io: FakeIO) -> Iterator[Kernel]:
    k = boot(Config(run_dir=str(tmp_path), nblocks=2048), io)
    try:
        yield k
    finally:
        k.shutdown()


def shootdowns(io: FakeIO, pid: int) -> list[dict[str, Any]]:
    return [body for p, body in io.events if p == pid and body.get("event") == "shootdown"]


def truncate_acked(k: Kernel, io: FakeIO, t: Task, fd: int, size: int) -> None:
    """ftruncate as the daemon runs it: it sleeps for the shoot-downs, every process
    acknowledges (the agents' IPIs), and it runs again."""
    for _ in range(3):
        try:
            sc(k, t, "ftruncate", fd, size)
            return
        except MustWait:
            for seq, entry in list(k.shootdowns.items()):
                mm.shootdown_ack(k, entry.task, {"sd": seq})
    raise AssertionError("ftruncate never finished")


def test_a_pmd_fault_hands_out_a_run_and_a_truncate_takes_back_its_tail(
        kernel: Kernel, io: FakeIO) -> None:
    a = kernel.new_task(100, 0, 0, 0, "a", None)
    b = kernel.new_task(200, 0, 0, 0, "b", None)
    fd = sc(kernel, a, "open", "/f", RDWR_CREAT, 0o644)
    sc(kernel, a, "ftruncate", fd, 1024 * PAGE)
    m = sc(kernel, a, "mmap", 1024 * PAGE, RW, linux.MAP_SHARED, fd, 0)
    mapping = mm.vmas(a)[m["vma"]]
    # a write into a hole: the whole 2 MiB window is allocated and handed out at once
    runs = sc(kernel, a, "mm_fault", m["vma"], 5, 1, 1)
    assert sum(n for _, _, n in runs) == mm.PMD_PAGES
    assert runs[0][0] <= 5 < runs[0][0] + runs[0][2]
    assert sorted(mapping.ptes) == list(range(mm.PMD_PAGES))
    inode = mapping.file.inode
    assert {i: inode.blocks[i] for i in range(mm.PMD_PAGES)} == mapping.ptes
    run_pages = {p + j: blk + j for p, blk, n in runs for j in range(n)}
    assert run_pages == mapping.ptes  # the reply is every translation recorded
    # truncate the middle of the run (from another process): exactly the pages past
    # the new end are shot down, and nothing is freed before the acknowledgement
    bfd = sc(kernel, b, "open", "/f", linux.O_RDWR)
    tail = {i: mapping.ptes[i] for i in range(300, mm.PMD_PAGES)}
    with pytest.raises(MustWait):
        sc(kernel, b, "ftruncate", bfd, 300 * PAGE)
    (sd,) = shootdowns(io, a.pid)
    assert sorted(sd["pages"]) == list(range(300, mm.PMD_PAGES))
    assert all(kernel.pmem.ledger[blk] is not None for blk in tail.values())
    # while the truncate waits, a fault of A in the range being changed waits too
    with pytest.raises(MustWait):
        sc(kernel, a, "mm_fault", m["vma"], 400, 1, 1)
    mm.shootdown_ack(kernel, a, {"sd": sd["sd"]})
    assert sc(kernel, b, "ftruncate", bfd, 300 * PAGE) == 0
    assert sorted(mapping.ptes) == list(range(300))
    assert all(kernel.pmem.ledger[blk] is None for blk in tail.values())
    # past the new end: SIGBUS, nothing mapped
    with pytest.raises(KernelError) as info:
        sc(kernel, a, "mm_fault", m["vma"], 400, 1, 1)
    assert info.value.errno == errno.EFAULT
    assert 400 not in mapping.ptes


def test_fault_around_maps_existing_blocks_only_below_eof(kernel: Kernel) -> None:
    a = kernel.new_task(100, 0, 0, 0, "a", None)
    fd = sc(kernel, a, "open", "/f", RDWR_CREAT, 0o644)
    sc(kernel, a, "pwrite", fd, b"x" * (20 * PAGE), 0)  # blocks for pages 0-19
    sc(kernel, a, "ftruncate", fd, 20 * PAGE + 100)  # page 20: a hole inside EOF
    m = sc(kernel, a, "mmap", 64 * PAGE, linux.PROT_READ, linux.MAP_SHARED, fd, 0)
    mapping = mm.vmas(a)[m["vma"]]
    # the window does not fit below EOF: no PMD fault, fault-around of 16 pages
    runs = sc(kernel, a, "mm_fault", m["vma"], 17, 0, 1)
    assert sorted(mapping.ptes) == list(range(16, 20))  # the hole and EOF end it
    assert sum(n for _, _, n in runs) == 4
    # a read of the hole maps the zero page there only
    assert sc(kernel, a, "mm_fault", m["vma"], 20, 0, 1) == [[20, mm.ZERO_PAGE, 1]]


def test_fault_around_leaves_reflinked_blocks_to_their_own_fault(kernel: Kernel) -> None:
    a = kernel.new_task(100, 0, 0, 0, "a", None)
    fd = sc(kernel, a, "open", "/f", RDWR_CREAT, 0o644)
    sc(kernel, a, "pwrite", fd, b"x" * (16 * PAGE), 0)
    g = sc(kernel, a, "open", "/g", RDWR_CREAT, 0o644)
    sc(kernel, a, "clone", fd, g)
    m = sc(kernel, a, "mmap", 16 * PAGE, RW, linux.MAP_SHARED, g, 0)
    mapping = mm.vmas(a)[m["vma"]]
    shared = dict(mapping.file.inode.blocks)
    runs = sc(kernel, a, "mm_fault", m["vma"], 3, 1, 1)
    # the faulting page got its copy; its reflinked neighbours are not handed out
    assert runs == [[3, mapping.ptes[3], 1]] and list(mapping.ptes) == [3]
    assert mapping.ptes[3] != shared[3]


@pytest.mark.parametrize("sharers", [2, 3])
def test_a_copy_on_write_fault_hands_the_shared_block_to_a_file_that_keeps_it(
        kernel: Kernel, sharers: int) -> None:
    """A write fault on a reflinked page gives the faulting file its copy; the shared
    block stays with the files that still have it (F4): once the faulting file is
    unlinked and closed, no block is left owned by nobody, and the other files read
    what they had (the old extent's refcount drops as the COW fork is remapped,
    ``fs/xfs/xfs_reflink.c xfs_reflink_end_cow_extent()``)."""
    a = kernel.new_task(100, 0, 0, 0, "a", None)
    g = sc(kernel, a, "open", "/g", RDWR_CREAT, 0o644)
    sc(kernel, a, "pwrite", g, b"G" * PAGE, 0)
    others = [sc(kernel, a, "open", f"/f{i}", RDWR_CREAT, 0o644) for i in range(sharers - 1)]
    for fd in others:
        sc(kernel, a, "clone", g, fd)
    ginode = kernel.file_of(a, g).inode
    shared = ginode.blocks[0]
    m = sc(kernel, a, "mmap", PAGE, RW, linux.MAP_SHARED, g, 0)
    copy = sc(kernel, a, "mm_fault", m["vma"], 0, 1)
    assert copy != shared and ginode.blocks[0] == copy
    assert kernel.pmem.refs[shared] == sharers - 1
    holders = {kernel.file_of(a, fd).inode.ino for fd in others}
    owner = kernel.pmem.ledger[shared]
    assert owner is not None and owner.ino in holders and owner.pgoff == 0
    sc(kernel, a, "munmap", m["addr"], PAGE)
    sc(kernel, a, "close", g)
    sc(kernel, a, "unlink", "/g")
    assert ginode.ino not in kernel.fs.inodes
    assert orphan_blocks(kernel) == []
    for fd in others:
        assert sc(kernel, a, "pread", fd, PAGE, 0) == b"G" * PAGE


def test_a_sharer_letting_go_leaves_the_ledger_with_the_owner_that_keeps_the_block(
        kernel: Kernel) -> None:
    """A reflinked block the ledger gives to /f1 stays /f1's when another sharer lets
    go, though /f0 (an older file) shares it too: the ledger names the file a device
    write aimed at it was checked against, not whichever sharer a walk meets first."""
    a = kernel.new_task(100, 0, 0, 0, "a", None)
    f0 = sc(kernel, a, "open", "/f0", RDWR_CREAT, 0o644)
    f1 = sc(kernel, a, "open", "/f1", RDWR_CREAT, 0o644)
    g = sc(kernel, a, "open", "/g", RDWR_CREAT, 0o644)
    sc(kernel, a, "pwrite", g, b"G" * PAGE, 0)
    shared = kernel.file_of(a, g).inode.blocks[0]
    sc(kernel, a, "clone", g, f1)
    sc(kernel, a, "ftruncate", g, 0)  # the first owner lets go: /f1 has it
    f1ino = kernel.file_of(a, f1).inode.ino
    assert kernel.pmem.ledger[shared] == Owner(f1ino, 0)
    sc(kernel, a, "clone", f1, f0)
    h = sc(kernel, a, "open", "/h", RDWR_CREAT, 0o644)
    sc(kernel, a, "clone", f1, h)
    sc(kernel, a, "ftruncate", h, 0)  # a sharer that is not the owner lets go
    assert kernel.pmem.ledger[shared] == Owner(f1ino, 0)
    assert kernel.pmem.refs[shared] == 2


def test_a_store_after_a_truncate_faults_instead_of_landing_in_a_freed_block(
        daemon: DaemonProcess) -> None:
    s = EmuSystem(daemon.run_dir, "storer")
    try:
        s.signal(linux.SIGBUS, "record")
        fd = s.open("/f", RDWR_CREAT, 0o644)
        size = 4 << 20
        s.ftruncate(fd, size)
        p = s.mmap(size, RW, linux.MAP_SHARED, fd, 0)
        assert s.store(p, b"A" * size) == size  # a few PMD faults
        (maps,) = s.call("proc_maps", s.getpid())
        assert maps["mapped"] == size // PAGE
        s.ftruncate(fd, 300 * PAGE)  # the middle of the first 2 MiB run
        g = s.open("/g", RDWR_CREAT, 0o644)
        taken = (size // PAGE - 300) * PAGE
        for off in range(0, taken, 1 << 20):  # every freed block, at once
            assert s.pwrite(g, b"G" * min(1 << 20, taken - off), off) == min(1 << 20,
                                                                             taken - off)
        with pytest.raises(OSError) as info:
            s.store(p + 400 * PAGE, b"B" * PAGE)
        assert info.value.errno == errno.EFAULT
        assert [sig["si_signo"] for sig in s.signals()] == [linux.SIGBUS]
        assert s.store(p + 299 * PAGE, b"C" * PAGE) == PAGE  # still mapped
        assert s.pread(fd, PAGE, 299 * PAGE) == b"C" * PAGE
        assert all(s.pread(g, 1 << 20, off) == b"G" * min(1 << 20, taken - off)
                   for off in range(0, taken, 1 << 20))
    finally:
        s.conn.close()


class OdpRegion(NamedTuple):
    """What :func:`odp_region` set up."""

    a: Task
    r: Task
    fd: int
    ctx: int
    m: dict[str, int]
    reg: dict[str, int]
    mr: Any


def odp_region(kernel: Kernel, pages: int) -> OdpRegion:
    """Process a maps ``pages`` of /f and registers them on demand; r is the remote
    peer."""
    a = kernel.new_task(100, 0, 0, 0, "a", None)
    r = kernel.new_task(200, 0, 0, 0, "remote", None)
    fd = sc(kernel, a, "open", "/f", RDWR_CREAT, 0o644)
    sc(kernel, a, "ftruncate", fd, pages * PAGE)
    m = sc(kernel, a, "mmap", pages * PAGE, RW, linux.MAP_SHARED, fd, 0)
    ctx = sc(kernel, a, "ibv_open_device")
    reg = sc(kernel, a, "ibv_reg_mr", ctx, m["addr"], pages * PAGE, ODP)
    return OdpRegion(a, r, fd, ctx, m, reg, kernel.rdma.rkeys[reg["rkey"]])


def test_an_odp_extent_is_dropped_by_a_truncate(kernel: Kernel, io: FakeIO) -> None:
    a, r, fd, _, m, reg, mr = odp_region(kernel, 4)
    ok = linux.WcStatus.IBV_WC_SUCCESS.name
    assert sc(kernel, r, "rdma_write", reg["rkey"], 0, b"1" * (4 * PAGE)) == ok
    assert [(e.first, e.n) for e in mr.odp_extents] == [(0, 4)]  # one device fault
    assert sc(kernel, r, "rdma_write", reg["rkey"], PAGE, b"2" * PAGE) == ok  # cached
    inode = mm.vmas(a)[m["vma"]].file.inode
    old = inode.blocks[2]
    truncate_acked(kernel, io, a, fd, PAGE)
    assert mr.odp_extents == []  # dropped by the zap, before the blocks were freed
    g = sc(kernel, a, "open", "/g", RDWR_CREAT, 0o644)
    sc(kernel, a, "pwrite", g, b"G" * (3 * PAGE), 0)  # the freed blocks, /g's now
    assert kernel.pmem.ledger[old] is not None and kernel.pmem.ledger[old].ino != inode.ino
    bad = linux.WcStatus.IBV_WC_REM_ACCESS_ERR.name
    assert sc(kernel, r, "rdma_write", reg["rkey"], 2 * PAGE, b"3" * PAGE) == bad  # EOF
    sc(kernel, a, "ftruncate", fd, 4 * PAGE)  # a hole inside EOF again
    assert sc(kernel, r, "rdma_write", reg["rkey"], 2 * PAGE, b"4" * PAGE) == ok
    assert inode.blocks[2] != old
    assert bytes(kernel.pmem.view(inode.blocks[2])) == b"4" * PAGE
    assert sc(kernel, a, "pread", g, 3 * PAGE, 0) == b"G" * (3 * PAGE)
    assert sc(kernel, a, "pread", fd, PAGE, 0) == b"1" * PAGE
    assert sc(kernel, a, "foreign_writes") == []


def test_an_odp_mr_caches_nothing_through_a_mapping_that_is_gone(kernel: Kernel) -> None:
    """munmap drops the region's extents (the notifier's release) and, since no later
    zap would reach a mapping that is gone, nothing is cached through it again."""
    a, r, _, ctx, m, reg, mr = odp_region(kernel, 2)
    ok = linux.WcStatus.IBV_WC_SUCCESS.name
    assert sc(kernel, r, "rdma_write", reg["rkey"], 0, b"1" * (2 * PAGE)) == ok
    assert len(mr.odp_extents) == 1
    mapping = mm.vmas(a)[m["vma"]]
    sc(kernel, a, "munmap", m["addr"], 2 * PAGE)
    assert mr.odp_extents == [] and mapping.notifiers == []
    sc(kernel, r, "rdma_write", reg["rkey"], 0, b"2" * (2 * PAGE))
    assert mr.odp_extents == []
    sc(kernel, a, "ibv_dereg_mr", ctx, reg["handle"])
    assert sc(kernel, a, "foreign_writes") == []


def test_the_foreign_write_record_is_bounded(tmp_path: Path, io: FakeIO) -> None:
    """A region written again and again after its blocks went (a loop in a user's agent)
    keeps the first FOREIGN_MAX foreign writes for ``foreign_writes()`` and counts the
    others in ``kernel_stats``: the list, and its reply, do not grow without end."""
    from kemu.kernel_daemon.rdma import FOREIGN_MAX
    kernel = boot(Config(run_dir=str(tmp_path), nblocks=64, policy="legacy"), io)
    a = kernel.new_task(100, 0, 0, 0, "a", None)
    r = kernel.new_task(200, 0, 0, 0, "remote", None)
    fd = sc(kernel, a, "open", "/f", RDWR_CREAT, 0o644)
    sc(kernel, a, "ftruncate", fd, PAGE)
    m = sc(kernel, a, "mmap", PAGE, RW, linux.MAP_SHARED, fd, 0)
    ctx = sc(kernel, a, "ibv_open_device")
    reg = sc(kernel, a, "ibv_reg_mr", ctx, m["addr"], PAGE,
             linux.IBV_ACCESS_LOCAL_WRITE | linux.IBV_ACCESS_REMOTE_WRITE)
    truncate_acked(kernel, io, a, fd, 0)  # legacy: freed under the pin
    for _ in range(FOREIGN_MAX + 5):
        sc(kernel, r, "rdma_write", reg["rkey"], 0, b"X")
    got = sc(kernel, a, "foreign_writes")
    assert len(got) == FOREIGN_MAX and got[0]["into"] == "(free block)"
    assert sc(kernel, a, "kernel_stats")["foreign_dropped"] == 5
    kernel.shutdown()
