"""System-call families; importing this package fills the table.

The families' lifecycle hooks (exit, exec, fork, file release, shutdown) are registered
with a kernel by the composition root, :mod:`kemu.kernel_daemon.boot`.
"""

from kemu.kernel_daemon.syscalls import attr, fd, fs, ipc, lease, mm, pipe, proc, rdma
from kemu.kernel_daemon.syscalls.table import SYSCALLS, BadArguments, Syscall

__all__ = ["SYSCALLS", "BadArguments", "Syscall", "attr", "fd", "fs", "ipc", "lease", "mm", "pipe", "proc",
           "rdma"]
