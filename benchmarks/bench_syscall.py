#!/usr/bin/env python3
"""Cost of one emulated no-op-class system call against a bare ZeroMQ round trip.

Measured, per call, in this process:

* ``bare``: a pyzmq + msgpack DEALER -> ROUTER request/reply over ``ipc://`` to a
  separate Python process (started here with ``subprocess``) whose loop unpacks the
  msgpack request and packs a small reply map.  This is the floor any design built on
  ZeroMQ + msgpack between two Python processes pays.
* ``call``: ``Connection.call("fstat", fd)`` on an open descriptor, to a kernel daemon
  started with ``start_daemon`` (HMAC seal/verify, header checks, argument binding,
  dispatch, the stat map, the reply).
* ``api``: ``EmuSystem.fstat(fd)`` (the above plus building an ``os.stat_result``).

Each of ``call`` and ``api`` runs against two daemons: one without an event log and one
with ``event_log=<path>`` (the launcher always enables it).  All five configurations are
measured in interleaved blocks, so a drift of the machine hits them alike.

Target: emulated / bare <= 1.3 at p50 and at p99.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)

import msgpack  # noqa: E402
import zmq  # noqa: E402
from _common import (  # noqa: E402
    child_env,
    loadavg,
    percentile,
    ratio,
    result_line,
    run_directory,
    summary,
    table,
    verdict,
)

from kemu.agents.launcher.daemon_process import DaemonProcess, start_daemon  # noqa: E402
from kemu.agents.lib.api import EmuSystem  # noqa: E402
from kemu.agents.lib.runtime import Connection  # noqa: E402

TARGET = 1.3
ROUNDS = 20  # interleaved rounds
BLOCK = 400  # timed calls per configuration per round
BLOCK_WARMUP = 20  # untimed calls at the start of each block
WARMUP = 500  # untimed calls per configuration before the first round

BARE_SERVER = r"""
import sys, zmq, msgpack
ctx = zmq.Context()
s = ctx.socket(zmq.ROUTER)
s.setsockopt(zmq.LINGER, 0)
s.bind(sys.argv[1])
sys.stdout.write("ready\n"); sys.stdout.flush()
while True:
    route, frame = s.recv_multipart()
    req = msgpack.unpackb(frame, raw=False)
    if req.get("call") == "exit":
        break
    s.send_multipart([route, msgpack.packb({"id": req["id"], "ok": 0}, use_bin_type=True)])
