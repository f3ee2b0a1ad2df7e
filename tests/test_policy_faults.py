"""Faults in the threads' scenarios: kill the pinning process, the receiver of a passed
context and the remote peer at every step of S5 and S6, under every policy.

After each run: the daemon kept serving (it answers after every actor is gone), nothing
of any process is left (no task but the launcher, no mapping, lease, region, pin, parked
call, message or pending shoot-down), and no foreign write appears under a design that
promises none from long-term pins (``Policy.promises``).  What a policy keeps on purpose while a process lives (a
zombie lease held by pins elsewhere) must be gone once the pins' holder is gone too.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import pytest

from agents.launcher import matrix
from agents.launcher.runner import Outcome, run_scenario
from agents.scenario.parse import parse
from kernel_daemon.designs import BUILTIN
from kernel_daemon.policy import Promise

SAFE = {name for name, cls in BUILTIN.items() if Promise.NO_FOREIGN_WRITE_LONGTERM in cls.promises}
LEFT_EMPTY = ("parked", "inflight", "pending_forks", "leases", "mappings", "mrs",
              "pinned_blocks", "busy_blocks", "shootdowns", "mailboxes")


def variants(path: str, victims: tuple[str, ...]) -> list[tuple[str, str]]:
    """The scenario with ``!kill V`` after each of its steps, for each victim; the
    expectations are dropped (a killed actor changes them) and lines of dead actors
    are kept only to prove the daemon still answers the living."""
    with open(path) as fh:
        lines = fh.read().splitlines()
    body = []
    for ln in lines:
        keep = ln.split("=>", 1)[0].rstrip() if "=>" in ln and not ln.lstrip().startswith("#") \
            else ln
        body.append(keep)
    steps = [i for i, ln in enumerate(body)
             if ln.strip() and not ln.lstrip().startswith(("#", "set "))]
    out = []
    # a line waiting for what a dead actor will never send ends the run after this long
    body.insert(0, "set step_timeout = 1")
    steps = [i + 1 for i in steps]
    for victim in victims:
        for i in steps:
            text = [*body[: i + 1], f"!kill {victim}", *body[i + 1 :]]
            out.append((f"{victim}@{i + 1}", "\n".join(text)))
    return out


def check(outcome: Outcome, policy: str) -> list[str]:
    problems = [f for f in outcome.failures
                if "did not answer after the run" in f or "daemon exited" in f]
    stats = outcome.final_stats
    if not stats:
        problems.append("no final kernel statistics")
    if stats.get("tasks", 1) != 1:
        problems.append(f"tasks left: {stats.get('tasks')}")
    problems += [f"{key} left: {stats[key]}" for key in LEFT_EMPTY if stats.get(key)]
    if policy in SAFE and outcome.foreign_writes:
        problems.append(f"foreign write under {policy}: {outcome.foreign_writes}")
    return problems


def run_variant(text: str, name: str, policy: str) -> tuple[str, list[str]]:
    outcome = run_scenario(parse(text, name), "emulator", policy, show_pids=False)
    return f"{name} under {policy}", check(outcome, policy)


@pytest.mark.timeout(900)
@pytest.mark.parametrize("scenario,victims", [
    ("S05_pin_truncate_reuse.scn", ("A", "R")),
    ("S06_pass_context_then_exit.scn", ("A", "B", "R")),
])
def test_kill_at_every_step(scenario: str, victims: tuple[str, ...]) -> None:
    work = [(text, name, policy) for name, text in
            variants(os.path.join(matrix.THREADS, scenario), victims)
            for policy in matrix.policies()]
    with ThreadPoolExecutor(max_workers=6) as pool:
        results = list(pool.map(lambda w: run_variant(*w), work))
    bad = {what: problems for what, problems in results if problems}
    assert not bad, f"{len(bad)} of {len(results)} runs: {dict(list(bad.items())[:5])}"
