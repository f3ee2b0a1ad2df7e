#!/usr/bin/env python3
"""Wall time of whole scenario runs and of the matrix: zygote against fresh interpreters.

* **scenario**: ``run_scenario`` of each thread scenario under ``upstream`` in this
  process (daemon, actors, every line, the run folder with its pictures), one after
  another, ``ROUNDS`` times.  Each round runs every scenario twice in a random order:
  once with actors and daemon forked from the launcher's zygote (the default), once
  with ``KEMU_NO_ZYGOTE=1`` (each a fresh ``python -m``, as before the zygote): the
  baseline, measured in the same run.
* **matrix**: ``matrix.main`` (every thread scenario under every design, the default
  number of runs at once), once with the zygote and once without, in that order
  (skipped with ``--quick``).

Ratios are zygote / fresh at the p50 (lower is better).  Target (issue 13): the whole
matrix in at most 8 s on 2 cores; no target for the ratio.
"""

from __future__ import annotations

import contextlib
import io
import os
import random
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)

from _common import loadavg, ratio, result_line, summary, table  # noqa: E402

from kemu.agents.launcher import matrix, zygote  # noqa: E402
from kemu.agents.launcher.runner import run_scenario  # noqa: E402
from kemu.agents.scenario.parse import parse  # noqa: E402

ROUNDS = 5
MATRIX_TARGET_S = 8.0


def _fresh(on: bool) -> None:
    if on:
        os.environ[zygote.NO_ZYGOTE_ENV] = "1"
    else:
        os.environ.pop(zygote.NO_ZYGOTE_ENV, None)


def main() -> int:
    quick = "--quick" in sys.argv[1:]
    started = time.monotonic()
    load0 = loadavg()
    files = sorted(f for f in os.listdir(matrix.THREADS) if f.endswith(".scn"))
    scenarios = []
    for f in files:
        with open(os.path.join(matrix.THREADS, f)) as fh:
            scenarios.append(parse(fh.read(), f))
    samples: dict[str, list[int]] = {"scenario/zygote": [], "scenario/fresh": []}
    rng = random.Random(13)
    failed = 0
    # warm-up: the zygote starts, the first fresh interpreters fill the page cache
    for fresh in (False, True):
        _fresh(fresh)
        run_scenario(scenarios[0], out=io.StringIO())
    for _ in range(ROUNDS):
        for sc in scenarios:
            order = [False, True]
            rng.shuffle(order)
            for fresh in order:
                _fresh(fresh)
                t0 = time.perf_counter_ns()
                outcome = run_scenario(sc, out=io.StringIO())
                samples["scenario/fresh" if fresh else "scenario/zygote"].append(
                    time.perf_counter_ns() - t0)
                failed += not outcome.passed
    walls: dict[str, float] = {}
    if not quick:
        for fresh in (False, True):
            _fresh(fresh)
            t0 = time.monotonic()
            with contextlib.redirect_stderr(io.StringIO()):  # its progress lines
                failed += matrix.main(out=io.StringIO()) != 0
            walls["matrix/fresh" if fresh else "matrix/zygote"] = time.monotonic() - t0
    _fresh(False)
    zygote.shutdown()

    stats = {k: summary(v) for k, v in samples.items()}
    z, f = stats["scenario/zygote"], stats["scenario/fresh"]
    ratios = {"scenario/p50": ratio(z["p50_us"], f["p50_us"]),
              "scenario/p99": ratio(z["p99_us"], f["p99_us"])}
    rows = [[name, s["n"], round(s["p50_us"] / 1e3, 1), round(s["p99_us"] / 1e3, 1),
             round(s["min_us"] / 1e3, 1),
             ratios["scenario/p50"] if name.endswith("zygote") else 1.0]
            for name, s in (("scenario/fresh", f), ("scenario/zygote", z))]
    print("bench_runs: wall time of a scenario run and of the matrix, zygote vs fresh "
          "interpreters (the baseline)")
    print(f"{len(scenarios)} thread scenarios under upstream, {ROUNDS} rounds, "
          "interleaved in random order (milliseconds)")
    print()
    print(table(["config", "n", "p50", "p99", "min", "x p50"], rows))
    print()
    if walls:
        ratios["matrix"] = ratio(walls["matrix/zygote"], walls["matrix/fresh"])
        print(f"matrix ({len(scenarios)} scenarios x {len(matrix.policies())} designs): "
              f"fresh {walls['matrix/fresh']:.1f} s, zygote {walls['matrix/zygote']:.1f} s "
              f"(x {ratios['matrix']})")
        met = walls["matrix/zygote"] <= MATRIX_TARGET_S
        print(f"target (matrix <= {MATRIX_TARGET_S:.0f} s): "
              f"{'target met' if met else 'target missed'}")
    print(f"runs that did not pass: {failed}")
    print(f"elapsed {time.monotonic() - started:.1f} s")
    print(result_line({"bench": "runs", "unit": "us", "stats": stats, "ratios": ratios,
                       "matrix_s": walls, "failed": failed, "loadavg_start": load0,
                       "loadavg_end": loadavg()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
