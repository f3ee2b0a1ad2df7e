"""``launch.py matrix``: every thread scenario under every policy, as one table.

Each cell is the run's outcome in a few words (errnos met, foreign writes, revoked
regions, signals) and is marked where a line's outcome differs from the expectation the
scenario states for that policy.  Runs go in parallel (each has its own daemon, actors
and run directory); the exit status is non-zero on any mismatch.

The columns are the designs the daemon has built in (it advertises them), in its
order, and one more per ``--policy PATH.py[:Class]``: a design from a user's file.  A
line whose expectation differs between designs and names none of a user's design is
shown unjudged (``?`` in its cell) rather than failing.

With ``--report DIR`` every run folder goes to ``DIR/<scenario>/<policy>/`` (the run
happens in a short /tmp path, as its sockets need, and is then copied there without
them) and ``DIR/index.html`` gets the table, each cell linking to its run's page,
transcript, block map and trace (docs/report.md).
"""

from __future__ import annotations

import os
import shutil
import stat
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import IO, Any

import kemu
from kemu.agents.launcher import designs
from kemu.agents.launcher.runner import Outcome, default_jobs, run_scenario
from kemu.agents.report import eventlog, html, write_run
from kemu.agents.scenario import strace
from kemu.agents.scenario.parse import Scenario, load
from kemu.protocol import linux

ROOT = kemu.HOME
THREADS = os.path.join(kemu.SCENARIOS, "threads")
#: shorter column heads for the table printed on the terminal
SHORT = {"map-direct-sealed": "md-sealed", "layout-lease-exclusive-checked": "ll-checked"}


def policies() -> list[str]:
    """Every built-in design, as the daemon advertises them."""
    return designs.builtin()


@dataclass
class Cell:
    """One run of the matrix."""

    scenario: str
    policy: str
    outcome: Outcome
    summary: str
    #: what the report's cell shows: (text, kind) each, see :func:`outcome_tags`
    tags: list[tuple[str, str]] = field(default_factory=list)


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
        # an ``!expect-death`` line's death is one of ``o.deaths``: say it once
        if "killed" in reply and line.step.fault != "expect-death" \
                and f"killed {reply['killed']}" not in words:
            words.append(f"killed {reply['killed']}")
    words.extend(o.deaths)
    text = ", ".join(words) or "no error"
    return f"? {text} ({o.unjudged} unjudged)" if o.unjudged else text


def _call_name(line: Any) -> str:
    name = str(line.reply.get("call") or line.step.call)
    args = line.reply.get("args") or []
    if name == "fcntl" and len(args) > 1 and isinstance(args[1], int):
        return "fcntl " + strace.call("fcntl", list(args[:2])).split(", ")[1].rstrip(")")
    return name


def outcome_tags(o: Outcome, records: list[dict[str, Any]] | None = None
                 ) -> list[tuple[str, str]]:
    """The run in a few tagged words, each ``(text, kind)`` (kinds: :data:`kemu.agents.report.html.KINDS`).

    An errno names the calls that gave it (``EAGAIN (open)``); it means safety when the
    run's event log (``records``) shows the design refusing with it (a ``design`` or
    ``layout-refused`` event of that process) or it is a breaker's ``EAGAIN`` while a
    lease it broke is being given up.  An RDMA error (``IBV_WC_REM_ACCESS_ERR``: the card
    refused the peer's access, the region being revoked or gone with its process) is
    safety too; a foreign write is corruption.
    """
    records = records or []
    refused = {(r.get("pid"), r.get("result")) for r in records if r.get("ev") == "design"}
    refused |= {(r.get("by"), r.get("errno")) for r in records
                if r.get("ev") == "layout-refused"}
    breakers = {r.get("by") for r in records if r.get("ev") in ("lease-break", "layout-break")}
    errnos: dict[str, list[str]] = {}
    kinds: dict[str, str] = {}
    extra: list[tuple[str, str]] = []
    rdma: list[str] = []
    for line in o.lines:
        reply = line.reply
        if "errno" in reply:
            name = linux.errno_name(reply["errno"])
            calls = errnos.setdefault(name, [])
            call = _call_name(line)
            if call not in calls:
                calls.append(call)
            safe = (line.pid, name) in refused or (
                name in ("EAGAIN", "EWOULDBLOCK") and line.pid in breakers)
            if safe or name not in kinds:
                kinds[name] = "safe" if safe else "error"
        ok = reply.get("ok")
        if line.step.call == "foreign_writes" and isinstance(ok, list) and ok \
                and ("foreign write", "corrupt") not in extra:
            extra.append(("foreign write", "corrupt"))
        if ok == "IBV_WC_REM_ACCESS_ERR" and _call_name(line) not in rdma:
            rdma.append(_call_name(line))
        if line.step.call in ("signals", "sigwait") and ok and ("SIGIO", "signal") not in extra:
            extra.append(("SIGIO", "signal"))
        if "killed" in reply and (f"killed {reply['killed']}", "death") not in extra:
            extra.append((f"killed {reply['killed']}", "death"))
    tags = [(f"{name} ({', '.join(calls)})", kinds[name]) for name, calls in errnos.items()]
    if rdma:
        tags.append((f"RDMA error ({', '.join(rdma)})", "safe"))
    tags += extra
    tags += [(d, "death") for d in o.deaths]
    tags = tags or [("no error", "none")]
    if o.unjudged:
        tags.insert(0, (f"? {o.unjudged} unjudged", "unjudged"))
    return tags


def cell_folder(scenario: str, policy: str) -> str:
    """A cell's run folder within a report, relative to the report's index.html."""
    return f"{scenario.removesuffix('.scn')}/{policy}"


