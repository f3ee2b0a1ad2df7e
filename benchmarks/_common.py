"""Helpers shared by the benchmark scripts (statistics, tables, run directories).

Not a benchmark itself.  Each ``bench_*.py`` puts the repository root and this folder on
``sys.path`` so it runs as ``python benchmarks/bench_x.py`` without installing anything.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def percentile(samples: Sequence[int | float], q: float) -> float:
    """The ``q``-th percentile (0..100) of ``samples``, nearest-rank method."""
    if not samples:
        return math.nan
    ordered = sorted(samples)
    rank = max(1, math.ceil(q / 100.0 * len(ordered)))
    return float(ordered[rank - 1])


def summary(samples_ns: Sequence[int]) -> dict[str, Any]:
    """p50 / p99 / min / mean of per-sample nanosecond durations, in microseconds."""
    n = len(samples_ns)
    return {
        "n": n,
        "p50_us": round(percentile(samples_ns, 50) / 1e3, 2),
        "p99_us": round(percentile(samples_ns, 99) / 1e3, 2),
        "min_us": round(min(samples_ns) / 1e3, 2) if n else math.nan,
        "mean_us": round(sum(samples_ns) / n / 1e3, 2) if n else math.nan,
    }


def ratio(a: float, b: float) -> float:
    """``a / b`` rounded to 3 places (``nan`` when ``b`` is zero)."""
    return round(a / b, 3) if b else math.nan


def verdict(values: dict[str, float], target: float) -> str:
    """'target met' when every ratio in ``values`` is <= ``target``."""
    missed = [k for k, v in values.items() if not v <= target]
    if not missed:
        return f"target met (all ratios <= {target})"
    return f"target missed ({', '.join(missed)} > {target})"


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A plain fixed-width text table."""
    cells = [[str(h) for h in headers]] + [[_fmt(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = []
    for j, r in enumerate(cells):
        lines.append("  ".join(c.rjust(w) if i else c.ljust(w)
                               for i, (c, w) in enumerate(zip(r, widths, strict=True))))
        if j == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 10 else f"{value:.1f}"
    return str(value)


def loadavg() -> str:
    """The 1/5/15-minute load averages, for the record (other work skews the figures)."""
    try:
        with open("/proc/loadavg") as fh:
            return " ".join(fh.read().split()[:3])
    except OSError:
        return "?"


def result_line(payload: dict[str, Any]) -> str:
    """The machine-readable last line every benchmark prints."""
    return "RESULT " + json.dumps(payload, sort_keys=True)


@contextlib.contextmanager
def run_directory() -> Iterator[str]:
    """A short run directory under /tmp (AF_UNIX paths are limited), removed afterwards."""
    path = tempfile.mkdtemp(prefix="kemu-bench-", dir="/tmp")
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def child_env() -> dict[str, str]:
    """The environment for a child Python that must import this repository's packages."""
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env
