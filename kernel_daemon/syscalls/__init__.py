"""System-call families; importing this package fills the table."""

from kernel_daemon.syscalls import fd, fs, ipc, proc  # noqa: F401  (registration)
from kernel_daemon.syscalls.table import SYSCALLS, BadArguments, Syscall

__all__ = ["SYSCALLS", "BadArguments", "Syscall"]