def _no_sockets(directory: str, names: list[str]) -> list[str]:
    return [n for n in names if stat.S_ISSOCK(os.lstat(os.path.join(directory, n)).st_mode)]


def run_cell(sc: Scenario, policy: str, report: str | None = None) -> Cell:
    """One scenario under one policy (a name, or ``PATH.py[:Class]``); with ``report``,
    its folder moves into the report and its page links back to the table."""
    outcome = run_scenario(sc, "emulator", policy, show_pids=False, render=report is None)
    policy = outcome.policy  # the design's name
    if report is not None:
        dest = os.path.join(report, cell_folder(sc.name, policy))
        shutil.rmtree(dest, ignore_errors=True)
        shutil.copytree(outcome.run_dir, dest, ignore=_no_sockets)
        shutil.rmtree(outcome.run_dir, ignore_errors=True)
        outcome.run_dir = dest
        write_run(dest, up="../../index.html")
    try:
        records = eventlog.load(outcome.run_dir)
    except (OSError, ValueError):
        records = []
    return Cell(sc.name, policy, outcome, summarize(outcome), outcome_tags(outcome, records))


def write_report(report: str, scenarios: list[Scenario], policies: list[str],
                 cells: dict[tuple[str, str], Cell], wall: float) -> str:
    """``DIR/index.html``: the table of the matrix; returns its path."""
    shown = {k: html.MatrixCell(c.scenario, c.policy, c.summary, c.outcome.passed,
                                cell_folder(c.scenario, c.policy), list(c.outcome.failures),
                                c.tags)
             for k, c in cells.items()}
    page = html.matrix_page([(sc.name, sc.title) for sc in scenarios], policies, shown, wall)
    path = os.path.join(report, "index.html")
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(page)
    return path


def main(out: IO[str] = sys.stdout, jobs: int | None = None, only: list[str] | None = None,
         report: str | None = None, policies: list[str] | None = None,
         extra: list[str] | None = None) -> int:
    """Run the matrix, print the table; 1 if any cell differs from its expectation.

    ``only``: scenario files starting with these names; ``policies``: these built-in
    designs (all by default, none if only ``extra`` is given); ``extra``: designs from
    users' files (``PATH.py[:Class]``), a column each; ``report``: write the HTML report
    into this directory.
    """
    files = sorted(f for f in os.listdir(THREADS) if f.endswith(".scn"))
    scenarios = [load(os.path.join(THREADS, f)) for f in files
                 if only is None or any(f.startswith(x) for x in only)]
    for x in only or []:
        if not any(f.startswith(x) for f in files):
            print(f"matrix: --only {x} matches no scenario (there are: "
                  f"{', '.join(f.removesuffix('.scn') for f in files)})", file=sys.stderr)
            return 2
    known = designs.builtin()
    if policies is None and extra:
        policies = []
    unknown = sorted(set(policies or []) - set(known))
    if unknown:
        print(f"matrix: unknown policies {', '.join(unknown)} (known: {', '.join(known)})",
              file=sys.stderr)
        return 2
    specs = [p for p in known if policies is None or p in policies]
    names = list(specs)
    for spec in extra or []:
        try:
            name = designs.resolve(spec)
        except designs.DesignError as exc:
            print(f"matrix: {exc}", file=sys.stderr)
            return 2
        if name in names:
            print(f"matrix: {spec} is called {name!r}, which is taken", file=sys.stderr)
            return 2
        specs.append(spec)
        names.append(name)
    chosen = names
    if report is not None:
        os.makedirs(report, exist_ok=True)
        report = os.path.abspath(report)
    t0 = time.monotonic()
    cells: dict[tuple[str, str], Cell] = {}
    work = [(sc, p) for sc in scenarios for p in specs]
    with ThreadPoolExecutor(max_workers=jobs or default_jobs()) as pool:
        for n, cell in enumerate(pool.map(lambda w: run_cell(w[0], w[1], report), work), 1):
            cells[(cell.scenario, cell.policy)] = cell
            mark = "ok" if cell.outcome.passed else "MISMATCH"
            print(f"[{n}/{len(work)}] {cell.scenario} under {cell.policy}: {mark} "
                  f"({time.monotonic() - t0:.1f} s)", file=sys.stderr, flush=True)
    wall = time.monotonic() - t0
    width = 26
    head = "scenario".ljust(22) + "".join(SHORT.get(p, p)[: width - 1].ljust(width)
                                          for p in chosen)
    print(head, file=out)
    print("-" * len(head), file=out)
    bad = []
    for sc in scenarios:
        row = sc.name.replace(".scn", "")[:21].ljust(22)
        for p in chosen:
            cell = cells[(sc.name, p)]
            mark = "" if cell.outcome.passed else "!! "
            row += (mark + cell.summary)[: width - 1].ljust(width)
            if not cell.outcome.passed:
                bad.append(cell)
        print(row, file=out)
    unjudged = sum(1 for c in cells.values() if c.outcome.unjudged)
    print(f"\n{len(work)} runs in {wall:.1f} s; {len(bad)} differ from the expectation"
          + (f"; {unjudged} with unjudged lines (?: a design the scenario does not know)"
             if unjudged else ""), file=out)
    for cell in bad:
        print(f"\n!! {cell.scenario} under {cell.policy} (run dir {cell.outcome.run_dir}):",
              file=out)
        for failure in cell.outcome.failures:
            print(f"   {failure}", file=out)
    if report is not None:
        path = write_report(report, scenarios, chosen, cells, wall)
        print(f"\nreport: {path}", file=out)
    return 1 if bad else 0
