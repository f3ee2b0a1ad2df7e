"""File system calls: open, close, read, write, seek, truncate and the namespace.

Each handler names the Linux function it follows.  Errno order follows the kernel's
checks (``build_open_flags`` before the path walk, ``may_open`` after it), checked
against the host by the dual-target tests.
"""

from __future__ import annotations

import bisect
import errno
from typing import Any

from kemu.kernel_daemon import cred as dac
from kemu.kernel_daemon import locks, mm
from kemu.kernel_daemon.errors import KernelError, resume_at
from kemu.kernel_daemon.kernel import Kernel
from kemu.kernel_daemon.layout import LayoutChange
from kemu.kernel_daemon.pmem import Owner
from kemu.kernel_daemon.syscalls import pipe
from kemu.kernel_daemon.syscalls.table import syscall
from kemu.kernel_daemon.task import File, Task
from kemu.kernel_daemon.vfs import MAX_LFS_FILESIZE, Inode, s_maxbytes
from kemu.protocol import linux, wire

#: largest transfer one read/write message carries; longer calls return short, as
#: Linux may (MAX_RW_COUNT is the kernel's own cap)
MAX_IO = wire.MAX_IO
#: the largest ``loff_t``: an offset or length past it is a negative one in C
LOFF_MAX = MAX_LFS_FILESIZE

#: flags open(2) keeps with O_PATH (fs/open.c O_PATH_FLAGS)
O_PATH_FLAGS = linux.O_DIRECTORY | linux.O_NOFOLLOW | linux.O_PATH | linux.O_CLOEXEC


