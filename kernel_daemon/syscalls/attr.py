"""Credentials and file attributes: setuid/setgid/setgroups, access/faccessat,
chmod/fchmod and chown/fchown.

The agent makes the real credential call first; the daemon then adopts the process's
credentials as the host kernel has them (``/proc/<pid>/status``), so the real, effective,
saved and filesystem ids and the capability sets are the host's own (see
:mod:`kemu.kernel_daemon.cred`).  The attribute calls follow fs/open.c
(``do_faccessat``, ``chmod_common``, ``chown_common``) and fs/attr.c
(``setattr_prepare``).
"""

from __future__ import annotations

import errno
from collections.abc import Callable

from kemu.kernel_daemon import cred as dac
from kemu.kernel_daemon.errors import KernelError
from kemu.kernel_daemon.kernel import Kernel
from kemu.kernel_daemon.syscalls.table import syscall
from kemu.kernel_daemon.task import File, Task
from kemu.kernel_daemon.vfs import Inode
from kemu.protocol import linux


def _adopt(t: Task, took: Callable[[dac.Cred], bool]) -> int:
    """Take the credentials of ``t`` as the host now has them, after its real call:
    ``took(new)`` says whether the call did what was asked (EPERM otherwise, and the
    old credentials stay); ESRCH if they cannot be read."""
    new = dac.from_proc(t.pid)
    if new is None:
        raise KernelError(errno.ESRCH)
    if not took(new):
        raise KernelError(errno.EPERM)
    t.cred = new
    return 0


@syscall("setuid", linux="kernel/sys.c __sys_setuid()", support="partial",
         note="after the agent's real setuid(2): the daemon adopts the ids and capabilities "
              "/proc shows (EPERM if the effective uid is not the one asked for)")
def sys_setuid(k: Kernel, t: Task, uid: int) -> int:
    """Adopt the process's credentials after a real setuid(2) (a privileged caller
    sets the real, effective and saved uid and loses its capabilities; another only
    the effective uid, to its real or saved one)."""
    return _adopt(t, lambda new: new.euid == uid)


@syscall("setresuid", linux="kernel/sys.c __sys_setresuid()", support="partial",
         note="after the agent's real setresuid(2), as setuid (-1 leaves an id)")
def sys_setresuid(k: Kernel, t: Task, ruid: int, euid: int, suid: int) -> int:
    """Adopt the process's credentials after a real setresuid(2): the real,
    effective and saved uids asked for (-1: unchanged) must be what /proc shows."""
    return _adopt(t, lambda new: all(
        want in (-1, got) for want, got in ((ruid, new.uid), (euid, new.euid), (suid, new.suid))))


@syscall("setgid", linux="kernel/sys.c __sys_setgid()", support="partial",
         note="after the agent's real setgid(2), as setuid")
def sys_setgid(k: Kernel, t: Task, gid: int) -> int:
    """Adopt the process's credentials after a real setgid(2)."""
    return _adopt(t, lambda new: new.egid == gid)


@syscall("setgroups", linux="kernel/groups.c SYSCALL_DEFINE2(setgroups)", support="partial",
         note="after the agent's real setgroups(2), as setuid")
def sys_setgroups(k: Kernel, t: Task, groups: list[int]) -> int:
    """Adopt the process's supplementary groups after a real setgroups(2)."""
    return _adopt(t, lambda new: new.groups == tuple(sorted(set(groups))))


@syscall("faccessat", linux="fs/open.c do_faccessat()", support="partial",
         note="dirfd AT_FDCWD or an absolute path (the root is the only cwd)")
