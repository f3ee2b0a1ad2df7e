#!/usr/bin/env python3
"""Time for a new agent process to get its first system call answered.

Two measurements, each against a baseline measured in the same run:

* **spawn**: from just before ``subprocess.Popen`` of a ``python -c`` program that
  imports ``kemu.agents.lib.runtime``, creates a ``Connection`` (registration over AF_UNIX,
  ZeroMQ context and DEALER) and makes a ``getpid`` call, until that call is answered
  (the child writes ``t_answered <ns>``).  Baseline: a bare ``python -c`` that does
  ``import zmq, msgpack`` and writes its first line (interpreter + import cost).
* **zygote**: what the launcher does for every actor now: from just before
  ``zygote.spawn`` of ``benchmarks/_first_call.py`` (a fork of the pre-imported zygote,
  descriptors, signals and environment made those of a fresh process, then the same
  ``Connection`` and ``getpid``) until that call is answered.  Baseline: the bare
  ``os.fork()`` of the fork row.  **Target: zygote/emulated ≤ 5 ms and ≤ 5× fork/bare
  at p50.**
* **fork**: from just before ``EmuSystem.fork()`` (``fork_prepare``, the real fork,
  the child's registration with the token, the parent's ``fork_done``) until the child's
  first call (``getpid``) is answered and the child writes the time to a pipe.
  Baseline: a bare ``os.fork()`` until the child writes the time to a pipe.

Times cross processes, so both sides read ``time.clock_gettime_ns(CLOCK_MONOTONIC)``.
Spawns and forks run one at a time (each child is reaped before the next), emulated and
bare alternating, after untimed warm-ups.  The daemon runs with an event log.

The spawn and fork rows have no target; they are informational.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)

from _common import (  # noqa: E402
    child_env,
    loadavg,
    ratio,
    result_line,
    run_directory,
    summary,
    table,
)

from kemu.agents.launcher import zygote  # noqa: E402
from kemu.agents.launcher.daemon_process import DaemonProcess, start_daemon  # noqa: E402
from kemu.agents.lib.api import EmuSystem  # noqa: E402

SPAWNS = 20  # timed spawns per kind
SPAWN_WARMUP = 3
FORKS = 200  # timed forks per kind
ZYGOTE_SPAWNS = 100  # timed zygote spawns
FORK_WARMUP = 5

MONO = time.CLOCK_MONOTONIC

EMU_CHILD = r"""
import sys, time
from kemu.agents.lib.runtime import Connection
conn = Connection(sys.argv[1], name="spawned")
conn.call("getpid")
t = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
sys.stdout.write(f"t_answered {t}\n")
sys.stdout.flush()
conn.close()
"""

BARE_CHILD = r"""
import zmq, msgpack, sys, time
t = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
sys.stdout.write(f"t_first {t}\n")
sys.stdout.flush()
"""


def spawn_once(code: str, args: list[str], env: dict[str, str]) -> int:
    """Spawn ``python -c code args``; nanoseconds until its timestamped first line."""
    t0 = time.clock_gettime_ns(MONO)
    proc = subprocess.Popen([sys.executable, "-c", code, *args], stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, env=env)
    out, _ = proc.communicate(timeout=30)
    if proc.returncode != 0:
        raise RuntimeError(f"child exited with {proc.returncode}: {out!r}")
    t1 = int(out.split()[1])
    return t1 - t0


def spawn_zygote(rd: str, env: dict[str, str]) -> int:
    """zygote.spawn of ``_first_call`` until its first call is answered."""
    r, w = os.pipe()
    null = os.open(os.devnull, os.O_RDWR)
    t0 = time.clock_gettime_ns(MONO)
    try:
        child = zygote.spawn("_first_call", [rd], env=env, stdio=(null, w, 2))
    finally:
        os.close(w)
        os.close(null)
    data = b""
    while chunk := os.read(r, 256):
        data += chunk
    os.close(r)
    if child.wait(30) != 0 or not data.startswith(b"t_answered"):
        raise RuntimeError(f"zygote child failed ({child.returncode}): {data!r}")
    return int(data.split()[1]) - t0


def fork_emulated(system: EmuSystem) -> int:
    """EmuSystem.fork() until the child's first call is answered."""
    r, w = os.pipe()
    t0 = time.clock_gettime_ns(MONO)
    pid = system.fork("child")
    if pid == 0:  # the child, re-registered with the daemon
        try:
            os.close(r)
            system.getpid()
            t1 = time.clock_gettime_ns(MONO)
            os.write(w, t1.to_bytes(8, "little"))
        finally:
            os._exit(0)  # never run the parent's cleanup (inherited ZeroMQ state)
    os.close(w)
    data = _read_exact(r, 8)
    os.close(r)
    _, status = os.waitpid(pid, 0)
    if status != 0 or len(data) != 8:
        raise RuntimeError(f"emulated fork child failed (status {status})")
    return int.from_bytes(data, "little") - t0


