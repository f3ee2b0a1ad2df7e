#!/usr/bin/env python3
"""Programs per second of ``kemu find``: one program at a time against N at once.

The same campaign (seed 7, legacy, ``PROGRAMS`` programs, no shrinking) runs twice: with
one job (the baseline, measured in the same run) and with the default number of jobs
(``runner.default_jobs``: three per core, at most 8); with ``--dask`` also on a local
Dask cluster of two worker processes, bound to 127.0.0.1.  Chunks are drawn by seed, so
every configuration runs the same programs.  Ratios are programs/s against the
baseline (higher is better).  Target: at least 1.5 with the default jobs on 2 cores.
"""

from __future__ import annotations

import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)

from _common import loadavg, ratio, result_line, table  # noqa: E402

from kemu.agents.launcher import zygote  # noqa: E402
from kemu.agents.launcher.find import engine  # noqa: E402
from kemu.agents.launcher.runner import default_jobs  # noqa: E402

PROGRAMS = 96
CHUNK = 8
TARGET = 1.5


def _campaign(jobs: int | None, scheduler: str | None = None) -> tuple[float, int]:
    t0 = time.monotonic()
    camp = engine.campaign(["legacy"], seed=7, programs=PROGRAMS, jobs=jobs, chunk_size=CHUNK,
                           minimize=False, progress=None, scheduler=scheduler)
    return camp.programs / (time.monotonic() - t0), len(camp.first)


def main() -> int:
    started = time.monotonic()
    load0 = loadavg()
    engine.campaign(["legacy"], seed=1, programs=4, jobs=1, chunk_size=4, minimize=False,
                    progress=None)  # warm-up: the zygote, the daemon's design list
    rates: dict[str, float] = {}
    found: dict[str, int] = {}
    rates["1 job"], found["1 job"] = _campaign(1)
    n = default_jobs()
    rates[f"{n} jobs"], found[f"{n} jobs"] = _campaign(n)
    if "--dask" in sys.argv[1:]:
        from distributed import LocalCluster

        with LocalCluster(n_workers=2, threads_per_worker=3, processes=True,
                          host="127.0.0.1", dashboard_address=None) as cluster:
            rates["dask 2x3"], found["dask 2x3"] = _campaign(None, cluster.scheduler_address)
    base = rates["1 job"]
    ratios = {k: ratio(v, base) for k, v in rates.items()}
    print(f"bench_find: programs/s of a find campaign ({PROGRAMS} programs, legacy, seed 7), "
          f"1 job (the baseline) against {n} at once")
    print()
    print(table(["config", "programs/s", "x 1 job", "distinct violations"],
                [[k, round(v, 2), ratios[k], found[k]] for k, v in rates.items()]))
    print()
    best = max(v for k, v in ratios.items() if k != "1 job")
    print(f"target (x >= {TARGET} with {n} jobs): "
          f"{'target met' if ratios[f'{n} jobs'] >= TARGET else 'target missed'}")
    print(f"elapsed {time.monotonic() - started:.1f} s; load {load0} -> {loadavg()} "
          "(other work on the machine skews the figures)")
    zygote.shutdown()
    print(result_line({"bench": "find", "unit": "programs/s", "rates": rates,
                       "ratios": ratios, "best": best, "loadavg_start": load0,
                       "loadavg_end": loadavg()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
