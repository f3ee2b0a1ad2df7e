"""What must never happen: the invariants ``explore`` (and ``find``) check after every run.

Each invariant is a function of a run's :class:`~agents.launcher.runner.Outcome`, its
merged event log and what the design promises; it returns the violations it found,
each with the evidence that broke it.  ``docs/invariants.md`` describes them.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kemu.agents.launcher.runner import Outcome

#: kernel objects that must all be gone once every actor is gone (``kernel_stats``)
LEFT_EMPTY = ("parked", "inflight", "pending_forks", "leases", "mappings", "mrs",
              "pinned_blocks", "busy_blocks", "orphan_blocks", "shootdowns", "mailboxes", "qps")
#: device writes through long-term pins (an MR) and through short-term ones (direct I/O)
LONGTERM_VIA = ("RDMA WRITE", "RDMA READ", "local read")
SHORTTERM_VIA = ("direct I/O",)
#: how much longer than lease_break_time a breaker may sleep (scheduling, a loaded machine)
DEADLINE_TOLERANCE = 1.0
#: a run whose kernel was killed must end within this many seconds of the kill
KERNEL_DEATH_BOUND = 10.0


@dataclass(frozen=True)
class Violation:
    """One broken invariant, with what shows it."""

    invariant: str
    evidence: str

    def __str__(self) -> str:
        return f"{self.invariant}: {self.evidence}"


def records(outcome: Outcome) -> list[dict[str, Any]]:
    """The run's merged event log (empty if it could not be written)."""
    path = os.path.join(outcome.run_dir, "events.jsonl")
    try:
        with open(path, encoding="utf-8") as fh:
            return [json.loads(line) for line in fh if line.strip()]
    except (OSError, ValueError):
        return []


def no_foreign_write(outcome: Outcome, recs: list[dict[str, Any]],
                     promises: set[str]) -> list[Violation]:
    """No device write lands in another file's block where the design promises none:
    through long-term pins (``NO_FOREIGN_WRITE_LONGTERM``), short-term pins
    (``NO_FOREIGN_WRITE_SHORTTERM``)."""
    out = []
    for fw in outcome.foreign_writes:
        via = str(fw.get("via"))
        kind = ("NO_FOREIGN_WRITE_SHORTTERM" if via in SHORTTERM_VIA else
                "NO_FOREIGN_WRITE_LONGTERM")
        if kind in promises:
            out.append(Violation("no-foreign-write", f"{via} by pid {fw.get('writer')} aimed at "
                                 f"{fw.get('file')}+{fw.get('offset')} landed in block "
                                 f"{fw.get('block')} of {fw.get('into')}"))
    return out


def nothing_left(outcome: Outcome, recs: list[dict[str, Any]],
                 promises: set[str]) -> list[Violation]:
    """When every actor is gone, nothing of theirs remains: tasks, descriptors in flight,
    leases (zombie leases included), mappings, regions, pins, busy blocks, blocks owned
    by nothing, shoot-downs, sockets, queue pairs, sleeping calls."""
    if outcome.kernel_killed or outcome.target == "host":
        return []
    stats = outcome.final_stats
    if not stats:
        return [Violation("nothing-left", "the kernel gave no statistics after the run")]
    out = []
    if stats.get("tasks", 1) != 1:
        out.append(Violation("nothing-left", f"{stats.get('tasks', 0) - 1} task(s) left "
                             "besides the launcher"))
    out += [Violation("nothing-left", f"{key} left: {stats[key]}") for key in LEFT_EMPTY
            if stats.get(key)]
    return out


def pins_attributable(outcome: Outcome, recs: list[dict[str, Any]],
                      promises: set[str]) -> list[Violation]:
    """Every pin belongs to a region of a context someone holds, or to a transfer a live
    process waits for (the kernel's pin table against its regions, after the last line)."""
    bad = outcome.audit.get("unattributed") if outcome.audit else None
    if not bad:
        return []
    return [Violation("pins-attributable", f"blocks {bad} are pinned by nothing that exists")]


