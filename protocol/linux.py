"""Linux and verbs constants, x86-64 values, as both the daemon and the agents see them.

This is their one home (as ``include/uapi`` is Linux's and ``pkg/abi/linux`` gVisor's):
nothing under ``agents/`` or ``protocol/`` defines a name of its own for a value here,
and ``tests/test_constants.py`` keeps it so and checks every value against Python's
``os``, ``fcntl``, ``signal``, ``mmap``, ``select`` and ``errno`` where they define the
same name.

The values are Linux's own (include/uapi/asm-generic/fcntl.h, fcntl.h, mman.h,
signal.h, siginfo.h), not the host Python's ``os`` module's, so the emulator speaks
Linux even where the host would differ (``O_LARGEFILE``, which glibc defines as 0 on
64-bit hosts).  Constants of designs that never reached mainline (``F_LAYOUT``,
``F_EXCLUSIVE``, ``MAP_DIRECT``) carry the values the patch series gave them, except
``MAP_DIRECT``, which has its own value here (see ``docs``).  The verbs values are
rdma-core's (``infiniband/verbs.h``).
"""

from __future__ import annotations

import enum
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
# the other flags of LEGACY_MAP_MASK (asm-generic/mman-common.h, x86's asm/mman.h)
MAP_GROWSDOWN = 0x0100
MAP_DENYWRITE = 0x0800
MAP_EXECUTABLE = 0x1000
MAP_LOCKED = 0x2000
MAP_NORESERVE = 0x4000
MAP_POPULATE = 0x8000
MAP_NONBLOCK = 0x10000
MAP_STACK = 0x20000
MAP_HUGETLB = 0x40000
MAP_SYNC = 0x80000
# MAP_DIRECT's last posted value was 0x80000, the value MAP_SYNC later took; the
# emulator gives it a free bit of its own so both can be used in one scenario.
MAP_DIRECT = 0x4000000
#: the flags mmap(2) has always accepted, which MAP_SHARED_VALIDATE does not check
#: (include/linux/mman.h; MAP_UNINITIALIZED is 0 without CONFIG_MMAP_ALLOW_UNINITIALIZED)
LEGACY_MAP_MASK = (MAP_SHARED | MAP_PRIVATE | MAP_FIXED | MAP_ANONYMOUS | MAP_DENYWRITE
                   | MAP_EXECUTABLE | MAP_GROWSDOWN | MAP_LOCKED | MAP_NORESERVE
                   | MAP_POPULATE | MAP_NONBLOCK | MAP_STACK | MAP_HUGETLB)

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


class WcStatus(enum.IntEnum):
    """``enum ibv_wc_status``: how a work request completed (``ibv_wc.status``).

    The card reports a status by its name (``"IBV_WC_SUCCESS"``, what a control call's
    reply and a transcript show); the queue-pair ring carries the number
    (``protocol/ring.py``).  Use ``.name`` for the text: ``str()`` of an ``IntEnum`` is
    its number.
    """

    IBV_WC_SUCCESS = 0
    IBV_WC_LOC_LEN_ERR = 1
    IBV_WC_LOC_QP_OP_ERR = 2
    IBV_WC_LOC_EEC_OP_ERR = 3
    IBV_WC_LOC_PROT_ERR = 4
    IBV_WC_WR_FLUSH_ERR = 5
    IBV_WC_MW_BIND_ERR = 6
    IBV_WC_BAD_RESP_ERR = 7
    IBV_WC_LOC_ACCESS_ERR = 8
    IBV_WC_REM_INV_REQ_ERR = 9
    IBV_WC_REM_ACCESS_ERR = 10
    IBV_WC_REM_OP_ERR = 11
    IBV_WC_RETRY_EXC_ERR = 12
    IBV_WC_RNR_RETRY_EXC_ERR = 13
    IBV_WC_LOC_RDD_VIOL_ERR = 14
    IBV_WC_REM_INV_RD_REQ_ERR = 15
    IBV_WC_REM_ABORT_ERR = 16
    IBV_WC_INV_EECN_ERR = 17
    IBV_WC_INV_EEC_STATE_ERR = 18
    IBV_WC_FATAL_ERR = 19
    IBV_WC_RESP_TIMEOUT_ERR = 20
    IBV_WC_GENERAL_ERR = 21
    IBV_WC_TM_ERR = 22
    IBV_WC_TM_RNDV_INCOMPLETE = 23


# file types (stat st_mode)
S_IFMT = 0o170000
S_IFDIR = 0o040000
S_IFCHR = 0o020000
S_IFREG = 0o100000
S_IFLNK = 0o120000
S_IFIFO = 0o010000
S_IFSOCK = 0o140000
# mode bits (sys/stat.h)
S_ISUID = 0o4000
S_ISGID = 0o2000
S_ISVTX = 0o1000
S_IXGRP = 0o010

# access(2) modes and faccessat(2) flags (unistd.h, fcntl.h)
F_OK = 0
X_OK = 1
W_OK = 2
R_OK = 4
AT_FDCWD = -100
AT_SYMLINK_NOFOLLOW = 0x100
AT_EACCESS = 0x200
AT_EMPTY_PATH = 0x1000

