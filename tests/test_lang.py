"""The scenario language of issue 10, section 3: what an expectation can say.

Alternatives (``EBUSY or EAGAIN``, ``not EAGAIN``), values known only when the line
runs (``A.pid``, a variable, ``exactly {...}``, ``absent``), time (``after 1s``,
``within 0.1s``), reactions in a signal handler (``on SIGIO: ...``), ``sigtimedwait``.
Each feature is parsed here without a process, then run on the emulator (and, marked
``host``, on both targets with identical transcripts); each run that should fail is
checked to fail, so the feature cannot pass a run by mistake.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import errno as E

from dual import same_on_both_targets

from kemu.agents.launcher.runner import run_scenario
from kemu.agents.scenario.parse import ABSENT, Expect, ScenarioError, parse, parse_expect
from kemu.protocol import linux

# --- parsing and matching, no process ---------------------------------------------------


def test_alternatives_parse_and_match() -> None:
    e = parse_expect("EBUSY or EAGAIN")
    assert e.kind == "alt" and e.describe() == "EBUSY or EAGAIN"
    assert e.matches({"errno": E.EAGAIN}) and e.matches({"errno": E.EBUSY})
    assert not e.matches({"errno": E.EINTR}) and not e.matches({"ok": 0})
    # '|' between errno names only: elsewhere it stays the expression's bitwise or
    assert parse_expect("EBUSY | EAGAIN") == e
    v = parse_expect("O_RDWR | O_APPEND")
    assert v.kind == "value" and v.value == linux.O_RDWR | linux.O_APPEND
    mixed = parse_expect("3 or EINTR")
    assert mixed.matches({"ok": 3}) and mixed.matches({"errno": E.EINTR})
    assert not mixed.matches({"ok": 4})


def test_negation_matches_anything_but_its_value() -> None:
    e = parse_expect("not EAGAIN")
    assert e.matches({"ok": 3}) and e.matches({"errno": E.EINTR})
    assert not e.matches({"errno": E.EAGAIN})
    z = parse_expect("not 0")
    assert z.matches({"ok": 5}) and z.matches({"errno": E.ENOENT}) and not z.matches({"ok": 0})
    # a death or a scenario error is never "anything but"
    assert not z.matches({"killed": "SIGIO"}) and not z.matches({"error": "x"})
    # Python's precedence: 'not' binds tighter than 'or'
    assert parse_expect("not 0 or 0").matches({"ok": 0})


def test_run_time_values() -> None:
    pid = parse_expect("A.pid", frozenset())
    assert pid.source == "A.pid" and pid.value is None
    assert pid.matches({"ok": 123}, {}, {"A": 123}) and not pid.matches({"ok": 124}, {}, {"A": 123})
    assert parse_expect("-A.pid", frozenset()).matches({"ok": -7}, {}, {"A": 7})
    fd = parse_expect("fd + 1", frozenset({"fd"}))
    assert fd.matches({"ok": 4}, {"fd": 3}) and not fd.matches({"ok": 3}, {"fd": 3})
    with pytest.raises(ScenarioError, match="which no earlier line of this actor binds"):
        parse_expect("fd", frozenset())
    # a variable whose call failed: the expectation cannot hold
    assert not fd.matches({"ok": 4}, {"fd": {"__unset__": "open failed"}})


def test_dict_subset_exact_and_absent() -> None:
    got = {"type": 1, "pid": 5}
    assert parse_expect('{"type": 1}').matches({"ok": got})
    assert not parse_expect('exactly {"type": 1}').matches({"ok": got})
    assert parse_expect('exactly {"type": 1, "pid": 5}').matches({"ok": got})
    absent = parse_expect('{"type": 1, "si_fd": absent}')
    assert absent.value == {"type": 1, "si_fd": ABSENT}
    assert absent.matches({"ok": got}) and not absent.matches({"ok": {**got, "si_fd": 3}})
    # exactly, in a list of maps (locks()), holds at every depth
    lst = parse_expect('exactly [{"type": 1, "pid": 5}]')
    assert lst.matches({"ok": [got]}) and not lst.matches({"ok": [{**got, "x": 0}]})


def test_time_bounds() -> None:
    after = parse_expect("3 after 2s\u00b10.5")
    assert after.time == ("after", 2.0, 0.5) and after.describe() == "3 after 2s\u00b10.5"
    assert after.matches({"ok": 3, "elapsed": 1.6}) and after.matches({"ok": 3, "elapsed": 2.4})
    assert not after.matches({"ok": 3, "elapsed": 1.4}) and not after.matches({"ok": 3, "elapsed": 2.6})
    assert not after.matches({"ok": 3})  # not measured: cannot hold
    default = parse_expect("ok after 1s")
    assert default.matches({"ok": 0, "elapsed": 1.3}, tolerance=0.5)
    assert not default.matches({"ok": 0, "elapsed": 1.3}, tolerance=0.1)
    within = parse_expect("EINTR within 0.1s")
    assert within.matches({"errno": E.EINTR, "elapsed": 0.05})
    assert not within.matches({"errno": E.EINTR, "elapsed": 0.2})
    assert parse_expect("after 1s").kind == "ok"
    assert parse_expect("+-".join(["0 after 1s", "0.2"])).time == ("after", 1.0, 0.2)
    # inside a string the words are data
    assert parse_expect('b"after 1s"') == Expect("value", b"after 1s")


@pytest.mark.parametrize("text", ["not *", "!= 0", "0 or", "killed SIGIO after 1s",
                                  "0 within 1s\u00b10.5", "0 after 99999s", "not killed"])
def test_bad_expectations_are_refused(text: str) -> None:
    with pytest.raises(ScenarioError):
        parse_expect(text, frozenset())


#: malformed lines of the new language -> the line the message must name (the same
#: refusal, through ``kemu run``, is checked for a few in tests/test_bad_scenarios.py)
MALFORMED: dict[str, tuple[str, int]] = {
    "expect_var_of_other_actor": ("B: fd = getpid()\nA: getpid() => fd\n", 2),
    "expect_unknown_actor_pid": ("A: getpid() => Z.pid\n", 1),
    "expect_not_any": ("A: getpid() => not *\n", 1),
    "expect_empty_alternative": ("A: getpid() => 0 or\n", 1),
    "expect_time_of_death": ("A: getpid() => killed SIGIO after 1s\n", 1),
    "expect_within_tolerance": ("A: getpid() => 0 within 1s+-0.5\n", 1),
    "expect_time_huge": ("A: getpid() => 0 after 99999s\n", 1),
    "time_tolerance_negative": ("set time_tolerance = -1\nA: getpid()\n", 1),
    "handler_unknown_signal": ("A: on SIGFOO: getpid()\n", 1),
    "handler_fork": ("A: on SIGIO: getpid(); fork()\n", 1),
    "handler_background": ('A: on SIGIO: open("/f", O_RDONLY) &\n', 1),
    "handler_empty_call": ("A: on SIGIO: getpid(); ; getpid()\n", 1),
    "handler_unbound_var": ("A: on SIGIO: close(fd)\nA: getpid() => fd\n", 2),
}


@pytest.mark.parametrize("name", sorted(MALFORMED))
def test_malformed_lines_are_refused_with_file_and_line(name: str) -> None:
    text, line = MALFORMED[name]
    with pytest.raises(ScenarioError, match=rf"^{name}\.scn:{line}: "):
        parse(text, f"{name}.scn")


def test_fork_child_inherits_bound_names_and_pid_needs_an_actor() -> None:
    parse('A: fd = open("/f", O_RDWR|O_CREAT, 0o644)\nA: fork() as C\nC: dup(fd) => fd + 1\n')
    with pytest.raises(ScenarioError, match=r"t:1: Z\.pid names no actor"):
        parse("A: getpid() => Z.pid\n", "t")


# --- runs -------------------------------------------------------------------------------

RUNTIME = """
set lease_break_time = 1
A: signal(SIGIO, "record")                    => 0
A: fd = open("/f", O_RDONLY|O_CREAT, 0o644)    => 3
A: fcntl(fd, F_SETLEASE, F_WRLCK)              => 0
A: fcntl(fd, F_GETOWN)                         => A.pid
A: fcntl(fd, F_GETOWN)                         => not B.pid
A: fcntl(fd, F_GETOWN_EX)                      => exactly {"type": F_OWNER_PID, "pid": A.pid}
A: fcntl(fd, F_GETOWN_EX)                      => {"type": F_OWNER_PID, "uid": absent}
B: open("/f", O_RDWR|O_NONBLOCK)               => EBUSY | EWOULDBLOCK
A: sigwait(SIGIO)                              => {"si_signo": SIGIO, "si_fd": absent}
B: w = open("/f", O_RDWR) &
B: join                                        => 3 after 1s
A: fcntl(fd, F_GETLEASE)                       => F_UNLCK within 1s
A: g = dup(fd)                                 => fd + 1
A: dup(fd)                                     => g + 1
A: fork() as C
C: fcntl(fd, F_GETOWN)                         => not C.pid
C: dup(g)                                      => g + 2
"""


def test_runtime_values_and_time_on_the_emulator() -> None:
    out = run_scenario(parse(RUNTIME, "runtime"), "emulator", show_pids=False, render=False)
    assert out.passed, "\n".join([*out.failures, *out.transcript])


#: a line that should fail -> the words its failure must say
FAILING = {
    "A: getpid() => B.pid\nB: getpid()\n": "expected B.pid (= <B>)",
    "A: getpid() => not A.pid\n": "expected not A.pid",
    "A: fd = open(\"/f\", O_RDWR|O_CREAT, 0o644)\nA: fcntl(fd, F_GETOWN_EX) => exactly {\"type\": 0}\n":
        "expected exactly",
    "A: fd = open(\"/f\", O_RDWR|O_CREAT, 0o644)\nA: fcntl(fd, F_GETOWN_EX) => {\"pid\": absent}\n":
        "'pid': absent",
    "A: open(\"/nope\", O_RDONLY) => EBUSY or EAGAIN\n": "expected EBUSY or EAGAIN",
    "A: fd = open(\"/f\", O_RDWR|O_CREAT, 0o644)\nA: dup(fd) => fd\n": "expected fd (= 3)",
    "A: pause(0.3) => 0 within 0.1s\n": "expected 0 within 0.1s (took ",
    "A: pause(0.05) => 0 after 1s\n": "expected 0 after 1s (took ",
    "set time_tolerance = 0.01\nA: pause(0.3) => 0 after 0.2s\n": "expected 0 after 0.2s",
}


@pytest.mark.parametrize("text", sorted(FAILING))
def test_an_expectation_that_does_not_hold_fails_the_run(text: str) -> None:
    out = run_scenario(parse(text, "failing"), "emulator", show_pids=False, render=False)
    assert not out.passed, "\n".join(out.transcript)
    assert FAILING[text] in "\n".join(out.failures), out.failures


@pytest.mark.host
@pytest.mark.timeout(120)
def test_runtime_values_and_time_on_both_targets() -> None:
    same_on_both_targets(parse(RUNTIME, "runtime"))


# --- reactions in a signal handler, sigtimedwait ----------------------------------------

HANDLERS = """
A: signal(SIGUSR2, "record")                   => 0
A: fd = open("/f", O_RDONLY|O_CREAT, 0o644)    => 3
A: on SIGIO: fcntl(fd, F_SETLEASE, F_RDLCK) => 0; fcntl(fd, F_GETLEASE) => F_RDLCK
A: fcntl(fd, F_SETLEASE, F_WRLCK)              => 0
B: open("/f", O_RDONLY)                        => 3 within 5s
A: fcntl(fd, F_GETLEASE)                       => F_RDLCK
A: on SIGUSR1: n = getpid() => not B.pid; kill(B.pid, SIGUSR2)
B: signal(SIGUSR2, "record")                   => 0
!signal A SIGUSR1
B: sigwait(SIGUSR2)                            => {"si_signo": SIGUSR2, "si_pid": A.pid}
A: fork() as C
!signal C SIGUSR1
B: sigwait(SIGUSR2)                            => {"si_signo": SIGUSR2, "si_pid": C.pid}
A: exec()
!signal A SIGUSR1
!expect-death A SIGUSR1
"""


def test_handler_calls_show_where_they_happen_on_the_emulator() -> None:
    out = run_scenario(parse(HANDLERS, "handlers"), "emulator", show_pids=False, render=False)
    assert out.passed, "\n".join([*out.failures, *out.transcript])
    t = out.transcript
    # the breaker's open is shown unfinished, the handler's calls that let it in, resumed
    i = t.index('[B] open("/f", O_RDONLY) <unfinished ...>')
    assert t[i + 1].startswith("[A] --- SIGIO {si_signo=SIGIO, si_code=SI_KERNEL}")
    assert t[i + 2:i + 5] == ["[A] fcntl(3, F_SETLEASE, F_RDLCK) = 0",
                              "[A] fcntl(3, F_GETLEASE) = F_RDLCK",
                              "[B] <... open resumed> = 3"]
    # a signal from the launcher: the handler's calls follow the line that sent it
    j = t.index("--- SIGUSR1 sent to A ---")
    assert t[j + 2:j + 4] == ["[A] getpid() = <A>", "[A] kill(<B>, SIGUSR2) = 0"]
    # the fork child kept the handler; the exec'd image has none: SIGUSR1 kills it
    assert "[C] kill(<B>, SIGUSR2) = 0" in t and "[A] +++ killed by SIGUSR1 +++" in t


def test_a_handler_call_that_misses_its_expectation_fails_the_run() -> None:
    text = """
