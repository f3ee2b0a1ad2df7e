"""In-process unit tests of the daemon's objects and of the wire protocol.

No process is started here: the pmem device, the filesystem, descriptor tables and the
kernel (driven through its system-call handlers, with a fake KernelIO) are exercised
directly, so a failure points at one object.  Errors are compared by errno, never by
message text.
"""

from __future__ import annotations

import ast
import errno
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest

from kemu.kernel_daemon import mm
from kemu.kernel_daemon.boot import boot
from kemu.kernel_daemon.errors import KernelError, MustWait
from kemu.kernel_daemon.kernel import Config, Kernel
from kemu.kernel_daemon.pmem import Owner, Pmem
from kemu.kernel_daemon.syscalls import SYSCALLS
from kemu.kernel_daemon.syscalls.ipc import MAX_MESSAGE, MAX_QLEN
from kemu.kernel_daemon.syscalls.proc import RegistrationRefused, register
from kemu.kernel_daemon.task import FdTable, File, Task
from kemu.kernel_daemon.vfs import Filesystem, Inode
from kemu.protocol import linux, wire
from kemu.protocol.errors import ProtocolError, VersionMismatch
from kemu.protocol.linux import MSG_DONTWAIT, SCM_MAX_FD

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# --- helpers ----------------------------------------------------------------------------


def kerr(fn: Callable[..., Any], *args: Any) -> int:
    """The errno of the KernelError ``fn(*args)`` raises (fails if it raises none)."""
    with pytest.raises(KernelError) as info:
        fn(*args)
    return info.value.errno


class FakeIO:
    """A KernelIO that records what the kernel sends; no process is ever watched."""

    def __init__(self) -> None:
        self.replies: list[tuple[int, int, Any, int | None]] = []
        self.events: list[tuple[int, dict[str, Any]]] = []
        self.watched: list[int] = []
        self.revoked: list[int] = []

    def reply(self, task: Task, rid: int, value: Any = None, err: int | None = None) -> None:
        self.replies.append((task.pid, rid, value, err))

    def event(self, task: Task, body: dict[str, Any]) -> None:
        self.events.append((task.pid, body))

    def watch_pid(self, pid: int, on_death: Callable[[], None]) -> bool:
        self.watched.append(pid)
        return False  # "already gone"

    def revoke_after_reply(self, task: Task) -> None:
        self.revoked.append(task.pid)