def breaker_deadline(outcome: Outcome, recs: list[dict[str, Any]],
                     promises: set[str]) -> list[Violation]:
    """No breaker sleeps past ``lease_break_time`` (plus a tolerance) after it broke a
    lease, except on a lease the design never times out (an exclusive one: ``lbt`` 0)."""
    out = []
    broke: dict[int, tuple[float, float]] = {}  # pid -> (when, lbt) of its last break
    parked: dict[tuple[int, int], tuple[float, float]] = {}
    for rec in recs:
        if rec.get("src") != "kernel":
            continue
        ev, pid = rec.get("ev"), rec.get("pid")
        if ev in ("lease-break", "layout-break"):
            by = rec.get("by")
            if isinstance(by, int):
                broke[by] = (float(rec.get("t", 0.0)), float(rec.get("lbt", 0.0) or 0.0))
        elif ev == "park" and isinstance(pid, int) and pid in broke:
            when, lbt = broke.pop(pid)
            if lbt > 0:
                parked[(pid, int(rec.get("id", 0)))] = (when, lbt)
        elif ev == "ret" and isinstance(pid, int):
            key = (pid, int(rec.get("id", 0)))
            if key not in parked:
                broke.pop(pid, None)  # a break that did not sleep (EWOULDBLOCK, refused)
            else:
                when, lbt = parked.pop(key)
                slept = float(rec.get("t", 0.0)) - when
                if slept > lbt + DEADLINE_TOLERANCE:
                    out.append(Violation("breaker-deadline", f"pid {pid} slept {slept:.2f} s "
                                         f"after breaking a lease with lease_break_time {lbt}"))
    return out


def daemon_answers(outcome: Outcome, recs: list[dict[str, Any]],
                   promises: set[str]) -> list[Violation]:
    """The daemon answers after the run and stops cleanly; a daemon the fault killed ends
    the run with a clear error within a bounded time."""
    if outcome.kernel_killed:
        named = any("kernel daemon was killed" in f for f in outcome.failures)
        out = [] if named else [Violation("daemon-answers",
                                          "the run did not say that the kernel died")]
        killed_at = next((float(r.get("t", 0.0)) for r in recs if r.get("src") == "launcher"
                          and r.get("ev") == "fault" and r.get("actor") == "kernel"), None)
        end = max((float(r.get("t", 0.0)) for r in recs), default=0.0)
        if killed_at is not None and end - killed_at > KERNEL_DEATH_BOUND:
            out.append(Violation("daemon-answers", f"the run took {end - killed_at:.1f} s to "
                                 "end after the kernel died"))
        return out
    return [Violation("daemon-answers", f) for f in outcome.failures
            if "did not answer after the run" in f or "daemon exited" in f
            or "did not answer the pin audit" in f]


def no_leaked_process(outcome: Outcome, recs: list[dict[str, Any]],
                      promises: set[str]) -> list[Violation]:
    """Once the run is over no process of it is left (an actor, a fork child, the
    daemon), on either target."""
    return [Violation("no-leaked-process", f"pid {pid} of the run is still alive")
            for pid in outcome.leaked]


def host_no_leaked_lease(outcome: Outcome, recs: list[dict[str, Any]],
                         promises: set[str]) -> list[Violation]:
    """Host target: once every actor is gone, /proc/locks shows no lease on the run's
    files (Linux removes a lease with the last reference to its open file)."""
    if outcome.target != "host":
        return []
    return [Violation("nothing-left", f"/proc/locks still shows {e.get('state')} "
                      f"{e.get('type')} lease of pid {e.get('pid')} on {e.get('path')}")
            for e in outcome.final_locks if not e.get("waiter")]


def run_started(outcome: Outcome, recs: list[dict[str, Any]],
                promises: set[str]) -> list[Violation]:
    """The run really ran: every actor started and connected (a run that never got
    going checks nothing, so it must not pass)."""
    return [Violation("run-started", f) for f in outcome.failures
            if "did not connect" in f or "could not start" in f]


def no_daemon_bug(outcome: Outcome, recs: list[dict[str, Any]],
                  promises: set[str]) -> list[Violation]:
    """The daemon met no bug (a Python exception in a handler, logged as ``bug``)."""
    return [Violation("no-daemon-bug", str(r.get("detail", "")).strip().splitlines()[-1])
            for r in recs if r.get("src") == "kernel" and r.get("ev") == "bug"]


INVARIANTS: dict[str, Callable[[Outcome, list[dict[str, Any]], set[str]], list[Violation]]] = {
    "no-foreign-write": no_foreign_write,
    "nothing-left": nothing_left,
    "pins-attributable": pins_attributable,
    "breaker-deadline": breaker_deadline,
    "daemon-answers": daemon_answers,
    "no-daemon-bug": no_daemon_bug,
    "run-started": run_started,
    "no-leaked-process": no_leaked_process,
    "host-nothing-left": host_no_leaked_lease,
}


def check(outcome: Outcome, promises: set[str]) -> list[Violation]:
    """Every invariant's violations for one run."""
    recs = records(outcome)
    out: list[Violation] = []
    for invariant in INVARIANTS.values():
        out += invariant(outcome, recs, promises)
    return out
