"""``launch.py explore``: fault points, variants, the invariants, and a broken design
caught with a reproducer that fails on its own."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from kemu.agents.launcher import explore, matrix
from kemu.agents.launcher.runner import run_scenario
from kemu.agents.scenario.parse import load, parse

ROOT = Path(matrix.ROOT)
S05 = os.path.join(matrix.THREADS, "S05_pin_truncate_reuse.scn")
BROKEN = str(ROOT / "tests" / "designs" / "false_promise.py")


def test_fault_points_and_variants() -> None:
    text = "A: fd = open('/f', O_RDWR|O_CREAT, 0o644) => 3\nA: fork() as C\nB: getpid() => ok\n"
    sc = parse(text, "t.scn")
    points = explore.fault_points(sc, ["kill", "kernel"])
    assert [p.describe() for p in points] == [
        "kill A after line 1", "kill B after line 1", "kill the kernel after line 1",
        "kill A after line 2", "kill B after line 2", "kill C after line 2",
        "kill the kernel after line 2",
        "kill A after line 3", "kill B after line 3", "kill C after line 3",
        "kill the kernel after line 3"]
    body = explore.variant(text, sc, explore.Fault("kill", "A", 1))
    assert body.splitlines() == ["set step_timeout = 1.0",
                                 "A: fd = open('/f', O_RDWR|O_CREAT, 0o644)", "!kill A",
                                 "A: fork() as C", "B: getpid()"]
    stop = explore.variant(text, sc, explore.Fault("stop", "B", 1)).splitlines()
    assert stop.index("!stop B") < stop.index("!cont B") < stop.index("B: getpid()")
    assert "!delay A 0.3" in explore.variant(text, sc, explore.Fault("delay", "A", 2))
    parse(body, "variant.scn")  # every variant is a scenario


@pytest.mark.timeout(120)
def test_a_killed_kernel_ends_the_run_at_once_with_a_clear_error() -> None:
    text = ("A: fd = open('/f', O_RDWR|O_CREAT, 0o644) => 3\n!kill kernel\n"
            "A: pwrite(fd, 'x', 0) => 1\nB: getpid() => ok\n")
    outcome = run_scenario(parse(text, "kernel.scn"), "emulator", "legacy", show_pids=False)
    assert outcome.kernel_killed == 2 and not outcome.passed
    assert any("kernel daemon was killed at line 2" in f for f in outcome.failures)
    assert outcome.wall < 15
    from kemu.agents.launcher import invariants

    assert invariants.check(outcome, set()) == []  # the run ended as it must


@pytest.mark.timeout(120)
def test_a_delayed_actor_still_answers() -> None:
    text = ("set lease_break_time = 0.3\nA: fd = open('/f', O_RDWR|O_CREAT, 0o644) => 3\n"
            "!delay A 0.2\nB: getpid() => ok\nA: pwrite(fd, 'x', 0) => 1\n")
    outcome = run_scenario(parse(text, "delay.scn"), "emulator", "legacy", show_pids=False)
    assert outcome.passed, outcome.failures


@pytest.mark.timeout(600)
def test_a_broken_promise_is_caught_with_a_reproducer_that_fails_on_its_own(
        tmp_path: Path) -> None:
    """A design that frees pinned blocks (as legacy) but promises no foreign write from
    long-term pins: explore finds the violation, cuts S5 down to the lines the hazard
    needs, and the reproducer fails when run by itself."""
    exp = explore.explore(S05, [BROKEN], ["kill"], victims=["R"], progress=None,
                          out_dir=str(tmp_path))
    assert exp.designs == ["false-promise"]
    broken = {v.invariant for r in exp.violations for v in r.violations}
    assert "no-foreign-write" in broken
    path = exp.reproducers[("false-promise", "no-foreign-write")]
    sc = load(path)
    calls = [s for s in sc.steps if s.kind in ("call", "join")]
    # open, ftruncate, mmap, open_device, reg_mr, send, recv, truncate(+join), the write,
    # and the check: S5 has 18 lines
    assert len(calls) <= 12, "\n".join(s.text for s in sc.steps)
    assert sc.title.startswith("no-foreign-write broken under false-promise")
    outcome = run_scenario(sc, "emulator", BROKEN, show_pids=False)
    assert not outcome.passed
    assert any("foreign_writes()" in f for f in outcome.failures), outcome.failures
    assert outcome.foreign_writes
    # the same file under legacy, which promises nothing: no invariant broken
    legacy = explore.explore(S05, ["legacy"], [], progress=None, minimize=False)
    assert not legacy.violations


@pytest.mark.timeout(300)
def test_the_command_line_writes_the_report(tmp_path: Path) -> None:
    report = tmp_path / "report"
    out = subprocess.run(
        [sys.executable, "launch.py", "explore", S05, "--designs", "legacy", "upstream",
         "--victims", "R", "--faults", "kill", "--report", str(report), "--no-minimize"],
        cwd=ROOT, capture_output=True, text=True, timeout=280, check=False)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "designs first part at line 14" in out.stdout
    assert "upstream: Policy.reg_mr EOPNOTSUPP" in out.stdout
    page = (report / "index.html").read_text()
    assert 'data-violations="0"' in page and 'class="parting"' in page
    assert "Policy.reg_mr EOPNOTSUPP" in page
    bad = subprocess.run([sys.executable, "launch.py", "explore", S05, "--faults", "explode"],
                         cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)
    assert bad.returncode == 2 and "unknown fault kinds explode" in bad.stderr


@pytest.mark.host
@pytest.mark.timeout(300)
def test_explore_on_the_host_kernel_leaks_nothing() -> None:
    """The host target: the host kernel is the oracle; killing either actor at every
    step of a lease break leaves no process and no lease in /proc/locks."""
    path = os.path.join(matrix.ROOT, "scenarios", "lease_break_basic.scn")
    exp = explore.explore(path, None, ["kill"], progress=None, minimize=False, target="host")
    assert exp.designs == ["host"]
    assert len(exp.results) == 1 + len(explore.fault_points(exp.scenario, ["kill"]))
    assert all(r.outcome.target == "host" for r in exp.results)
    bad = {r.fault.describe(): [str(v) for v in r.violations] for r in exp.violations}
    assert not bad, bad


def test_each_invariant_sees_what_breaks_it(tmp_path: Path) -> None:
    """The checks themselves, on made-up outcomes: each one fires on its evidence."""
    from kemu.agents.launcher import invariants
    from kemu.agents.launcher.runner import Outcome

    def outcome(**kw: object) -> Outcome:
        base: dict[str, object] = dict(scenario="t.scn", target="emulator", policy="x",
                                       lines=[], transcript=[], run_dir=str(tmp_path),
                                       failures=[], final_stats={"tasks": 1})
        base.update(kw)
        return Outcome(**base)  # type: ignore[arg-type]

    clean = outcome()
    assert invariants.check(clean, {"NO_FOREIGN_WRITE_LONGTERM"}) == []
    fw = {"via": "RDMA WRITE", "writer": 7, "block": 3, "file": "/f", "offset": 0,
          "into": "/g"}
    assert [v.invariant for v in invariants.check(outcome(foreign_writes=[fw]),
                                                  {"NO_FOREIGN_WRITE_LONGTERM"})] == \
        ["no-foreign-write"]
    assert invariants.check(outcome(foreign_writes=[fw]), {"NO_FOREIGN_WRITE_SHORTTERM"}) == []
    left = invariants.check(outcome(final_stats={"tasks": 2, "mrs": 1, "busy_blocks": 2}), set())
    assert {str(v) for v in left} == {"nothing-left: 1 task(s) left besides the launcher",
                                      "nothing-left: mrs left: 1",
                                      "nothing-left: busy_blocks left: 2"}
    assert [v.invariant for v in invariants.check(
        outcome(audit={"unattributed": [5]}), set())] == ["pins-attributable"]
    assert [v.invariant for v in invariants.check(outcome(leaked=[4242]), set())] == \
        ["no-leaked-process"]
    host = outcome(target="host", final_stats={},
                   final_locks=[{"state": "ACTIVE", "type": "WRITE", "pid": 9,
                                 "path": "/f", "waiter": False}])
    assert [v.invariant for v in invariants.check(host, set())] == ["nothing-left"]
    assert [v.invariant for v in invariants.check(
        outcome(failures=["actor A did not connect (see x)"]), set())] == ["run-started"]
    # a breaker held past lease_break_time + tolerance
    (tmp_path / "events.jsonl").write_text("\n".join([
        '{"src": "kernel", "ev": "layout-break", "t": 1.0, "by": 7, "lbt": 0.5}',
        '{"src": "kernel", "ev": "park", "t": 1.0, "pid": 7, "id": 3}',
        '{"src": "kernel", "ev": "ret", "t": 4.0, "pid": 7, "id": 3}']) + "\n")
    late = invariants.check(clean, set())
    assert [v.invariant for v in late] == ["breaker-deadline"]
    (tmp_path / "events.jsonl").write_text(
        '{"src": "kernel", "ev": "layout-break", "t": 1.0, "by": 7, "lbt": 0}\n'
        '{"src": "kernel", "ev": "park", "t": 1.0, "pid": 7, "id": 3}\n'
        '{"src": "kernel", "ev": "ret", "t": 9.0, "pid": 7, "id": 3}\n')
    assert invariants.check(clean, set()) == []  # an exclusive lease: never forced
