#!/usr/bin/env python3
"""Lease-break latency: a breaker's ``open`` to the lease holder's signal handler.

One run measures, in interleaved blocks:

* ``emulator/no_log`` and ``emulator/event_log``: a holder process (``python -c``,
  ``EmuSystem(run_dir, "holder")``) records SIGIO with the C recorder
  (``system.signal(SIGIO, "record")``, i.e. ``kemu.agents.lib.sigrec.recorder().record(SIGIO)``
  plus telling the daemon), opens a file ``O_RDONLY``, sets ``F_SETSIG`` SIGIO and takes
  ``F_SETLEASE F_WRLCK``.  This process is the breaker: it reads
  ``CLOCK_MONOTONIC`` right before ``EmuSystem.open(path, O_RDONLY | O_NONBLOCK)``, which
  fails with ``EWOULDBLOCK`` once the daemon has started the break and signalled the
  holder.  Two daemons: one without an event log, one with (what the launcher runs).
* ``host``: the same on the host kernel, with plain ``fcntl`` on a file under the run
  directory in /tmp, and ``os.open`` as the breaker.
* ``bare``: the ZeroMQ baseline of bench_syscall.py (a pyzmq + msgpack DEALER -> ROUTER
  echo over ``ipc://`` to another process), timed per round trip in this process.

The holder's main loop blocks in ``select`` on the recorder's wake-up descriptor (and
its stdin, for commands).  The moment the C ``SA_SIGINFO`` handler has run is taken as
the holder's ``CLOCK_MONOTONIC`` as soon as ``select`` returns (**wake**): it therefore
includes the holder's wake-up from ``select`` (the handler itself runs on the way back
from the interrupted ``select``; the byte it writes makes ``select`` return).  Then the
holder gets the siginfo (**siginfo**): on the emulator ``system.sigwait([SIGIO], ...)``,
which takes the recorded signal, matches it with the siginfo the daemon pushed as an
event (reading it from the ZeroMQ socket) and acknowledges it (``sigdelivered``); on the
host ``recorder().wait([SIGIO], ...)``.  It checks ``si_code == POLL_MSG`` and
``si_fd``, releases the lease (``F_UNLCK``), re-arms ``F_SETSIG`` (``F_UNLCK`` clears it,
as ``lease_modify`` does), takes the lease again and only then writes both timestamps to
its stdout pipe; the breaker waits for that line before the next round.  No sleeps.

Target: emulator wake p50 / bare round trip p50 <= 1.5 (for each emulator daemon).
The emulator / host ratio is printed for information.
"""

from __future__ import annotations

import functools
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)

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
from bench_syscall import BareClient, start_bare_server  # noqa: E402  (the same baseline)

from kemu.agents.launcher.daemon_process import DaemonProcess, start_daemon  # noqa: E402
from kemu.agents.lib.api import EmuSystem  # noqa: E402
from kemu.agents.lib.runtime import Connection  # noqa: E402

TARGET = 1.5
BLOCKS = 12  # interleaved blocks
ROUNDS = 25  # timed breaks per lease target per block (300 in all)
BARE_PER_BLOCK = 100  # timed bare round trips per block
BLOCK_WARMUP = 2  # untimed breaks (bare: 10 round trips) at the start of each block
WARMUP = 20  # untimed breaks per target before the first block (bare: 300)
LEASE_BREAK_TIME = 45.0  # the holder releases explicitly; the deadline never matters
READ_TIMEOUT = 10.0  # seconds to wait for a holder's line before giving up

HOLDER = r"""
import os, select, signal, sys, time
target, run_dir, path = sys.argv[1:4]
from kemu.agents.lib.sigrec import recorder
clock, MONO = time.clock_gettime_ns, time.CLOCK_MONOTONIC
SIGIO = int(signal.SIGIO)
F_SETSIG, F_SETLEASE, F_WRLCK, F_UNLCK = 10, 1024, 1, 2
if target == "emulator":
    from kemu.agents.lib.api import EmuSystem
    system = EmuSystem(run_dir, "holder")
    system.signal(SIGIO, "record")  # the C recorder, and the daemon told
    rec = recorder()
    fd = system.open(path, os.O_RDONLY)
    fcntl = system.fcntl
    def siginfo():
        si = system.sigwait([SIGIO], 10.0)
        return (-1, -1) if si is None else (si["si_code"], si.get("si_fd", -1))
else:
    import fcntl as _f
    rec = recorder()
    rec.record(SIGIO)
    fd = os.open(path, os.O_RDONLY)
    fcntl = _f.fcntl
    def siginfo():
        info = rec.wait([SIGIO], 10.0)
        return (-1, -1) if info is None else (info.code, info.fd)
def take():
    fcntl(fd, F_SETSIG, SIGIO)
    fcntl(fd, F_SETLEASE, F_WRLCK)
take()
rfd, ifd = rec.fileno(), sys.stdin.fileno()
out = sys.stdout
out.write(f"ready {fd}\n"); out.flush()
while True:
    ready, _, _ = select.select([rfd, ifd], [], [])
    if rfd in ready:
        t_wake = clock(MONO)
        code, sifd = siginfo()
        t_sig = clock(MONO)
        fcntl(fd, F_SETLEASE, F_UNLCK)
        take()
        out.write(f"{t_wake} {t_sig} {code} {sifd}\n"); out.flush()
    elif ifd in ready:
        if os.read(ifd, 64) in (b"", b"quit\n"):
            break
"""

