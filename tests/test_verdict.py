"""A verdict never passes a run by mistake.

* An actor that dies where no line expects it fails the run, on both targets, with the
  line during or after which it died and how (``!expect-death`` writes a death between
  lines down).
* ``--target both`` compares transcripts with PIDs and mapping addresses normalised, so
  a scenario that maps a file gives the same transcript on both targets.
* Verdicts do not depend on machine load: the conformance cases that used to order
  events with ``pause`` still pass when an actor is held up (``!delay``) where load would
  hold it up.

None of these scenarios sets ``lease_break_time`` on the host target.
"""

from __future__ import annotations

import io
import json
import os
import re
from contextlib import redirect_stdout

import pytest
from dual import same_on_both_targets
from lease_cases import CASES

from kemu.agents.launcher import cli
from kemu.agents.launcher.matrix import summarize
from kemu.agents.launcher.runner import Outcome, run_scenario
from kemu.agents.scenario import transcript
from kemu.agents.scenario.parse import Expect, ScenarioError, parse

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARGETS = [pytest.param("host", marks=pytest.mark.host), "emulator"]

#: A holds a write lease with no SIGIO handler; B's open breaks it: A dies of SIGIO
#: after line 3, and the run ends there (the death is found at the end of the run)
UNNOTICED = """
A: fd = open("/f", O_RDONLY|O_CREAT, 0o644)    => 3
A: fcntl(fd, F_SETLEASE, F_WRLCK)              => 0
B: open("/f", O_RDONLY|O_NONBLOCK)             => EWOULDBLOCK
"""


def run(text: str, target: str = "emulator", name: str = "verdict") -> Outcome:
    """Run scenario ``text`` on ``target`` (PIDs hidden)."""
    return run_scenario(parse(text.strip() + "\n", name), target, show_pids=False, render=False)


def end_record(outcome: Outcome) -> dict[str, object]:
    """The run's ``end`` record in its event log."""
    with open(os.path.join(outcome.run_dir, "events.jsonl")) as fh:
        ends = [r for r in map(json.loads, fh) if r.get("ev") == "end"]
    assert len(ends) == 1
    return dict(ends[0])


# --- unexpected deaths -------------------------------------------------------------------


@pytest.mark.timeout(120)
@pytest.mark.parametrize("target", TARGETS)
def test_a_death_of_sigio_nobody_expects_fails_the_run(target: str) -> None:
    """A holder killed by SIGIO that no line expects fails the run, with the line and how."""
    out = run(UNNOTICED, target)
    assert not out.passed, "\n".join(out.transcript)
    assert "line 3: actor A died unexpectedly: killed by SIGIO" in out.failures
    assert end_record(out)["deaths"] == ["A killed by SIGIO (unexpected, line 3)"]
    assert "    ^^^ UNEXPECTED DEATH of A (during or after line 3)" in out.transcript
    assert out.transcript[-1] == "=== FAIL (1) ==="


@pytest.mark.timeout(120)
@pytest.mark.parametrize("target", TARGETS)
def test_a_death_found_before_a_later_line_fails_the_run(target: str) -> None:
    """The death is found before the next line runs (or at the end): one failure."""
    # found before line 4 runs, or at the end of the run if SIGIO was still on its way
    out = run(UNNOTICED + 'B: stat("/f")  => {"st_size": 0}\n', target)
    assert not out.passed
    assert len(out.failures) == 1, out.failures
    assert re.fullmatch(r"line [34]: actor A died unexpectedly: killed by SIGIO",
                        out.failures[0]), out.failures


@pytest.mark.timeout(120)
@pytest.mark.parametrize("target", TARGETS)
def test_expect_death_writes_the_death_down(target: str) -> None:
    """``!expect-death A SIGIO`` right after the breaking line: the run passes."""
    out = run(UNNOTICED + "!expect-death A SIGIO\n", target)
    assert out.passed, "\n".join(out.failures + out.transcript)
    assert out.deaths == ["A killed by SIGIO"]
    assert end_record(out)["deaths"] == ["A killed by SIGIO"]
    assert "[A] +++ killed by SIGIO +++" in out.transcript
    # the matrix cell says the death once, and the finished folder keeps no socket
    assert summarize(out).count("SIGIO") == 1, summarize(out)
    assert "director.sock" not in os.listdir(out.run_dir)