A: fd = open("/f", O_RDONLY|O_CREAT, 0o644)    => 3
A: on SIGIO: fcntl(fd, F_SETLEASE, F_UNLCK) => EAGAIN
A: fcntl(fd, F_SETLEASE, F_WRLCK)              => 0
B: open("/f", O_RDWR)                          => 3
"""
    out = run_scenario(parse(text, "handler_miss"), "emulator", show_pids=False, render=False)
    assert not out.passed
    assert any(f.startswith("line 3: [A] fcntl(3, F_SETLEASE, F_UNLCK) = 0: expected EAGAIN")
               for f in out.failures), out.failures


def test_without_the_handler_the_breaker_waits() -> None:
    """The same break with a recording handler only: the breaker waits out
    lease_break_time, so the 'within' bound of the handler case can fail."""
    text = """
set lease_break_time = 1
A: signal(SIGIO, "record")                     => 0
A: fd = open("/f", O_RDONLY|O_CREAT, 0o644)    => 3
A: fcntl(fd, F_SETLEASE, F_WRLCK)              => 0
B: open("/f", O_RDWR)                          => 3 within 0.5s
"""
    out = run_scenario(parse(text, "no_handler"), "emulator", show_pids=False, render=False)
    assert not out.passed and "expected 3 within 0.5s (took 1." in out.failures[0], out.failures


def test_sigtimedwait_times_out_then_takes_the_blocked_signal() -> None:
    text = """
