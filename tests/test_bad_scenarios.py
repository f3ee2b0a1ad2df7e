"""A malformed scenario file is refused with ``FILE:LINE: what is wrong`` and exit
status 2 before any process starts, never with a Python traceback; what can only go
wrong when its line runs (an expression over a variable) shows the line and the error
in the transcript, and the actor lives on.

Each case runs ``python launch.py run FILE`` (the ``kemu run`` command) with its own
``KEMU_RUNS``: a static refusal leaves it empty (the runner makes its run folder before
it starts the daemon or an actor).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAUNCH = os.path.join(ROOT, "launch.py")

DEEP_LIST = "[" * 1000 + "]" * 1000
SUM = "+".join(["1"] * 40000)

#: name -> (file content, the line the message must name)
STATIC: dict[str, tuple[bytes | str, int]] = {
    # settings of the wrong type, or that the daemon refuses
    "type_int": ("set blocks = abc\nA: getpid()\n", 1),
    "type_int_float": ("set blocks = 1.5\nA: getpid()\n", 1),
    "type_float": ("A: getpid()\nset lease_break_time = soon\n", 2),
    "blocks_0": ("set blocks = 0\nA: getpid()\n", 1),
    "flavour_zfs": ("set flavour = zfs\nA: getpid()\n", 1),
    "block_size_odd": ("set block_size = 1000\nA: getpid()\n", 1),
    "lbt_negative": ("set lease_break_time = -5\nA: getpid()\n", 1),
    "lbt_nan": ("set lease_break_time = nan\nA: getpid()\n", 1),
    "lbt_inf": ("set lease_break_time = inf\nA: getpid()\n", 1),
    "claim_negative": ("set fork_claim_timeout = -1\nA: getpid()\n", 1),
    "step_timeout_nan": ("set step_timeout = nan\nA: getpid()\n", 1),
    "step_timeout_zero": ("set step_timeout = 0\nA: getpid()\n", 1),
    "unknown_setting": ("set colour = blue\nA: getpid()\n", 1),
    # expectations
    "expect_div_zero": ("A: getpid() => 1 // 0\n", 1),
    "expect_unhashable": ("A: getpid() => {[1]: 2}\n", 1),
    "expect_huge_shift": ("A: getpid() => 1 << (1 << 40)\n", 1),
    "expect_huge_repeat": ('A: getpid() => "x" * (1 << 40)\n', 1),
    "expect_negative_shift": ("A: getpid() => 1 >> -1\n", 1),
    "expect_type": ('A: getpid() => 1 - "a"\n', 1),
    "expect_index": ('A: getpid() => "a"[5]\n', 1),
    "expect_key": ('A: getpid() => {"a": 1}["b"]\n', 1),
    "expect_sum_40000": (f"A: getpid()\nA: getpid() => {SUM}\n", 2),
    "expect_deep_list": (f"A: getpid() => {DEEP_LIST}\n", 1),
    # the same in arguments (they used to kill the actor: "<exited with 1>")
    "arg_div_zero": ("A: write(1, 1 // 0)\n", 1),
    "arg_unhashable": ("A: write(1, {[1]: 2})\n", 1),
    "arg_huge_shift": ("A: write(1, 1 << (1 << 40))\n", 1),
    "arg_huge_repeat": ('A: write(1, "x" * (1 << 40))\n', 1),
    "arg_sum_40000": (f"A: write(1, {SUM})\n", 1),
    "arg_deep_list": (f"A: write(1, {DEEP_LIST})\n", 1),
    "arg_type": ('A: fd = open("/f", O_RDWR|O_CREAT, 0o644)\nA: write(fd, -"x")\n', 2),
    # a function the scripted agent does not have (caught when its line ran)
    "unknown_function": ("A: getpid()\nA: frobnicate(1)\n", 2),
    # not UTF-8
    "not_utf8": (b'A: getpid()\nA: open("/\xff\xfe", O_RDONLY)\n', 2),
    "latin1_comment": (b"# title: caf\xe9\nA: getpid()\n", 1),
    # the scenario language of issue 10, section 3 (more in tests/test_lang.py, in-process)
    "expect_unbound_var": ("A: getpid()\nA: getpid() => fd\n", 2),
    "expect_neq": ("A: getpid() => != 0\n", 1),
    "handler_sigkill": ("A: getpid()\nA: on SIGKILL: getpid()\n", 2),
    "handler_unknown_call": ("A: getpid()\nA: on SIGIO: frobnicate(1)\n", 2),
    "host_fs_zfs": ("A: getpid()\nset host_fs = zfs\n", 2),
}

#: an error only the line can find (it reads a variable): the transcript says which
RUNTIME = {
    "run_div_zero": ("A: x = getpid()\nA: write(1, x // 0)\nA: getpid()\n", 2,
                     "ZeroDivisionError"),
    "run_huge_shift": ("A: x = getpid()\nA: write(1, 1 << (x << 40))\nA: getpid()\n", 2,
                       "shift count"),
    "run_unhashable": ("A: x = getpid()\nA: write(1, {[x]: 2})\nA: getpid()\n", 2,
                       "unhashable"),
}


def _launch(cases: dict[str, bytes | str], tmp: str) -> dict[str, tuple[int, str, str]]:
    """Run every case at once; name -> (exit status, output, its KEMU_RUNS folder)."""
    procs = {}
    for name, text in cases.items():
        path = os.path.join(tmp, f"{name}.scn")
        with open(path, "wb") as fh:
            fh.write(text.encode() if isinstance(text, str) else text)
        runs = os.path.join(tmp, f"runs-{name}")
        os.makedirs(runs)
        procs[name] = (subprocess.Popen(
            [sys.executable, LAUNCH, "run", path], cwd=ROOT,
            env={**os.environ, "KEMU_RUNS": runs}, stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT), runs)
    out = {}
    for name, (proc, runs) in procs.items():
        text, _ = proc.communicate(timeout=120)
        out[name] = (proc.returncode, text.decode(errors="replace"), runs)
    return out


@pytest.fixture
def short_tmp() -> Iterator[str]:
    """A short folder (a run folder's socket paths must fit AF_UNIX's 108 bytes)."""
    path = tempfile.mkdtemp(prefix="kb", dir="/tmp")
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.mark.timeout(240)
def test_malformed_files_are_refused_with_their_line(short_tmp: str) -> None:
    results = _launch({n: t for n, (t, _) in STATIC.items()}, short_tmp)
    wrong = []
    for name, (code, out, runs) in results.items():
        line = STATIC[name][1]
        problems = []
        if code != 2:
            problems.append(f"exit status {code}")
        if f"{name}.scn:{line}: " not in out:
            problems.append(f"no '{name}.scn:{line}: ' message")
        if "Traceback" in out:
            problems.append("a traceback")
        if os.listdir(runs):
            problems.append("a run was started")
        if len(out) > 2000:
            problems.append(f"{len(out)} characters of output")
        if problems:
            wrong.append(f"{name}: {', '.join(problems)}:\n{out[-600:]}")
    assert not wrong, "\n".join(wrong)


@pytest.mark.timeout(240)
def test_an_expression_that_fails_at_run_time_is_a_line_error(short_tmp: str) -> None:
    results = _launch({n: t for n, (t, _, _) in RUNTIME.items()}, short_tmp)
    for name, (code, out, _) in results.items():
        _, line, words = RUNTIME[name]
        assert code == 1, out
        assert "Traceback" not in out and "exited with 1" not in out, out
        assert f"line {line}: " in out and "cannot evaluate arguments" in out, out
        assert words in out, out
        assert "died unexpectedly" not in out, out  # the actor goes on to its next line