def fork_bare() -> int:
    """os.fork() until the child writes to a pipe."""
    r, w = os.pipe()
    t0 = time.clock_gettime_ns(MONO)
    pid = os.fork()
    if pid == 0:
        try:
            os.write(w, time.clock_gettime_ns(MONO).to_bytes(8, "little"))
        finally:
            os._exit(0)
    os.close(w)
    data = _read_exact(r, 8)
    os.close(r)
    _, status = os.waitpid(pid, 0)
    if status != 0 or len(data) != 8:
        raise RuntimeError(f"bare fork child failed (status {status})")
    return int.from_bytes(data, "little") - t0


def _read_exact(fd: int, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = os.read(fd, n - len(data))
        if not chunk:
            break
        data += chunk
    return data


def main() -> int:
    started = time.monotonic()
    load0 = loadavg()
    env = child_env()
    results: dict[str, list[int]] = {"spawn/emulated": [], "spawn/bare": [],
                                     "zygote/emulated": [], "zygote/bare": [],
                                     "fork/emulated": [], "fork/bare": []}
    zenv = dict(env, PYTHONPATH=HERE + os.pathsep + env["PYTHONPATH"])
    daemon: DaemonProcess | None = None
    system: EmuSystem | None = None
    with run_directory() as rd:
        try:
            daemon = start_daemon(rd, event_log=os.path.join(rd, "events.jsonl"))
            # -- spawn ---------------------------------------------------------------
            for i in range(SPAWN_WARMUP + SPAWNS):
                emu = spawn_once(EMU_CHILD, [rd], env)
                bare = spawn_once(BARE_CHILD, [], env)
                if i >= SPAWN_WARMUP:
                    results["spawn/emulated"].append(emu)
                    results["spawn/bare"].append(bare)
            # -- zygote (the baseline is a bare fork of this process) -----------------
            for i in range(FORK_WARMUP + ZYGOTE_SPAWNS):
                emu = spawn_zygote(rd, zenv)
                bare = fork_bare()
                if i >= FORK_WARMUP:
                    results["zygote/emulated"].append(emu)
                    results["zygote/bare"].append(bare)
            # -- fork ----------------------------------------------------------------
            system = EmuSystem(rd, name="forker")
            for i in range(FORK_WARMUP + FORKS):
                emu = fork_emulated(system)
                bare = fork_bare()
                if i >= FORK_WARMUP:
                    results["fork/emulated"].append(emu)
                    results["fork/bare"].append(bare)
        finally:
            if system is not None:
                system.conn.close()
            if daemon is not None:
                daemon.stop()

    stats = {k: summary(v) for k, v in results.items()}
    ratios = {}
    rows = []
    for kind in ("spawn", "zygote", "fork"):
        e, b = stats[f"{kind}/emulated"], stats[f"{kind}/bare"]
        ratios[f"{kind}/p50"] = ratio(e["p50_us"], b["p50_us"])
        ratios[f"{kind}/p99"] = ratio(e["p99_us"], b["p99_us"])
        for name, s in ((f"{kind}/bare", b), (f"{kind}/emulated", e)):
            emulated = name.endswith("emulated")
            rows.append([name, s["n"], round(s["p50_us"] / 1e3, 3), round(s["p99_us"] / 1e3, 3),
                         round(s["min_us"] / 1e3, 3),
                         round((s["p50_us"] - b["p50_us"]) / 1e3, 3) if emulated else 0.0,
                         ratios[f"{kind}/p50"] if emulated else 1.0,
                         ratios[f"{kind}/p99"] if emulated else 1.0])
    print("bench_spawn: time to first answered call of a new process (milliseconds)")
    print("spawn/bare = python -c 'import zmq, msgpack' to first line; "
          "spawn/emulated = import agents.lib.runtime + Connection + getpid answered")
    print("zygote/bare = os.fork() to child's pipe write; "
          "zygote/emulated = zygote.spawn + Connection + getpid answered")
    print("fork/bare = os.fork() to child's pipe write; "
          "fork/emulated = EmuSystem.fork() to child's getpid answered")
    print()
    print(table(["config", "n", "p50", "p99", "min", "p50-bare", "x p50", "x p99"], rows))
    print()
    z = stats["zygote/emulated"]["p50_us"]
    met = z <= 5000 and ratios["zygote/p50"] <= 5.0
    print(f"target (zygote/emulated p50 <= 5 ms and <= 5x fork/bare): "
          f"{'target met' if met else 'target missed'} ({z / 1e3:.2f} ms, "
          f"{ratios['zygote/p50']}x)")
    print(f"elapsed {time.monotonic() - started:.1f} s")
    zygote.shutdown()
    print(result_line({"bench": "spawn", "unit": "us", "target": "zygote <= 5 ms, <= 5x fork",
                       "met": met, "stats": stats,
                       "ratios": ratios, "loadavg_start": load0,
                       "loadavg_end": loadavg()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