@pytest.mark.host
@pytest.mark.timeout(120)
def test_expect_death_same_on_both_targets() -> None:
    """The written-down death gives one transcript on both targets."""
    same_on_both_targets(parse(UNNOTICED + "!expect-death A SIGIO\n", "expect_death"))


@pytest.mark.timeout(120)
@pytest.mark.parametrize("target", TARGETS)
def test_a_fork_child_that_dies_unexpectedly_counts(target: str) -> None:
    """A fork child killed between lines counts as much as a top-level actor."""
    out = run("""
A: fork() as C
C: getpid()                                    => ok
A: kill(C.pid, SIGTERM)                        => 0
""", target)
    assert not out.passed
    assert out.failures == ["line 3: actor C died unexpectedly: killed by SIGTERM"]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("target", TARGETS)
def test_a_fork_child_death_written_down_passes(target: str) -> None:
    """... and ``!expect-death`` takes it; the run goes on."""
    out = run("""
A: fork() as C
A: kill(C.pid, SIGTERM)                        => 0
!expect-death C SIGTERM
A: getpid()                                    => ok
""", target)
    assert out.passed, "\n".join(out.failures + out.transcript)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("target", TARGETS)
def test_a_fork_child_exit_status_is_shown(target: str) -> None:
    """A fork child's ``exit(3)`` is shown as strace shows it, ``+++ exited with 3
    +++`` (its zombie's status: the launcher is not its parent), not as 0."""
    out = run("""
A: fork() as C
C: exit(3)
A: waitpid(C.pid)                              => {"status": "WIFEXITED(s) && WEXITSTATUS(s) == 3"}
""", target)
    assert out.passed, "\n".join(out.failures + out.transcript)
    assert any(re.search(r"\[C[^]]*\] \+\+\+ exited with 3 \+\+\+", line)
               for line in out.transcript), out.transcript


@pytest.mark.timeout(60)
def test_a_death_of_a_real_time_signal_is_named_as_scenarios_name_it() -> None:
    """Killed by SIGRTMIN+1: named as a scenario names it, found and written down."""
    text = "A: fork() as C\nA: kill(C.pid, SIGRTMIN+1) => 0\n"
    out = run(text)
    assert out.failures == ["line 2: actor C died unexpectedly: killed by SIGRTMIN+1"]
    assert run(text + "!expect-death C SIGRTMIN+1\n").passed


@pytest.mark.timeout(60)
def test_a_death_under_a_call_that_does_not_expect_it() -> None:
    """Killed under a call expecting a value: the line mismatches and the death counts."""
    out = run("""
A: getpid()                                    => ok
A: kill(A.pid, SIGTERM)                        => 0
""")
    assert not out.passed
    assert "line 2: actor A died unexpectedly: killed by SIGTERM" in out.failures
    assert any("expected 0" in f for f in out.failures)
    assert end_record(out)["deaths"] == ["A killed by SIGTERM (unexpected, line 2)"]


@pytest.mark.timeout(60)
def test_a_death_the_line_expects_does_not_count() -> None:
    """``=> killed SIGTERM`` on the line: nothing unexpected."""
    out = run("""
A: getpid()                                    => ok
A: kill(A.pid, SIGTERM)                        => killed SIGTERM
""")
    assert out.passed, "\n".join(out.failures + out.transcript)
    assert out.deaths == []


@pytest.mark.timeout(60)
def test_a_join_that_expects_the_death_takes_it() -> None:
    """An actor dead before its join line that expects the death is left to that line."""
    # B dies of SIGUSR1 (no handler) while its open sleeps; the join line expects it
    out = run("""
A: signal(SIGIO, "record")                     => 0
A: fd = open("/f", O_RDONLY|O_CREAT, 0o644)    => 3
A: fcntl(fd, F_SETLEASE, F_WRLCK)              => 0
B: open("/f", O_RDWR) &
!signal B SIGUSR1
B: join                                        => killed SIGUSR1
""")
    assert out.passed, "\n".join(out.failures + out.transcript)


@pytest.mark.timeout(60)
def test_an_exit_line_and_a_kill_are_expected_deaths() -> None:
    """``exit(N)`` and ``!kill`` are deaths the scenario wrote down."""
    out = run("""
A: fork() as C
C: exit(3)                                     => 0
!kill A
B: getpid()                                    => ok
""")
    assert out.passed, "\n".join(out.failures + out.transcript)


