"""A small DAX filesystem on the pmem device: inodes, directories and block maps.

Names follow the VFS: ``Inode`` (``struct inode``), ``Filesystem`` (the superblock plus
the namespace operations of ``fs/namei.c``).  File data lives in pmem blocks; an inode's
block map sends a file page to a device block, and holes read as zeros.  An inode whose
last link is gone lives on while open files (or, later, mappings and pins) hold it, and
its blocks go back to the allocator only when the last of them goes, as in Linux.
"""

from __future__ import annotations

import errno
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from kemu.kernel_daemon import cred as dac
from kemu.kernel_daemon.errors import KernelError
from kemu.kernel_daemon.pmem import Owner, Pmem
from kemu.kernel_daemon.sync import InvalidateLock, WaitQueue
from kemu.protocol import linux

if TYPE_CHECKING:
    from kemu.kernel_daemon.cred import Cred
    from kemu.kernel_daemon.locks import Lease
    from kemu.kernel_daemon.mm import Mapping
    from kemu.kernel_daemon.syscalls.pipe import Pipe


def _protected_hardlinks() -> bool:
    """``sysctl_protected_hardlinks``: the host's setting (1 when it cannot be read, the
    usual default)."""
    try:
        with open("/proc/sys/fs/protected_hardlinks") as fh:
            return fh.read().strip() != "0"
    except OSError:
        return True

#: the largest ``loff_t`` (``include/linux/fs.h`` MAX_LFS_FILESIZE on 64-bit)
MAX_LFS_FILESIZE = (1 << 63) - 1


def s_maxbytes(flavour: str, block_size: int) -> int:
    """The superblock's ``s_maxbytes``: the largest file size of the flavour.

    ext4 (extent-mapped files): ``fs/ext4/super.c ext4_max_size()``, 2^32 - 1 logical
    blocks, 16 TiB - 4 KiB with 4 KiB blocks (the host's ext4 says so too); xfs:
    ``fs/xfs/xfs_super.c xfs_max_file_offset()``, MAX_LFS_FILESIZE on 64-bit.
    """
    if flavour == "ext4":
        return min(((1 << 32) - 1) * block_size, MAX_LFS_FILESIZE)
    return MAX_LFS_FILESIZE


@dataclass(eq=False)
class Inode:
    """``struct inode``.  Changed only by :class:`Filesystem` methods."""

    ino: int
    #: file type and permission bits (``S_IFREG | 0644``)
    mode: int
    uid: int
    gid: int
    #: directory entries naming this inode (2 + subdirectories for a directory)
    nlink: int = 1
    #: file size in bytes (regular files)
    size: int = 0
    #: page index -> pmem block; absent pages are holes
    blocks: dict[int, int] = field(default_factory=dict)
    #: name -> inode, for directories only
    children: dict[str, Inode] | None = None
    #: the directory holding this one (directories only; the root is its own parent)
    parent: Inode | None = None
    #: open file descriptions (and, later, other holders) keeping the inode alive
    refs: int = 0
    #: open descriptions with write access (i_writecount)
    writecount: int = 0
    #: open descriptions with read but not write access (i_readcount)
    readcount: int = 0
    atime: float = field(default_factory=time.time)
    mtime: float = field(default_factory=time.time)
    ctime: float = field(default_factory=time.time)
    #: ``i_flctx->flc_lease``: the leases on the inode, in the order they were taken
    #: (ordinary and layout leases).  Changed by :mod:`kemu.kernel_daemon.locks` only
    flc: list[Lease] = field(default_factory=list)
    #: ``mapping->i_mmap``: every mapping of the file.  Changed by :mod:`kemu.kernel_daemon.mm`
    i_mmap: list[Mapping] = field(default_factory=list)
    #: ``mapping->invalidate_lock``: held while pages of the file lose their blocks
    invalidate_lock: InvalidateLock = field(default_factory=InvalidateLock)
    #: processes sleeping until every TLB shoot-down of the file is acknowledged
    shootdown_wait: WaitQueue[None] = field(default_factory=WaitQueue)
    #: the file shares blocks with another (``XFS_DIFLAG2_REFLINK``, set by FICLONE)
    reflink: bool = False
    #: a symbolic link's target (``i_link``), as symlink(2) was given it
    target: str = ""
    #: an inode of no directory (pipefs, sockfs): stat shows one link, as Linux's
    anon: bool = False
    #: extended attributes of the ``user.`` namespace, name -> value
    xattrs: dict[str, bytes] = field(default_factory=dict)
    #: ``i_pipe``: the buffer of a FIFO or pipe (None for other files); changed by
    #: :mod:`kemu.kernel_daemon.syscalls.pipe` only
    i_pipe: Pipe | None = None

    @property
    def is_dir(self) -> bool:
        """S_ISDIR."""
        return self.mode & linux.S_IFMT == linux.S_IFDIR

    @property
    def is_reg(self) -> bool:
        """S_ISREG."""
        return self.mode & linux.S_IFMT == linux.S_IFREG

    @property
    def is_fifo(self) -> bool:
        """S_ISFIFO: a named FIFO or a pipe."""
        return self.mode & linux.S_IFMT == linux.S_IFIFO

    @property
    def is_sock(self) -> bool:
        """S_ISSOCK."""
        return self.mode & linux.S_IFMT == linux.S_IFSOCK

    @property
    def is_lnk(self) -> bool:
        """S_ISLNK."""
        return self.mode & linux.S_IFMT == linux.S_IFLNK

    @property
    def is_chr(self) -> bool:
        """S_ISCHR: the emulated console that backs descriptors 0, 1 and 2."""
        return self.mode & linux.S_IFMT == linux.S_IFCHR


