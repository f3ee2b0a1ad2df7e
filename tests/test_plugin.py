"""The pytest plugin from a user's own test folder, outside the repository.

A folder in /tmp holds a test file that uses only what docs/testing.md documents and
the agent program of docs/examples/lease_holder.py; ``python -m pytest`` runs in it (the
plugin comes from the installed package's ``pytest11`` entry point).  Its scenarios run
under several designs and on both targets and pass; a failing scenario's message is
its transcript with the line marked.  A test that times out (pytest-timeout's thread
method ends the process with ``os._exit``) leaves no daemon, actor or shared-memory
segment behind: checked by PID and in /dev/shm.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

USER_TESTS = r'''
import os
import pytest
from kemu.testing import assert_passed, explain

HERE = os.path.dirname(os.path.abspath(__file__))

BREAK = """
A: signal(SIGIO, "record")                          => 0
A: fd = open("/f", O_RDWR|O_CREAT, 0o644)           => 3
A: fcntl(fd, F_SETSIG, SIGIO)                       => 0
A: fcntl(fd, F_SETLEASE, F_WRLCK)                   => 0
B: open("/f", O_RDWR|O_NONBLOCK)                    => EAGAIN
A: sigwait(SIGIO)                                   => {"si_signo": SIGIO, "si_code": POLL_MSG, "si_fd": 3}
"""


@pytest.mark.timeout(60)
@pytest.mark.kemu_designs("upstream", "legacy")
def test_a_break_under_two_designs(kemu_run, kemu_design):
    outcome = kemu_run(BREAK)
    assert_passed(outcome)
    assert outcome.policy == kemu_design


@pytest.mark.timeout(60)
@pytest.mark.kemu_targets("emulator", "host")
def test_a_break_on_both_targets(kemu_run, kemu_target):
    outcome = kemu_run(BREAK)
    assert_passed(outcome)
    assert outcome.target == kemu_target
    assert [line.reply.get("errno") for line in outcome.lines if "errno" in line.reply] \
        == [11]


@pytest.mark.timeout(60)
def test_a_wrong_expectation_is_shown_in_the_transcript(kemu_run):
    outcome = kemu_run(BREAK.replace("=> EAGAIN", "=> 0"))
    assert not outcome.passed
    with pytest.raises(AssertionError) as info:
        assert_passed(outcome)
    assert '!! [B ' in str(info.value) and "run folder:" in str(info.value)


@pytest.mark.timeout(60)
@pytest.mark.kemu_targets("emulator", "host")
def test_my_own_agent_program(kemu_spawn, kemu_system, kemu_target):
    holder = kemu_spawn(os.path.join(HERE, "lease_holder.py"), "/g", name="holder")
    holder.expect("leased")
    with pytest.raises(BlockingIOError):  # the break: EWOULDBLOCK, and a SIGIO
        kemu_system.open("/g", os.O_RDWR | os.O_NONBLOCK)
    line = holder.expect("broken")
    assert line.startswith("broken si_code=3 "), line  # POLL_MSG
    assert line.endswith(f"(ours: {line.split('si_fd=')[1].split()[0]})"), line
    assert holder.wait(30) == 0
    fd = kemu_system.open("/g", os.O_RDWR | os.O_NONBLOCK)  # the lease is given up
    kemu_system.close(fd)


@pytest.mark.timeout(8, method="thread")
def test_that_hangs(kemu_daemon, kemu_spawn):
    holder = kemu_spawn(os.path.join(HERE, "lease_holder.py"), "/h", name="hung")
    with open(os.environ["KEMU_PIDS"], "w") as fh:
        fh.write(__import__("json").dumps({"daemon": kemu_daemon.pid,
                                           "pmem": kemu_daemon.pmem_name,
                                           "agent": holder.pid}))
    holder.wait()  # never: nobody breaks its lease
'''


@pytest.fixture
def user_folder() -> Iterator[str]:
    """A test folder of a user's, outside the repository."""
    path = tempfile.mkdtemp(prefix="kemu-user-", dir="/tmp")
    with open(os.path.join(path, "test_mine.py"), "w") as fh:
        fh.write(USER_TESTS)
    shutil.copy(os.path.join(ROOT, "docs", "examples", "lease_holder.py"), path)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _pytest(folder: str, *args: str, env: dict[str, str] | None = None,
            timeout: float = 240) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")}
    clean.pop("PYTHONPATH", None)  # only what the installed package gives
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           "-W", "error", *args], cwd=folder, env={**clean, **(env or {})},
                          capture_output=True, text=True, timeout=timeout, check=False)


@pytest.mark.timeout(300)
def test_a_users_own_tests_run_scenarios_and_agents(user_folder: str) -> None:
    done = _pytest(user_folder, "-k", "not hangs")
    assert done.returncode == 0, done.stdout + done.stderr
    # two designs + two targets + the failing one + the agent on two targets
    assert "7 passed" in done.stdout, done.stdout


@pytest.mark.timeout(300)
def test_a_users_own_tests_run_under_xdist(user_folder: str) -> None:
    """``pytest -n 2`` (pytest-xdist): each worker process gets its own zygote, daemons
    and run folders, and the same seven tests pass."""
    pytest.importorskip("xdist", reason="pytest-xdist is not installed")
    done = _pytest(user_folder, "-n", "2", "-k", "not hangs")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "7 passed" in done.stdout, done.stdout


@pytest.mark.timeout(120)
def test_a_timed_out_test_leaves_nothing_behind(user_folder: str) -> None:
    pids = os.path.join(user_folder, "pids.json")
    done = _pytest(user_folder, "-k", "hangs", env={"KEMU_PIDS": pids}, timeout=100)
    assert done.returncode != 0 and "Timeout" in done.stdout + done.stderr, done.stdout
    with open(pids) as fh:
        seen = json.load(fh)
    alive = [pid for pid in (seen["daemon"], seen["agent"]) if not _ends(pid, 20)]
    assert alive == [], f"still running: {alive}"
    left = [n for n in os.listdir("/dev/shm")
            if n.startswith(seen["pmem"]) or n.startswith(f"kemu-{seen['daemon']}-")]
    assert left == []


def _ends(pid: int, timeout: float) -> bool:
    """Does process ``pid`` end within ``timeout`` s?  (Its pidfd becomes readable when
    it ends; a zombie has ended.)"""
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        return bool(select.select([pidfd], [], [], timeout)[0])
    finally:
        os.close(pidfd)
