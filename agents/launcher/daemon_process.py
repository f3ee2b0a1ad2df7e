"""Start and stop a kernel daemon as a real process (for the launcher, tests, benchmarks).

Readiness is explicit: the daemon writes a line to a pipe once it serves, so nobody
sleeps waiting for it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass, field
from typing import Any

from agents.launcher.designs import daemon_env
from protocol.config import DaemonConfig


@dataclass
class DaemonProcess:
    """A running ``python -m kernel_daemon``."""

    run_dir: str
    proc: subprocess.Popen[bytes]
    pid: int
    pmem_name: str
    options: dict[str, Any] = field(default_factory=dict)

    def stop(self, timeout: float = 10.0) -> int:
        """SIGTERM the daemon (it cleans up) and reap it; SIGKILL if it does not go."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def kill(self) -> None:
        """SIGKILL the daemon (a fault injected on the kernel itself)."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


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
    argv = [sys.executable, "-m", "kernel_daemon", *config.argv(), "--ready-fd", str(w)]
    env = daemon_env()
    proc = subprocess.Popen(argv, pass_fds=(w,), env=env, stdin=subprocess.DEVNULL)
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