class Clock:
    """A settable clock for the kernel's timer heap."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def pmem() -> Iterator[Pmem]:
    """A small device: 8 blocks of 512 bytes."""
    dev = Pmem(None, 8, 512)
    try:
        yield dev
    finally:
        dev.close(unlink=True)


@pytest.fixture
def fs(pmem: Pmem) -> Filesystem:
    return Filesystem(pmem)


@pytest.fixture
def io() -> FakeIO:
    return FakeIO()


@pytest.fixture
def kernel(tmp_path: Path, io: FakeIO) -> Iterator[Kernel]:
    k = boot(Config(run_dir=str(tmp_path), nblocks=64), io)
    try:
        yield k
    finally:
        k.shutdown()


def sc(k: Kernel, t: Task, name: str, *args: Any) -> Any:
    """Dispatch system call ``name`` as the daemon does (arguments checked first)."""
    spec = SYSCALLS[name]
    spec.bind(list(args))
    return spec.handler(k, t, *args)


def scerr(k: Kernel, t: Task, name: str, *args: Any) -> int:
    return kerr(sc, k, t, name, *args)


def stats(k: Kernel) -> dict[str, int]:
    any_task = next(iter(k.tasks.values()), None)
    return dict(SYSCALLS["kernel_stats"].handler(k, any_task))


def spawn(k: Kernel, pid: int, name: str = "t") -> Task:
    return k.new_task(pid, 0, 0, 0, name, None)


def fork_child(k: Kernel, parent: Task, child_pid: int, token: bytes) -> Task:
    return register(k, child_pid, 0, 0, real_ppid=parent.pid,
                    hello={"kind": wire.FORK, "token": token, "name": "c"})


RDWR_CREAT = linux.O_RDWR | linux.O_CREAT


# --- pmem -------------------------------------------------------------------------------


def test_pmem_hands_out_the_block_freed_last(pmem: Pmem) -> None:
    a, b, c = (pmem.alloc(Owner(10, i)) for i in range(3))
    assert len({a, b, c}) == 3
    pmem.free(b)
    assert pmem.alloc(Owner(11, 0)) == b
    pmem.free(a)
    pmem.free(c)
    assert pmem.alloc(Owner(12, 0)) == c  # freed last, handed out first
    assert pmem.alloc(Owner(12, 1)) == a


def test_pmem_zeroes_a_block_on_alloc(pmem: Pmem) -> None:
    blk = pmem.alloc(Owner(5, 0))
    with pmem.view(blk) as v:
        v[:] = b"\xaa" * pmem.block_size
    pmem.free(blk)
    assert pmem.alloc(Owner(6, 0)) == blk
    with pmem.view(blk) as v:
        assert bytes(v) == bytes(pmem.block_size)


def test_pmem_full_is_enospc(pmem: Pmem) -> None:
    got = [pmem.alloc(Owner(1, i)) for i in range(pmem.nblocks)]
    assert sorted(got) == list(range(pmem.nblocks))
    assert pmem.free_blocks == 0
    assert kerr(pmem.alloc, Owner(1, 99)) == errno.ENOSPC
    pmem.free(got[3])
    assert pmem.alloc(Owner(2, 0)) == got[3]


def test_pmem_ledger_records_the_owner(pmem: Pmem) -> None:
    seen: list[tuple[str, int, Owner | None]] = []
    dev = pmem
    dev._on_change = lambda what, blk, owner: seen.append((what, blk, owner))
    blk = dev.alloc(Owner(7, 3))
    assert dev.ledger[blk] == Owner(7, 3)
    assert all(o is None for i, o in enumerate(dev.ledger) if i != blk)
    dev.free(blk)
    assert dev.ledger[blk] is None
    assert seen == [("alloc", blk, Owner(7, 3)), ("free", blk, Owner(7, 3))]


def test_pmem_double_free_asserts(pmem: Pmem) -> None:
    blk = pmem.alloc(Owner(1, 0))
    pmem.free(blk)
    free_before = pmem.free_blocks
    with pytest.raises(AssertionError):
        pmem.free(blk)
    with pytest.raises(AssertionError):
        pmem.free((blk + 1) % pmem.nblocks)  # never allocated
    assert pmem.free_blocks == free_before  # the free list was not corrupted


def test_pmem_refuses_bad_geometry() -> None:
    with pytest.raises(ValueError):
        Pmem(None, 0, 4096)
    with pytest.raises(ValueError):
        Pmem(None, 4, 1000)


# --- filesystem: path walk -------------------------------------------------------------


def test_lookup_errors(fs: Filesystem) -> None:
    fs.mkdir("/d", 0o755, 0, 0)
    f = fs.create(fs.lookup("/d"), "f", 0o644, 0, 0)
    assert fs.lookup("/d/f") is f
    assert fs.lookup("d/./f") is f
    assert fs.lookup("/d/../d/f") is f
    assert fs.lookup("/..") is fs.root
    assert fs.lookup("/") is fs.root
    assert kerr(fs.lookup, "") == errno.ENOENT
    assert kerr(fs.lookup, "/nope") == errno.ENOENT
    assert kerr(fs.lookup, "/nope/x") == errno.ENOENT
    assert kerr(fs.lookup, "/d/f/x") == errno.ENOTDIR
    assert kerr(fs.lookup, "/d/f/") == errno.ENOTDIR
    assert kerr(fs.lookup, "/d/f/..") == errno.ENOTDIR
    assert fs.lookup("/d/") is fs.lookup("/d")
    assert kerr(fs.lookup, "/" + "x" * 256) == errno.ENAMETOOLONG
    assert kerr(fs.lookup, "/" + "x" * 255) == errno.ENOENT  # NAME_MAX itself is fine
    assert kerr(fs.lookup, "/a" * (linux.PATH_MAX // 2)) == errno.ENAMETOOLONG
    assert kerr(fs.lookup, "/d\0") == errno.EINVAL


def test_lookup_parent_errors(fs: Filesystem) -> None:
    fs.create(fs.root, "f", 0o644, 0, 0)
    assert fs.lookup_parent("/") == (fs.root, "")
    assert fs.lookup_parent("/x") == (fs.root, "x")
    assert fs.lookup_parent("/x/") == (fs.root, "x")
    assert kerr(fs.lookup_parent, "/nope/x") == errno.ENOENT
    assert kerr(fs.lookup_parent, "/f/x") == errno.ENOTDIR
    assert kerr(fs.lookup_parent, "") == errno.ENOENT
    assert kerr(fs.lookup_parent, "/" + "y" * 300 + "/x") == errno.ENAMETOOLONG


# --- filesystem: namespace ---------------------------------------------------------------


def test_mkdir_rmdir(fs: Filesystem) -> None:
    d = fs.mkdir("/d", 0o755, 0, 0)
    assert d.is_dir and d.nlink == 2 and fs.root.nlink == 3
    assert kerr(fs.mkdir, "/d", 0o755, 0, 0) == errno.EEXIST
    assert kerr(fs.mkdir, "/", 0o755, 0, 0) == errno.EEXIST
    assert kerr(fs.mkdir, "/nope/e", 0o755, 0, 0) == errno.ENOENT
    fs.mkdir("/d/e", 0o755, 0, 0)
    assert d.nlink == 3
    fs.create(fs.root, "f", 0o644, 0, 0)
    assert kerr(fs.mkdir, "/f/e", 0o755, 0, 0) == errno.ENOTDIR
    assert kerr(fs.rmdir, "/d") == errno.ENOTEMPTY
    assert kerr(fs.rmdir, "/f") == errno.ENOTDIR
    assert kerr(fs.rmdir, "/nope") == errno.ENOENT
    assert kerr(fs.rmdir, "/") == errno.EBUSY
    assert kerr(fs.rmdir, "/d/e/.") == errno.EINVAL
    assert kerr(fs.rmdir, "/d/e/..") == errno.ENOTEMPTY
    inodes = len(fs.inodes)
    fs.rmdir("/d/e")
    assert d.nlink == 2 and len(fs.inodes) == inodes - 1
    fs.rmdir("/d")
    assert fs.root.nlink == 2
    assert kerr(fs.lookup, "/d") == errno.ENOENT


def test_unlink(fs: Filesystem) -> None:
    fs.mkdir("/d", 0o755, 0, 0)
    f = fs.create(fs.root, "f", 0o644, 0, 0)
    assert kerr(fs.unlink, "/d") == errno.EISDIR
    assert kerr(fs.unlink, "/") == errno.EISDIR
    assert kerr(fs.unlink, "/nope") == errno.ENOENT
    assert kerr(fs.unlink, "/f/") == errno.ENOTDIR
    assert fs.lookup("/f") is f  # the failed unlinks left it
    assert fs.unlink("/f") is f
    assert f.nlink == 0 and f.ino not in fs.inodes
    assert kerr(fs.lookup, "/f") == errno.ENOENT


def test_rename_moves_and_replaces(fs: Filesystem, pmem: Pmem) -> None:
    a = fs.create(fs.root, "a", 0o644, 0, 0)
    b = fs.create(fs.root, "b", 0o644, 0, 0)
    fs.write(b, 0, b"B" * pmem.block_size * 2)
    assert pmem.free_blocks == pmem.nblocks - 2
    assert fs.rename("/a", "/b") is b  # replaced target returned
    assert fs.lookup("/b") is a
    assert kerr(fs.lookup, "/a") == errno.ENOENT
    assert b.nlink == 0 and b.ino not in fs.inodes
    assert pmem.free_blocks == pmem.nblocks  # the replaced file's blocks went back
    assert fs.rename("/b", "/b") is None  # same inode: nothing happens
    assert fs.lookup("/b") is a
    assert kerr(fs.rename, "/nope", "/x") == errno.ENOENT
    assert kerr(fs.rename, "/b", "/nope/x") == errno.ENOENT
    assert kerr(fs.rename, "/b/", "/x") == errno.ENOTDIR
    assert kerr(fs.rename, "/b", "/x/") == errno.ENOTDIR
    assert kerr(fs.rename, "/", "/x") == errno.EBUSY
    assert kerr(fs.rename, "/b", "/.") == errno.EBUSY  # as the host (test_limits.py)


def test_rename_replaced_target_that_is_open_keeps_its_blocks(
        fs: Filesystem, pmem: Pmem) -> None:
    fs.create(fs.root, "a", 0o644, 0, 0)
    b = fs.create(fs.root, "b", 0o644, 0, 0)
    fs.write(b, 0, b"B" * 10)
    fs.get(b)  # an open file holds it
    fs.rename("/a", "/b")
    assert b.nlink == 0 and b.ino in fs.inodes
    assert fs.read(b, 0, 10) == b"B" * 10
    fs.put(b)
    assert b.ino not in fs.inodes and pmem.free_blocks == pmem.nblocks


def test_rename_type_errors(fs: Filesystem) -> None:
    fs.mkdir("/d", 0o755, 0, 0)
    fs.mkdir("/full", 0o755, 0, 0)
    fs.mkdir("/full/x", 0o755, 0, 0)
    fs.create(fs.root, "f", 0o644, 0, 0)
    assert kerr(fs.rename, "/f", "/d") == errno.EISDIR
    assert kerr(fs.rename, "/d", "/f") == errno.ENOTDIR
    assert kerr(fs.rename, "/d", "/full") == errno.ENOTEMPTY
    assert kerr(fs.rename, "/full/x", "/full") == errno.ENOTEMPTY  # target is an ancestor
    # nothing moved
    assert sorted(fs.root.children or {}) == ["d", "f", "full"]


def test_rename_directory_under_itself_is_einval(fs: Filesystem) -> None:
    d = fs.mkdir("/d", 0o755, 0, 0)
    fs.mkdir("/d/sub", 0o755, 0, 0)
    fs.mkdir("/d/sub/deeper", 0o755, 0, 0)
    assert kerr(fs.rename, "/d", "/d/x") == errno.EINVAL
    assert kerr(fs.rename, "/d", "/d/sub/x") == errno.EINVAL
    assert kerr(fs.rename, "/d", "/d/sub/deeper/x") == errno.EINVAL
    assert kerr(fs.rename, "/d", "/d/sub") == errno.EINVAL
    assert fs.lookup("/d") is d and fs.lookup("/d/sub/deeper").is_dir


def test_rename_directory_across_parents(fs: Filesystem) -> None:
    p = fs.mkdir("/p", 0o755, 0, 0)
    q = fs.mkdir("/q", 0o755, 0, 0)
    d = fs.mkdir("/p/d", 0o755, 0, 0)
    fs.mkdir("/q/empty", 0o755, 0, 0)
    assert (p.nlink, q.nlink) == (3, 3)
    inodes = len(fs.inodes)
    fs.rename("/p/d", "/q/empty")  # replaces an empty directory
    assert fs.lookup("/q/empty") is d
    assert fs.lookup("/q/empty/..") is q
    assert (p.nlink, q.nlink) == (2, 3)
    assert len(fs.inodes) == inodes - 1  # the replaced directory is gone
    fs.rename("/q/empty", "/top")
    assert fs.lookup("/top/..") is fs.root
    assert q.nlink == 2 and fs.root.nlink == 5


# --- filesystem: data path ------------------------------------------------------------------


def test_read_write_with_holes(fs: Filesystem, pmem: Pmem) -> None:
    bs = pmem.block_size
    f = fs.create(fs.root, "f", 0o644, 0, 0)
    assert fs.write(f, 3 * bs + 10, b"tail") == 4
    assert f.size == 3 * bs + 14
    assert sorted(f.blocks) == [3]  # holes have no block
    assert pmem.free_blocks == pmem.nblocks - 1
    assert fs.read(f, 0, f.size) == bytes(3 * bs + 10) + b"tail"
    assert fs.read(f, f.size, 10) == b""
    assert fs.read(f, f.size + 100, 10) == b""
    assert fs.read(f, 0, 0) == b""
    # a write that crosses a page boundary fills both pages
    assert fs.write(f, bs - 2, b"abcd") == 4
    assert sorted(f.blocks) == [0, 1, 3]
    assert fs.read(f, bs - 3, 6) == b"\0abcd\0"
    assert f.size == 3 * bs + 14  # inside the file: size unchanged


def test_write_stops_short_when_the_device_fills(fs: Filesystem, pmem: Pmem) -> None:
    bs = pmem.block_size
    f = fs.create(fs.root, "f", 0o644, 0, 0)
    n = fs.write(f, 0, b"x" * (bs * (pmem.nblocks + 2)))
    assert n == bs * pmem.nblocks
    assert f.size == n
    assert kerr(fs.write, f, n, b"y") == errno.ENOSPC
    assert f.size == n
    assert fs.write(f, 0, b"z") == 1  # overwriting needs no new block


def test_empty_write_past_eof_leaves_size(fs: Filesystem) -> None:
    f = fs.create(fs.root, "f", 0o644, 0, 0)
    assert fs.write(f, 1000, b"") == 0
    assert f.size == 0


def test_truncate_frees_whole_blocks_and_zeroes_the_tail(fs: Filesystem, pmem: Pmem) -> None:
    bs = pmem.block_size
    f = fs.create(fs.root, "f", 0o644, 0, 0)
    fs.write(f, 0, b"a" * (4 * bs))
    blocks = dict(f.blocks)
    assert pmem.free_blocks == pmem.nblocks - 4
    fs.truncate(f, bs + 5)  # keeps pages 0 and 1, page 1 partly
    assert sorted(f.blocks) == [0, 1]
    assert pmem.free_blocks == pmem.nblocks - 2
    assert all(pmem.ledger[blocks[p]] is None for p in (2, 3))
    assert fs.read(f, 0, 10 * bs) == b"a" * (bs + 5)
    with pmem.view(blocks[1]) as v:
        assert bytes(v[5:]) == bytes(bs - 5)  # the tail of the last page is zeroed
    fs.truncate(f, 3 * bs)  # growing again shows zeros, allocates nothing
    assert fs.read(f, 0, 3 * bs) == b"a" * (bs + 5) + bytes(2 * bs - 5)
    assert pmem.free_blocks == pmem.nblocks - 2
    fs.truncate(f, bs)  # on a page boundary: page 1 goes entirely
    assert sorted(f.blocks) == [0]
    fs.truncate(f, 0)
    assert f.blocks == {} and pmem.free_blocks == pmem.nblocks


def test_unlinked_inode_keeps_blocks_while_referenced(fs: Filesystem, pmem: Pmem) -> None:
    f = fs.create(fs.root, "f", 0o644, 0, 0)
    fs.write(f, 0, b"data" * 300)
    used = pmem.nblocks - pmem.free_blocks
    assert used > 0
    fs.get(f)
    fs.get(f)
    fs.unlink("/f")
    assert f.ino in fs.inodes and pmem.nblocks - pmem.free_blocks == used
    assert fs.read(f, 0, 4) == b"data"
    fs.put(f)
    assert f.ino in fs.inodes and pmem.nblocks - pmem.free_blocks == used
    fs.put(f)
    assert f.ino not in fs.inodes and pmem.free_blocks == pmem.nblocks
    with pytest.raises(AssertionError):
        fs.put(f)  # reference count underflow is a bug, loudly


def test_linked_inode_survives_last_put(fs: Filesystem) -> None:
    f = fs.create(fs.root, "f", 0o644, 0, 0)
    fs.get(f)
    fs.put(f)
    assert fs.lookup("/f") is f and f.ino in fs.inodes


# --- descriptor table ----------------------------------------------------------------------


def _file() -> File:
    return File(inode=Inode(ino=99, mode=linux.S_IFREG | 0o644, uid=0, gid=0),
                flags=linux.O_RDWR, path="/x")


def test_fdtable_lowest_free_number() -> None:
    t = FdTable(limit=6)
    f = _file()
    for fd in range(4):
        assert t.lowest_free() == fd
        assert t.install(fd, f, False) is None
    t.remove(1)
    assert t.lowest_free() == 1
    assert t.lowest_free(2) == 4
    assert t.lowest_free(5) == 5
    assert [fd for fd, _ in t] == [0, 2, 3]
    assert t.fds_of(f) == [0, 2, 3]


def test_fdtable_emfile_at_the_limit() -> None:
    t = FdTable(limit=3)
    f = _file()
    for _ in range(3):
        t.install(t.lowest_free(), f, False)
    assert kerr(t.lowest_free) == errno.EMFILE
    assert kerr(t.lowest_free, 7) == errno.EMFILE
    t.remove(2)
    assert t.lowest_free() == 2
    assert kerr(t.lowest_free, 3) == errno.EMFILE


def test_fdtable_ebadf() -> None:
    t = FdTable()
    f, g = _file(), _file()
    assert kerr(t.get, 0) == errno.EBADF
    assert kerr(t.remove, 0) == errno.EBADF
    t.install(5, f, True)
    assert t.get(5).file is f and t.get(5).cloexec
    old = t.install(5, g, False)
    assert old is not None and old.file is f
    assert t.remove(5).file is g
    assert kerr(t.remove, 5) == errno.EBADF
    assert len(t) == 0


# --- kernel: open and descriptor calls ------------------------------------------------------


def test_open_gets_lowest_free_descriptor(kernel: Kernel) -> None:
    t = spawn(kernel, 100)
    assert [fd for fd, _ in t.fds] == [0, 1, 2]
    assert sc(kernel, t, "open", "/f", RDWR_CREAT, 0o644) == 3
    assert sc(kernel, t, "open", "/f", linux.O_RDONLY) == 4
    sc(kernel, t, "close", 1)
    assert sc(kernel, t, "open", "/f", linux.O_RDONLY) == 1
    assert scerr(kernel, t, "open", "/f", RDWR_CREAT | linux.O_EXCL, 0o644) == errno.EEXIST
    assert scerr(kernel, t, "open", "/nope", linux.O_RDONLY) == errno.ENOENT
    assert scerr(kernel, t, "open", "/", linux.O_WRONLY) == errno.EISDIR
    assert scerr(kernel, t, "open", "/f", linux.O_RDONLY | linux.O_DIRECTORY) == errno.ENOTDIR
    assert scerr(kernel, t, "close", 77) == errno.EBADF
    fd = sc(kernel, t, "open", "/g", RDWR_CREAT | linux.O_CLOEXEC, 0o666)
    assert sc(kernel, t, "fcntl", fd, linux.F_GETFD) == linux.FD_CLOEXEC
    assert kernel.fs.lookup("/g").mode & 0o777 == 0o644  # umask 022


def test_open_emfile_leaves_nothing_behind(kernel: Kernel) -> None:
    t = spawn(kernel, 100)
    t.fds.limit = 4
    sc(kernel, t, "open", "/f", RDWR_CREAT, 0o644)
    before = stats(kernel)
    assert scerr(kernel, t, "open", "/f", linux.O_RDONLY) == errno.EMFILE
    assert stats(kernel) == before


def test_dup_shares_the_description_not_cloexec(kernel: Kernel) -> None:
    t = spawn(kernel, 100)
    fd = sc(kernel, t, "open", "/f", RDWR_CREAT | linux.O_CLOEXEC, 0o644)
    sc(kernel, t, "close", 0)
    d = sc(kernel, t, "dup", fd)
    assert d == 0  # lowest free
    assert t.fds.get(d).file is t.fds.get(fd).file
    assert sc(kernel, t, "fcntl", d, linux.F_GETFD) == 0
    assert sc(kernel, t, "fcntl", fd, linux.F_GETFD) == linux.FD_CLOEXEC
    sc(kernel, t, "write", fd, b"hello")
    assert sc(kernel, t, "lseek", d, 0, linux.SEEK_CUR) == 5  # shared offset
    assert scerr(kernel, t, "dup", 99) == errno.EBADF
    assert scerr(kernel, t, "dup", -1) == errno.EBADF


def test_dup2_semantics(kernel: Kernel) -> None:
    t = spawn(kernel, 100)
    a = sc(kernel, t, "open", "/a", RDWR_CREAT, 0o644)
    b = sc(kernel, t, "open", "/b", RDWR_CREAT | linux.O_CLOEXEC, 0o644)
    sc(kernel, t, "write", b, b"x" * 5000)
    sc(kernel, t, "unlink", "/b")
    used = stats(kernel)["blocks_used"]
    assert used == 2
    assert sc(kernel, t, "dup2", a, a) == a  # same fd: checked and returned
    assert scerr(kernel, t, "dup2", 50, 50) == errno.EBADF
    assert scerr(kernel, t, "dup2", 50, 3) == errno.EBADF
    assert t.fds.get(3).file.path == "/a"  # untouched by the failed dup2
    # dup2 onto b closes b's file: unlinked, so its blocks go
    assert sc(kernel, t, "dup2", a, b) == b
    assert t.fds.get(b).file is t.fds.get(a).file
    assert sc(kernel, t, "fcntl", b, linux.F_GETFD) == 0
    assert stats(kernel)["blocks_used"] == 0
    assert sc(kernel, t, "dup2", a, 200) == 200  # any free number below the limit
    assert scerr(kernel, t, "dup2", a, t.fds.limit) == errno.EBADF
    assert scerr(kernel, t, "dup2", a, -1) == errno.EBADF


def test_dup3_semantics(kernel: Kernel) -> None:
    t = spawn(kernel, 100)
    a = sc(kernel, t, "open", "/a", RDWR_CREAT, 0o644)
    assert sc(kernel, t, "dup3", a, 10, linux.O_CLOEXEC) == 10
    assert sc(kernel, t, "fcntl", 10, linux.F_GETFD) == linux.FD_CLOEXEC
    assert sc(kernel, t, "dup3", a, 10, 0) == 10
    assert sc(kernel, t, "fcntl", 10, linux.F_GETFD) == 0
    assert scerr(kernel, t, "dup3", a, a, 0) == errno.EINVAL
    assert scerr(kernel, t, "dup3", a, 11, linux.O_NONBLOCK) == errno.EINVAL
    assert scerr(kernel, t, "dup3", 99, 11, 0) == errno.EBADF
    assert kerr(t.fds.get, 11) == errno.EBADF


def test_fcntl_dupfd(kernel: Kernel) -> None:
    t = spawn(kernel, 100)
    a = sc(kernel, t, "open", "/a", RDWR_CREAT, 0o644)
    sc(kernel, t, "dup2", a, 6)
    assert sc(kernel, t, "fcntl", a, linux.F_DUPFD, 5) == 5
    assert sc(kernel, t, "fcntl", a, linux.F_DUPFD, 5) == 7  # 5 and 6 taken
    assert sc(kernel, t, "fcntl", a, linux.F_DUPFD, 0) == 4
    assert sc(kernel, t, "fcntl", 4, linux.F_GETFD) == 0
    c = sc(kernel, t, "fcntl", a, linux.F_DUPFD_CLOEXEC, 0)
    assert c == 8 and sc(kernel, t, "fcntl", c, linux.F_GETFD) == linux.FD_CLOEXEC
    assert scerr(kernel, t, "fcntl", a, linux.F_DUPFD, t.fds.limit) == errno.EINVAL
    assert scerr(kernel, t, "fcntl", a, linux.F_DUPFD, -1) == errno.EINVAL
    assert scerr(kernel, t, "fcntl", 99, linux.F_DUPFD, 0) == errno.EBADF
    t.fds.limit = 10
    sc(kernel, t, "dup2", a, 9)
    assert scerr(kernel, t, "fcntl", a, linux.F_DUPFD, 9) == errno.EMFILE


def test_fcntl_fd_flags_and_status_flags(kernel: Kernel) -> None:
    t = spawn(kernel, 100)
    a = sc(kernel, t, "open", "/a", linux.O_WRONLY | linux.O_CREAT | linux.O_TRUNC, 0o644)
    d = sc(kernel, t, "dup", a)
    assert sc(kernel, t, "fcntl", a, linux.F_GETFD) == 0
    assert sc(kernel, t, "fcntl", a, linux.F_SETFD, linux.FD_CLOEXEC) == 0
    assert sc(kernel, t, "fcntl", a, linux.F_GETFD) == linux.FD_CLOEXEC
    assert sc(kernel, t, "fcntl", d, linux.F_GETFD) == 0  # per descriptor
    fl = sc(kernel, t, "fcntl", a, linux.F_GETFL)
    assert fl & linux.O_ACCMODE == linux.O_WRONLY
    assert fl & linux.O_LARGEFILE
    assert not fl & (linux.O_CREAT | linux.O_TRUNC)  # open-time flags are not kept
    # F_SETFL changes only the settable status flags, for every sharer of the file
    sc(kernel, t, "fcntl", a, linux.F_SETFL, linux.O_APPEND | linux.O_NONBLOCK | linux.O_RDWR)
    fl2 = sc(kernel, t, "fcntl", d, linux.F_GETFL)
    assert fl2 & linux.O_ACCMODE == linux.O_WRONLY
    assert fl2 & linux.O_APPEND and fl2 & linux.O_NONBLOCK
    sc(kernel, t, "fcntl", d, linux.F_SETFL, 0)
    assert not sc(kernel, t, "fcntl", a, linux.F_GETFL) & (linux.O_APPEND | linux.O_NONBLOCK)
    assert scerr(kernel, t, "fcntl", a, 9999) == errno.EINVAL
    assert scerr(kernel, t, "fcntl", a, linux.F_SETLK, 0) == errno.EINVAL
    assert scerr(kernel, t, "fcntl", 77, linux.F_GETFL) == errno.EBADF
    assert scerr(kernel, t, "fcntl", 77, linux.F_SETFD, 1) == errno.EBADF
    p = sc(kernel, t, "open", "/a", linux.O_PATH)
    assert scerr(kernel, t, "fcntl", p, linux.F_SETFL, linux.O_APPEND) == errno.EBADF
    assert sc(kernel, t, "fcntl", p, linux.F_GETFL) & linux.O_PATH


def test_fcntl_setfl_append_moves_writes_to_the_end(kernel: Kernel) -> None:
    t = spawn(kernel, 100)
    a = sc(kernel, t, "open", "/a", RDWR_CREAT, 0o644)
    sc(kernel, t, "write", a, b"0123456789")
    sc(kernel, t, "lseek", a, 0, linux.SEEK_SET)
    sc(kernel, t, "fcntl", a, linux.F_SETFL, linux.O_APPEND)
    sc(kernel, t, "write", a, b"X")
    assert sc(kernel, t, "pread", a, 100, 0) == b"0123456789X"


# --- kernel: fork, exec ------------------------------------------------------------------


def test_fork_child_inherits_the_table_at_fork_time(kernel: Kernel) -> None:
    p = spawn(kernel, 100, "parent")
    a = sc(kernel, p, "open", "/a", RDWR_CREAT, 0o644)
    b = sc(kernel, p, "open", "/b", RDWR_CREAT | linux.O_CLOEXEC, 0o644)
    c = sc(kernel, p, "open", "/c", RDWR_CREAT, 0o644)
    at_fork = {fd: (e.file, e.cloexec) for fd, e in p.fds}
    token = sc(kernel, p, "fork_prepare")
    assert isinstance(token, bytes)
    assert stats(kernel)["pending_forks"] == 1
    # the parent changes its table after the fork: none of it reaches the child
    sc(kernel, p, "close", a)
    sc(kernel, p, "fcntl", b, linux.F_SETFD, 0)
    sc(kernel, p, "fcntl", c, linux.F_SETFD, linux.FD_CLOEXEC)
    assert sc(kernel, p, "open", "/d", RDWR_CREAT, 0o644) == a  # reuses the closed number
    sc(kernel, p, "dup2", b, 0)
    child = fork_child(kernel, p, 200, token)
    assert child.ppid == p.pid and kernel.tasks[200] is child
    assert {fd: (e.file, e.cloexec) for fd, e in child.fds} == at_fork
    assert stats(kernel)["pending_forks"] == 0
    # the descriptions are shared: an offset moved by the child shows in the parent
    sc(kernel, child, "write", c, b"abc")
    assert sc(kernel, p, "lseek", c, 0, linux.SEEK_CUR) == 3
    # the file closed by the parent lives on in the child
    assert sc(kernel, child, "write", a, b"still open") == 10
    assert t_file(child, a).path == "/a" and t_file(p, a).path == "/d"
    assert t_file(child, 0).path == "/dev/console" and t_file(p, 0).path == "/b"


def test_fork_token_checks(kernel: Kernel) -> None:
    p = spawn(kernel, 100)
    other = spawn(kernel, 101)
    token = sc(kernel, p, "fork_prepare")
    hello = {"kind": wire.FORK, "token": token, "name": "c"}
    with pytest.raises(RegistrationRefused) as info:
        register(kernel, 200, 0, 0, real_ppid=other.pid, hello=hello)
    assert info.value.reason == wire.E_BAD_TOKEN  # a token of another parent
    with pytest.raises(RegistrationRefused) as info:
        register(kernel, 200, 0, 0, p.pid, {**hello, "token": b"\0" * 16})
    assert info.value.reason == wire.E_BAD_TOKEN
    with pytest.raises(RegistrationRefused) as info:
        register(kernel, 101, 0, 0, p.pid, hello)
    assert info.value.reason == wire.E_BAD_TOKEN  # the pid is a task already
    with pytest.raises(RegistrationRefused) as info:
        register(kernel, 200, 0, 0, p.pid, {**hello, "kind": "clone"})
    assert info.value.reason == wire.E_MALFORMED
    assert stats(kernel)["pending_forks"] == 1  # refusals consumed nothing
    fork_child(kernel, p, 200, token)
    with pytest.raises(RegistrationRefused) as info:
        fork_child(kernel, p, 201, token)  # a token is good for one child
    assert info.value.reason == wire.E_BAD_TOKEN
    assert sc(kernel, p, "fork_done", token, 200) == 0  # the child registered first


def test_fork_done_failed_fork_drops_the_snapshot(kernel: Kernel) -> None:
    p = spawn(kernel, 100)
    base = stats(kernel)
    sc(kernel, p, "open", "/a", RDWR_CREAT, 0o644)
    with_file = stats(kernel)
    token = sc(kernel, p, "fork_prepare")
    sc(kernel, p, "close", 3)
    assert stats(kernel)["files"] == with_file["files"]  # the snapshot holds it
    assert sc(kernel, p, "fork_done", token, -1) == 0
    after = stats(kernel)
    assert after["pending_forks"] == 0 and after["files"] == base["files"]
    assert scerr(kernel, p, "fork_done", token, -1) == errno.EINVAL


def test_fork_done_child_gone_before_registering_drops_the_snapshot(
        kernel: Kernel, io: FakeIO) -> None:
    p = spawn(kernel, 100)
    other = spawn(kernel, 101)
    base = stats(kernel)
    token = sc(kernel, p, "fork_prepare")
    assert scerr(kernel, other, "fork_done", token, 300) == errno.EINVAL  # not its fork
    assert scerr(kernel, p, "fork_done", token, 300) == errno.EINVAL  # not a real child
    kernel.host_ppid = lambda pid: 100  # the host now says 300 is p's child
    sc(kernel, p, "fork_done", token, 300)  # FakeIO.watch_pid: 300 is already gone
    assert io.watched == [300]
    assert stats(kernel) == base


def test_fork_snapshot_of_a_dead_parent_expires(kernel: Kernel) -> None:
    clock = Clock()
    kernel.clock = clock
    p = spawn(kernel, 100)
    keeper = spawn(kernel, 1)
    base = stats(kernel)
    sc(kernel, p, "open", "/a", RDWR_CREAT, 0o644)
    sc(kernel, p, "unlink", "/a")
    sc(kernel, p, "write", 3, b"x")
    t1 = sc(kernel, p, "fork_prepare")
    t2 = sc(kernel, p, "fork_prepare")
    kernel.exit_task(p, "killed")
    s = stats(kernel)
    assert s["pending_forks"] == 2 and s["blocks_used"] == 1 and s["timers"] == 2
    # within the claim timeout a child may still register with its token
    clock.now += kernel.config.fork_claim_timeout / 2
    kernel.run_timers()
    child = fork_child(kernel, p, 200, t1)
    assert child.ppid == 100 and 3 in dict(child.fds)
    clock.now += kernel.config.fork_claim_timeout
    kernel.run_timers()
    s = stats(kernel)
    assert s["pending_forks"] == 0 and s["timers"] == 0
    with pytest.raises(RegistrationRefused):
        fork_child(kernel, p, 201, t2)
    kernel.exit_task(child, "killed")
    assert stats(kernel) == {**base, "tasks": 1, "files": base["files"] - 1}
    assert keeper.pid in kernel.tasks


def test_exec_closes_only_cloexec_descriptors(kernel: Kernel, io: FakeIO) -> None:
    t = spawn(kernel, 100)
    keep = sc(kernel, t, "open", "/keep", RDWR_CREAT, 0o644)
    gone = sc(kernel, t, "open", "/gone", RDWR_CREAT | linux.O_CLOEXEC, 0o644)
    dup_keep = sc(kernel, t, "dup", gone)  # the dup is not close-on-exec
    gone2 = sc(kernel, t, "fcntl", keep, linux.F_DUPFD_CLOEXEC, 20)
    sc(kernel, t, "fcntl", 1, linux.F_SETFD, linux.FD_CLOEXEC)
    token = sc(kernel, t, "exec_prepare")
    assert io.revoked == [100]  # the old image's credentials end with the reply
    assert sorted(dict(t.fds)) == [0, 2, keep, dup_keep]
    assert gone not in dict(t.fds) and gone2 not in dict(t.fds)
    assert t.fds.get(dup_keep).file.path == "/gone"
    assert t.execs == 1
    with pytest.raises(RegistrationRefused) as info:
        register(kernel, 100, 0, 0, 0, {"kind": wire.EXEC, "token": b"x" * 16, "name": "n"})
    assert info.value.reason == wire.E_BAD_TOKEN
    with pytest.raises(RegistrationRefused) as info:
        register(kernel, 101, 0, 0, 0, {"kind": wire.EXEC, "token": token, "name": "n"})
    assert info.value.reason == wire.E_BAD_TOKEN  # another pid
    same = register(kernel, 100, 0, 0, 0, {"kind": wire.EXEC, "token": token, "name": "new"})
    assert same is t and t.name == "new"
    assert t.exec_token is None
    assert sorted(dict(t.fds)) == [0, 2, keep, dup_keep]
    with pytest.raises(RegistrationRefused):  # the token was used up
        register(kernel, 100, 0, 0, 0, {"kind": wire.EXEC, "token": token, "name": "n"})


def test_exec_hello_without_token_is_refused(kernel: Kernel) -> None:
    spawn(kernel, 100)
    with pytest.raises(RegistrationRefused) as info:
        register(kernel, 100, 0, 0, 0, {"kind": wire.EXEC, "name": "n"})
    assert info.value.reason == wire.E_BAD_TOKEN


def test_register_unhashable_kind_is_malformed(kernel: Kernel) -> None:
    with pytest.raises(RegistrationRefused) as info:
        register(kernel, 100, 0, 0, 0, {"kind": ["spawn"], "name": "n"})
    assert info.value.reason == wire.E_MALFORMED


# --- kernel: descriptor passing (mailboxes: bind, sendmsg, recvmsg) --------------------------


def t_file(t: Task, fd: int) -> File:
    return t.fds.get(fd).file


def test_passed_file_outlives_the_senders_close(kernel: Kernel) -> None:
    s = spawn(kernel, 100, "sender")
    r = spawn(kernel, 101, "receiver")
    sc(kernel, r, "bind", "r")
    fd = sc(kernel, s, "open", "/f", RDWR_CREAT, 0o644)
    sc(kernel, s, "write", fd, b"payload")
    sc(kernel, s, "unlink", "/f")
    assert sc(kernel, s, "sendmsg", "r", b"hi", [fd, fd]) == 2
    sc(kernel, s, "close", fd)
    st = stats(kernel)
    assert st["inflight"] == 1 and st["blocks_used"] == 1
    sc(kernel, r, "close", 1)
    assert scerr(kernel, r, "recvmsg", "r", linux.O_NONBLOCK) == errno.EINVAL
    msg = sc(kernel, r, "recvmsg", "r")
    assert msg == {"sender": s.pid, "data": b"hi", "fds": [1, 3]}  # lowest free, in order
    assert t_file(r, 1) is t_file(r, 3)
    assert sc(kernel, r, "pread", 1, 100, 0) == b"payload"
    assert sc(kernel, r, "fcntl", 1, linux.F_GETFD) == 0
    assert stats(kernel)["inflight"] == 0
    assert scerr(kernel, r, "recvmsg", "r", MSG_DONTWAIT) == errno.EAGAIN  # taken once
    sc(kernel, r, "close", 1)
    sc(kernel, r, "close", 3)
    assert stats(kernel)["blocks_used"] == 0


def test_messages_are_received_in_order(kernel: Kernel) -> None:
    s = spawn(kernel, 100)
    r = spawn(kernel, 101)
    sc(kernel, r, "bind", "r")
    for i in range(5):
        sc(kernel, s, "sendmsg", "r", bytes([i]), [])
    sc(kernel, r, "sendmsg", "r", b"self", [0])  # to one's own socket
    got = [sc(kernel, r, "recvmsg", "r")["data"] for _ in range(6)]
    assert got == [b"\0", b"\1", b"\2", b"\3", b"\4", b"self"]


def test_recvmsg_cloexec_flag(kernel: Kernel) -> None:
    s = spawn(kernel, 100)
    r = spawn(kernel, 101)
    sc(kernel, r, "bind", "r")
    fd = sc(kernel, s, "open", "/f", RDWR_CREAT, 0o644)
    sc(kernel, s, "sendmsg", "r", b"", [fd])
    (got,) = sc(kernel, r, "recvmsg", "r", linux.O_CLOEXEC | MSG_DONTWAIT)["fds"]
    assert sc(kernel, r, "fcntl", got, linux.F_GETFD) == linux.FD_CLOEXEC


def test_mailbox_of_another_process(kernel: Kernel) -> None:
    s = spawn(kernel, 100)
    r = spawn(kernel, 101)
    thief = spawn(kernel, 102)
    sc(kernel, r, "bind", "r")
    assert sc(kernel, r, "bind", "r") == 0  # again by its owner (after exec): no-op
    fd = sc(kernel, s, "open", "/f", RDWR_CREAT, 0o644)
    sc(kernel, s, "sendmsg", "r", b"x", [fd])
    assert scerr(kernel, thief, "recvmsg", "r") == errno.ENOTCONN
    assert scerr(kernel, s, "recvmsg", "r") == errno.ENOTCONN
    assert scerr(kernel, thief, "bind", "r") == errno.EADDRINUSE
    assert scerr(kernel, thief, "recvmsg", "unbound") == errno.ENOTCONN
    assert scerr(kernel, thief, "bind", "") == errno.EINVAL
    assert scerr(kernel, thief, "bind", "n" * 108) == errno.EINVAL
    assert stats(kernel)["inflight"] == 1
    assert sc(kernel, r, "recvmsg", "r")["fds"] == [3]


def test_sendmsg_errors_take_no_reference(kernel: Kernel) -> None:
    s = spawn(kernel, 100)
    r = spawn(kernel, 101)
    sc(kernel, r, "bind", "r")
    fd = sc(kernel, s, "open", "/f", RDWR_CREAT, 0o644)
    before = stats(kernel)
    refs = t_file(s, fd).refs
    assert scerr(kernel, s, "sendmsg", "r", b"", [fd, 99]) == errno.EBADF
    assert scerr(kernel, s, "sendmsg", "nobody", b"", [fd]) == errno.ECONNREFUSED
    assert scerr(kernel, s, "sendmsg", "r", b"", [fd] * (SCM_MAX_FD + 1)) == errno.EINVAL
    assert scerr(kernel, s, "sendmsg", "r", bytes(MAX_MESSAGE + 1), [fd]) == errno.EMSGSIZE
    assert t_file(s, fd).refs == refs
    assert stats(kernel) == before


def test_full_queue_is_eagain(kernel: Kernel) -> None:
    s = spawn(kernel, 100)
    r = spawn(kernel, 101)
    sc(kernel, r, "bind", "r")
    fd = sc(kernel, s, "open", "/f", RDWR_CREAT, 0o644)
    for _ in range(MAX_QLEN):
        sc(kernel, s, "sendmsg", "r", b"", [])
    refs = t_file(s, fd).refs
    assert scerr(kernel, s, "sendmsg", "r", b"", [fd]) == errno.EAGAIN
    assert t_file(s, fd).refs == refs
    sc(kernel, r, "recvmsg", "r")
    assert sc(kernel, s, "sendmsg", "r", b"z", [fd]) == 1


def test_recvmsg_emfile_keeps_the_message(kernel: Kernel) -> None:
    s = spawn(kernel, 100)
    r = spawn(kernel, 101)
    sc(kernel, r, "bind", "r")
    fd = sc(kernel, s, "open", "/f", RDWR_CREAT, 0o644)
    sc(kernel, s, "sendmsg", "r", b"", [fd, fd])
    r.fds.limit = 4
    assert scerr(kernel, r, "recvmsg", "r") == errno.EMFILE
    assert stats(kernel)["inflight"] == 1
    r.fds.limit = 5
    assert sc(kernel, r, "recvmsg", "r")["fds"] == [3, 4]


def test_recvmsg_sleeps_until_a_message_comes(kernel: Kernel) -> None:
    s = spawn(kernel, 100)
    r = spawn(kernel, 101)
    sc(kernel, r, "bind", "r")
    with pytest.raises(MustWait) as info:
        sc(kernel, r, "recvmsg", "r")
    woken: list[int] = []
    unregister = info.value.register(lambda: woken.append(1))
    sc(kernel, s, "sendmsg", "r", b"first", [])
    assert woken == [1]
    assert sc(kernel, r, "recvmsg", "r")["data"] == b"first"
    # a sleeper taken off the queue (its caller died) is not woken
    with pytest.raises(MustWait) as info:
        sc(kernel, r, "recvmsg", "r")
    unregister = info.value.register(lambda: woken.append(2))
    unregister()
    sc(kernel, s, "sendmsg", "r", b"second", [])
    assert woken == [1]


def test_passes_to_a_dead_receiver_are_released_from_it_survive(kernel: Kernel) -> None:
    a = spawn(kernel, 100)
    b = spawn(kernel, 101)
    base = stats(kernel)
    sc(kernel, a, "bind", "a")
    sc(kernel, b, "bind", "b")
    fa = sc(kernel, a, "open", "/fa", RDWR_CREAT, 0o644)
    sc(kernel, a, "unlink", "/fa")
    sc(kernel, a, "write", fa, b"to b")
    sc(kernel, a, "sendmsg", "b", b"", [fa])
    sc(kernel, a, "close", fa)
    fb = sc(kernel, b, "open", "/fb", RDWR_CREAT, 0o644)
    sc(kernel, b, "write", fb, b"from b")
    sc(kernel, b, "unlink", "/fb")
    sc(kernel, b, "sendmsg", "a", b"", [fb])
    assert stats(kernel)["blocks_used"] == 2
    kernel.exit_task(b, "killed")
    s = stats(kernel)
    assert s["inflight"] == 1  # the pass from b to a survives b; the one to b is gone
    assert s["blocks_used"] == 1  # /fa went with b's queue
    assert scerr(kernel, a, "sendmsg", "b", b"", []) == errno.ECONNREFUSED  # unbound
    (got,) = sc(kernel, a, "recvmsg", "a")["fds"]
    assert sc(kernel, a, "pread", got, 10, 0) == b"from b"
    kernel.exit_task(a, "killed")
    assert stats(kernel) == {**base, "tasks": 0, "files": 0}  # no task left to hold stdio
    assert kernel.pmem.free_blocks == kernel.pmem.nblocks


# --- kernel: exit ----------------------------------------------------------------------------


def test_exit_releases_everything(kernel: Kernel) -> None:
    watcher = spawn(kernel, 1, "watcher")
    sc(kernel, watcher, "bind", "watcher")
    base = stats(kernel)
    t = spawn(kernel, 100)
    sc(kernel, t, "bind", "t")
    a = sc(kernel, t, "open", "/a", RDWR_CREAT, 0o644)
    sc(kernel, t, "write", a, b"a" * 10000)
    sc(kernel, t, "dup2", a, 30)
    sc(kernel, t, "unlink", "/a")
    b = sc(kernel, t, "open", "/b", RDWR_CREAT | linux.O_CLOEXEC, 0o644)
    sc(kernel, t, "pwrite", b, b"b", 50000)
    sc(kernel, t, "unlink", "/b")
    sc(kernel, t, "mkdir", "/dir")
    d = sc(kernel, t, "open", "/dir", linux.O_RDONLY)
    sc(kernel, t, "rmdir", "/dir")
    sc(kernel, t, "sendmsg", "watcher", b"", [a, b])  # to the watcher: survives
    sc(kernel, t, "sendmsg", "t", b"", [d])  # to itself: goes with it
    sc(kernel, t, "fork_prepare")  # a snapshot: expires later, see the fork tests
    during = stats(kernel)
    assert during["tasks"] == 2 and during["blocks_used"] == 4 and during["inflight"] == 2
    kernel.exit_task(t, "killed")
    assert 100 not in kernel.tasks
    kernel.exit_task(t, "again")  # idempotent
    after = stats(kernel)
    assert after["inflight"] == 1 and after["pending_forks"] == 1
    assert scerr(kernel, watcher, "recvmsg", "t") == errno.ENOTCONN  # unbound at exit
    # drop the snapshot and take the message, then nothing of the task is left
    for token in list(kernel.pending_forks):
        kernel.drop_fork(token)
    for fd in sc(kernel, watcher, "recvmsg", "watcher")["fds"]:
        sc(kernel, watcher, "close", fd)
    assert stats(kernel) == base
    assert kernel.pmem.free_blocks == kernel.pmem.nblocks


def test_wait_exit_parks_until_the_exit(kernel: Kernel, io: FakeIO) -> None:
    w = spawn(kernel, 100, "waiter")
    t = spawn(kernel, 101)
    assert sc(kernel, w, "wait_exit", 4242) == 0  # not a task: at once
    with pytest.raises(MustWait) as info:  # it sleeps on the exit's wait queue
        sc(kernel, w, "wait_exit", t.pid)
    woken: list[int] = []
    info.value.register(lambda: woken.append(1))
    assert io.replies == [] and woken == []
    kernel.exit_task(t, "killed")
    assert woken == [1]
    assert sc(kernel, w, "wait_exit", t.pid) == 0  # run again once woken: done


def test_waiter_death_cancels_its_parked_call(kernel: Kernel, io: FakeIO) -> None:
    w = spawn(kernel, 100, "waiter")
    t = spawn(kernel, 101)
    with pytest.raises(MustWait) as info:
        sc(kernel, w, "wait_exit", t.pid)
    woken: list[int] = []
    w.parked[3] = info.value.register(lambda: woken.append(1))  # as the dispatcher parks it
    kernel.exit_task(w, "killed")
    assert stats(kernel)["parked"] == 0
    assert not kernel.exit_waiters.get(t.pid)
    kernel.exit_task(t, "killed")
    assert io.replies == [] and woken == []  # nobody left to answer


# --- kernel: bugs found by poking at the handlers ---------------------------------------------


class CountingBlocks(dict[int, int]):
    """A block map that counts membership tests."""

    lookups = 0

    def __contains__(self, key: object) -> bool:
        CountingBlocks.lookups += 1
        return super().__contains__(key)


def test_seek_data_cost_is_bounded_by_the_block_map(kernel: Kernel) -> None:
    t = spawn(kernel, 100)
    fd = sc(kernel, t, "open", "/sparse", RDWR_CREAT, 0o644)
    bs = kernel.fs.block_size
    sc(kernel, t, "pwrite", fd, b"x", 50_000 * bs)
    inode = kernel.fs.lookup("/sparse")
    inode.blocks = CountingBlocks(inode.blocks)
    CountingBlocks.lookups = 0
    assert sc(kernel, t, "lseek", fd, 0, linux.SEEK_DATA) == 50_000 * bs
    assert sc(kernel, t, "lseek", fd, 0, linux.SEEK_HOLE) == 0
    assert CountingBlocks.lookups <= 16


def test_proc_fds_of_a_deep_file(kernel: Kernel) -> None:
    t = spawn(kernel, 100)
    path = ""
    for _ in range(1100):
        path += "/d"
        kernel.fs.mkdir(path, 0o755, 0, 0)
    fd = sc(kernel, t, "open", path + "/f", RDWR_CREAT, 0o644)
    try:
        entries = sc(kernel, t, "proc_fds", t.pid)
    except RecursionError:  # caught here: pytest's report of it takes seconds
        entries = None
    assert entries is not None, "proc_fds raised RecursionError"
    assert {e["fd"]: e["path"] for e in entries}[fd] == path + "/f"


# --- protocol.wire ---------------------------------------------------------------------------


def _body(**over: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"v": list(wire.PROTOCOL_VERSION), "k": wire.CALL, "pid": 42,
                            "seq": 1, "id": 1, "call": "getpid", "args": []}
    body.update(over)
    return body


def _reason(frame: bytes) -> str:
    with pytest.raises(ProtocolError) as info:
        wire.open_frame(frame)
    return info.value.reason


def test_seal_open_verify_round_trip() -> None:
    secret = os.urandom(wire.SECRET_LEN)
    body = _body(args=[b"\x00bytes", "str", -1, 2**63])
    frame = wire.seal(body, secret)
    got, payload, mac = wire.open_frame(frame)
    assert got == body
    assert isinstance(got["args"][0], bytes) and isinstance(got["args"][1], str)
    assert len(mac) == wire.MAC_LEN and payload + mac == frame
    assert wire.verify(payload, mac, secret)
    assert not wire.verify(payload, mac, os.urandom(wire.SECRET_LEN))
    tampered = bytearray(payload)
    tampered[-1] ^= 1
    assert not wire.verify(bytes(tampered), mac, secret)
    assert not wire.verify(payload, bytes(wire.MAC_LEN), secret)


def test_open_frame_refuses_bad_frames() -> None:
    secret = b"k" * wire.SECRET_LEN
    good = wire.seal(_body(), secret)
    assert _reason(b"x" * (wire.MAX_FRAME + 1)) == wire.E_TOO_LARGE
    assert _reason(b"") == wire.E_MALFORMED
    assert _reason(bytes(wire.MAC_LEN)) == wire.E_MALFORMED  # only a MAC
    assert _reason(good[: len(good) // 2]) == wire.E_MALFORMED  # truncated
    assert _reason(b"\xc1" * 10 + bytes(wire.MAC_LEN)) == wire.E_MALFORMED  # garbage
    assert _reason(wire.pack(_body()) + b"extra" + bytes(wire.MAC_LEN)) == wire.E_MALFORMED
    assert _reason(msgpack.packb([1, 2, 3]) + bytes(wire.MAC_LEN)) == wire.E_MALFORMED
    assert _reason(msgpack.packb("str") + bytes(wire.MAC_LEN)) == wire.E_MALFORMED
    assert _reason(wire.seal(_body(k="shout"), secret)) == wire.E_MALFORMED
    assert _reason(wire.seal(_body(k=None), secret)) == wire.E_MALFORMED
    assert _reason(wire.seal(_body(pid="42"), secret)) == wire.E_MALFORMED
    assert _reason(wire.seal(_body(pid=True), secret)) == wire.E_MALFORMED
    assert _reason(wire.seal(_body(seq=1.5), secret)) == wire.E_MALFORMED
    no_pid = _body()
    del no_pid["pid"]
    assert _reason(wire.seal(no_pid, secret)) == wire.E_MALFORMED
    assert _reason(msgpack.packb({1: 2}) + bytes(wire.MAC_LEN)) == wire.E_MALFORMED


def test_open_frame_unhashable_kind_is_malformed() -> None:
    assert _reason(wire.pack(_body(k=["call"])) + bytes(wire.MAC_LEN)) == wire.E_MALFORMED
    assert _reason(wire.pack(_body(k={"a": 1})) + bytes(wire.MAC_LEN)) == wire.E_MALFORMED


def test_open_frame_version_checks() -> None:
    secret = b"k" * wire.SECRET_LEN
    with pytest.raises(VersionMismatch) as info:
        wire.open_frame(wire.seal(_body(v=[wire.PROTOCOL_VERSION[0] + 1, 0]), secret))
    assert info.value.reason == wire.E_VERSION
    # a newer minor version of the same major is accepted
    wire.open_frame(wire.seal(_body(v=[wire.PROTOCOL_VERSION[0], 99]), secret))
    for bad in ("1.0", [1], [1, 0, 0], [True, 0], None, [1.0, 0]):
        frame = wire.seal(_body(v=bad), secret)
        with pytest.raises(ProtocolError) as perr:
            wire.open_frame(frame)
        assert perr.value.reason == wire.E_MALFORMED
        assert not isinstance(perr.value, VersionMismatch)


def test_check_version() -> None:
    wire.check_version(list(wire.PROTOCOL_VERSION))
    wire.check_version(tuple(wire.PROTOCOL_VERSION))
    with pytest.raises(VersionMismatch):
        wire.check_version([wire.PROTOCOL_VERSION[0] + 1, 0])
    with pytest.raises(VersionMismatch):
        wire.check_version([0, 9])


def test_record_reader_split_across_feeds() -> None:
    body = {"v": [1, 0], "kind": "spawn", "name": "n" * 300, "token": b"\x00\x01"}
    data = wire.encode_record(body)
    assert int.from_bytes(data[:4], "big") == len(data) - 4
    r = wire.RecordReader()
    for i in range(len(data) - 1):
        assert r.feed(data[i : i + 1]) is None
    assert r.feed(data[-1:]) == body


def test_record_reader_oversized_and_malformed() -> None:
    r = wire.RecordReader()
    with pytest.raises(ProtocolError) as info:
        r.feed((wire.MAX_RECORD + 1).to_bytes(4, "big"))  # refused from the header alone
    assert info.value.reason == wire.E_TOO_LARGE
    r = wire.RecordReader()
    assert r.feed(wire.MAX_RECORD.to_bytes(4, "big")) is None  # at the limit: waits
    for payload in (msgpack.packb([1, 2]), b"\xc1\xc1", b""):
        r = wire.RecordReader()
        with pytest.raises(ProtocolError) as info:
            r.feed(len(payload).to_bytes(4, "big") + payload)
        assert info.value.reason == wire.E_MALFORMED


def test_record_reader_two_records_in_one_feed() -> None:
    r = wire.RecordReader()
    a, b = {"n": 1}, {"n": 2}
    first = r.feed(wire.encode_record(a) + wire.encode_record(b)[:3])
    assert first == a
    assert r.feed(wire.encode_record(b)[3:]) == b


# --- layering --------------------------------------------------------------------------------


def _imported_packages(package: str) -> set[str]:
    """Top-level names imported (absolutely) by any module of ``package``."""
    found: set[str] = set()
    for dirpath, _, files in os.walk(os.path.join(ROOT, package)):
        for name in files:
            if not name.endswith(".py"):
                continue
            path = os.path.join(dirpath, name)
            with open(path, encoding="utf-8") as fh:
                tree = ast.parse(fh.read(), path)
            for node in ast.walk(tree):
                if isinstance(node, ast.Import):
                    found.update(_package_of(a.name) for a in node.names)
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    found.add(_package_of(node.module))
    return found


def _package_of(module: str) -> str:
    """The project's package a module belongs to (``kemu.agents.lib`` -> ``agents``)."""
    return module.removeprefix("kemu.").split(".")[0]


