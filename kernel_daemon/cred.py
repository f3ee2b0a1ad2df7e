"""Credentials and discretionary access control.

``Cred`` is ``struct cred`` (include/linux/cred.h): the real, effective, saved and
filesystem user and group ids, the supplementary groups and the effective and
permitted capability sets.  The checks follow fs/namei.c (``generic_permission``,
``acl_permission_check``, ``inode_permission``, ``may_open``, ``may_lookup``,
``may_create``, ``may_delete``), fs/attr.c (``setattr_prepare``, ``chown_ok``,
``chgrp_ok``) and fs/inode.c (``inode_owner_or_capable``), in the initial user
namespace, without ACLs and without LSMs.

An emulated process is a real process, so its credentials are its real ones: the agent
makes the real ``setuid``/``setgid``/``setgroups`` call first (the host kernel decides
whether it is allowed and what it changes: saved ids, capabilities dropped or kept), and
the daemon then adopts what ``/proc/<pid>/status`` says (:func:`from_proc`), at
registration and after each such call.  Host and emulator therefore agree on every id
and capability by construction; the daemon only does the permission checks with them.
"""

from __future__ import annotations

import errno
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from kemu.kernel_daemon.errors import KernelError
from kemu.protocol import linux

if TYPE_CHECKING:
    from kemu.kernel_daemon.vfs import Inode

# permission masks (include/linux/fs.h MAY_*): kernel-internal, so they live here
MAY_EXEC = 0x1
MAY_WRITE = 0x2
MAY_READ = 0x4
MAY_APPEND = 0x8
MAY_ACCESS = 0x10
MAY_OPEN = 0x20
MAY_CHDIR = 0x40

#: every capability of a root process (CAP_LAST_CAP 40 on 6.x kernels)
ALL_CAPS = (1 << 41) - 1
S_IXUGO = 0o111


@dataclass(frozen=True)
class Cred:
    """``struct cred``: who a process is, for permission checks.

    Immutable, as the kernel's (a change is a new cred, ``commit_creds``); the daemon
    replaces a task's whole cred when the host's view of the process changes.
    """

    uid: int
    gid: int
    suid: int
    sgid: int
    euid: int
    egid: int
    fsuid: int
    fsgid: int
    #: the supplementary groups (``group_info``), sorted
    groups: tuple[int, ...] = ()
    #: ``cap_effective`` and ``cap_permitted``, as bit masks of CAP_* numbers
    cap_effective: int = 0
    cap_permitted: int = 0

    @classmethod
    def of(cls, uid: int, gid: int) -> Cred:
        """A cred with every id equal to ``uid``/``gid`` (a process whose status cannot
        be read, e.g. a made-up PID of a unit test): root has every capability."""
        caps = ALL_CAPS if uid == 0 else 0
        return cls(uid, gid, uid, gid, uid, gid, uid, gid, (), caps, caps)


#: a placeholder for tasks built without credentials (the kernel's init_cred)
ROOT = Cred.of(0, 0)


def from_proc(pid: int) -> Cred | None:
    """The credentials of process ``pid`` as the host kernel has them now
    (``/proc/<pid>/status``: ``Uid:``, ``Gid:``, ``Groups:``, ``CapEff:``, ``CapPrm:``),
    or None when the status cannot be read (the process is gone, or never existed)."""
    fields: dict[str, str] = {}
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                if key in ("Uid", "Gid", "Groups", "CapEff", "CapPrm"):
                    fields[key] = value.strip()
        uids = [int(x) for x in fields["Uid"].split()]
        gids = [int(x) for x in fields["Gid"].split()]
        groups = tuple(sorted(int(x) for x in fields.get("Groups", "").split()))
        eff = int(fields["CapEff"], 16)
        prm = int(fields["CapPrm"], 16)
        return Cred(uids[0], gids[0], uids[2], gids[2], uids[1], gids[1], uids[3], gids[3],
                    groups, eff, prm)
    except (OSError, KeyError, ValueError, IndexError):
        return None


def capable(cred: Cred, cap: int) -> bool:
    """``capable(cap)`` (``capable_wrt_inode_uidgid`` too: every id maps in the initial
    namespace): the capability is in the effective set."""
    return bool(cred.cap_effective >> cap & 1)


def in_group_p(cred: Cred, gid: int) -> bool:
    """``in_group_p``: the filesystem gid or one of the supplementary groups."""
    return gid == cred.fsgid or gid in cred.groups


def access_cred(cred: Cred, eaccess: bool) -> Cred:
    """The credentials ``access(2)`` checks with (fs/open.c ``access_override_creds``):
    the real uid and gid as filesystem ids and, for a non-root real uid, no
    capabilities (a root real uid gets the permitted set); with AT_EACCESS the
    caller's own."""
    if eaccess:
        return cred
    caps = cred.cap_permitted if cred.uid == 0 else 0
    return replace(cred, fsuid=cred.uid, fsgid=cred.gid, cap_effective=caps)


def acl_permission_check(cred: Cred, inode: Inode, mask: int) -> bool:
    """``acl_permission_check`` without ACLs: the owner's bits for the owner, else the
    group's for a member of the file's group, else the others'.  True if allowed."""
    mode = inode.mode
    mask &= MAY_READ | MAY_WRITE | MAY_EXEC
    if cred.fsuid == inode.uid:
        mode >>= 6
    elif in_group_p(cred, inode.gid):
        mode >>= 3
    return not mask & ~mode & 0o7


