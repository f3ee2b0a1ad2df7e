"""Actors and daemons forked from a zygote are indistinguishable from fresh processes.

Whatever a scenario can observe of how its actor was started (descriptors and their
flags, signal mask and dispositions, pending signals, credentials, capabilities,
umask, process group, session, environment, rlimits, working directory, argv[0]) is
the same for ``python -m kemu.agents.launcher.probe`` started with ``subprocess.Popen`` (as
actors were) and forked from the launcher's zygote.  The host conformance tests check
the rest: every scenario's transcript on the host is unchanged.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys

import pytest

from kemu.agents.launcher import zygote
from kemu.agents.launcher.daemon_process import start_daemon
from kemu.agents.launcher.designs import daemon_env


def _limits() -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(1024, hard), hard))


def _read(path: str) -> dict[str, object]:
    with open(path) as fh:
        state: dict[str, object] = json.loads(fh.read())
    return state


@pytest.mark.timeout(60)
def test_a_zygote_child_inherits_what_a_fresh_process_does(tmp_path: object) -> None:
    env = daemon_env()
    env["KEMU_PROBE"] = "1"  # a variable of the caller's own: the child must see it
    states = []
    for how in ("popen", "zygote"):
        path = os.path.join(str(tmp_path), f"log-{how}")
        log = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        # a descriptor and a blocked, pending signal in the launcher must not leak
        stray = os.open(os.devnull, os.O_RDONLY)
        os.set_inheritable(stray, True)
        old = signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGUSR2])
        # an ignored signal is ignored after execve, and so it must be in a zygote child
        handler = signal.signal(signal.SIGUSR1, signal.SIG_IGN)
        try:
            if how == "popen":
                proc = subprocess.Popen([sys.executable, "-m", "kemu.agents.launcher.probe"],
                                        env=env, stdin=log, stdout=log, stderr=log,
                                        close_fds=True, preexec_fn=_limits)
                code = proc.wait(30)
            else:
                child = zygote.spawn("kemu.agents.launcher.probe", [], env=env,
                                     stdio=(log, log, log), nofile=1024)
                code = child.wait(30)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old)
            signal.signal(signal.SIGUSR1, handler)
            os.close(stray)
            os.close(log)
        state = _read(path)
        assert code == 0, state
        state["fds"] = {k: {**v, "target": v["target"].replace(f"log-{how}", "LOG")}  # type: ignore[attr-defined]
                        for k, v in state["fds"].items()}  # type: ignore[attr-defined]
        states.append(state)
    popen, forked = states
    for key in popen:
        assert forked[key] == popen[key], key
    assert list(popen["fds"]) == ["0", "1", "2"]  # type: ignore[call-overload]
    status = popen["status"]
    assert isinstance(status, dict)
    assert int(status["SigBlk"], 16) == 1 << (signal.SIGUSR2 - 1)
    assert int(status["SigIgn"], 16) & 1 << (signal.SIGUSR1 - 1)


@pytest.mark.timeout(60)
def test_a_zygote_child_reports_how_it_died(run_dir: str) -> None:
    env = daemon_env()
    null = os.open(os.devnull, os.O_RDWR)
    try:
        ok = zygote.spawn("kemu.kernel_daemon.__main__", ["--describe"], env=env,
                          stdio=(null, null, null))
        bad = zygote.spawn("kemu.kernel_daemon.__main__", ["--no-such-option"], env=env,
                           stdio=(null, null, null))
    finally:
        os.close(null)
    assert ok.wait(30) == 0
    assert bad.wait(30) == 2  # argparse's usage error
    assert ok.pid not in zygote.tracked() and bad.pid not in zygote.tracked()
    # a killed daemon: its status, and the device it could not remove is removed for it
    d = start_daemon(run_dir, lease_break_time=0.5)
    assert os.path.exists(f"/dev/shm/{d.pmem_name}")
    d.kill()
    assert d.proc.returncode == -signal.SIGKILL
    assert not os.path.exists(f"/dev/shm/{d.pmem_name}")


REUSE = r"""
import os, sys
from kemu.agents.launcher import zygote
from kemu.agents.launcher.designs import daemon_env
env = daemon_env()
null = os.open(os.devnull, os.O_RDWR)
kids = [zygote.spawn("kemu.kernel_daemon.__main__", ["--describe"], env=env,
                     stdio=(null, null, null)) for _ in range(5)]
for k in kids:
    assert k.wait(30) == 0  # ended and reaped by the zygote: their PIDs are free again
print(" ".join(str(k.pid) for k in kids), flush=True)
sys.stdin.readline()  # the test has started a process of its own under one of them
zygote.shutdown()  # the launcher goes: the zygote sweeps what it forked
"""


@pytest.mark.timeout(90)
def test_a_zygote_ending_spares_a_process_that_reuses_a_childs_pid() -> None:
    """When its launcher goes, the zygote kills the children it has not reaped, and no
    other process: a PID it reaped may name another process of the machine by then.
    (It killed every PID it had ever forked, and a campaign script's next ``kemu find``,
    which got one of them, died with SIGKILL as the previous campaign's zygote ended.)
    The reuse is forced through ``/proc/sys/kernel/ns_last_pid``."""
    last = "/proc/sys/kernel/ns_last_pid"
    if not os.access(last, os.W_OK):
        pytest.skip("needs a writable /proc/sys/kernel/ns_last_pid (root)")
    bystander: subprocess.Popen[bytes] | None = None
    with subprocess.Popen([sys.executable, "-c", REUSE], stdin=subprocess.PIPE,
                          stdout=subprocess.PIPE, text=True) as script:
        try:
            assert script.stdout is not None and script.stdin is not None
            pids = [int(p) for p in script.stdout.readline().split()]
            assert len(pids) == 5
            for pid in pids:  # another process of the machine may take the PID first
                with open(last, "w") as fh:
                    fh.write(str(pid - 1))
                proc = subprocess.Popen(["sleep", "60"])
                if proc.pid == pid:
                    bystander = proc
                    break
                proc.kill()
                proc.wait()
            if bystander is None:
                pytest.skip("could not start a process under a reaped child's PID")
            script.stdin.write("go\n")
            script.stdin.flush()
            assert script.wait(60) == 0  # shutdown() waits for the zygote to exit
            assert bystander.poll() is None, "the zygote killed a process it did not start"
        finally:
            if bystander is not None:
                bystander.kill()
                bystander.wait()
            if script.poll() is None:
                script.kill()