@pytest.mark.timeout(60)
def test_expect_death_fails_on_another_death() -> None:
    """A death of another signal than expected fails the line."""
    out = run(UNNOTICED + "!expect-death A SIGKILL\n")
    assert not out.passed
    assert len(out.failures) == 1
    assert out.failures[0].startswith("line 4: [A] +++ killed by SIGIO +++")
    assert out.failures[0].endswith("expected killed SIGKILL")


@pytest.mark.timeout(60)
def test_expect_death_fails_when_the_actor_lives() -> None:
    """An actor still alive after the step timeout fails the line (the run goes on)."""
    out = run("set step_timeout = 1\nB: getpid() => ok\n!expect-death B SIGIO\n")
    assert not out.passed
    assert out.failures == ["line 3: +++ B still alive after 1 s +++: B did not die"]


@pytest.mark.timeout(60)
def test_a_death_the_scenario_expects_under_other_designs_is_unjudged() -> None:
    """Under a design the scenario names nowhere, a death it expects only under named
    designs is shown, not judged; under a named design it is judged."""
    text = UNNOTICED.strip() + "\n[upstream] !expect-death A SIGIO\n"
    mine = os.path.join(ROOT, "docs", "examples", "refuse_truncate.py")
    out = run_scenario(parse(text, "unjudged"), "emulator", mine, show_pids=False,
                       render=False)
    assert out.passed and out.unjudged == 1, "\n".join(out.failures + out.transcript)
    assert out.transcript[-1] == "=== PASS (1 unjudged) ==="
    legacy = run_scenario(parse(text, "judged"), "emulator", "legacy", show_pids=False,
                          render=False)
    assert legacy.failures == ["line 3: actor A died unexpectedly: killed by SIGIO"]


def test_expect_death_of_an_exit_status_or_of_any_kind() -> None:
    """``!expect-death A exit 3`` and ``!expect-death A`` parse to their expectations."""
    sc = parse("A: getpid()\n!expect-death A exit 3\n!expect-death A\n")
    assert sc.steps[1].expects == [Expect("killed", "exited with 3")]
    assert sc.steps[1].expects[0].describe() == "exited with 3"
    assert sc.steps[2].expects == [Expect("killed", None)]


def test_expect_death_and_asleep_parse() -> None:
    """The new lines parse, with prefixes and comments; malformed ones are refused."""
    sc = parse("A: getpid()\n!expect-death A SIGIO  # the holder\n[upstream] !asleep A\n")
    assert (sc.steps[1].kind, sc.steps[1].fault, sc.steps[1].actor) == (
        "fault", "expect-death", "A")
    assert sc.steps[1].expects == [Expect("killed", "SIGIO")]
    assert (sc.steps[2].fault, sc.steps[2].only) == ("asleep", frozenset({"upstream"}))
    for bad in ("!expect-death A SIGFOO", "!expect-death A exit", "!expect-death a",
                "!asleep A SIGIO", "!expect-death Z SIGIO"):
        with pytest.raises(ScenarioError):
            parse(f"A: getpid()\n{bad}\n")


# --- !asleep ------------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_asleep_without_a_background_call_fails() -> None:
    """``!asleep`` needs a background call to wait for."""
    out = run("A: getpid() => ok\n!asleep A\n")
    assert out.failures == ["line 2: !asleep A: no background call"]


@pytest.mark.timeout(60)
def test_asleep_fails_when_the_call_does_not_sleep_again() -> None:
    """A background call that finished never sleeps again: the line fails in bounded time."""
    # B's open is done once A releases the only lease: it never sleeps again
    out = run("""
set step_timeout = 1
A: signal(SIGIO, "record")                     => 0
A: fd = open("/f", O_RDONLY|O_CREAT, 0o644)    => 3
A: fcntl(fd, F_SETLEASE, F_WRLCK)              => 0
B: open("/f", O_RDWR) &
A: sigwait(SIGIO)                              => *
A: fcntl(fd, F_SETLEASE, F_UNLCK)              => 0
!asleep B
B: join                                        => 3
""")
    assert out.failures == ["line 8: B's open did not sleep in the kernel within 1.0 s"]


# --- transcripts compared with what differs between runs normalised ----------------------