def truncate_pages(k: Kernel, task: Task, inode: Inode, length: int) -> None:
    """A size change (``notify_change`` + ``truncate_setsize``): the design first, then,
    when shrinking, the pages past the new end are unmapped under the invalidate lock
    and the shoot-downs waited for before anything is freed."""
    bs = k.fs.block_size
    first = -(-length // bs)
    k.policy.layout_change(k, task, inode, LayoutChange.TRUNCATE, first, None)
    if length < inode.size:
        with inode.invalidate_lock.hold(task, first, None):
            # truncate_pagecache(): unmap_mapping_range(..., even_cows=1)
            mm.unmap_and_wait(k, inode, first, None, even_cows=True)
            k.fs.truncate(inode, length)
    else:
        k.fs.truncate(inode, length)


@syscall("open", linux="fs/open.c do_sys_open()", support="partial",
         note="no O_TMPFILE (EOPNOTSUPP); no symlinks; DAC as fs/namei.c may_open()")
def sys_open(k: Kernel, t: Task, path: str, flags: int, mode: int = 0) -> Any:
    """open(2).  Linux: fs/open.c build_open_flags(), fs/namei.c path_openat().

    As in Linux the descriptor number is taken first (EMFILE before any side effect),
    the permission check (``may_open``) comes before the file is opened, the file is
    opened (and counts as an open) before ``break_lease``, and a breaker that sleeps
    goes on with the file it already opened when woken.
    """
    # x86-64 forces O_LARGEFILE (force_o_largefile()) before O_PATH masks it away again
    flags = (flags & 0xFFFFFFFF) | linux.O_LARGEFILE
    if flags & linux.O_TMPFILE == linux.O_TMPFILE:
        raise KernelError(errno.EOPNOTSUPP, "O_TMPFILE")
    if flags & linux.O_PATH:
        flags &= O_PATH_FLAGS
    elif flags & linux.O_CREAT and flags & linux.O_DIRECTORY:
        raise KernelError(errno.EINVAL, "O_CREAT|O_DIRECTORY")  # since Linux 6.4
    acc = flags & linux.O_ACCMODE
    fd = t.fds.reserve()
    try:
        inode, created = _lookup_open(k, t, path, flags, mode)
        if not flags & linux.O_PATH:
            if inode.is_dir:
                if flags & linux.O_CREAT or acc != linux.O_RDONLY or flags & linux.O_TRUNC:
                    raise KernelError(errno.EISDIR)
            elif flags & linux.O_DIRECTORY:
                raise KernelError(errno.ENOTDIR)
            if not created:  # do_open(): a file the open created is not checked
                dac.may_open(t.cred, inode, dac.acc_mode(flags), flags)
        elif flags & linux.O_DIRECTORY and not inode.is_dir:
            raise KernelError(errno.ENOTDIR)
        file = k.open_file(inode, flags, path)
    except BaseException:
        t.fds.unreserve(fd)
        raise
    leases = not flags & linux.O_PATH and inode.is_reg
    truncate = bool(flags & linux.O_TRUNC) and leases and not created

    def abort() -> None:
        t.fds.unreserve(fd)
        k.fput(file)

    def attempt() -> int:
        if inode.is_fifo and not flags & linux.O_PATH:
            pipe.fifo_open(k, file)  # may sleep for the other end
        if leases:
            locks.break_lease(k, t, inode, flags)  # do_dentry_open()
        if truncate:
            truncate_pages(k, t, inode, 0)  # handle_truncate()
        t.fds.install(fd, file, bool(flags & linux.O_CLOEXEC))
        return fd

    return resume_at(attempt, abort)


def maxbytes(k: Kernel) -> int:
    """``inode->i_sb->s_maxbytes`` of the emulated filesystem (its flavour's)."""
    return s_maxbytes(k.config.flavour, k.fs.block_size)


def _loff(value: int) -> None:
    """An ``loff_t`` argument: a value past LOFF_MAX is negative in C, ``EINVAL``."""
    if not 0 <= value <= LOFF_MAX:
        raise KernelError(errno.EINVAL)


def rw_verify_area(offset: int, count: int) -> None:
    """``fs/read_write.c rw_verify_area()``: a negative position, or one whose end
    passes LOFF_MAX, is ``EINVAL`` before anything else looks at the file."""
    _loff(offset)
    if offset + count > LOFF_MAX:
        raise KernelError(errno.EINVAL)


def _lookup_open(k: Kernel, t: Task, path: str, flags: int, mode: int,
                 links: int = 0) -> tuple[Inode, bool]:
    """The path walk of open: the existing inode, or a new one with O_CREAT
    (``may_o_create``: write and search permission on the directory).

    A symbolic link last is followed, except with O_NOFOLLOW (ELOOP, or the link
    itself with O_PATH) and with O_CREAT|O_EXCL (EEXIST); O_CREAT through a dangling
    link creates its target (``open_last_lookups``/``pick_link``)."""
    excl = bool(flags & linux.O_CREAT and flags & linux.O_EXCL)
    try:
        inode = k.fs.lookup(path, t.cred, follow=not (flags & linux.O_NOFOLLOW or excl))
    except KernelError as exc:
        if exc.errno != errno.ENOENT or not flags & linux.O_CREAT:
            raise
        parent, name = k.fs.lookup_parent(path, t.cred)
        if name in ("", ".", "..") or path.endswith("/"):
            raise KernelError(errno.EISDIR) from None
        assert parent.children is not None
        dangling = parent.children.get(name)
        if dangling is not None and dangling.is_lnk:
            if links >= k.fs.MAXSYMLINKS:
                raise KernelError(errno.ELOOP) from None
            base = path.rsplit("/", 1)[0] if "/" in path else ""
            there = dangling.target if dangling.target.startswith("/") else \
                base + "/" + dangling.target
            return _lookup_open(k, t, there, flags, mode, links + 1)
        dac.may_create(t.cred, parent)
        inode = k.fs.create(parent, name, mode & ~t.umask, t.cred.fsuid, t.cred.fsgid)
        k.log.emit("create", pid=t.pid, ino=inode.ino, path=path)
        return inode, True
    if excl:
        raise KernelError(errno.EEXIST)
    if inode.is_lnk and not flags & linux.O_PATH:
        raise KernelError(errno.ELOOP)  # O_NOFOLLOW on a symbolic link
    return inode, False


@syscall("close", linux="fs/open.c close_fd()")
def sys_close(k: Kernel, t: Task, fd: int) -> int:
    """close(2)."""
    k.close_fd(t, fd)
    return 0


def _io_file(k: Kernel, t: Task, fd: int, write: bool) -> File:
    file = k.file_of(t, fd)
    if not (file.writable if write else file.readable):
        raise KernelError(errno.EBADF)
    if file.inode.is_dir:
        raise KernelError(errno.EISDIR)
    return file


def _read(k: Kernel, file: File, count: int, offset: int) -> bytes:
    if count < 0:
        raise KernelError(errno.EINVAL)
    if file.inode.is_chr:
        return b""
    return k.fs.read(file.inode, offset, min(count, MAX_IO))


def _write(k: Kernel, t: Task, file: File, data: bytes, offset: int) -> tuple[int, int]:
    """Write at ``offset`` (or the end with O_APPEND); returns (written, new end).

    ``mm/filemap.c generic_write_check_limits()``: a write at or past ``s_maxbytes`` is
    ``EFBIG``, one that would cross it is cut short there."""
    if file.inode.is_chr:
        return len(data), offset
    inode = file.inode
    if file.flags & linux.O_APPEND:
        offset = inode.size
    if data:
        limit = maxbytes(k)
        if offset >= limit:
            raise KernelError(errno.EFBIG)
        data = data[: limit - offset]
    bs = k.fs.block_size
    change = LayoutChange.EXTEND if data and offset + len(data) > inode.size else LayoutChange.WRITE
    k.policy.layout_change(k, t, inode, change, offset // bs, -(-(offset + len(data)) // bs))
    if not data:
        return 0, offset
    unshare(k, t, inode, offset // bs, -(-(offset + len(data[:MAX_IO])) // bs))
    n = k.fs.write(inode, offset, data[:MAX_IO])
    return n, offset + n


@syscall("read", linux="fs/read_write.c ksys_read()", support="partial",
         note="one call moves at most 1 MiB (a short read, as Linux allows)")
def sys_read(k: Kernel, t: Task, fd: int, count: int) -> bytes:
    """read(2): from the shared offset, which advances."""
    file = _io_file(k, t, fd, write=False)
    if file.inode.is_fifo or file.inode.is_sock:
        return pipe.pipe_read(k, file, count)
    data = _read(k, file, count, file.pos)
    file.pos += len(data)
    return data


@syscall("write", linux="fs/read_write.c ksys_write()", support="partial",
         note="one call moves at most 1 MiB (a short write)")
def sys_write(k: Kernel, t: Task, fd: int, data: bytes) -> int:
    """write(2): at the shared offset, or at the end with O_APPEND."""
    file = _io_file(k, t, fd, write=True)
    if file.inode.is_fifo or file.inode.is_sock:
        return pipe.pipe_write(k, file, data)
    n, end = _write(k, t, file, data, file.pos)
    if not file.inode.is_chr:
        file.pos = end
    return n


@syscall("pread", linux="fs/read_write.c ksys_pread64()")
def sys_pread(k: Kernel, t: Task, fd: int, count: int, offset: int) -> bytes:
    """pread(2): at ``offset``; the file offset does not move."""
    file = _io_file(k, t, fd, write=False)
    if file.inode.is_chr or file.inode.is_fifo or file.inode.is_sock:
        raise KernelError(errno.ESPIPE)
    rw_verify_area(offset, max(count, 0))
    return _read(k, file, count, offset)


@syscall("pwrite", linux="fs/read_write.c ksys_pwrite64()",
         note="with O_APPEND the data goes to the end, a Linux bug kept on purpose")
def sys_pwrite(k: Kernel, t: Task, fd: int, data: bytes, offset: int) -> int:
    """pwrite(2): at ``offset``; the file offset does not move (O_APPEND: at the end)."""
    file = _io_file(k, t, fd, write=True)
    if file.inode.is_chr or file.inode.is_fifo or file.inode.is_sock:
        raise KernelError(errno.ESPIPE)
    rw_verify_area(offset, len(data))
    return _write(k, t, file, data, offset)[0]


@syscall("lseek", linux="fs/read_write.c generic_file_llseek()")
def sys_lseek(k: Kernel, t: Task, fd: int, offset: int, whence: int) -> int:
    """lseek(2), with SEEK_DATA and SEEK_HOLE over the block map."""
    file = k.file_of(t, fd)
    if file.flags & linux.O_PATH:
        raise KernelError(errno.EBADF)
    inode = file.inode
    if inode.is_chr or inode.is_fifo or inode.is_sock:
        raise KernelError(errno.ESPIPE)
    size = inode.size
    if whence == linux.SEEK_SET:
        new = offset
    elif whence == linux.SEEK_CUR:
        new = file.pos + offset
    elif whence == linux.SEEK_END:
        new = size + offset
    elif whence in (linux.SEEK_DATA, linux.SEEK_HOLE) and inode.is_reg:
        if offset < 0 or offset >= size:
            raise KernelError(errno.ENXIO)
        new = _seek_data_hole(k, inode, offset, whence == linux.SEEK_DATA)
    else:
        raise KernelError(errno.EINVAL)
    if new < 0 or new > maxbytes(k):  # vfs_setpos() against s_maxbytes
        raise KernelError(errno.EINVAL)
    file.pos = new
    return new


def _seek_data_hole(k: Kernel, inode: Inode, offset: int, data: bool) -> int:
    """SEEK_DATA/SEEK_HOLE over the sorted block map: cost by blocks, not by size."""
    bs = k.fs.block_size
    page = offset // bs
    last = (inode.size - 1) // bs
    pages = sorted(inode.blocks)
    i = bisect.bisect_left(pages, page)
    if data:
        if i < len(pages) and pages[i] <= last:
            return max(offset, pages[i] * bs)
        raise KernelError(errno.ENXIO)
    # the first page >= page that has no block
    while i < len(pages) and pages[i] == page:
        i += 1
        page += 1
    if page > last:
        return inode.size
    return max(offset, page * bs)


def do_truncate(k: Kernel, t: Task, inode: Inode, length: int) -> None:
    """The size change shared by truncate and ftruncate (``do_truncate``); a length
    past ``s_maxbytes`` is ``EFBIG`` (``fs/attr.c inode_newsize_ok()``)."""
    _loff(length)
    if length > maxbytes(k):
        raise KernelError(errno.EFBIG)
    truncate_pages(k, t, inode, length)


@syscall("ftruncate", linux="fs/open.c do_sys_ftruncate()")
def sys_ftruncate(k: Kernel, t: Task, fd: int, length: int) -> int:
    """ftruncate(2): ``EINVAL`` unless a regular file open for writing; it breaks no
    lease (the caller's own open for writing already did)."""
    _loff(length)
    file = k.file_of(t, fd)
    if file.flags & linux.O_PATH:
        raise KernelError(errno.EBADF)
    if not file.inode.is_reg or not file.writable:
        raise KernelError(errno.EINVAL)
    do_truncate(k, t, file.inode, length)
    return 0


@syscall("truncate", linux="fs/open.c vfs_truncate()")
def sys_truncate(k: Kernel, t: Task, path: str, length: int) -> Any:
    """truncate(2) by path (``vfs_truncate``): write permission (EACCES) before it
    takes write access (``get_write_access``) and breaks leases, as an open for
    writing would."""
    _loff(length)
    inode = k.fs.lookup(path, t.cred)
    if inode.is_dir:
        raise KernelError(errno.EISDIR)
    if not inode.is_reg:
        raise KernelError(errno.EINVAL)
    dac.inode_permission(t.cred, inode, dac.MAY_WRITE)
    if inode.writecount < 0:  # get_write_access(): a running program's file
        raise KernelError(errno.ETXTBSY)
    k.fs.get(inode)
    inode.writecount += 1
    done = False

    def release() -> None:
        nonlocal done
        if not done:
            done = True
            inode.writecount -= 1
            k.fs.put(inode)

    def attempt() -> int:
        locks.break_lease(k, t, inode, linux.O_WRONLY)
        do_truncate(k, t, inode, length)
        release()
        return 0

    return resume_at(attempt, release)


@syscall("unlink", linux="fs/namei.c do_unlinkat()")
def sys_unlink(k: Kernel, t: Task, path: str) -> int:
    """unlink(2): the inode lives on while open files hold it."""
    inode = k.fs.unlink(path, t.cred)
    k.log.emit("unlink", pid=t.pid, ino=inode.ino, path=path)
    return 0


@syscall("rename", linux="fs/namei.c do_renameat2()", support="partial",
         note="no RENAME_* flags")
def sys_rename(k: Kernel, t: Task, old: str, new: str) -> int:
    """rename(2), replacing a target atomically."""
    replaced = k.fs.rename(old, new, t.cred)
    if k.log.enabled:
        k.log.emit("rename", pid=t.pid, ino=k.fs.lookup(new.rstrip("/") or "/").ino, old=old,
                   new=new, replaced=replaced.ino if replaced is not None else None)
    return 0


@syscall("mkdir", linux="fs/namei.c do_mkdirat()")
def sys_mkdir(k: Kernel, t: Task, path: str, mode: int = 0o777) -> int:
    """mkdir(2)."""
    k.fs.mkdir(path, mode & ~t.umask, t.cred.fsuid, t.cred.fsgid, t.cred)
    return 0


@syscall("rmdir", linux="fs/namei.c do_rmdir()")
def sys_rmdir(k: Kernel, t: Task, path: str) -> int:
    """rmdir(2)."""
    k.fs.rmdir(path, t.cred)
    return 0


@syscall("stat", linux="fs/stat.c vfs_statx()")
def sys_stat(k: Kernel, t: Task, path: str) -> dict[str, Any]:
    """stat(2), as a map of ``os.stat_result`` fields."""
    return k.fs.stat(k.fs.lookup(path, t.cred))


@syscall("fstat", linux="fs/stat.c vfs_fstat()")
def sys_fstat(k: Kernel, t: Task, fd: int) -> dict[str, Any]:
    """fstat(2), O_PATH descriptors included."""
    return k.fs.stat(k.file_of(t, fd).inode)


@syscall("listdir", linux="fs/readdir.c getdents64()", support="partial",
         note="whole directory in one call, by path (os.listdir)")
def sys_listdir(k: Kernel, t: Task, path: str) -> list[str]:
    """The names in a directory, as ``os.listdir`` returns them (an O_RDONLY open of
    the directory: read permission)."""
    inode = k.fs.lookup(path, t.cred)
    if inode.children is None:
        raise KernelError(errno.ENOTDIR)
    dac.may_open(t.cred, inode, dac.MAY_READ, linux.O_RDONLY)
    return sorted(inode.children)


def unshare(k: Kernel, t: Task, inode: Inode, first: int, end: int) -> None:
    """Copy-on-write of reflinked blocks in pages ``[first, end)`` before a write."""
    shared = [p for p, b in inode.blocks.items() if first <= p < end and k.pmem.refs[b] > 1]
    if not shared:
        return
    for page in shared:
        mm.zap(k, inode, page, page + 1)
    mm.wait_for_shootdowns(k, inode)
    for page in shared:
        old = inode.blocks[page]
        new = k.pmem.alloc(Owner(inode.ino, page))
        k.pmem.view(new)[:] = k.pmem.view(old)
        inode.blocks[page] = new
        k.pmem.free(old)
        k.log.emit("cow", ino=inode.ino, page=page, old=old, new=new)


@syscall("fallocate", linux="fs/open.c vfs_fallocate(), xfs_file_fallocate()",
         support="partial", note="modes 0, KEEP_SIZE, PUNCH_HOLE|KEEP_SIZE, ZERO_RANGE; "
         "ENOSPC before taking a block (ext4 keeps what a failed call took)")
def sys_fallocate(k: Kernel, t: Task, fd: int, mode: int, offset: int, length: int) -> int:
    """fallocate(2): allocate, punch a hole (a layout change) or zero a range.

    ``vfs_fallocate()``'s checks come first: a negative offset or length is ``EINVAL``,
    a range ending past ``s_maxbytes`` (or wrapping through zero) ``EFBIG``.  What the
    call costs follows the blocks that exist and the blocks it may take: a range with
    more holes than the device has free blocks is ``ENOSPC`` before anything is
    allocated, and an allocation that fails midway gives back what it took (as
    ``ext4_alloc_file_blocks()`` leaves no blocks of a failed call behind)."""
    file = k.file_of(t, fd)
    _loff(offset)
    _loff(length)
    if length == 0:
        raise KernelError(errno.EINVAL)
    known = linux.FALLOC_FL_KEEP_SIZE | linux.FALLOC_FL_PUNCH_HOLE | linux.FALLOC_FL_ZERO_RANGE
    if mode & ~known:
        raise KernelError(errno.EOPNOTSUPP)
    if mode & linux.FALLOC_FL_PUNCH_HOLE and not mode & linux.FALLOC_FL_KEEP_SIZE:
        raise KernelError(errno.EOPNOTSUPP)
    if mode & linux.FALLOC_FL_PUNCH_HOLE and mode & linux.FALLOC_FL_ZERO_RANGE:
        raise KernelError(errno.EOPNOTSUPP)
    if not file.writable:
        raise KernelError(errno.EBADF)
    inode = file.inode
    if inode.is_dir:
        raise KernelError(errno.EISDIR)
    if not inode.is_reg:
        raise KernelError(errno.ENODEV)
    bs = k.fs.block_size
    end = offset + length
    if end > maxbytes(k):  # "Check for wrap through zero too": end > LOFF_MAX is EFBIG
        raise KernelError(errno.EFBIG)
    if not mode & linux.FALLOC_FL_PUNCH_HOLE:
        # xfs_file_fallocate breaks the layouts for every mode (xfs_break_layouts): the
        # design first (layout leases; a sealed MAP_DIRECT file refuses, ETXTBSY)
        k.policy.layout_change(k, t, inode, LayoutChange.FALLOCATE, offset // bs,
                               -(-end // bs))
    if mode & linux.FALLOC_FL_PUNCH_HOLE:
        first, last = -(-offset // bs), end // bs
        k.policy.layout_change(k, t, inode, LayoutChange.PUNCH, first, last)
        with inode.invalidate_lock.hold(t, first, last):
            mm.unmap_and_wait(k, inode, first, last)
            k.fs.free_range(inode, first, last)
            _zero_bytes(k, inode, offset, min(end, first * bs))
            if last >= first:
                _zero_bytes(k, inode, max(offset, last * bs), end)
        return 0
    first, last = offset // bs, -(-end // bs)
    if (last - first) - _blocks_in(inode, first, last) > k.pmem.free_blocks:
        raise KernelError(errno.ENOSPC)  # nothing taken, nothing to give back
    if mode & linux.FALLOC_FL_ZERO_RANGE:
        # the range reads as zeros and is allocated (ext4_zero_range(), xfs_zero_range()
        # leave unwritten extents); reflinked blocks get copies of their own first
        unshare(k, t, inode, first, last)
        _zero_bytes(k, inode, offset, end)
    _allocate(k, inode, first, last)
    if not mode & linux.FALLOC_FL_KEEP_SIZE and end > inode.size:
        inode.size = end
    return 0


def _blocks_in(inode: Inode, first: int, end: int) -> int:
    """How many pages of ``[first, end)`` have a block (cost: the file's blocks)."""
    return sum(1 for p in inode.blocks if first <= p < end)


def _allocate(k: Kernel, inode: Inode, first: int, end: int) -> None:
    """Give every hole of pages ``[first, end)`` a block; on ``ENOSPC`` the blocks this
    call took go back and the error stands.  The caller checked that the holes fit the
    free blocks, so the walk is bounded by the device, not by the range."""
    taken: list[int] = []
    try:
        for page in range(first, end):
            if page not in inode.blocks:
                inode.blocks[page] = k.pmem.alloc(Owner(inode.ino, page))
                taken.append(page)
    except KernelError:
        for page in reversed(taken):
            k.pmem.free(inode.blocks.pop(page))
        raise
    if taken:
        k.log.emit("fallocate", ino=inode.ino, first=first, end=end, allocated=len(taken))


def _zero_bytes(k: Kernel, inode: Inode, start: int, end: int) -> None:
    """Zero bytes ``[start, end)`` of the file's blocks; holes already read as zeros,
    so the cost follows the blocks in the range, not its length."""
    bs = k.fs.block_size
    if end <= start:
        return
    first, last = start // bs, -(-end // bs)
    for page in sorted(p for p in inode.blocks if first <= p < last):
        lo, hi = max(start, page * bs), min(end, (page + 1) * bs)
        k.pmem.view(inode.blocks[page])[lo - page * bs : hi - page * bs] = bytes(hi - lo)


@syscall("clone", linux="fs/remap_range.c vfs_clone_file_range() (ioctl FICLONE)",
         support="partial", note="whole-file reflink of src into dst; blocks shared, copy on write")
def sys_clone(k: Kernel, t: Task, src_fd: int, dst_fd: int) -> int:
    """ioctl(dst, FICLONE, src): dst becomes a reflink of src (shared blocks)."""
    src, dst = k.file_of(t, src_fd), k.file_of(t, dst_fd)
    if not src.readable or not dst.writable:
        raise KernelError(errno.EBADF)
    if not src.inode.is_reg or not dst.inode.is_reg:
        raise KernelError(errno.EINVAL)
    if src.inode is dst.inode:
        raise KernelError(errno.EINVAL)
    k.policy.layout_change(k, t, src.inode, LayoutChange.REFLINK, 0, None)
    k.policy.layout_change(k, t, dst.inode, LayoutChange.REFLINK, 0, None)
    with src.inode.invalidate_lock.hold(t, 0, None), \
            dst.inode.invalidate_lock.hold(t, 0, None):
        mm.unmap_and_wait(k, src.inode, 0, None)
        mm.unmap_and_wait(k, dst.inode, 0, None)
        k.fs.free_range(dst.inode, 0)
        for page, block in src.inode.blocks.items():
            k.pmem.share(block)
            dst.inode.blocks[page] = block
        dst.inode.size = src.inode.size
        k.log.emit("reflink", pid=t.pid, src=src.inode.ino, dst=dst.inode.ino,
                   blocks=sorted(src.inode.blocks.values()))
        src.inode.reflink = dst.inode.reflink = True
    return 0
