"""Linux constants, x86-64 values, as both the daemon and the agents see them.

The values are Linux's own (include/uapi/asm-generic/fcntl.h, fcntl.h, mman.h,
signal.h), not the host Python's ``os`` module's, so the emulator speaks Linux even
where the host would differ.  Constants of designs that never reached mainline
(``F_LAYOUT``, ``F_EXCLUSIVE``, ``MAP_DIRECT``) carry the values the patch series gave
them, except ``MAP_DIRECT``, which has its own value here (see ``docs``).
"""

from __future__ import annotations

import errno as _errno

# open(2) flags (asm-generic/fcntl.h, octal as in the header)
O_ACCMODE = 0o3
O_RDONLY = 0o0
O_WRONLY = 0o1
O_RDWR = 0o2
O_CREAT = 0o100
O_EXCL = 0o200
O_NOCTTY = 0o400
O_TRUNC = 0o1000
O_APPEND = 0o2000
O_NONBLOCK = 0o4000
O_DSYNC = 0o10000
O_ASYNC = 0o20000  # FASYNC
O_DIRECT = 0o40000
O_LARGEFILE = 0o100000
O_DIRECTORY = 0o200000
O_NOFOLLOW = 0o400000
O_NOATIME = 0o1000000
O_CLOEXEC = 0o2000000
O_SYNC = 0o4010000
O_PATH = 0o10000000
O_TMPFILE = 0o20200000

# fcntl(2) commands
F_DUPFD = 0
F_GETFD = 1
F_SETFD = 2
F_GETFL = 3
F_SETFL = 4
F_GETLK = 5
F_SETLK = 6
F_SETLKW = 7
F_SETOWN = 8
F_GETOWN = 9
F_SETSIG = 10
F_GETSIG = 11
F_SETOWN_EX = 15
F_GETOWN_EX = 16
F_LINUX_SPECIFIC_BASE = 1024
F_SETLEASE = 1024
F_GETLEASE = 1025
F_DUPFD_CLOEXEC = 1030
FD_CLOEXEC = 1

# lease types (F_SETLEASE / F_GETLEASE)
F_RDLCK = 0
F_WRLCK = 1
F_UNLCK = 2
# never-merged RFC "RDMA/FS DAX truncate proposal" (2019)
F_LAYOUT = 16
F_EXCLUSIVE = 32

# F_SETOWN_EX types
F_OWNER_TID = 0
F_OWNER_PID = 1
F_OWNER_PGRP = 2

# lseek(2)
SEEK_SET = 0
SEEK_CUR = 1
SEEK_END = 2
SEEK_DATA = 3
SEEK_HOLE = 4

# dup3(2), pipe2(2)... only O_CLOEXEC is accepted by dup3
# mmap(2)
PROT_NONE = 0x0
PROT_READ = 0x1
PROT_WRITE = 0x2
PROT_EXEC = 0x4
MAP_SHARED = 0x01
MAP_PRIVATE = 0x02
MAP_SHARED_VALIDATE = 0x03
MAP_TYPE = 0x0F
MAP_FIXED = 0x10
MAP_ANONYMOUS = 0x20
MAP_POPULATE = 0x8000
MAP_GROWSDOWN = 0x0100
MAP_DENYWRITE = 0x0800
MAP_EXECUTABLE = 0x1000
MAP_LOCKED = 0x2000
MAP_NORESERVE = 0x4000
MAP_NONBLOCK = 0x10000
MAP_STACK = 0x20000
MAP_HUGETLB = 0x40000
MAP_SYNC = 0x80000
# MAP_DIRECT's last posted value was 0x80000, the value MAP_SYNC later took; the
# emulator gives it a free bit of its own so both can be used in one scenario.
MAP_DIRECT = 0x4000000

# fallocate(2)
FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02
FALLOC_FL_ZERO_RANGE = 0x10

# ioctl(2) on files (linux/fs.h): FICLONE = _IOW(0x94, 9, int), reflink a whole file
FICLONE = 0x40049409

# RDMA verbs (rdma-core's ibv_access_flags)
IBV_ACCESS_LOCAL_WRITE = 1
IBV_ACCESS_REMOTE_WRITE = 2
IBV_ACCESS_REMOTE_READ = 4
IBV_ACCESS_REMOTE_ATOMIC = 8
IBV_ACCESS_ON_DEMAND = 0x40
IBV_WR_RDMA_WRITE = 0  # enum ibv_wr_opcode
IBV_WR_RDMA_READ = 4

# file types (stat st_mode)
S_IFMT = 0o170000
S_IFDIR = 0o040000
S_IFCHR = 0o020000
S_IFREG = 0o100000

# signals (x86-64)
SIGHUP = 1
SIGINT = 2
SIGQUIT = 3
SIGKILL = 9
SIGUSR1 = 10
SIGSEGV = 11
SIGUSR2 = 12
SIGPIPE = 13
SIGALRM = 14
SIGTERM = 15
SIGCHLD = 17
SIGCONT = 18
SIGSTOP = 19
SIGBUS = 7
SIGIO = 29
SIGPOLL = SIGIO
SIGRTMIN = 34  # as glibc and Python report it: the kernel starts at 32, glibc keeps 32 and 33
SIGRTMAX = 64
NSIG = 65

# si_code values for SIGIO (POLL_*), and generic ones
SI_USER = 0
SI_KERNEL = 0x80
SI_QUEUE = -1
POLL_IN = 1
POLL_OUT = 2
POLL_MSG = 3
POLL_ERR = 4
POLL_PRI = 5
POLL_HUP = 6

# resource limits the emulator applies
RLIMIT_NOFILE_DEFAULT = 1024
NAME_MAX = 255
PATH_MAX = 4096

#: Names a scenario or a transcript may use for constants.
CONSTANTS: dict[str, int] = {
    name: value
    for name, value in list(globals().items())
    if name.isupper() and isinstance(value, int) and not name.startswith("_")
}

#: errno values by name, Linux's (the host is Linux, so Python's errno module agrees).
ERRNO_BY_NAME: dict[str, int] = {
    name: getattr(_errno, name) for name in dir(_errno) if name.startswith("E") and name.isupper()
}
ERRNO_NAME: dict[int, str] = {code: name for code, name in _errno.errorcode.items()}
# the names strace prints where Python's table picks an alias
ERRNO_NAME.update({_errno.EOPNOTSUPP: "EOPNOTSUPP", _errno.EDEADLK: "EDEADLK",
                   _errno.EAGAIN: "EAGAIN"})


def errno_name(code: int) -> str:
    """Return the symbolic name of errno ``code`` (``ENOENT``), as strace prints it."""
    return ERRNO_NAME.get(code, f"E{code}")
