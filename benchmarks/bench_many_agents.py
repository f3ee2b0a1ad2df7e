#!/usr/bin/env python3
"""Does an agent's call get slower when 200 other agents are registered and idle?

Phases, all in one run:

1. **lone**: a fresh daemon; this process is its only agent and calls ``fstat`` on an
   open descriptor in a loop.  This is the baseline.
2. **idle agents**: a second fresh daemon; 200 real agent processes register with it
   (each: ``Connection(run_dir, name=f"idle{i}")``, one ``getpid`` call, ``ready`` on
   stdout, then blocks reading stdin until EOF).  They are started in batches so a
   2-core machine copes, and each one's ``ready`` line is awaited.
3. **loaded**: this process registers as agent 201 with the second daemon and calls
   ``fstat`` in a loop.  As a control, blocks on the first daemon (still with a single
   agent) are interleaved with it: that separates a cost of the daemon's size (201 tasks,
   201 pidfds in its epoll set, 201 ZeroMQ peers) from the cost of merely having 200 more
   processes on the machine.

4. **lone, again**: the idle agents' stdin is closed and every one of them is reaped;
   then this process, again the only agent of the first daemon, repeats phase 1.

The baseline ("lone") pools phases 1 and 4, which bracket phase 3 in time, so a drift of
the machine during the run (this benchmark's VM shows bursts of multi-millisecond stalls)
biases it less than phase 1 alone would; both halves are reported as well.

Target: loaded / lone <= 1.5 at p50 and at p99.
"""

from __future__ import annotations

import contextlib
import os
import selectors
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
    verdict,
)

from kemu.agents.launcher.daemon_process import DaemonProcess, start_daemon  # noqa: E402
from kemu.agents.lib.runtime import Connection  # noqa: E402

TARGET = 1.5
AGENTS = 200
BATCH = 20  # idle agents started at once
READY_TIMEOUT = 60.0  # seconds for one batch to report ready
WARMUP = 500
SAMPLES = 6000  # per measured configuration (lone: half before, half after)
BLOCK = 500  # interleaving block in phase 3
BLOCK_WARMUP = 20  # untimed calls at the start of each block

IDLE_AGENT = r"""
import sys
from kemu.agents.lib.runtime import Connection
conn = Connection(sys.argv[1], name=sys.argv[2])
conn.call("getpid")
sys.stdout.write("ready\n")
sys.stdout.flush()
sys.stdin.read()
conn.close()
"""


def timed_fstat(conn: Connection, fd: int, n: int, out: list[int]) -> None:
    clock = time.perf_counter_ns
    call = conn.call
    for _ in range(n):
        t0 = clock()
        call("fstat", fd)
        out.append(clock() - t0)


def open_bench_file(conn: Connection) -> int:
    return int(conn.call("open", "/bench", os.O_CREAT | os.O_RDWR, 0o644))


def spawn_idle(run_dir: str, first: int, count: int,
               procs: list[subprocess.Popen[bytes]]) -> None:
    """Start ``count`` idle agents and wait for each one's ``ready`` line."""
    env = child_env()
    batch = []
    for i in range(first, first + count):
        p = subprocess.Popen([sys.executable, "-c", IDLE_AGENT, run_dir, f"idle{i}"],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
        procs.append(p)
        batch.append(p)
    sel = selectors.DefaultSelector()
    for p in batch:
        assert p.stdout is not None
        sel.register(p.stdout, selectors.EVENT_READ, p)
    deadline = time.monotonic() + READY_TIMEOUT
    pending = len(batch)
    try:
        while pending:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"{pending} idle agents not ready after {READY_TIMEOUT} s")
            for key, _ in sel.select(left):
                line = key.fileobj.readline()  # type: ignore[union-attr]
                sel.unregister(key.fileobj)
                pending -= 1
                if line.strip() != b"ready":
                    raise RuntimeError(f"idle agent {key.data.pid} failed: {line!r}")
    finally:
        sel.close()


def reap(procs: list[subprocess.Popen[bytes]]) -> int:
    """Close every idle agent's stdin (EOF: it exits) and wait for it; returns the count."""
    for p in procs:
        if p.stdin is not None and not p.stdin.closed:
            with contextlib.suppress(BrokenPipeError):
                p.stdin.close()
    reaped = 0
    for p in procs:
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
        if p.stdout is not None:
            p.stdout.close()
        reaped += 1
    return reaped


