"""``launch.py matrix``: every thread scenario under every policy, as one table.

Each cell is the run's outcome in a few words (errnos met, foreign writes, revoked
regions, signals) and is marked where a line's outcome differs from the expectation the
scenario states for that policy.  Runs go in parallel (each has its own daemon, actors
and run directory); the exit status is non-zero on any mismatch.
"""

from __future__ import annotations

import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import IO

from agents.scenario.parse import Scenario, load
from agents.scenario.runner import Outcome, run_scenario
from protocol import linux

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
THREADS = os.path.join(ROOT, "scenarios", "threads")
POLICIES = ("legacy", "map-direct", "map-direct-sealed", "layout-lease",
            "layout-lease-exclusive-checked", "mr-lease", "upstream")
SHORT = {"legacy": "legacy", "map-direct": "map-direct", "map-direct-sealed": "md-sealed",
         "layout-lease": "layout-lease", "layout-lease-exclusive-checked": "ll-checked",
         "mr-lease": "mr-lease", "upstream": "upstream"}


@dataclass
class Cell:
    """One run of the matrix."""

    scenario: str
    policy: str
    outcome: Outcome
    summary: str


def summarize(o: Outcome) -> str:
    """The run in a few words: errnos met, foreign writes, revocations, signals."""
    words: list[str] = []
    for line in o.lines:
        reply = line.reply
        if "errno" in reply:
            name = linux.errno_name(reply["errno"])
            if name not in words:
                words.append(name)
        ok = reply.get("ok")
        if line.step.call == "foreign_writes" and isinstance(ok, list) and ok \
                and "foreign write" not in words:
            words.append("foreign write")
        if ok == "IBV_WC_REM_ACCESS_ERR" and "RDMA error" not in words:
            words.append("RDMA error")
        if line.step.call in ("signals", "sigwait") and ok and "SIGIO" not in words:
            words.append("SIGIO")
        if "killed" in reply and f"killed {reply['killed']}" not in words:
            words.append(f"killed {reply['killed']}")
    words.extend(o.deaths)
    return ", ".join(words) or "no error"


def run_cell(sc: Scenario, policy: str) -> Cell:
    """One scenario under one policy."""
    outcome = run_scenario(sc, "emulator", policy, show_pids=False)
    return Cell(sc.name, policy, outcome, summarize(outcome))


def main(out: IO[str] = sys.stdout, jobs: int = 4, only: list[str] | None = None) -> int:
    """Run the matrix, print the table; 1 if any cell differs from its expectation."""
    files = sorted(f for f in os.listdir(THREADS) if f.endswith(".scn"))
    scenarios = [load(os.path.join(THREADS, f)) for f in files
                 if only is None or any(f.startswith(x) for x in only)]
    t0 = time.monotonic()
    cells: dict[tuple[str, str], Cell] = {}
    work = [(sc, p) for sc in scenarios for p in POLICIES]
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        for n, cell in enumerate(pool.map(lambda w: run_cell(*w), work), 1):
            cells[(cell.scenario, cell.policy)] = cell
            mark = "ok" if cell.outcome.passed else "MISMATCH"
            print(f"[{n}/{len(work)}] {cell.scenario} under {cell.policy}: {mark}",
                  file=sys.stderr, flush=True)
    wall = time.monotonic() - t0
    width = 26
    head = "scenario".ljust(22) + "".join(SHORT[p].ljust(width) for p in POLICIES)
    print(head, file=out)
    print("-" * len(head), file=out)
    bad = []
    for sc in scenarios:
        row = sc.name.replace(".scn", "")[:21].ljust(22)
        for p in POLICIES:
            cell = cells[(sc.name, p)]
            mark = "" if cell.outcome.passed else "!! "
            row += (mark + cell.summary)[: width - 1].ljust(width)
            if not cell.outcome.passed:
                bad.append(cell)
        print(row, file=out)
    print(f"\n{len(work)} runs in {wall:.1f} s; {len(bad)} differ from the expectation",
          file=out)
    for cell in bad:
        print(f"\n!! {cell.scenario} under {cell.policy} (run dir {cell.outcome.run_dir}):",
              file=out)
        for failure in cell.outcome.failures:
            print(f"   {failure}", file=out)
    return 1 if bad else 0
