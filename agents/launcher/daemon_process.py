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


def start_daemon(run_dir: str, *, lease_break_time: float = 45.0, policy: str = "upstream",
                 flavour: str = "xfs", blocks: int = 1024, block_size: int = 4096,
                 event_log: str | None = None, timeout: float = 20.0,
                 fork_claim_timeout: float = 10.0, dio_time: float = 0.5) -> DaemonProcess:
    """Start a daemon for ``run_dir`` and return once it serves."""
    os.makedirs(run_dir, exist_ok=True)
    r, w = os.pipe()
    argv = [sys.executable, "-m", "kernel_daemon", "--run-dir", run_dir,
            "--lease-break-time", str(lease_break_time), "--policy", policy,
            "--flavour", flavour, "--blocks", str(blocks), "--block-size", str(block_size),
            "--fork-claim-timeout", str(fork_claim_timeout), "--dio-time", str(dio_time),
            "--ready-fd", str(w)]
    if event_log:
        argv += ["--event-log", event_log]
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = dict(os.environ)
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
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
                         {"lease_break_time": lease_break_time, "policy": policy})
