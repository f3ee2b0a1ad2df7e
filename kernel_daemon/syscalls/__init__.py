"""System-call families; importing this package fills the table."""

from kernel_daemon.kernel import Kernel
from kernel_daemon.syscalls import fd, fs, ipc, lease, mm, proc, rdma
from kernel_daemon.syscalls.table import SYSCALLS, BadArguments, Syscall

__all__ = ["SYSCALLS", "BadArguments", "Syscall", "fd", "fs", "install", "ipc", "lease", "mm", "proc", "rdma"]


def install(k: Kernel) -> None:
    """Wire the families' hooks into a new kernel (exit, fork, exec)."""
    k.exit_hooks.append(lambda task: ipc.release_task_mailboxes(k, task))
    lease.install(k)
    mm.install(k)
    rdma.install(k)
    from kernel_daemon import policy  # the policies build on every family

    policy.install(k)