def test_comparable_names_addresses_by_mapping() -> None:
    """Addresses become mapping names (and offsets): host and emulator texts agree."""
    lines = [
        "=== x.scn [target=host policy=upstream] ===",
        "[A] mmap(8192, PROT_READ|PROT_WRITE, MAP_SHARED, 3, 0) = 0x7fa67073e000",
        "[A] mmap(4096, PROT_READ, MAP_PRIVATE, 3, 4096) = 0x7fa67073d000",
        '[A] store(0x7fa67073f000, "hello") = 5',
        '[A] load(0x7fa67073d000, 5) = "hello"',
        "[A] munmap(0x7fa67073e000, 8192) = 0",
        "[A] signals() = [{si_signo=SIGSEGV, si_code=SEGV_MAPERR, si_addr=0x7fa600000000}]",
        "[A] getpid() = <A>",
        "=== PASS ===",
    ]
    assert transcript.comparable(lines) == [
        "[A] mmap(8192, PROT_READ|PROT_WRITE, MAP_SHARED, 3, 0) = ADDR1",
        "[A] mmap(4096, PROT_READ, MAP_PRIVATE, 3, 4096) = ADDR2",
        '[A] store(ADDR1+0x1000, "hello") = 5',
        '[A] load(ADDR2, 5) = "hello"',
        "[A] munmap(ADDR1, 8192) = 0",
        "[A] signals() = [{si_signo=SIGSEGV, si_code=SEGV_MAPERR, si_addr=ADDR3}]",
        "[A] getpid() = <A>",
    ]
    # the emulator's fixed addresses give the same text
    emu = [line.replace("0x7fa67073e000", "0x7f0000000000")
           .replace("0x7fa67073f000", "0x7f0000001000")
           .replace("0x7fa67073d000", "0x7f0000003000")
           .replace("0x7fa600000000", "0x7f1000000000") for line in lines]
    assert transcript.comparable(emu) == transcript.comparable(lines)


#: a file mapped twice, a store through one mapping seen through the other, PIDs shown
MAPS_A_FILE = """
# title: a file mapped on both targets
A: fd = open("/f", O_RDWR|O_CREAT, 0o644)           => 3
A: ftruncate(fd, 8192)                              => 0
A: p = mmap(8192, PROT_READ|PROT_WRITE, MAP_SHARED, fd, 0) => ok
A: q = mmap(4096, PROT_READ, MAP_SHARED, fd, 4096)  => ok
A: store(p + 4096, "hello")                         => 5
A: load(q, 5)                                       => b"hello"
A: munmap(p, 8192)                                  => 0
A: pread(fd, 5, 4096)                               => b"hello"
A: getpid()                                         => ok
A: fork() as C
C: getpid()                                         => ok
C: load(q, 5)                                       => b"hello"
"""


@pytest.mark.host
@pytest.mark.timeout(120)
def test_a_scenario_that_maps_a_file_is_the_same_on_both_targets() -> None:
    """Mapping a file, storing and loading through it: one transcript on both targets."""
    same_on_both_targets(parse(MAPS_A_FILE, "maps_a_file"))


@pytest.mark.host
@pytest.mark.timeout(180)
def test_launch_run_target_both_finds_no_difference(tmp_path: os.PathLike[str]) -> None:
    """``launch.py run --target both`` on that scenario: no difference, status 0."""
    path = os.path.join(str(tmp_path), "maps_a_file.scn")
    with open(path, "w") as fh:
        fh.write(MAPS_A_FILE)
    out = io.StringIO()
    with redirect_stdout(out):
        code = cli.main(["run", path, "--target", "both"])
    assert code == 0, out.getvalue()
    assert "transcripts are identical" in out.getvalue()