def fd_count(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return -1


def main() -> int:
    started = time.monotonic()
    load0 = loadavg()
    daemons: list[DaemonProcess] = []
    conns: list[Connection] = []
    procs: list[subprocess.Popen[bytes]] = []
    lone_before: list[int] = []
    lone_after: list[int] = []
    loaded: list[int] = []
    control: list[int] = []
    scratch: list[int] = []
    timings: dict[str, float] = {}
    with run_directory() as base:
        try:
            lone_dir, busy_dir = os.path.join(base, "lone"), os.path.join(base, "busy")
            # -- phase 1: a lone agent on a fresh daemon --------------------------------
            daemons.append(start_daemon(lone_dir, event_log=os.path.join(lone_dir, "ev.jsonl")))
            lone_conn = Connection(lone_dir, name="bench-lone")
            conns.append(lone_conn)
            lone_fd = open_bench_file(lone_conn)
            timed_fstat(lone_conn, lone_fd, WARMUP, scratch)
            timed_fstat(lone_conn, lone_fd, SAMPLES // 2, lone_before)

            # -- phase 2: 200 idle agents on a second fresh daemon ---------------------
            busy = start_daemon(busy_dir, event_log=os.path.join(busy_dir, "ev.jsonl"))
            daemons.append(busy)
            t0 = time.monotonic()
            for first in range(0, AGENTS, BATCH):
                spawn_idle(busy_dir, first, min(BATCH, AGENTS - first), procs)
            timings["spawn_idle_s"] = round(time.monotonic() - t0, 2)
            timings["busy_daemon_fds"] = fd_count(busy.pid)

            # -- phase 3: agent 201 on the busy daemon, control on the lone one --------
            busy_conn = Connection(busy_dir, name="bench-loaded")
            conns.append(busy_conn)
            busy_fd = open_bench_file(busy_conn)
            timed_fstat(busy_conn, busy_fd, WARMUP, scratch)
            timed_fstat(lone_conn, lone_fd, WARMUP, scratch)
            for _ in range(SAMPLES // BLOCK):
                timed_fstat(busy_conn, busy_fd, BLOCK_WARMUP, scratch)
                timed_fstat(busy_conn, busy_fd, BLOCK, loaded)
                timed_fstat(lone_conn, lone_fd, BLOCK_WARMUP, scratch)
                timed_fstat(lone_conn, lone_fd, BLOCK, control)
                scratch.clear()

            # -- phase 4: idle agents gone, the lone agent again -----------------------
            t0 = time.monotonic()
            timings["reaped"] = reap(procs)
            timings["reap_s"] = round(time.monotonic() - t0, 2)
            timed_fstat(lone_conn, lone_fd, WARMUP, scratch)
            timed_fstat(lone_conn, lone_fd, SAMPLES - SAMPLES // 2, lone_after)
        finally:
            if "reaped" not in timings:
                timings["reaped"] = reap(procs)
            for conn in conns:
                conn.close()
            for d in daemons:
                d.stop()

    s_lone, s_loaded, s_control = (summary(lone_before + lone_after), summary(loaded),
                                   summary(control))
    s_before, s_after = summary(lone_before), summary(lone_after)
    ratios = {"p50": ratio(s_loaded["p50_us"], s_lone["p50_us"]),
              "p99": ratio(s_loaded["p99_us"], s_lone["p99_us"])}
    control_ratios = {"p50": ratio(s_loaded["p50_us"], s_control["p50_us"]),
                      "p99": ratio(s_loaded["p99_us"], s_control["p99_us"])}
    print(f"bench_many_agents: fstat latency with {AGENTS} idle registered agents "
          "(microseconds; daemons run with an event log)")
    print(f"idle agents started in batches of {BATCH} in {timings['spawn_idle_s']} s; "
          f"busy daemon held {timings['busy_daemon_fds']} descriptors")
    print()
    rows = [
        ["lone = before + after (baseline)", s_lone["n"], s_lone["p50_us"], s_lone["p99_us"],
         s_lone["min_us"], s_lone["mean_us"], 1.0, 1.0],
        ["  lone before (fresh daemon, 1 agent)", s_before["n"], s_before["p50_us"],
         s_before["p99_us"], s_before["min_us"], s_before["mean_us"],
         ratio(s_before["p50_us"], s_lone["p50_us"]), ratio(s_before["p99_us"], s_lone["p99_us"])],
        ["  lone after (idle agents reaped)", s_after["n"], s_after["p50_us"],
         s_after["p99_us"], s_after["min_us"], s_after["mean_us"],
         ratio(s_after["p50_us"], s_lone["p50_us"]), ratio(s_after["p99_us"], s_lone["p99_us"])],
        [f"loaded ({AGENTS + 1} agents)", s_loaded["n"], s_loaded["p50_us"], s_loaded["p99_us"],
         s_loaded["min_us"], s_loaded["mean_us"], ratios["p50"], ratios["p99"]],
        ["control (1-agent daemon, interleaved)", s_control["n"], s_control["p50_us"],
         s_control["p99_us"], s_control["min_us"], s_control["mean_us"],
         ratio(s_control["p50_us"], s_lone["p50_us"]),
         ratio(s_control["p99_us"], s_lone["p99_us"])],
    ]
    print(table(["config", "n", "p50", "p99", "min", "mean", "x p50", "x p99"], rows))
    print()
    print(f"loaded / lone before only: p50 x{ratio(s_loaded['p50_us'], s_before['p50_us'])}, "
          f"p99 x{ratio(s_loaded['p99_us'], s_before['p99_us'])}")
    print(f"loaded / control (same moment, daemon size only): p50 x{control_ratios['p50']}, "
          f"p99 x{control_ratios['p99']}")
    outcome = verdict(ratios, TARGET)
    print(f"loaded / lone: {outcome}")
    print(f"reaped {timings['reaped']} idle agents in {timings['reap_s']} s; "
          f"elapsed {time.monotonic() - started:.1f} s")
    print(result_line({
        "bench": "many_agents", "unit": "us", "agents": AGENTS, "target": TARGET,
        "stats": {"lone": s_lone, "lone_before": s_before, "lone_after": s_after,
                  "loaded": s_loaded, "control": s_control},
        "ratios": ratios, "control_ratios": control_ratios, "timings": timings,
        "target_met": outcome.startswith("target met"), "loadavg_start": load0,
        "loadavg_end": loadavg(),
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