# setxattr(2) flags (linux/xattr.h)
XATTR_CREATE = 1
XATTR_REPLACE = 2
XATTR_NAME_MAX = 255
XATTR_SIZE_MAX = 65536

# wait4(2) options (sys/wait.h)
WNOHANG = 1
WUNTRACED = 2

# capabilities (linux/capability.h)
CAP_CHOWN = 0
CAP_DAC_OVERRIDE = 1
CAP_DAC_READ_SEARCH = 2
CAP_FOWNER = 3
CAP_FSETID = 4
CAP_KILL = 5
CAP_SETGID = 6
CAP_SETUID = 7
CAP_LEASE = 28

# signals (x86-64, asm/signal.h)
SIGHUP = 1
SIGINT = 2
SIGQUIT = 3
SIGILL = 4
SIGTRAP = 5
SIGABRT = 6
SIGBUS = 7
SIGFPE = 8
SIGKILL = 9
SIGUSR1 = 10
SIGSEGV = 11
SIGUSR2 = 12
SIGPIPE = 13
SIGALRM = 14
SIGTERM = 15
SIGSTKFLT = 16
SIGCHLD = 17
SIGCONT = 18
SIGSTOP = 19
SIGTSTP = 20
SIGTTIN = 21
SIGTTOU = 22
SIGURG = 23
SIGXCPU = 24
SIGXFSZ = 25
SIGVTALRM = 26
SIGPROF = 27
SIGWINCH = 28
SIGIO = 29
SIGPOLL = SIGIO
SIGPWR = 30
SIGSYS = 31
#: the kernel's first real-time signal (asm-generic/signal.h SIGRTMIN): signals below it
#: are standard (one pending instance each), from it on they queue
KERNEL_SIGRTMIN = 32
SIGRTMIN = 34  # as glibc and Python report it: the kernel starts at 32, glibc keeps 32 and 33
SIGRTMAX = 64
NSIG = 65

# si_code values (asm-generic/siginfo.h): generic ones (<= 0 from user space)
SI_USER = 0  #: kill(2)
SI_KERNEL = 0x80  #: sent by the kernel (e.g. plain SIGIO without F_SETSIG)
SI_QUEUE = -1  #: sigqueue(3)
SI_TIMER = -2  #: POSIX timer expiry
SI_MESGQ = -3  #: POSIX message queue state change
SI_ASYNCIO = -4  #: AIO completion
SI_SIGIO = -5  #: queued SIGIO
SI_TKILL = -6  #: tkill(2)/tgkill(2)
# ... and those of SIGIO/SIGPOLL (F_SETSIG): the band's reason
POLL_IN = 1  #: data input available
POLL_OUT = 2  #: output buffers available
POLL_MSG = 3  #: input message available (a lease break)
POLL_ERR = 4  #: I/O error
POLL_PRI = 5  #: high-priority input available
POLL_HUP = 6  #: device disconnected
# ... of SIGBUS
BUS_ADRALN = 1  #: invalid address alignment
BUS_ADRERR = 2  #: non-existent physical address (a DAX page whose block is gone)
BUS_OBJERR = 3  #: object-specific hardware error
# ... of SIGSEGV
SEGV_MAPERR = 1  #: address not mapped
SEGV_ACCERR = 2  #: invalid permissions for the mapping

# poll(2) events (asm-generic/poll.h), which si_band of a SIGIO carries
POLLIN = 0x001
POLLPRI = 0x002
POLLOUT = 0x004
POLLERR = 0x008
POLLHUP = 0x010
POLLNVAL = 0x020
POLLRDNORM = 0x040
POLLRDBAND = 0x080
POLLWRNORM = 0x100
POLLWRBAND = 0x200
POLLMSG = 0x400

# errno values are Python's errno module's, which are Linux's (the host is Linux): see
# ERRNO_BY_NAME.  ENOSYS is named here too because the protocol gives it a meaning of
# its own: the daemon answers it for a call its table lacks, as Linux does for a system
# call number it does not know.
ENOSYS = _errno.ENOSYS

# sockets
MSG_DONTWAIT = 0x40  #: recvmsg(2)/sendmsg(2) flag (linux/socket.h)
SCM_MAX_FD = 253  #: most descriptors one SCM_RIGHTS message carries (include/net/scm.h)

# prctl(2) (linux/prctl.h)
PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36
PR_GET_DUMPABLE = 3
PR_SET_DUMPABLE = 4

# x86-64 system call numbers (arch/x86/entry/syscalls/syscall_64.tbl), as the first
# word of /proc/<pid>/syscall shows them; lower case, as __NR_read, so that they are no
# CONSTANTS a scenario may use
NR_read = 0
NR_write = 1
NR_pread64 = 17
NR_pwrite64 = 18
NR_select = 23
NR_recvmsg = 47
NR_fcntl = 72
NR_truncate = 76
NR_ftruncate = 77
NR_openat = 257
NR_wait4 = 61
NR_faccessat2 = 439

# resource limits (asm-generic/resource.h) and the defaults the emulator applies
RLIMIT_NOFILE = 7
RLIMIT_SIGPENDING = 11
RLIM_INFINITY = (1 << 64) - 1
RLIMIT_NOFILE_DEFAULT = 1024
RLIMIT_SIGPENDING_DEFAULT = 1024
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