class Filesystem:
    """The namespace and the data path of one pmem filesystem (root is ``/``)."""

    DEV = 0xFE01  # st_dev reported for files on the emulated device

    def __init__(
        self, pmem: Pmem, on_release: Callable[[Inode], None] | None = None
    ) -> None:
        self.pmem = pmem
        self.block_size = pmem.block_size
        self._next_ino = 2
        self.root = self._new_inode(linux.S_IFDIR | 0o755, 0, 0)
        self.root.children = {}
        self.root.parent = self.root
        self.root.nlink = 2
        #: the console character device behind descriptors 0-2 of a spawned task
        self.console = self._new_inode(linux.S_IFCHR | 0o620, 0, 0)
        self.inodes: dict[int, Inode] = {self.root.ino: self.root}
        self._on_release = on_release

    def _new_inode(self, mode: int, uid: int, gid: int) -> Inode:
        ino = self._next_ino
        self._next_ino += 1
        return Inode(ino=ino, mode=mode, uid=uid, gid=gid)

    # --- path walk (fs/namei.c) -------------------------------------------------------

    @staticmethod
    def _components(path: str) -> list[str]:
        if not path:
            raise KernelError(errno.ENOENT, "empty path")
        if "\0" in path:
            raise KernelError(errno.EINVAL, "NUL in path")
        if len(path.encode()) >= linux.PATH_MAX:
            raise KernelError(errno.ENAMETOOLONG)
        parts = [p for p in path.split("/") if p]
        for p in parts:
            if len(p.encode()) > linux.NAME_MAX:
                raise KernelError(errno.ENAMETOOLONG)
        return parts

    #: symbolic links one walk may follow (fs/namei.c MAXSYMLINKS)
    MAXSYMLINKS = 40

    def _walk(self, parts: list[str], cred: Cred | None = None,
              follow: bool = True) -> Inode:
        """``link_path_walk``: each directory a name is looked up in must be a
        directory (ENOTDIR) the walker may search (``may_lookup``, EACCES; no check
        when ``cred`` is None: the kernel's own lookups).  A symbolic link met on the
        way is followed (its target walked from the root if absolute, else from the
        link's directory), the last one only with ``follow``; more than MAXSYMLINKS
        is ELOOP, an empty target ENOENT."""
        node = self.root
        todo = list(reversed(parts))
        links = 0
        while todo:
            name = todo.pop()
            children = node.children
            if not node.is_dir or children is None:
                raise KernelError(errno.ENOTDIR)
            if cred is not None:
                dac.may_lookup(cred, node)
            if name == ".":
                continue
            if name == "..":
                assert node.parent is not None
                node = node.parent
                continue
            child = children.get(name)
            if child is None:
                raise KernelError(errno.ENOENT)
            if child.is_lnk and (todo or follow):
                links += 1
                if links > self.MAXSYMLINKS:
                    raise KernelError(errno.ELOOP)
                if not child.target:
                    raise KernelError(errno.ENOENT)
                if child.target.startswith("/"):
                    node = self.root
                todo.extend(reversed(self._components(child.target)))
                continue
            node = child
        return node

    def lookup(self, path: str, cred: Cred | None = None, follow: bool = True) -> Inode:
        """Resolve ``path`` (relative paths start at ``/``, the only cwd) to its inode,
        with search permission for ``cred`` on every directory of the way; a last
        component that is a symbolic link is followed unless ``follow`` is false
        (a trailing slash follows it anyway).

        A trailing slash on a non-directory is ``ENOTDIR``, as in Linux.
        """
        node = self._walk(self._components(path), cred, follow or path.endswith("/"))
        if path.endswith("/") and not node.is_dir:
            raise KernelError(errno.ENOTDIR)
        return node

    def lookup_parent(self, path: str, cred: Cred | None = None) -> tuple[Inode, str]:
        """Resolve all but the last component: (directory inode, last name).

        The last name is ``""`` for ``/``; ``.`` and ``..`` are returned as they are and
        each caller refuses them as Linux does for its own call.
        """
        parts = self._components(path)
        if not parts:
            return self.root, ""
        parent = self._walk(parts[:-1], cred)
        if not parent.is_dir:
            raise KernelError(errno.ENOTDIR)
        if cred is not None:
            dac.may_lookup(cred, parent)  # the last name is looked up in it too
        return parent, parts[-1]

    # --- namespace operations -------------------------------------------------------

    @staticmethod
    def _inherit_gid(parent: Inode, gid: int) -> int:
        """``inode_init_owner``: a new inode in a set-group-ID directory takes the
        directory's group (and a new directory the S_ISGID bit, in ``mkdir``)."""
        return parent.gid if parent.mode & linux.S_ISGID else gid

    def create(self, parent: Inode, name: str, mode: int, uid: int, gid: int,
               kind: int = linux.S_IFREG) -> Inode:
        """Create a regular file ``name`` in ``parent`` (``vfs_create``; ``vfs_mknod``
        of a FIFO with ``kind`` S_IFIFO)."""
        assert parent.children is not None
        gid = self._inherit_gid(parent, gid)
        inode = self._new_inode(kind | (mode & 0o7777), uid, gid)
        parent.children[name] = inode
        parent.mtime = parent.ctime = time.time()
        self.inodes[inode.ino] = inode
        return inode

    def anon_inode(self, mode: int, uid: int, gid: int) -> Inode:
        """An inode in no directory (pipefs, sockfs): it lives while files hold it."""
        inode = self._new_inode(mode, uid, gid)
        inode.nlink = 0  # freed with its last file; stat still shows 1 (``anon``)
        inode.anon = True
        self.inodes[inode.ino] = inode
        return inode

    def symlink(self, target: str, path: str, uid: int, gid: int,
                cred: Cred | None = None) -> Inode:
        """symlink(2).  Linux: fs/namei.c do_symlinkat(): EEXIST for a name that
        exists (a dangling link included), then ``may_create``; the target is kept as
        given (``ENOENT`` for an empty one)."""
        if not target:
            raise KernelError(errno.ENOENT)
        self._components(target)  # ENAMETOOLONG, as strncpy_from_user of the target
        parent, name = self.lookup_parent(path, cred)
        if name in ("", ".", "..") or path.endswith("/"):
            raise KernelError(errno.EEXIST)
        assert parent.children is not None
        if name in parent.children:
            raise KernelError(errno.EEXIST)
        if cred is not None:
            dac.may_create(cred, parent)
        inode = self._new_inode(linux.S_IFLNK | 0o777, uid, self._inherit_gid(parent, gid))
        inode.target = target
        inode.size = len(target.encode())
        parent.children[name] = inode
        parent.mtime = parent.ctime = time.time()
        self.inodes[inode.ino] = inode
        return inode

    def link(self, old: str, new: str, cred: Cred | None = None) -> Inode:
        """link(2).  Linux: fs/namei.c do_linkat() without AT_SYMLINK_FOLLOW (a
        symbolic link is linked itself), ``may_linkat`` (protected_hardlinks: the
        owner, CAP_FOWNER, or read and write permission on a plain file), then
        ``vfs_link``: EEXIST, ``may_create``, EPERM for a directory."""
        inode = self.lookup(old, cred, follow=False)
        parent, name = self.lookup_parent(new, cred)
        if name in ("", ".", "..") or new.endswith("/"):
            raise KernelError(errno.EEXIST if name else errno.ENOENT)
        assert parent.children is not None
        if name in parent.children:
            raise KernelError(errno.EEXIST)
        if cred is not None and _protected_hardlinks() and \
                not dac.inode_owner_or_capable(cred, inode):
            safe = inode.is_reg and not inode.mode & linux.S_ISUID and not (
                inode.mode & linux.S_ISGID and inode.mode & linux.S_IXGRP)
            try:
                dac.inode_permission(cred, inode, dac.MAY_READ | dac.MAY_WRITE)
            except KernelError:
                safe = False
            if not safe:
                raise KernelError(errno.EPERM)
        if cred is not None:
            dac.may_create(cred, parent)
        if inode.is_dir:
            raise KernelError(errno.EPERM)
        parent.children[name] = inode
        inode.nlink += 1
        inode.ctime = parent.mtime = parent.ctime = time.time()
        return inode

    def readlink(self, path: str, cred: Cred | None = None) -> str:
        """readlink(2).  Linux: fs/stat.c do_readlinkat(): EINVAL for anything but a
        symbolic link."""
        inode = self.lookup(path, cred, follow=False)
        if not inode.is_lnk:
            raise KernelError(errno.EINVAL)
        return inode.target

    def mkdir(self, path: str, mode: int, uid: int, gid: int,
              cred: Cred | None = None) -> Inode:
        """mkdir(2).  Linux: fs/namei.c do_mkdirat(); ``may_create`` after EEXIST."""
        parent, name = self.lookup_parent(path, cred)
        if name in ("", ".", ".."):
            raise KernelError(errno.EEXIST)
        assert parent.children is not None
        if name in parent.children:
            raise KernelError(errno.EEXIST)
        if cred is not None:
            dac.may_create(cred, parent)
        if parent.mode & linux.S_ISGID:
            mode |= linux.S_ISGID
        inode = self._new_inode(linux.S_IFDIR | (mode & 0o7777),
                                uid, self._inherit_gid(parent, gid))
        inode.children = {}
        inode.parent = parent
        inode.nlink = 2
        parent.children[name] = inode
        parent.nlink += 1
        self.inodes[inode.ino] = inode
        return inode

    def rmdir(self, path: str, cred: Cred | None = None) -> None:
        """rmdir(2).  Linux: fs/namei.c do_rmdir(); ``may_delete`` before the type."""
        parent, name = self.lookup_parent(path, cred)
        if name == "":
            raise KernelError(errno.EBUSY)
        if name == ".":
            raise KernelError(errno.EINVAL)
        if name == "..":
            raise KernelError(errno.ENOTEMPTY)
        assert parent.children is not None
        node = parent.children.get(name)
        if node is None:
            raise KernelError(errno.ENOENT)
        if cred is not None:
            dac.may_delete(cred, parent, node)
        if not node.is_dir:
            raise KernelError(errno.ENOTDIR)
        if node.children:
            raise KernelError(errno.ENOTEMPTY)
        del parent.children[name]
        parent.nlink -= 1
        node.nlink = 0
        self._maybe_release(node)

    def unlink(self, path: str, cred: Cred | None = None) -> Inode:
        """unlink(2).  Linux: fs/namei.c do_unlinkat(); a directory is ``EISDIR``,
        after ``may_delete``."""
        parent, name = self.lookup_parent(path, cred)
        if name in ("", ".", ".."):
            raise KernelError(errno.EISDIR)
        assert parent.children is not None
        node = parent.children.get(name)
        if node is None:
            raise KernelError(errno.ENOENT)
        if cred is not None:
            dac.may_delete(cred, parent, node)
        if node.is_dir:
            raise KernelError(errno.EISDIR)
        if path.endswith("/"):
            raise KernelError(errno.ENOTDIR)
        del parent.children[name]
        node.nlink -= 1
        node.ctime = parent.mtime = time.time()
        self._maybe_release(node)
        return node

    def rename(self, old: str, new: str, cred: Cred | None = None) -> Inode | None:
        """rename(2).  Linux: fs/namei.c do_renameat2(), vfs_rename()'s
        ``may_delete``/``may_create`` before the type checks.  Returns the replaced
        inode."""
        oparent, oname = self.lookup_parent(old, cred)
        nparent, nname = self.lookup_parent(new, cred)
        if oname in ("", ".", "..") or nname in ("", ".", ".."):
            raise KernelError(errno.EBUSY)  # "old_type != LAST_NORM": ., .. and / alike
        assert oparent.children is not None and nparent.children is not None
        node = oparent.children.get(oname)
        if node is None:
            raise KernelError(errno.ENOENT)
        if (old.endswith("/") or new.endswith("/")) and not node.is_dir:
            raise KernelError(errno.ENOTDIR)
        target = nparent.children.get(nname)
        if target is node:
            return None
        if node.is_dir:
            # moving a directory under itself
            p: Inode | None = nparent
            while p is not None:
                if p is node:
                    raise KernelError(errno.EINVAL)
                if p is self.root:
                    break
                p = p.parent
        if cred is not None:
            dac.may_delete(cred, oparent, node)
            if target is None:
                dac.may_create(cred, nparent)
            else:
                dac.may_delete(cred, nparent, target)
            if node.is_dir and nparent is not oparent:
                dac.inode_permission(cred, node, dac.MAY_WRITE)  # its ".." changes
        if target is not None:
            if node.is_dir and not target.is_dir:
                raise KernelError(errno.ENOTDIR)
            if not node.is_dir and target.is_dir:
                raise KernelError(errno.EISDIR)
            if target.is_dir and target.children:
                raise KernelError(errno.ENOTEMPTY)
        del oparent.children[oname]
        if target is not None:
            del nparent.children[nname]
            target.nlink = 0 if target.is_dir else target.nlink - 1
            if target.is_dir:
                nparent.nlink -= 1
        nparent.children[nname] = node
        if node.is_dir and oparent is not nparent:
            node.parent = nparent
            oparent.nlink -= 1
            nparent.nlink += 1
        now = time.time()
        oparent.mtime = nparent.mtime = node.ctime = now
        if target is not None:
            self._maybe_release(target)
        return target

    def set_times(self, inode: Inode, atime: float | None, mtime: float | None) -> None:
        """``notify_change`` of the times: the given ones, or now; ctime moves."""
        now = time.time()
        inode.atime = now if atime is None else atime
        inode.mtime = now if mtime is None else mtime
        inode.ctime = now

    def setattr(self, inode: Inode, mode: int | None = None, uid: int = -1,
                gid: int = -1) -> None:
        """``notify_change`` of the mode bits and the owner (checked by the caller):
        the permission bits change, not the file type; -1 leaves an id; ctime moves."""
        if mode is not None:
            inode.mode = inode.mode & linux.S_IFMT | mode & 0o7777
        if uid != -1:
            inode.uid = uid
        if gid != -1:
            inode.gid = gid
        inode.ctime = time.time()

    # --- lifetime ---------------------------------------------------------------------

    def get(self, inode: Inode) -> None:
        """Take a reference (an open file description, later a mapping or pin)."""
        inode.refs += 1

    def put(self, inode: Inode) -> None:
        """Drop a reference; an unlinked inode with none left is freed (``iput``)."""
        inode.refs -= 1
        assert inode.refs >= 0, "inode reference count underflow"
        self._maybe_release(inode)

    def _maybe_release(self, inode: Inode) -> None:
        if inode.nlink > 0 or inode.refs > 0 or inode is self.console:
            return
        if self.inodes.pop(inode.ino, None) is None:
            return
        if self._on_release:
            self._on_release(inode)
        self.free_range(inode, 0)

    # --- data path --------------------------------------------------------------------

    def read(self, inode: Inode, offset: int, count: int) -> bytes:
        """Read up to ``count`` bytes at ``offset``; holes read as zeros."""
        if offset >= inode.size or count <= 0:
            return b""
        end = min(inode.size, offset + count)
        out = bytearray()
        bs = self.block_size
        pos = offset
        while pos < end:
            page, inpage = divmod(pos, bs)
            n = min(bs - inpage, end - pos)
            block = inode.blocks.get(page)
            if block is None:
                out += bytes(n)
            else:
                out += self.pmem.view(block)[inpage : inpage + n]
            pos += n
        inode.atime = time.time()
        return bytes(out)

    def write(self, inode: Inode, offset: int, data: bytes) -> int:
        """Write ``data`` at ``offset``, allocating blocks for holes; grows the size.

        A write that runs out of space stops short and returns what it wrote, as a
        filesystem does; ``ENOSPC`` only when nothing could be written.
        """
        bs = self.block_size
        pos = offset
        done = 0
        while done < len(data):
            page, inpage = divmod(pos, bs)
            block = inode.blocks.get(page)
            if block is None:
                try:
                    block = self.pmem.alloc(Owner(inode.ino, page))
                except KernelError:
                    if done == 0:
                        raise
                    break
                inode.blocks[page] = block
            n = min(bs - inpage, len(data) - done)
            self.pmem.view(block)[inpage : inpage + n] = data[done : done + n]
            pos += n
            done += n
        if done and pos > inode.size:
            inode.size = pos
        inode.mtime = inode.ctime = time.time()
        return done

    def truncate(self, inode: Inode, length: int) -> None:
        """Set the size; blocks wholly past the end are freed, the tail page zeroed.

        A size that does not grow frees every block past the new end, those a
        ``FALLOC_FL_KEEP_SIZE`` allocation put beyond EOF too (``fs/ext4/inode.c
        ext4_setattr()`` calls ``ext4_truncate()`` "even if i_size didn't change to
        truncate possible preallocated blocks"; ``xfs_setattr_size()`` likewise)."""
        bs = self.block_size
        if length <= inode.size:
            self.free_range(inode, -(-length // bs))
        if length < inode.size:
            page, inpage = divmod(length, bs)
            if inpage and page in inode.blocks:
                self.pmem.view(inode.blocks[page])[inpage:] = bytes(bs - inpage)
        inode.size = length
        inode.mtime = inode.ctime = time.time()

    def free_range(self, inode: Inode, first_page: int, end_page: int | None = None) -> list[int]:
        """Free the blocks of pages ``[first_page, end_page)``; returns the freed blocks.

        The last page goes first: the allocator hands out the block freed last, so the
        next file to grow gets the blocks back in their old order (runs stay runs)."""
        freed = []
        for page in sorted(inode.blocks, reverse=True):
            if page >= first_page and (end_page is None or page < end_page):
                block = inode.blocks.pop(page)
                self.pmem.free(block)
                freed.append(block)
        return freed

    def stat(self, inode: Inode) -> dict[str, Any]:
        """``struct stat`` of ``inode`` as the wire carries it (os.stat_result fields)."""
        return {
            "st_mode": inode.mode,
            "st_ino": inode.ino,
            "st_dev": self.DEV,
            "st_nlink": 1 if inode.anon else inode.nlink,
            "st_uid": inode.uid,
            "st_gid": inode.gid,
            "st_size": inode.size if not inode.is_dir else self.block_size,
            "st_atime": inode.atime,
            "st_mtime": inode.mtime,
            "st_ctime": inode.ctime,
            "st_blksize": self.block_size,
            "st_blocks": len(inode.blocks) * self.block_size // 512,
        }

    def paths(self) -> dict[int, str]:
        """Every linked inode's path, from one walk of the tree (for listings of many)."""
        out = {self.root.ino: "/", self.console.ino: "/dev/console"}
        stack: list[tuple[Inode, str]] = [(self.root, "")]
        while stack:
            d, prefix = stack.pop()
            assert d.children is not None
            for name, child in d.children.items():
                out.setdefault(child.ino, f"{prefix}/{name}")
                if child.is_dir:
                    stack.append((child, f"{prefix}/{name}"))
        return out

    def path_of(self, inode: Inode) -> str:
        """A path naming ``inode`` now, or ``"(deleted)"`` suffixed like /proc does."""
        if inode is self.root:
            return "/"
        if inode is self.console:
            return "/dev/console"
        target = inode
        stack: list[tuple[Inode, str]] = [(self.root, "")]
        while stack:  # iterative: a deep tree must not hit the recursion limit
            d, prefix = stack.pop()
            assert d.children is not None
            for name, child in d.children.items():
                if child is target:
                    return f"{prefix}/{name}"
                if child.is_dir:
                    stack.append((child, f"{prefix}/{name}"))
        return f"/#{inode.ino} (deleted)"