def sys_faccessat(k: Kernel, t: Task, dirfd: int, path: str, mode: int, flags: int = 0) -> int:
    """access(2)/faccessat(2): the path walk and ``inode_permission`` with the real
    uid and gid (``access_override_creds``: no capabilities unless the real uid is
    root), or with the caller's own with AT_EACCESS."""
    if mode & ~0o7:
        raise KernelError(errno.EINVAL)
    if flags & ~(linux.AT_EACCESS | linux.AT_SYMLINK_NOFOLLOW | linux.AT_EMPTY_PATH):
        raise KernelError(errno.EINVAL)
    if dirfd != linux.AT_FDCWD and not path.startswith("/"):
        k.file_of(t, dirfd)
        raise KernelError(errno.EOPNOTSUPP, "faccessat relative to a descriptor")
    cred = dac.access_cred(t.cred, bool(flags & linux.AT_EACCESS))
    inode = k.fs.lookup(path, cred, follow=not flags & linux.AT_SYMLINK_NOFOLLOW)
    dac.inode_permission(cred, inode, mode | dac.MAY_ACCESS)
    return 0


def _chmod(k: Kernel, t: Task, inode: Inode, mode: int) -> int:
    """``chmod_common``: ``setattr_prepare`` then the new permission bits."""
    k.fs.setattr(inode, mode=dac.chmod_ok(t.cred, inode, mode))
    return 0


def _chown(k: Kernel, t: Task, inode: Inode, uid: int, gid: int) -> int:
    """``chown_common``: ``chown_ok``/``chgrp_ok``, then the owner, and a non-directory
    loses its set-user-ID (and set-group-ID) bit."""
    uid = -1 if uid in (-1, 0xFFFFFFFF) else uid
    gid = -1 if gid in (-1, 0xFFFFFFFF) else gid
    dac.chown_ok(t.cred, inode, uid, gid)
    k.fs.setattr(inode, mode=dac.chown_kills_suid(inode) & 0o7777, uid=uid, gid=gid)
    return 0


def _fd_file(k: Kernel, t: Task, fd: int) -> File:
    """``fdget`` for an attribute call: an O_PATH descriptor is EBADF."""
    file = k.file_of(t, fd)
    if file.flags & linux.O_PATH:
        raise KernelError(errno.EBADF)
    return file


@syscall("chmod", linux="fs/open.c do_fchmodat() chmod_common()")
def sys_chmod(k: Kernel, t: Task, path: str, mode: int) -> int:
    """chmod(2): the owner or CAP_FOWNER (EPERM)."""
    return _chmod(k, t, k.fs.lookup(path, t.cred), mode)


@syscall("fchmod", linux="fs/open.c SYSCALL_DEFINE2(fchmod) chmod_common()")
def sys_fchmod(k: Kernel, t: Task, fd: int, mode: int) -> int:
    """fchmod(2) on a descriptor."""
    return _chmod(k, t, _fd_file(k, t, fd).inode, mode)


@syscall("chown", linux="fs/open.c do_fchownat() chown_common()")
def sys_chown(k: Kernel, t: Task, path: str, uid: int, gid: int) -> int:
    """chown(2): CAP_CHOWN, or the owner giving the file one of its own groups."""
    return _chown(k, t, k.fs.lookup(path, t.cred), uid, gid)


@syscall("fchown", linux="fs/open.c ksys_fchown() chown_common()")
def sys_fchown(k: Kernel, t: Task, fd: int, uid: int, gid: int) -> int:
    """fchown(2) on a descriptor."""
    return _chown(k, t, _fd_file(k, t, fd).inode, uid, gid)


@syscall("link", linux="fs/namei.c do_linkat()", support="partial",
         note="no AT_SYMLINK_FOLLOW: a symbolic link is linked itself")
def sys_link(k: Kernel, t: Task, old: str, new: str) -> int:
    """link(2): a second name for the inode (leases, being the inode's, are reached
    through either)."""
    inode = k.fs.link(old, new, t.cred)
    k.log.emit("link", pid=t.pid, ino=inode.ino, old=old, new=new)
    return 0


@syscall("symlink", linux="fs/namei.c do_symlinkat()")
def sys_symlink(k: Kernel, t: Task, target: str, path: str) -> int:
    """symlink(2): a symbolic link to ``target`` (kept as given)."""
    inode = k.fs.symlink(target, path, t.cred.fsuid, t.cred.fsgid, t.cred)
    k.log.emit("create", pid=t.pid, ino=inode.ino, path=path)
    return 0


