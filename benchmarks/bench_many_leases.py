#!/usr/bin/env python3
"""A lease break with 10,000 leases held, against the same with one lease held.

1. Two fresh daemons (both with an event log, as the launcher runs them, and a
   ``lease_break_time`` of 45 s: holders release explicitly).  This process is the
   breaker on both (one ``Connection`` each) and creates ``/unleased`` on each.
2. **loaded**: 100 holder processes (``python -c``, each an ``EmuSystem``) register
   with the first daemon, in batches of 20, record SIGIO with the C recorder
   (``system.signal(SIGIO, "record")``) and say so.  Then all are told ``go`` at once;
   each makes a directory ``/h<j>`` and, for 100 files, ``open(O_RDONLY | O_CREAT)``,
   ``F_SETSIG`` SIGIO and ``F_SETLEASE F_RDLCK``: 10,000 read leases.  The setup time is
   from ``go`` to the last holder's last ``F_SETLEASE`` (CLOCK_MONOTONIC in both).
3. **single**: one holder of the same program takes one lease on the second daemon.
4. Timed: 300 rounds, each running every configuration below once, in a new random
   order (after 20 warm-up samples each):

   * ``break``: the breaker reads CLOCK_MONOTONIC, then ``open(path, O_RDWR |
     O_NONBLOCK)``, which fails with ``EWOULDBLOCK`` once the break has started and the
     holder has been signalled.  The holder, blocked in ``select`` on the recorder's
     wake-up descriptor, takes CLOCK_MONOTONIC as soon as it wakes (**wake**: includes
     that wake-up), then ``sigwait([SIGIO])`` for the siginfo the daemon sent
     (**siginfo**), releases the lease named by ``si_fd``, re-arms ``F_SETSIG`` and takes
     the lease again, and only then reports both times on its stdout.  **open** is the
     breaker's own call.  On the loaded daemon each round picks a random holder and one
     of its files.
   * ``break, one holder``: loaded daemon, but always the same holder and file (hot in
     cache, as the single case is): tells the daemon's size apart from the cost of
     waking a holder process that has slept for a long time.
   * ``open unleased``: ``open("/unleased", O_RDWR | O_NONBLOCK)`` (then an untimed
     ``close``).

5. The daemons' RSS (psutil): fresh, with 100 holders registered, with the leases, after
   the rounds.  Then one timed ``proc_locks`` call (``EmuSystem.locks()``) checks that
   10,000 leases are listed (last, because it is slow and leaves the memory of a large
   reply behind), and the RSS once more.
6. The holders' stdin is closed; all are reaped.

Target: loaded / single <= 1.2 at p50, for the break (wake), the breaker's open and the
unleased open.  The same ratios for ``break, one holder`` are printed as a second
verdict (the daemon's size only), not judged.
"""

from __future__ import annotations

import contextlib
import os
import random
import select
import signal
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)

import psutil  # noqa: E402
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

TARGET = 1.2
HOLDERS = 100
FILES = 100  # leases per holder
BATCH = 20  # holders started at once
ROUNDS = 300  # timed samples per configuration, interleaved one by one
WARMUP = 20
LEASE_BREAK_TIME = 45.0
READ_TIMEOUT = 60.0  # a holder's line (setup of 100 leases under load included)
FIRST_FD = 3  # a spawned agent has 0-2 (the console); its leases take 3, 4, ...