POLL_MSG = 3


class Holder:
    """A holder subprocess and a line reader on its stdout (with a timeout)."""

    def __init__(self, target: str, run_dir: str, path: str) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", HOLDER, target, run_dir, path],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     env=child_env(), bufsize=0)
        assert self.proc.stdout is not None
        self.fd = self.proc.stdout.fileno()
        self.buf = b""
        try:
            words = self.line().split()
            if words[0] != "ready":
                raise RuntimeError(f"{target} holder: {words}")
        except BaseException:
            self.proc.kill()
            self.proc.wait()
            raise
        self.lease_fd = int(words[1])

    def line(self) -> str:
        while b"\n" not in self.buf:
            r, _, _ = select.select([self.fd], [], [], READ_TIMEOUT)
            if not r:
                raise TimeoutError("holder did not answer")
            chunk = os.read(self.fd, 4096)
            if not chunk:
                raise RuntimeError(f"holder exited ({self.proc.wait()})")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return line.decode()

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                assert self.proc.stdin is not None
                self.proc.stdin.write(b"quit\n")
                self.proc.stdin.close()
                self.proc.wait(5)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()


def main() -> int:
    started = time.monotonic()
    load0 = loadavg()
    clock, mono, perf = time.clock_gettime_ns, time.CLOCK_MONOTONIC, time.perf_counter_ns
    daemons: list[DaemonProcess] = []
    conns: list[Connection] = []
    holders: list[Holder] = []
    bare_proc: subprocess.Popen[bytes] | None = None
    bare: BareClient | None = None
    targets = ["emulator/no_log", "emulator/event_log", "host"]
    kinds = ("wake", "siginfo", "open")
    samples: dict[str, dict[str, list[int]]] = {t: {k: [] for k in kinds} for t in targets}
    bare_samples: list[int] = []
    paired: dict[str, list[float]] = {t: [] for t in targets}
    bad_siginfo: dict[str, int] = {t: 0 for t in targets}
    with run_directory() as base:
        try:
            ep = f"ipc://{os.path.join(base, 'bare.ipc')}"
            bare_proc = start_bare_server(ep)
            bare = BareClient(ep)

            breakers: dict[str, Callable[[], object]] = {}
            holder_of: dict[str, Holder] = {}
            rd_flags = os.O_RDONLY | os.O_NONBLOCK
            for mode in ("no_log", "event_log"):
                rd = os.path.join(base, mode)
                os.makedirs(rd)
                log = os.path.join(rd, "events.jsonl") if mode == "event_log" else None
                daemons.append(start_daemon(rd, lease_break_time=LEASE_BREAK_TIME,
                                            event_log=log))
                conn = Connection(rd, name="breaker")
                conns.append(conn)
                system = EmuSystem(rd, conn=conn)
                system.close(system.open("/leased", os.O_CREAT | os.O_RDWR, 0o644))
                holder_of[f"emulator/{mode}"] = h = Holder("emulator", rd, "/leased")
                holders.append(h)
                breakers[f"emulator/{mode}"] = functools.partial(system.open, "/leased",
                                                                 rd_flags)
            host_path = os.path.join(base, "host-leased")
            os.close(os.open(host_path, os.O_CREAT | os.O_RDWR, 0o644))
            holder_of["host"] = h = Holder("host", base, host_path)
            holders.append(h)
            breakers["host"] = functools.partial(os.open, host_path, rd_flags)

            def one_break(name: str, keep: bool) -> int:
                """One round; returns the wake latency (ns)."""
                fn, h = breakers[name], holder_of[name]
                t0 = clock(mono)
                try:
                    fn()
                except BlockingIOError:
                    pass
                else:
                    raise RuntimeError(f"{name}: open of a leased file did not fail")
                t1 = clock(mono)
                w, s, code, sifd = (int(x) for x in h.line().split())
                if code != POLL_MSG or sifd != h.lease_fd:
                    bad_siginfo[name] += 1
                if keep:
                    samples[name]["wake"].append(w - t0)
                    samples[name]["siginfo"].append(s - t0)
                    samples[name]["open"].append(t1 - t0)
                return w - t0

            def bare_block(n: int, out: list[int] | None) -> list[int]:
                block: list[int] = []
                assert bare is not None
                echo = bare.fstat
                for _ in range(n):
                    t0 = perf()
                    echo()
                    block.append(perf() - t0)
                if out is not None:
                    out += block
                return block

            for name in targets:
                for _ in range(WARMUP):
                    one_break(name, False)
            bare_block(300, None)
            for b in range(BLOCKS):
                # rotate the order inside a block, so no target always runs first
                order = ["bare", *targets]
                order = order[b % len(order):] + order[: b % len(order)]
                block_p50: dict[str, float] = {}
                for name in order:
                    if name == "bare":
                        bare_block(10, None)
                        block_p50[name] = percentile(bare_block(BARE_PER_BLOCK, bare_samples), 50)
                        continue
                    for _ in range(BLOCK_WARMUP):
                        one_break(name, False)
                    block_p50[name] = percentile([one_break(name, True) for _ in range(ROUNDS)],
                                                 50)
                for name in targets:
                    paired[name].append(block_p50[name] / block_p50["bare"])
        finally:
            for h in holders:
                h.stop()
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

    bare_stats = summary(bare_samples)
    stats = {t: {k: summary(v) for k, v in samples[t].items()} for t in targets}
    host = stats["host"]
    ratios: dict[str, float] = {}
    info: dict[str, float] = {}
    rows = [["bare round trip", bare_stats["n"], bare_stats["p50_us"], bare_stats["p99_us"],
             bare_stats["min_us"], bare_stats["mean_us"], 1.0, "", "", ""]]
    for t in targets:
        for k in kinds:
            s = stats[t][k]
            xb = ratio(s["p50_us"], bare_stats["p50_us"])
            xh = ratio(s["p50_us"], host[k]["p50_us"]) if t != "host" else ""
            xh99 = ratio(s["p99_us"], host[k]["p99_us"]) if t != "host" else ""
            pr = round(percentile(paired[t], 50), 3) if k == "wake" else ""
            rows.append([f"{t} {k}", s["n"], s["p50_us"], s["p99_us"], s["min_us"], s["mean_us"],
                         xb, pr, xh, xh99])
            if t.startswith("emulator"):
                info[f"{t}/{k}/x_host_p50"] = xh  # type: ignore[assignment]
                info[f"{t}/{k}/x_host_p99"] = xh99  # type: ignore[assignment]
                info[f"{t}/{k}/x_bare_p50"] = xb
        if t.startswith("emulator"):
            ratios[f"{t}/wake/x_bare_p50"] = ratio(stats[t]["wake"]["p50_us"], bare_stats["p50_us"])
        info[f"{t}/wake/x_bare_p50_paired"] = round(percentile(paired[t], 50), 3)
    print("bench_lease_break: breaker's open -> lease holder's SIGIO handler (microseconds)")
    print(f"{BLOCKS} interleaved blocks x {ROUNDS} breaks per target (+{BARE_PER_BLOCK} bare "
          f"round trips), {WARMUP} warm-up breaks each; lease_break_time {LEASE_BREAK_TIME:g} s")
    print()
    print(table(["config", "n", "p50", "p99", "min", "mean", "x bare p50", "paired",
                 "x host p50", "x host p99"], rows))
    print("wake: breaker's CLOCK_MONOTONIC before open -> holder's select on the recorder's")
    print("      wake-up fd returned (the C SA_SIGINFO handler has run; includes the wake-up)")
    print("siginfo: -> the holder has the siginfo (emulator: EmuSystem.sigwait, which reads the")
    print("      daemon's siginfo event and acknowledges it; host: recorder().wait)")
    print("open: the breaker's own open call (EWOULDBLOCK)")
    print("paired: median over blocks of (block wake p50 / same block's bare p50)")
    if any(bad_siginfo.values()):
        print(f"unexpected siginfo (not POLL_MSG with the lease's fd): {bad_siginfo}")
    print()
    for t in targets[:2]:
        sub = {k: v for k, v in ratios.items() if k.startswith(t + "/")}
        print(f"{t:20s} {verdict(sub, TARGET)}")
    overall = verdict(ratios, TARGET)
    print(f"{'overall':20s} {overall}")
    print(f"elapsed {time.monotonic() - started:.1f} s")
    print(result_line({
        "bench": "lease_break", "unit": "us", "target": TARGET, "bare": bare_stats,
        "stats": stats, "ratios": ratios, "info": info, "bad_siginfo": bad_siginfo,
        "loadavg_start": load0, "loadavg_end": loadavg(),
        "target_met": overall.startswith("target met"),
    }))
    return 0


if __name__ == "__main__":
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    sys.exit(main())