@syscall("readlink", linux="fs/stat.c do_readlinkat()")
def sys_readlink(k: Kernel, t: Task, path: str) -> str:
    """readlink(2): the target of a symbolic link (EINVAL for anything else)."""
    return k.fs.readlink(path, t.cred)


@syscall("utime", linux="fs/utimes.c vfs_utimes()", support="partial",
         note="times in seconds, or None for now; no UTIME_OMIT")
def sys_utime(k: Kernel, t: Task, path: str, times: list[int] | None = None) -> int:
    """utime(2) (``notify_change`` of the times, which breaks no lease): setting
    explicit times needs the owner or CAP_FOWNER (EPERM, ``setattr_prepare``); setting
    them to now, the owner, CAP_FOWNER or write permission (EACCES, ATTR_TOUCH)."""
    inode = k.fs.lookup(path, t.cred)
    if times is not None:
        if len(times) != 2:
            raise KernelError(errno.EINVAL)
        if not dac.inode_owner_or_capable(t.cred, inode):
            raise KernelError(errno.EPERM)
        k.fs.set_times(inode, float(times[0]), float(times[1]))
        return 0
    if not dac.inode_owner_or_capable(t.cred, inode):
        dac.inode_permission(t.cred, inode, dac.MAY_WRITE)
    k.fs.set_times(inode, None, None)
    return 0


def _xattr_name(name: str) -> str:
    """``setxattr_copy``/``import_xattr_name``: an empty or too long name is ERANGE
    (before the path walk)."""
    if not name or len(name.encode()) > linux.XATTR_NAME_MAX:
        raise KernelError(errno.ERANGE)
    return name


def _xattr_permission(t: Task, inode: Inode, name: str, mask: int) -> None:
    """``xattr_permission`` then ``xattr_resolve_name``: only the ``user.``
    namespace is kept (others EOPNOTSUPP); regular files and directories only (EPERM
    for writing others, ENODATA for reading them), then ``inode_permission``."""
    if not name.startswith("user.") or name == "user.":
        raise KernelError(errno.EOPNOTSUPP)
    if not inode.is_reg and not inode.is_dir:
        raise KernelError(errno.EPERM if mask & dac.MAY_WRITE else errno.ENODATA)
    dac.inode_permission(t.cred, inode, mask)


@syscall("setxattr", linux="fs/xattr.c path_setxattr() vfs_setxattr()", support="partial",
         note="the user. namespace only (others EOPNOTSUPP)")
def sys_setxattr(k: Kernel, t: Task, path: str, name: str, value: bytes,
                 flags: int = 0) -> int:
    """setxattr(2): write permission; XATTR_CREATE of an existing name is EEXIST,
    XATTR_REPLACE of a missing one ENODATA.  It breaks no lease (only delegations)."""
    if flags & ~(linux.XATTR_CREATE | linux.XATTR_REPLACE):
        raise KernelError(errno.EINVAL)
    if len(value) > linux.XATTR_SIZE_MAX:
        raise KernelError(errno.E2BIG)
    name = _xattr_name(name)
    inode = k.fs.lookup(path, t.cred)
    _xattr_permission(t, inode, name, dac.MAY_WRITE)
    if flags & linux.XATTR_CREATE and name in inode.xattrs:
        raise KernelError(errno.EEXIST)
    if flags & linux.XATTR_REPLACE and name not in inode.xattrs:
        raise KernelError(errno.ENODATA)
    inode.xattrs[name] = bytes(value)
    k.fs.set_times(inode, inode.atime, inode.mtime)  # ctime moves
    return 0


@syscall("getxattr", linux="fs/xattr.c path_getxattr() vfs_getxattr()", support="partial",
         note="the user. namespace only")
def sys_getxattr(k: Kernel, t: Task, path: str, name: str) -> bytes:
    """getxattr(2): read permission; ENODATA for a name that is not set."""
    name = _xattr_name(name)
    inode = k.fs.lookup(path, t.cred)
    _xattr_permission(t, inode, name, dac.MAY_READ)
    value = inode.xattrs.get(name)
    if value is None:
        raise KernelError(errno.ENODATA)
    return value