HOLDER = r"""
import os, select, signal, sys, time
run_dir, name, nfiles = sys.argv[1], sys.argv[2], int(sys.argv[3])
from kemu.agents.lib.api import EmuSystem
from kemu.agents.lib.sigrec import recorder
clock, MONO = time.clock_gettime_ns, time.CLOCK_MONOTONIC
SIGIO = int(signal.SIGIO)
F_SETSIG, F_SETLEASE, F_RDLCK, F_UNLCK = 10, 1024, 0, 2
system = EmuSystem(run_dir, name)
system.signal(SIGIO, "record")  # the C recorder, and the daemon told
rec = recorder()
rfd, ifd, out = rec.fileno(), sys.stdin.fileno(), sys.stdout
out.write("registered\n"); out.flush()
if os.read(ifd, 64) != b"go\n":
    sys.exit(1)
t0 = clock(MONO)
system.mkdir("/" + name, 0o755)
for i in range(nfiles):
    fd = system.open(f"/{name}/f{i}", os.O_RDONLY | os.O_CREAT, 0o644)
    system.fcntl(fd, F_SETSIG, SIGIO)
    system.fcntl(fd, F_SETLEASE, F_RDLCK)
t1 = clock(MONO)
out.write(f"ready {t0} {t1}\n"); out.flush()
while True:
    ready, _, _ = select.select([rfd, ifd], [], [])
    if rfd in ready:
        t_wake = clock(MONO)
        si = system.sigwait([SIGIO], 10.0)
        t_sig = clock(MONO)
        code, fd = (-1, -1) if si is None else (si["si_code"], si.get("si_fd", -1))
        if fd >= 0:
            system.fcntl(fd, F_SETLEASE, F_UNLCK)
            system.fcntl(fd, F_SETSIG, SIGIO)
            system.fcntl(fd, F_SETLEASE, F_RDLCK)
        out.write(f"{t_wake} {t_sig} {code} {fd}\n"); out.flush()
    elif ifd in ready:
        if os.read(ifd, 64) in (b"", b"quit\n"):
            break
"""

POLL_MSG = 3


