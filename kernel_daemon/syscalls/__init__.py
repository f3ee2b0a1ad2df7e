"""System-call families; importing this package fills the table.

The families' lifecycle hooks (exit, exec, fork, file release, shutdown) are registered
with a kernel by the composition root, :mod:`kernel_daemon.boot`.
"""

from kernel_daemon.syscalls import fd, fs, ipc, lease, mm, proc, rdma
from kernel_daemon.syscalls.table import SYSCALLS, BadArguments, Syscall

__all__ = ["SYSCALLS", "BadArguments", "Syscall", "fd", "fs", "ipc", "lease", "mm", "proc", "rdma"]