def test_daemon_and_agents_share_only_protocol() -> None:
    first_party = {"protocol", "kernel_daemon", "agents", "launch"}
    daemon = _imported_packages("kernel_daemon") & first_party
    agents = _imported_packages("agents") & first_party
    proto = _imported_packages("protocol") & first_party
    assert "agents" not in daemon
    assert "kernel_daemon" not in agents
    assert "launch" not in daemon | agents
    assert daemon & agents == {"protocol"}
    assert proto <= {"protocol"}  # protocol depends on neither side


def test_fork_child_gets_the_mappings_as_they_were_at_the_fork(kernel: Kernel) -> None:
    """dup_mmap happens at fork: what the parent maps, unmaps or writes afterwards does
    not reach the child, even if it registers later (or after the parent died)."""
    p = spawn(kernel, 100, "parent")
    fd = sc(kernel, p, "open", "/f", RDWR_CREAT, 0o644)
    sc(kernel, p, "ftruncate", fd, 4096)
    rw = linux.PROT_READ | linux.PROT_WRITE
    anon = linux.MAP_ANONYMOUS
    filemap = sc(kernel, p, "mmap", 4096, rw, linux.MAP_SHARED, fd, 0)
    shared = sc(kernel, p, "mmap", 4096, rw, linux.MAP_SHARED | anon, -1, 0)
    private = sc(kernel, p, "mmap", 4096, rw, linux.MAP_PRIVATE | anon, -1, 0)
    sblock = sc(kernel, p, "mm_fault", shared["vma"], 0, 1)
    pblock = sc(kernel, p, "mm_fault", private["vma"], 0, 1)
    kernel.pmem.view(pblock)[:6] = b"before"
    token = sc(kernel, p, "fork_prepare")
    # after the fork: the parent unmaps everything, closes the file, maps anew, writes
    for m in (filemap, shared, private):
        sc(kernel, p, "munmap", m["addr"], 4096)
    sc(kernel, p, "close", fd)
    sc(kernel, p, "mmap", 8192, rw, linux.MAP_SHARED | anon, -1, 0)
    child = fork_child(kernel, p, 200, token)
    kids = sorted(mm.vmas(child).values(), key=lambda m: m.vid)
    assert [m.vid for m in kids] == [filemap["vma"], shared["vma"], private["vma"]]
    assert kids[0].file is not None and kids[0].file.path == "/f"  # the mapping holds it
    assert sc(kernel, child, "mm_fault", shared["vma"], 0, 1) == sblock  # still shared
    copy = sc(kernel, child, "mm_fault", private["vma"], 0, 1)
    assert copy != pblock and bytes(kernel.pmem.view(copy)[:6]) == b"before"
    for m in kids:
        sc(kernel, child, "munmap", m.start, m.length)
    assert stats(kernel)["pending_forks"] == 0