class Holder:
    """A holder subprocess and a line reader on its stdout (with a timeout)."""

    def __init__(self, run_dir: str, name: str, nfiles: int) -> None:
        self.name = name
        self.proc = subprocess.Popen([sys.executable, "-c", HOLDER, run_dir, name, str(nfiles)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     env=child_env(), bufsize=0)
        assert self.proc.stdout is not None and self.proc.stdin is not None
        self.fd = self.proc.stdout.fileno()
        self.stdin = self.proc.stdin
        self.buf = b""

    def line(self) -> str:
        while b"\n" not in self.buf:
            r, _, _ = select.select([self.fd], [], [], READ_TIMEOUT)
            if not r:
                raise TimeoutError(f"holder {self.name} did not answer")
            chunk = os.read(self.fd, 4096)
            if not chunk:
                raise RuntimeError(f"holder {self.name} exited ({self.proc.wait()})")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return line.decode()

    def expect(self, word: str) -> list[str]:
        words = self.line().split()
        if not words or words[0] != word:
            raise RuntimeError(f"holder {self.name}: expected {word!r}, got {words}")
        return words[1:]

    def send(self, data: bytes) -> None:
        self.stdin.write(data)

    def close_stdin(self) -> None:
        with contextlib.suppress(OSError):
            self.stdin.close()

    def reap(self, timeout: float) -> None:
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def rss_mib(pid: int) -> float:
    return round(float(psutil.Process(pid).memory_info().rss) / 2**20, 1)


def main() -> int:
    started = time.monotonic()
    load0 = loadavg()
    clock, mono, perf = time.clock_gettime_ns, time.CLOCK_MONOTONIC, time.perf_counter_ns
    daemons: list[DaemonProcess] = []
    conns: list[Connection] = []
    holders: list[Holder] = []
    figures: dict[str, float] = {}
    rss: dict[str, float] = {}
    configs = ["break/loaded", "break/single", "break/loaded, one holder",
               "open unleased/loaded", "open unleased/single"]
    kinds = {c: (("wake", "siginfo", "open") if c.startswith("break") else ("open",))
             for c in configs}
    samples: dict[str, dict[str, list[int]]] = {c: {k: [] for k in kinds[c]} for c in configs}
    bad_siginfo = 0
    reap_s = float("nan")
    with run_directory() as base:
        try:
            systems: dict[str, EmuSystem] = {}
            for which in ("loaded", "single"):
                rd = os.path.join(base, which)
                os.makedirs(rd)
                daemons.append(start_daemon(rd, lease_break_time=LEASE_BREAK_TIME,
                                            event_log=os.path.join(rd, "events.jsonl")))
                conn = Connection(rd, name="breaker")
                conns.append(conn)
                systems[which] = s = EmuSystem(rd, conn=conn)
                s.close(s.open("/unleased", os.O_CREAT | os.O_RDWR, 0o644))
                rss[f"{which}/fresh"] = rss_mib(daemons[-1].pid)
            d_loaded, d_single = daemons
            rd_loaded, rd_single = d_loaded.run_dir, d_single.run_dir

            # -- 100 holders register (batches), then take 10,000 leases at once -----------
            t0 = time.monotonic()
            loaded: list[Holder] = []
            for first in range(0, HOLDERS, BATCH):
                batch = [Holder(rd_loaded, f"h{j}", FILES)
                         for j in range(first, min(HOLDERS, first + BATCH))]
                loaded += batch
                holders += batch
                for h in batch:
                    h.expect("registered")
            figures["spawn_s"] = round(time.monotonic() - t0, 2)
            rss["loaded/registered"] = rss_mib(d_loaded.pid)
            t_go = clock(mono)
            for h in loaded:
                h.send(b"go\n")
            done = [tuple(int(x) for x in h.expect("ready")) for h in loaded]
            figures["setup_s"] = round((max(t1 for _, t1 in done) - t_go) / 1e9, 2)
            per_holder = [t1 - t0 for t0, t1 in done]
            figures["setup_per_holder_p50_s"] = round(percentile(per_holder, 50) / 1e9, 2)
            figures["setup_per_holder_max_s"] = round(max(per_holder) / 1e9, 2)
            figures["setup_calls_per_s"] = round(HOLDERS * FILES * 3 / figures["setup_s"])
            rss["loaded/leases"] = rss_mib(d_loaded.pid)

            single = Holder(rd_single, "h0", 1)
            holders.append(single)
            single.expect("registered")
            single.send(b"go\n")
            single.expect("ready")
            rss["single/lease"] = rss_mib(d_single.pid)

            rnd = random.Random(1)
            flags = os.O_RDWR | os.O_NONBLOCK

            def pick(config: str) -> tuple[EmuSystem, Holder, str, int]:
                if config == "break/single":
                    return systems["single"], single, "/h0/f0", 0
                if config == "break/loaded, one holder":
                    return systems["loaded"], loaded[0], "/h0/f0", 0
                j, i = rnd.randrange(HOLDERS), rnd.randrange(FILES)
                return systems["loaded"], loaded[j], f"/h{j}/f{i}", i

            def one(config: str, keep: bool) -> None:
                nonlocal bad_siginfo
                out = samples[config]
                if config.startswith("open"):
                    s = systems[config.rsplit("/", 1)[1]]
                    t0 = perf()
                    fd = s.open("/unleased", flags)
                    t1 = perf()
                    s.close(fd)
                    if keep:
                        out["open"].append(t1 - t0)
                    return
                s, h, path, i = pick(config)
                t0 = clock(mono)
                try:
                    s.open(path, flags)
                except BlockingIOError:
                    pass
                else:
                    raise RuntimeError(f"{config}: open of leased {path} did not fail")
                t1 = clock(mono)
                w, g, code, fd = (int(x) for x in h.line().split())
                if code != POLL_MSG or fd != FIRST_FD + i:
                    bad_siginfo += 1
                if keep:
                    out["wake"].append(w - t0)
                    out["siginfo"].append(g - t0)
                    out["open"].append(t1 - t0)

            for c in configs:
                for _ in range(WARMUP):
                    one(c, False)
            # every round runs each configuration once, in a new random order: a drift of
            # the machine, or an after-effect of one configuration on the next, hits all alike
            order = list(configs)
            for _ in range(ROUNDS):
                rnd.shuffle(order)
                for c in order:
                    one(c, True)
            rss["loaded/after rounds"] = rss_mib(d_loaded.pid)
            # last, as it may take long (and leaves a large reply's memory behind)
            t0 = perf()
            listed = systems["loaded"].locks()
            figures["proc_locks_ms"] = round((perf() - t0) / 1e6, 1)
            figures["leases_listed"] = len(listed)
            rss["loaded/after proc_locks"] = rss_mib(d_loaded.pid)
            if len(listed) != HOLDERS * FILES:
                raise RuntimeError(f"{len(listed)} leases listed, not {HOLDERS * FILES}")
        finally:
            t0 = time.monotonic()
            for h in holders:
                h.close_stdin()
            for h in holders:
                h.reap(10)
            reap_s = round(time.monotonic() - t0, 2)
            for conn in conns:
                conn.close()
            for d in daemons:
                d.stop(30)

    stats = {c: {k: summary(v) for k, v in samples[c].items()} for c in configs}
    ratios = {
        "break wake/p50": ratio(stats["break/loaded"]["wake"]["p50_us"],
                                stats["break/single"]["wake"]["p50_us"]),
        "break open/p50": ratio(stats["break/loaded"]["open"]["p50_us"],
                                stats["break/single"]["open"]["p50_us"]),
        "open unleased/p50": ratio(stats["open unleased/loaded"]["open"]["p50_us"],
                                   stats["open unleased/single"]["open"]["p50_us"]),
    }
    base_of = {"break/loaded": "break/single", "break/loaded, one holder": "break/single",
               "open unleased/loaded": "open unleased/single"}
    info: dict[str, float] = {}
    rows = []
    for c in configs:
        for k, st in stats[c].items():
            ref = stats[base_of[c]][k] if c in base_of else st
            r50, r99 = ratio(st["p50_us"], ref["p50_us"]), ratio(st["p99_us"], ref["p99_us"])
            if c in base_of:
                info[f"{c}/{k}/p50"], info[f"{c}/{k}/p99"] = r50, r99
            rows.append([f"{c} {k}", st["n"], st["p50_us"], st["p99_us"], st["min_us"],
                         st["mean_us"], r50, r99])
    print(f"bench_many_leases: a lease break with {HOLDERS * FILES} leases held "
          f"({HOLDERS} processes x {FILES}) vs one lease held (microseconds)")
    print(f"{ROUNDS} rounds, each running every configuration once in a random order; "
          f"{WARMUP} warm-up each; ratio = loaded / single")
    print()
    print(table(["config", "n", "p50", "p99", "min", "mean", "x p50", "x p99"], rows))
    print("wake: breaker's CLOCK_MONOTONIC before open -> holder's select on the recorder's")
    print("      wake-up fd returned (the C handler has run; includes the wake-up)")
    print("siginfo: -> the holder's sigwait returned the daemon's siginfo")
    print("open: the breaker's open call (EWOULDBLOCK), or of an unleased file")
    if bad_siginfo:
        print(f"unexpected siginfo (not POLL_MSG with the broken lease's fd): {bad_siginfo}")
    print()
    print(f"setup: {HOLDERS} holders registered in {figures['spawn_s']} s (batches of {BATCH}); "
          f"{HOLDERS * FILES} leases (open + F_SETSIG + F_SETLEASE each) in "
          f"{figures['setup_s']} s from 'go' ({figures['setup_calls_per_s']} calls/s; "
          f"per holder p50 {figures['setup_per_holder_p50_s']} s, "
          f"max {figures['setup_per_holder_max_s']} s)")
    print(f"proc_locks with {figures['leases_listed']} leases: {figures['proc_locks_ms']} ms")
    per_lease = (rss["loaded/leases"] - rss["loaded/registered"]) * 2**20 / (HOLDERS * FILES)
    figures["rss_bytes_per_lease"] = round(per_lease)
    print(f"daemon RSS (MiB): fresh {rss['loaded/fresh']}, {HOLDERS} holders registered "
          f"{rss['loaded/registered']}, with {HOLDERS * FILES} leases {rss['loaded/leases']} "
          f"(~{per_lease:.0f} bytes per lease with its file, inode and descriptor), after the "
          f"rounds {rss['loaded/after rounds']}, after proc_locks "
          f"{rss['loaded/after proc_locks']}; single daemon {rss['single/lease']}")
    print(f"reaping the {len(holders)} holders: {reap_s} s")
    print()
    control = {
        "break wake/p50": ratio(stats["break/loaded, one holder"]["wake"]["p50_us"],
                                stats["break/single"]["wake"]["p50_us"]),
        "break open/p50": ratio(stats["break/loaded, one holder"]["open"]["p50_us"],
                                stats["break/single"]["open"]["p50_us"]),
    }
    print(f"daemon size only (loaded daemon, always the same holder and file): "
          f"{verdict(control, TARGET)}")
    overall = verdict(ratios, TARGET)
    print(f"judged (random holder and file; unleased open): {overall}")
    print(f"elapsed {time.monotonic() - started:.1f} s")
    print(result_line({
        "bench": "many_leases", "unit": "us", "target": TARGET, "stats": stats, "ratios": ratios,
        "control_ratios": control,
        "info": info, "figures": figures, "rss_mib": rss, "reap_s": reap_s,
        "bad_siginfo": bad_siginfo, "loadavg_start": load0, "loadavg_end": loadavg(),
        "target_met": overall.startswith("target met"),
    }))
    return 0


if __name__ == "__main__":
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    sys.exit(main())
