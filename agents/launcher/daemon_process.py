"""Start and stop a kernel daemon as a real process (for the launcher, tests, benchmarks).

Readiness is explicit: the daemon writes a line to a pipe once it serves, so nobody
sleeps waiting for it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from dataclasses import dataclass, field
from typing import Any

from kemu.agents.launcher import zygote
from kemu.agents.launcher.designs import daemon_env
from kemu.protocol import shm
from kemu.protocol.config import DaemonConfig


@dataclass
class DaemonProcess:
    """A running ``python -m kemu.kernel_daemon`` (forked from the launcher's zygote)."""

    run_dir: str
    proc: zygote.Process
    pid: int
    pmem_name: str
    options: dict[str, Any] = field(default_factory=dict)
    #: a pidfd of the daemon, readable once it has ended (-1: none)
    pidfd: int = -1
    #: it did not stop within the timeout of :meth:`stop` and was killed; its stacks
    #: at that moment are in ``STACKS_FILE`` of the run folder
    hung: bool = False

    def __post_init__(self) -> None:
        if self.pidfd < 0:
            with contextlib.suppress(OSError):
                # its parent (the zygote) reaps it only when asked: the PID is its own
                self.pidfd = os.pidfd_open(self.pid)

    def died(self) -> str | None:
        """How the daemon ended (``killed by SIGKILL``, ``exited with 1``) if it has,
        else None.  Its wait status comes from its parent (``wait(2)``)."""
        code = self.proc.poll()
        if code is None:
            return None
        if code < 0:
            try:
                return f"killed by {signal.Signals(-code).name}"
            except ValueError:
                return f"killed by signal {-code}"
        return f"exited with {code}"

    def stop(self, timeout: float = 10.0) -> int:
        """SIGTERM the daemon (it cleans up) and reap it; SIGKILL if it does not go,
        after SIGUSR2 has made it write its threads' stacks to its run folder
        (:data:`~kemu.protocol.config.STACKS_FILE`: see :attr:`hung`)."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.hung = True
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.pid, signal.SIGUSR2)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.proc.wait(0.5)  # faulthandler writes at once; it does not exit
                self.proc.kill()
                self.proc.wait()
        self._remove_segments()
        return self.proc.wait()

    def kill(self) -> None:
        """SIGKILL the daemon (a fault injected on the kernel itself)."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self._remove_segments()

    def _remove_segments(self) -> None:
        """A daemon that is gone without its shutdown (killed) leaves its device and
        queue-pair rings in /dev/shm and its socket files in the run directory: remove
        them, as its resource tracker once did."""
        shm.remove(self.pmem_name)
        for name in ("register.sock", "kernel.ipc"):
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(self.run_dir, name))
        if self.pidfd >= 0:
            os.close(self.pidfd)
            self.pidfd = -1


def start_daemon(run_dir: str, *, timeout: float = 20.0, blocks: int | None = None,
                 **settings: Any) -> DaemonProcess:
    """Start a daemon for ``run_dir`` and return once it serves.

    ``settings`` are :class:`~protocol.config.DaemonConfig` fields (``policy``,
    ``lease_break_time``, ``flavour``, ``event_log``, ...), defaults from there;
    ``blocks`` is ``nblocks``, the device size.
    """
    os.makedirs(run_dir, exist_ok=True)
    if blocks is not None:
        settings["nblocks"] = blocks
    config = DaemonConfig(run_dir=run_dir, **settings)
    config.validate()
    r, w = os.pipe()
    null = os.open(os.devnull, os.O_RDONLY)
    try:
        proc = zygote.spawn("kemu.kernel_daemon.__main__", [*config.argv(), "--ready-fd", str(w)],
                            env=daemon_env(), stdio=(null, 1, 2), pass_fds=(w,))
    finally:
        os.close(null)
        os.close(w)
    line = b""
    try:
        import select

        while not line.endswith(b"\n"):
            ready, _, _ = select.select([r], [], [], timeout)
            if not ready:
                proc.kill()
                raise TimeoutError("kernel daemon did not become ready")
            chunk = os.read(r, 256)
            if not chunk:
                proc.wait()
                raise RuntimeError(f"kernel daemon exited with {proc.returncode} before ready")
            line += chunk
    finally:
        os.close(r)
    _, pid, pmem = line.decode().split()
    return DaemonProcess(run_dir, proc, int(pid), pmem,
                         {"lease_break_time": config.lease_break_time, "policy": config.policy})