A: sigblock(SIGUSR1)                           => 0
A: sigtimedwait(SIGUSR1, 0.1)                  => EAGAIN
B: kill(A.pid, SIGUSR1)                        => 0
A: sigtimedwait(SIGUSR1, 5)                    => {"si_signo": SIGUSR1, "si_code": SI_USER, "si_pid": B.pid}
"""
    out = run_scenario(parse(text, "stw"), "emulator", show_pids=False, render=False)
    assert out.passed, "\n".join([*out.failures, *out.transcript])


@pytest.mark.host
@pytest.mark.timeout(120)
def test_handlers_on_both_targets() -> None:
    same_on_both_targets(parse(HANDLERS, "handlers"))


SIGTIMEDWAIT = """
import os, signal
from kemu.agents.lib.sigrec import recorder
rec = recorder()
rec.block([signal.SIGUSR1])
assert rec.sigtimedwait([signal.SIGUSR1], 0.05) is None
os.kill(os.getpid(), signal.SIGUSR1)
info = rec.sigtimedwait([signal.SIGUSR1], 5)
assert info is not None and info.signo == signal.SIGUSR1, info
assert info.code == 0 and info.pid == os.getpid(), info  # SI_USER
print("ok")
"""


@pytest.mark.timeout(60)
def test_recorder_sigtimedwait_returns_the_kernels_siginfo() -> None:
    """The extension's sigtimedwait(2): a blocked SIGUSR1 a process sends itself comes
    back with SI_USER and its own PID; nothing pending: None at the timeout.  In a
    process of its own with one thread: kill(2) of the whole process may be delivered
    to any thread that does not block the signal, and the test process has others."""
    out = subprocess.run([sys.executable, "-c", SIGTIMEDWAIT], capture_output=True,
                         text=True, timeout=50, check=False)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stdout + out.stderr


# --- real executables --------------------------------------------------------------------

PROGRAM = """
A: fd = open("/prog", O_WRONLY|O_CREAT, 0o755)  => 3
A: write(fd, ELF_PAUSE)                         => 129
A: close(fd)                                    => 0
"""


def test_an_exec_d_program_runs_until_the_end_of_the_run() -> None:
    out = run_scenario(parse(PROGRAM + 'B: exec("/prog", "x")\nA: open("/prog", O_RDWR) => ETXTBSY\n',
                             "prog"), "emulator", show_pids=False, render=False)
    assert out.passed, "\n".join([*out.failures, *out.transcript])
    assert '[B] execve("/prog", ["/prog", "x"]) = 0' in out.transcript
    assert "[B] +++ killed by SIGKILL +++" in out.transcript and not out.leaked


def test_a_line_for_an_actor_running_a_program_fails() -> None:
    out = run_scenario(parse(PROGRAM + 'B: exec("/prog")\nB: getpid()\n', "prog2"), "emulator",
                       show_pids=False, render=False)
    assert any("B runs /prog (it exec'd it): it takes no more lines" in f for f in out.failures)


def test_the_emulator_runs_elf_programs_only() -> None:
    text = """