@pytest.mark.timeout(120)
def test_a_target_that_could_not_run_is_not_a_pass(tmp_path: os.PathLike[str],
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """A ``host_fs`` this machine cannot give skips the host run: ``run --target both``
    then runs the emulator alone and exits 4 (``KSFT_SKIP``), not 0, and ``--target
    host`` runs nothing and exits 4 too.  A failure on the target that ran still
    exits 1."""
    monkeypatch.setattr(cli.hostfs, "unavailable",
                        lambda choice: None if choice == "run" else f"host_fs {choice}: no")
    path = os.path.join(str(tmp_path), "on_xfs.scn")
    with open(path, "w") as fh:
        fh.write("set host_fs = xfs\nA: getpid()\n")
    for target in ("both", "host"):
        out = io.StringIO()
        with redirect_stdout(out):
            code = cli.main(["run", path, "--target", target])
        assert code == cli.KSFT_SKIP == 4, out.getvalue()
        assert "skipped on the host: host_fs xfs: no" in out.getvalue()
    with open(path, "w") as fh:
        fh.write("set host_fs = xfs\nA: getpid() => 1\n")
    with redirect_stdout(io.StringIO()):
        assert cli.main(["run", path, "--target", "both"]) == 1


# --- verdicts that do not depend on load -------------------------------------------------


def held_up(case: str, after: str, fault: str) -> str:
    """Case ``case``'s scenario with ``fault`` (``!delay A 0.5``) inserted after the line
    that starts with ``after``: an actor held up there as load would hold it up."""
    text = next(c.scenario for c in CASES if c.name == case)
    lines = text.splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith(after))
    return "\n".join([*lines[: at + 1], fault, *lines[at + 1 :]]) + "\n"


HELD_UP = {
    # the holder takes its first notice late: the second must not merge with it
    "two_sigio": ("two_sigio", "A: fcntl(g, F_SETLEASE, F_WRLCK)", "!delay A 0.5"),
    # the breaker goes back to sleep late after the first holder's release
    "several_holders": ("several_holders", "A: fcntl(a, F_SETLEASE, F_UNLCK)",
                        "!delay C 0.5"),
}


@pytest.mark.timeout(120)
@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("name", sorted(HELD_UP))
def test_case_passes_with_an_actor_held_up(name: str, target: str) -> None:
    """The cases that paused to order events pass with an actor held up where load would."""
    out = run(held_up(*HELD_UP[name]), target, name)
    assert out.passed, "\n".join(out.failures + out.transcript)


@pytest.mark.timeout(60)
def test_stale_downgrade_time_passes_when_the_holder_is_slow() -> None:
    """The holder held up past the old deadline: the case still passes."""
    # the old deadline passes before the holder takes the lease again (emulator only:
    # the case sets lease_break_time)
    text = held_up("stale_downgrade_time", "A: fcntl(fd, F_SETLEASE, F_RDLCK)", "!delay A 1.5")
    out = run(text, "emulator", "stale_downgrade_time")
    assert out.passed, "\n".join(out.failures + out.transcript)


def test_every_pause_left_waits_for_a_deadline() -> None:
    """``pause`` orders nothing: each one left lets a kernel deadline pass (or shows that
    none comes), and says so in a comment line just above it."""
    texts = [c.scenario for c in CASES]
    for name in os.listdir(os.path.join(ROOT, "tests")):
        if name.endswith(".py") and name != os.path.basename(__file__):
            with open(os.path.join(ROOT, "tests", name)) as fh:
                texts.append(fh.read())
    for folder, _, files in os.walk(os.path.join(ROOT, "scenarios")):
        for name in files:
            with open(os.path.join(folder, name)) as fh:
                texts.append(fh.read())
    for text in texts:
        lines = text.splitlines()
        for i, line in enumerate(lines):
            if re.match(r"^(\[[^]]*\]\s*)?[A-Z]\w*:\s*pause\(", line.strip()):
                above = lines[i - 1].strip() if i else ""
                assert above.startswith("#") and ("deadline" in above or "passes" in above), (
                    f"a pause with no comment saying which deadline it waits for: {line}")


@pytest.mark.timeout(120)
@pytest.mark.parametrize("target", TARGETS)
def test_a_skipped_lines_variable_is_unset_in_turn(target: str) -> None:
    """A line skipped for an unset input leaves its own variable unset, with the same
    reason: the lines that use it are skipped too, not scenario errors over a name that
    was never bound (a reproducer recorded under one design ran into one under every
    design whose mmap failed)."""
    out = run("""
A: fd = open("/missing", O_RDWR, 0o644)          => ENOENT
A: p = mmap(4096, PROT_READ|PROT_WRITE, MAP_SHARED, fd, 0) => skipped
A: store(p, "x")                                => skipped
A: munmap(p, 4096)                              => skipped
A: getpid()                                     => *
""", target)
    assert out.passed, out.failures
    assert [str(line.reply.get("skipped")) for line in out.lines[2:4]] == [
        "open failed with ENOENT"] * 2