s.close(0)
ctx.term()
"""


class BareClient:
    """The DEALER side of the baseline round trip."""

    def __init__(self, endpoint: str) -> None:
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 500)
        self.sock.connect(endpoint)
        self.i = 0

    def fstat(self) -> None:
        self.i += 1
        self.sock.send(msgpack.packb({"id": self.i, "call": "fstat", "args": [3]},
                                     use_bin_type=True))
        reply = msgpack.unpackb(self.sock.recv(), raw=False)
        assert reply["id"] == self.i

    def close(self) -> None:
        self.sock.send(msgpack.packb({"id": 0, "call": "exit", "args": []}, use_bin_type=True))
        self.sock.close()
        self.ctx.term()


def start_bare_server(endpoint: str) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen([sys.executable, "-c", BARE_SERVER, endpoint],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, env=child_env())
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if line.strip() != b"ready":
        proc.kill()
        proc.wait()
        raise RuntimeError("bare ROUTER server did not start")
    return proc


def proc_cpu_ns(pid: int) -> int:
    """CPU time of every thread of ``pid`` so far (``/proc/<pid>/task/*/schedstat``), ns."""
    total = 0
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return 0
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as fh:
                total += int(fh.read().split()[0])
        except (OSError, ValueError, IndexError):
            pass  # a thread that just ended
    return total


def timed(fn, n: int, out: list[int]) -> None:  # type: ignore[no-untyped-def]
    clock = time.perf_counter_ns
    for _ in range(n):
        t0 = clock()
        fn()
        out.append(clock() - t0)


def main() -> int:
    started = time.monotonic()
    load0 = loadavg()
    daemons: list[DaemonProcess] = []
    conns: list[Connection] = []
    bare_proc: subprocess.Popen[bytes] | None = None
    bare: BareClient | None = None
    with run_directory() as base:
        try:
            # -- the baseline server -----------------------------------------------
            bare_proc = start_bare_server(f"ipc://{os.path.join(base, 'bare.ipc')}")
            bare = BareClient(f"ipc://{os.path.join(base, 'bare.ipc')}")

            # -- two daemons: no event log, event log ---------------------------------
            configs: dict[str, object] = {"bare": bare.fstat}
            server_pid: dict[str, int] = {"bare": bare_proc.pid}
            for mode in ("no_log", "event_log"):
                rd = os.path.join(base, mode)
                log = os.path.join(rd, "events.jsonl") if mode == "event_log" else None
                os.makedirs(rd)
                daemons.append(start_daemon(rd, event_log=log))
                conn = Connection(rd, name=f"bench-{mode}")
                conns.append(conn)
                fd = conn.call("open", "/bench", os.O_CREAT | os.O_RDWR, 0o644)
                system = EmuSystem(rd, conn=conn)
                configs[f"call/{mode}"] = lambda c=conn, fd=fd: c.call("fstat", fd)
                configs[f"api/{mode}"] = lambda s=system, fd=fd: s.fstat(fd)
                server_pid[f"call/{mode}"] = server_pid[f"api/{mode}"] = daemons[-1].pid

            samples: dict[str, list[int]] = {name: [] for name in configs}
            #: per round, each configuration's block p50 (p99) over the bare block's
            paired: dict[str, list[float]] = {name: [] for name in configs}
            paired99: dict[str, list[float]] = {name: [] for name in configs}
            #: CPU nanoseconds spent during the timed blocks: this process, the server
            cpu = {name: [0, 0] for name in configs}
            scratch: list[int] = []
            for fn in configs.values():
                timed(fn, WARMUP, scratch)
            for _ in range(ROUNDS):
                block_p50: dict[str, float] = {}
                block_p99: dict[str, float] = {}
                for name, fn in configs.items():
                    timed(fn, BLOCK_WARMUP, scratch)
                    block: list[int] = []
                    c0, s0 = time.process_time_ns(), proc_cpu_ns(server_pid[name])
                    timed(fn, BLOCK, block)
                    cpu[name][0] += time.process_time_ns() - c0
                    cpu[name][1] += proc_cpu_ns(server_pid[name]) - s0
                    samples[name] += block
                    block_p50[name] = percentile(block, 50)
                    block_p99[name] = percentile(block, 99)
                    scratch.clear()
                for name in configs:
                    paired[name].append(block_p50[name] / block_p50["bare"])
                    paired99[name].append(block_p99[name] / block_p99["bare"])
        finally:
            for conn in conns:
                conn.close()
            if bare is not None:
                bare.close()
            if bare_proc is not None:
                try:
                    bare_proc.wait(5)
                except subprocess.TimeoutExpired:
                    bare_proc.kill()
                    bare_proc.wait()
            for d in daemons:
                d.stop()

    stats = {name: summary(s) for name, s in samples.items()}
    b = stats["bare"]
    ratios: dict[str, float] = {}
    paired_ratios: dict[str, float] = {}
    cpu_us: dict[str, dict[str, float]] = {}
    rows = []
    for name, s in stats.items():
        r50, r99 = ratio(s["p50_us"], b["p50_us"]), ratio(s["p99_us"], b["p99_us"])
        if name != "bare":
            ratios[f"{name}/p50"] = r50
            ratios[f"{name}/p99"] = r99
        rp = round(percentile(paired[name], 50), 3)
        rp99 = round(percentile(paired99[name], 50), 3)
        n = max(1, s["n"])
        cpu_us[name] = {"client": round(cpu[name][0] / n / 1e3, 1),
                        "server": round(cpu[name][1] / n / 1e3, 1)}
        if name != "bare":
            paired_ratios[f"{name}/p50"] = rp
            paired_ratios[f"{name}/p99"] = rp99
        rows.append([name, s["n"], s["p50_us"], s["p99_us"], s["min_us"], s["mean_us"],
                     round(s["p50_us"] - b["p50_us"], 1), r50, r99, rp, rp99,
                     cpu_us[name]["client"], cpu_us[name]["server"]])
    print("bench_syscall: fstat on an open fd, per-call latency (microseconds)")
    print(f"{ROUNDS} interleaved rounds x {BLOCK} calls per configuration, "
          f"{WARMUP} warm-up calls each; bare = pyzmq+msgpack DEALER/ROUTER over ipc://")
    print()
    print(table(["config", "n", "p50", "p99", "min", "mean", "p50-bare", "x p50", "x p99",
                 "p50 paired", "p99 paired", "cpu cli", "cpu srv"], rows))
    print("x p50 / x p99: pooled percentile over pooled bare percentile (the figures judged);")
    print("p50/p99 paired: median over rounds of (block percentile / same round's bare")
    print("              block percentile), less sensitive to bursts and drift between rounds")
    print("cpu cli / cpu srv: CPU microseconds per call, all threads of this process / of the")
    print("              server process (bare echo server or daemon); independent of wake-up latency")
    print()
    for group in ("call/no_log", "api/no_log", "call/event_log", "api/event_log"):
        sub = {k: v for k, v in ratios.items() if k.startswith(group + "/")}
        print(f"{group:15s} {verdict(sub, TARGET)}")
    overall = verdict(ratios, TARGET)
    print(f"{'overall':15s} {overall}")
    print(f"elapsed {time.monotonic() - started:.1f} s")
    print(result_line({
        "bench": "syscall", "unit": "us", "target": TARGET, "stats": stats, "ratios": ratios,
        "paired_ratios": paired_ratios, "cpu_us_per_call": cpu_us, "loadavg_start": load0, "loadavg_end": loadavg(),
        "target_met": overall.startswith("target met"),
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