A: fd = open("/script", O_WRONLY|O_CREAT, 0o755) => 3
A: write(fd, "#!/bin/sh\\n")                     => 10
A: close(fd)                                    => 0
B: exec("/script")                              => ENOEXEC
B: getpid()                                     => B.pid
"""
    out = run_scenario(parse(text, "script"), "emulator", show_pids=False, render=False)
    assert out.passed, "\n".join([*out.failures, *out.transcript])


# --- the filesystem under the host target ------------------------------------------------

from kemu.agents.launcher import hostfs  # noqa: E402

REFLINK = """
set host_fs = {fs}
A: f = open("/f", O_RDWR|O_CREAT, 0o644)  => 3
A: write(f, "hello")                      => 5
A: g = open("/g", O_RDWR|O_CREAT, 0o644)  => 4
A: clone(f, g)                            => {clone}
"""


def test_host_fs_choices_are_checked_here() -> None:
    assert hostfs.fs_type("/dev/shm") == "tmpfs" and hostfs.fs_type("/proc/self") == "proc"
    assert hostfs.unavailable("run") is None
    assert "not one of" in str(hostfs.unavailable("zfs"))
    with pytest.raises(ScenarioError, match="host_fs is one of run, ext4, tmpfs, xfs"):
        parse("set host_fs = zfs\nA: getpid()\n")
    why = hostfs.unavailable("ext4")
    assert why is None or why.startswith("host_fs ext4: /tmp is ")


@pytest.mark.host
@pytest.mark.timeout(120)
@pytest.mark.parametrize(("fs", "clone"), [("tmpfs", "EOPNOTSUPP"), ("ext4", "EOPNOTSUPP"),
                                           ("xfs", "0")])
def test_the_host_kernel_answers_for_the_filesystem_chosen(fs: str, clone: str) -> None:
    """FICLONE is XFS's: the host's own answer on each filesystem (the oracle the
    emulator's flavours are checked against), and nothing of the root left after."""
    why = hostfs.unavailable(fs)
    if why:
        pytest.skip(why)
    out = run_scenario(parse(REFLINK.format(fs=fs, clone=clone), f"reflink_{fs}"), "host",
                       show_pids=False, render=False)
    assert out.passed, "\n".join([*out.failures, *out.transcript])
    assert not os.path.lexists(os.path.join(out.run_dir, "root"))
    with open("/proc/self/mounts") as fh:
        assert "kemu-xfs-" not in fh.read()


@pytest.mark.host
@pytest.mark.timeout(120)
def test_an_xfs_root_is_a_fresh_mount_removed_after() -> None:
    why = hostfs.unavailable("xfs")
    if why:
        pytest.skip(why)
    import tempfile

    run_dir = tempfile.mkdtemp(prefix="kemu-lang-")
    root = hostfs.HostRoot("xfs", run_dir)
    try:
        path = root.make()
        assert hostfs.fs_type(path) == "xfs" and os.path.realpath(os.path.join(run_dir, "root")) == path
        image, loop, mountpoint = root.image, root.loop, root.mountpoint
        assert image is not None and os.stat(image).st_blocks * 512 < hostfs.XFS_IMAGE_MB << 20
    finally:
        root.remove()
    assert not os.path.exists(image) and not os.path.exists(str(mountpoint))
    with open("/proc/self/mounts") as fh:
        assert str(loop) not in fh.read()
    os.rmdir(run_dir)
