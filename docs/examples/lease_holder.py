"""An agent program of one's own (docs/agents.md): take a write lease on a file, wait
for the lease break, report the siginfo, give the lease up.

Run by the ``kemu_spawn`` fixture (docs/testing.md) on either target; the same code
makes real system calls on the host and is answered by the kernel daemon on the
emulator.
"""

from __future__ import annotations

import fcntl
import os
import signal
import sys

from kemu.agent import connect

F_SETLEASE = getattr(fcntl, "F_SETLEASE", 1024)
F_SETSIG = getattr(fcntl, "F_SETSIG", 10)


def main() -> int:
    path = sys.argv[1]
    system = connect()
    system.signal(signal.SIGIO, "record")  # a real SIGIO handler that records siginfo
    fd = system.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    system.fcntl(fd, F_SETSIG, signal.SIGIO)  # a siginfo that names the descriptor
    system.fcntl(fd, F_SETLEASE, fcntl.F_WRLCK)
    print("leased", flush=True)
    info = system.sigwait(signal.SIGIO, timeout=30)  # the break
    if info is None:
        print("no lease break within 30 s", flush=True)
        return 1
    print(f"broken si_code={info['si_code']} si_fd={info['si_fd']} (ours: {fd})", flush=True)
    system.fcntl(fd, F_SETLEASE, fcntl.F_UNLCK)  # let the breaker in
    system.close(fd)
    return 0


if __name__ == "__main__":
    sys.exit(main())