def generic_permission(cred: Cred, inode: Inode, mask: int) -> None:
    """``generic_permission``: the mode bits, then the capabilities that override
    them (CAP_DAC_READ_SEARCH: read a file, read and search a directory;
    CAP_DAC_OVERRIDE: everything but executing a file no one may execute).  EACCES."""
    if acl_permission_check(cred, inode, mask):
        return
    if inode.is_dir:
        if not mask & MAY_WRITE and capable(cred, linux.CAP_DAC_READ_SEARCH):
            return
        if capable(cred, linux.CAP_DAC_OVERRIDE):
            return
        raise KernelError(errno.EACCES)
    mask &= MAY_READ | MAY_WRITE | MAY_EXEC
    if mask == MAY_READ and capable(cred, linux.CAP_DAC_READ_SEARCH):
        return
    if (not mask & MAY_EXEC or inode.mode & S_IXUGO) and capable(cred,
                                                                  linux.CAP_DAC_OVERRIDE):
        return
    raise KernelError(errno.EACCES)


def inode_permission(cred: Cred, inode: Inode, mask: int) -> None:
    """``inode_permission``: no read-only mounts or immutable files here, so
    :func:`generic_permission`."""
    generic_permission(cred, inode, mask)


def may_lookup(cred: Cred, directory: Inode) -> None:
    """``may_lookup``: search (x) permission on each directory a path walk looks a
    name up in."""
    inode_permission(cred, directory, MAY_EXEC)


def acc_mode(flags: int) -> int:
    """``build_open_flags``'s ``acc_mode``: ``ACC_MODE()`` of the access mode (an
    access mode of 3 asks for reading and writing), MAY_WRITE with O_TRUNC,
    MAY_APPEND with O_APPEND."""
    mode = (MAY_READ, MAY_WRITE, MAY_READ | MAY_WRITE, MAY_READ | MAY_WRITE)[
        flags & linux.O_ACCMODE]
    if flags & linux.O_TRUNC:
        mode |= MAY_WRITE
    if flags & linux.O_APPEND:
        mode |= MAY_APPEND
    return mode


def may_open(cred: Cred, inode: Inode, mode: int, flags: int) -> None:
    """``may_open`` for an inode the open did not create: a directory opened for
    writing is EISDIR, then :func:`inode_permission` with MAY_OPEN, then O_NOATIME by
    neither the owner nor CAP_FOWNER is EPERM.  Comes before ``do_dentry_open`` and so
    before any lease is broken."""
    if inode.is_dir:
        if mode & MAY_WRITE:
            raise KernelError(errno.EISDIR)
        if mode & MAY_EXEC:
            raise KernelError(errno.EACCES)
    inode_permission(cred, inode, MAY_OPEN | mode)
    if flags & linux.O_NOATIME and not inode_owner_or_capable(cred, inode):
        raise KernelError(errno.EPERM)


def may_create(cred: Cred, directory: Inode) -> None:
    """``may_create``: write and search permission on the directory."""
    inode_permission(cred, directory, MAY_WRITE | MAY_EXEC)


def check_sticky(cred: Cred, directory: Inode, inode: Inode) -> bool:
    """``check_sticky``: in a sticky directory only the file's owner, the directory's
    owner or CAP_FOWNER may remove or rename a name.  True if refused."""
    if not directory.mode & linux.S_ISVTX:
        return False
    if cred.fsuid in (inode.uid, directory.uid):
        return False
    return not capable(cred, linux.CAP_FOWNER)


def may_delete(cred: Cred, directory: Inode, inode: Inode) -> None:
    """``may_delete``'s permission part: write and search permission on the directory
    (EACCES), then the sticky bit (EPERM).  The type checks (EISDIR, ENOTDIR) come
    after, in the caller."""
    inode_permission(cred, directory, MAY_WRITE | MAY_EXEC)
    if check_sticky(cred, directory, inode):
        raise KernelError(errno.EPERM)


def inode_owner_or_capable(cred: Cred, inode: Inode) -> bool:
    """``inode_owner_or_capable``: the filesystem uid owns the inode, or CAP_FOWNER."""
    return cred.fsuid == inode.uid or capable(cred, linux.CAP_FOWNER)


def chmod_ok(cred: Cred, inode: Inode, mode: int) -> int:
    """``setattr_prepare`` for ATTR_MODE: the owner or CAP_FOWNER (else EPERM); the
    mode to set, without S_ISGID when the caller is not in the file's group and lacks
    CAP_FSETID (``chmod_common`` then ``setattr_copy``)."""
    if not inode_owner_or_capable(cred, inode):
        raise KernelError(errno.EPERM)
    mode &= 0o7777
    if not in_group_p(cred, inode.gid) and not capable(cred, linux.CAP_FSETID):
        mode &= ~linux.S_ISGID
    return mode


def chown_ok(cred: Cred, inode: Inode, uid: int, gid: int) -> None:
    """``setattr_prepare``'s ``chown_ok`` and ``chgrp_ok``: an id given (-1 leaves it
    as it is) may be set by the owner only to what it is (the owner) or to one of the
    owner's groups (the group); anything else needs CAP_CHOWN.  EPERM."""
    owner = cred.fsuid == inode.uid
    if uid != -1 and not (owner and uid == inode.uid) and not capable(cred, linux.CAP_CHOWN):
        raise KernelError(errno.EPERM)
    if gid != -1 and not (owner and (gid == inode.gid or in_group_p(cred, gid))) \
            and not capable(cred, linux.CAP_CHOWN):
        raise KernelError(errno.EPERM)


def chown_kills_suid(inode: Inode) -> int:
    """The mode after a chown of a non-directory (``chown_common``'s ATTR_KILL_SUID and
    ATTR_KILL_SGID): no set-user-ID bit, and no set-group-ID bit where group execute is
    set; whoever the caller is."""
    mode = inode.mode
    if inode.is_dir:
        return mode
    mode &= ~linux.S_ISUID
    if mode & linux.S_IXGRP:
        mode &= ~linux.S_ISGID
    return mode