def test_an_unclaimed_fork_gives_back_its_copies(kernel: Kernel) -> None:
    p = spawn(kernel, 100, "parent")
    rw = linux.PROT_READ | linux.PROT_WRITE
    private = sc(kernel, p, "mmap", 4096, rw, linux.MAP_PRIVATE | linux.MAP_ANONYMOUS, -1, 0)
    sc(kernel, p, "mm_fault", private["vma"], 0, 1)
    used = kernel.pmem.nblocks - kernel.pmem.free_blocks
    token = sc(kernel, p, "fork_prepare")
    assert kernel.pmem.nblocks - kernel.pmem.free_blocks == used + 1  # the child's copy
    kernel.drop_fork(token)
    assert kernel.pmem.nblocks - kernel.pmem.free_blocks == used


def test_owner_outside_the_emulation_is_accepted_and_never_signalled(kernel: Kernel) -> None:
    """F_SETOWN of a machine process the emulator does not run (this test process) is
    accepted as Linux accepts any existing PID; F_GETOWN names it; a lease break's
    notice is logged as ``signal-outside`` and not sent (SIGIO would kill this test)."""
    seen: list[tuple[str, dict[str, Any]]] = []
    emit = kernel.log.emit

    def record(ev: str, **fields: Any) -> None:
        seen.append((ev, fields))
        emit(ev, **fields)

    kernel.log.emit = record  # type: ignore[method-assign]
    a, b = spawn(kernel, 100, "a"), spawn(kernel, 200, "b")
    fd = sc(kernel, a, "open", "/f", RDWR_CREAT, 0o644)
    sc(kernel, a, "close", fd)
    fd = sc(kernel, a, "open", "/f", linux.O_RDONLY)
    sc(kernel, a, "fcntl", fd, linux.F_SETLEASE, linux.F_WRLCK)
    assert sc(kernel, a, "fcntl", fd, linux.F_SETOWN, os.getpid()) == 0
    assert sc(kernel, a, "fcntl", fd, linux.F_GETOWN) == os.getpid()
    assert scerr(kernel, b, "open", "/f", linux.O_RDONLY | linux.O_NONBLOCK) == errno.EWOULDBLOCK
    assert [f["pid"] for ev, f in seen if ev == "signal-outside"] == [os.getpid()]
    assert not [ev for ev, _ in seen if ev == "signal"]
