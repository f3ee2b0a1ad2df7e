"""A new agent's first call, as a module a zygote can run (``bench_spawn``'s zygote row).

``main([run_dir])``: register with the daemon (``Connection``), make one ``getpid``
call, write ``t_answered <CLOCK_MONOTONIC ns>`` on standard output.
"""

from __future__ import annotations

import sys
import time

from kemu.agents.lib.runtime import Connection


def main(argv: list[str]) -> int:
    """Register, call ``getpid``, print the time it was answered."""
    conn = Connection(argv[0], name="spawned")
    conn.call("getpid")
    t = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
    sys.stdout.write(f"t_answered {t}\n")
    sys.stdout.flush()
    conn.close()
    return 0
