"""The pytest plugin: scenarios and agent programs in one's own timeout-guarded tests.

Installed with the package (entry point ``pytest11``: ``kemu``), so a test folder
anywhere gets these fixtures by ``pip install kemu``; docs/testing.md is the guide.

Fixtures:

* ``kemu_run(scenario, *, design=None, target=None, settings=None)``: run a scenario
  (a ``.scn`` path, or the text itself) and return its :class:`Outcome` (lines with
  their errnos and values, signals, deaths, foreign writes, the run folder).
* ``kemu_design`` / ``kemu_target``: parametrize a test over designs and targets:
  every built-in design (or ``--kemu-designs``, or ``@pytest.mark.kemu_designs(...)``),
  and ``emulator`` (or ``--kemu-targets emulator,host``, or
  ``@pytest.mark.kemu_targets(...)``).  ``kemu_run`` uses them when the test asks
  for them.
* ``kemu_daemon``: a kernel daemon of its own (``@pytest.mark.kemu_settings(...)``:
  ``lease_break_time``, ``flavour``, ...; the design from ``kemu_design`` when the test
  has it), stopped after the test.
* ``kemu_system``: this test process's own :class:`~kemu.agent.System` on the target:
  the daemon's (emulator) or the host kernel's, inside the run's root (host).
* ``kemu_spawn(program, *args, name="")``: start an agent program of one's own
  (``.py`` file using :func:`kemu.agent.connect`) as a real process on the target;
  returns its process (``pid``, ``wait()``, ``kill()``).

Helpers: :func:`assert_passed` (the failure message is the strace-like transcript with
the lines that failed marked, the failures, and the run folder's report) and
:func:`explain`.

Cleaning up: a scenario's runner stops its daemon and actors in ``finally`` (so a
pytest-timeout of the default *signal* method, which raises in the test, tears them
down), fixtures stop what they started, and every process comes from the test
process's zygote, which kills them and removes their shared memory when the test
process goes away, however it goes (the *thread* method's ``os._exit``, SIGKILL).
Under pytest-xdist each worker has its own zygote and run folders.
"""

from __future__ import annotations

import os
import select
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import kemu
from kemu.agents.launcher import runs, zygote
from kemu.agents.launcher.daemon_process import DaemonProcess, start_daemon
from kemu.agents.launcher.designs import builtin, daemon_env
from kemu.agents.launcher.runner import Outcome, needs_root, run_scenario
from kemu.agents.lib.api import EmuSystem, HostSystem, System
from kemu.agents.scenario.parse import Scenario, load, parse

TARGETS = ("emulator", "host")


def _is_root() -> bool:
    return os.geteuid() == 0


# --- options, markers, parametrization ----------------------------------------------------


def pytest_addoption(parser: pytest.Parser) -> None:
    """``--kemu-designs`` and ``--kemu-targets``."""
    group = parser.getgroup("kemu", "kemu: multi-process lease and pin scenarios")
    group.addoption("--kemu-designs", default=None, metavar="NAMES",
                    help="comma-separated designs kemu_design runs over "
                         "(default: every built-in design)")
    group.addoption("--kemu-targets", default="emulator", metavar="NAMES",
                    help="comma-separated targets kemu_target runs over: emulator, host "
                         "(default: emulator)")


def pytest_configure(config: pytest.Config) -> None:
    """Declare the plugin's markers."""
    for line in (
            "kemu_designs(*names): the designs kemu_design runs over for this test",
            "kemu_targets(*names): the targets kemu_target runs over for this test",
            "kemu_settings(**settings): daemon settings for kemu_daemon and kemu_run",
            "kemu_root: needs root (skipped, with the reason, without it)"):
        config.addinivalue_line("markers", line)


def _names(raw: str | None, known: list[str], what: str) -> list[str]:
    names = [n.strip() for n in (raw or "").split(",") if n.strip()]
    unknown = [n for n in names if n not in known and not n.endswith(".py")
               and ".py:" not in n]
    if unknown:
        raise pytest.UsageError(f"unknown {what} {', '.join(unknown)}; known: "
                                f"{', '.join(known)}")
    return names


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Parametrize ``kemu_design`` and ``kemu_target``."""
    if "kemu_design" in metafunc.fixturenames:
        marker = metafunc.definition.get_closest_marker("kemu_designs")
        designs = (list(marker.args) if marker else
                   _names(metafunc.config.getoption("kemu_designs"), builtin(), "design")
                   or builtin())
        metafunc.parametrize("kemu_design", designs, ids=[_id(d) for d in designs])
    if "kemu_target" in metafunc.fixturenames:
        marker = metafunc.definition.get_closest_marker("kemu_targets")
        targets = (list(marker.args) if marker else
                   _names(metafunc.config.getoption("kemu_targets"), list(TARGETS), "target"))
        metafunc.parametrize("kemu_target", targets)


def _id(design: str) -> str:
    return os.path.basename(design) if design.endswith(".py") or ".py:" in design else design


def pytest_runtest_setup(item: pytest.Item) -> None:
    """Skip ``kemu_root`` tests without root, and host-target tests that need it."""
    if item.get_closest_marker("kemu_root") and not _is_root():
        pytest.skip("needs root")


# --- what a test gets -----------------------------------------------------------------------


def explain(outcome: Outcome) -> str:
    """The run as a reader needs it when it failed: the transcript with every line that
    missed its expectation marked ``!!``, the failures, the deaths and the report."""
    failed = {line.text for line in outcome.lines if not line.ok}
    out = [f"{outcome.scenario} on {outcome.target} under {outcome.policy}: "
           f"{len(outcome.failures)} failure(s)"]
    for text in outcome.transcript:
        out.append(("!! " if text in failed else "   ") + text)
    out += [f"failure: {f}" for f in outcome.failures]
    out += [f"death: {d}" for d in outcome.deaths]
    if outcome.foreign_writes:
        out.append(f"foreign writes: {outcome.foreign_writes}")
    out.append(f"run folder: {outcome.run_dir} (report: {outcome.run_dir}/index.html)")
    return "\n".join(out)


def assert_passed(outcome: Outcome) -> None:
    """Fail the test, with :func:`explain`'s text, unless every line met its
    expectation, nothing died unexpectedly and the invariants of the run held."""
    if not outcome.passed:
        raise AssertionError(explain(outcome))


def _settings(request: pytest.FixtureRequest) -> dict[str, Any]:
    marker = request.node.get_closest_marker("kemu_settings")
    return dict(marker.kwargs) if marker else {}


def _param(request: pytest.FixtureRequest, name: str, default: str) -> str:
    if name in request.fixturenames:
        return str(request.getfixturevalue(name))
    return default


RunScenario = Callable[..., Outcome]


@pytest.fixture
def kemu_run(request: pytest.FixtureRequest) -> RunScenario:
    """``kemu_run(scenario, *, design=None, target=None, settings=None) -> Outcome``.

    ``scenario`` is a ``.scn`` path or the scenario's text.  ``design`` and ``target``
    default to the test's ``kemu_design`` / ``kemu_target`` if it has them, else
    ``upstream`` / ``emulator``; ``settings`` (``lease_break_time``, ...) override the
    scenario's own ``set`` lines and the test's ``kemu_settings`` marker.
    """

    def run(scenario: str | os.PathLike[str] | Scenario, *, design: str | None = None,
            target: str | None = None, settings: dict[str, Any] | None = None) -> Outcome:
        sc = _scenario(scenario, request.node.name)
        target = target or _param(request, "kemu_target", "emulator")
        design = design or _param(request, "kemu_design",
                                  str(sc.settings.get("policy", "upstream")))
        sc.settings = {**sc.settings, **_settings(request), **(settings or {})}
        reason = needs_root(sc, target)
        if reason:
            pytest.skip(reason)
        outcome = run_scenario(sc, target, design, show_pids=True)
        request.node.user_properties.append(("kemu_run_dir", outcome.run_dir))
        return outcome

    return run


def _scenario(scenario: str | os.PathLike[str] | Scenario, name: str) -> Scenario:
    if isinstance(scenario, Scenario):
        return scenario
    text = os.fspath(scenario)
    if "\n" not in text and (text.endswith(".scn") or os.path.isfile(text)):
        return load(text)
    return parse(text, name)


@pytest.fixture
def kemu_run_dir() -> Iterator[str]:
    """A fresh run folder under the runs directory (short: AF_UNIX paths are limited)."""
    path = runs.new_run_dir()
    yield path
    runs.mark_done(path)


@pytest.fixture
def kemu_daemon(request: pytest.FixtureRequest, kemu_run_dir: str) -> Iterator[DaemonProcess]:
    """A kernel daemon for this test (settings from ``kemu_settings``, the design from
    ``kemu_design``), stopped afterwards."""
    settings = {"lease_break_time": 0.5, **_settings(request)}
    settings.setdefault("policy", _param(request, "kemu_design", "upstream"))
    d = start_daemon(kemu_run_dir, event_log=os.path.join(kemu_run_dir, "kernel.jsonl"),
                     **settings)
    try:
        yield d
    finally:
        d.stop()


@pytest.fixture
def kemu_system(request: pytest.FixtureRequest, kemu_run_dir: str) -> Iterator[System]:
    """This test process's own System on ``kemu_target`` (default emulator)."""
    if _param(request, "kemu_target", "emulator") == "host":
        root = os.path.join(kemu_run_dir, "root")
        os.makedirs(root, exist_ok=True)
        yield HostSystem(root)
        return
    d = request.getfixturevalue("kemu_daemon")
    system = EmuSystem(d.run_dir, name="pytest")
    try:
        yield system
    finally:
        system.conn.close()


class Agent:
    """An agent program started by ``kemu_spawn``: its process, and its standard output
    to synchronise with (the program prints a line when it reached a point; the test
    waits for that line, never for a time)."""

    def __init__(self, proc: zygote.Process, stdout: int, name: str) -> None:
        self.proc = proc
        self.pid = proc.pid
        self.name = name
        self._fd = stdout
        self._buf = b""

    def readline(self, timeout: float = 30.0) -> str:
        """The program's next line of output; ``TimeoutError`` after ``timeout`` s,
        ``EOFError`` once it closed its output (exited)."""
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._fd], [], [], left)[0]:
                raise TimeoutError(f"{self.name} printed no line within {timeout} s")
            chunk = os.read(self._fd, 4096)
            if not chunk:
                raise EOFError(f"{self.name} ended its output (status {self.proc.poll()})")
            self._buf += chunk
        line, _, self._buf = self._buf.partition(b"\n")
        return line.decode(errors="replace")

    def expect(self, prefix: str, timeout: float = 30.0) -> str:
        """Read lines until one starts with ``prefix``; that line."""
        deadline = time.monotonic() + timeout
        while True:
            line = self.readline(max(0.0, deadline - time.monotonic()))
            if line.startswith(prefix):
                return line

    def wait(self, timeout: float | None = None) -> int:
        """Wait for the program to end; its exit status (minus the signal)."""
        return self.proc.wait(timeout)

    def poll(self) -> int | None:
        """Its exit status if it has ended, else None."""
        return self.proc.poll()

    def kill(self) -> None:
        """SIGKILL it."""
        self.proc.kill()

    def close(self) -> None:
        """Close this end of its output."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


Spawn = Callable[..., Agent]


@pytest.fixture
def kemu_spawn(request: pytest.FixtureRequest, kemu_run_dir: str) -> Iterator[Spawn]:
    """``kemu_spawn(program, *args, name="") -> Agent``: an agent program (a ``.py``
    file) as a real process on ``kemu_target``, killed after the test if it still
    runs.  Its standard output is the :class:`Agent`'s to read; its standard error goes
    to ``actors/NAME.log`` in the run folder.
    """
    started: list[Agent] = []
    target = _param(request, "kemu_target", "emulator")
    if target == "emulator":
        request.getfixturevalue("kemu_daemon")
    else:
        os.makedirs(os.path.join(kemu_run_dir, "root"), exist_ok=True)

    def spawn(program: str | os.PathLike[str], *args: str, name: str = "") -> Agent:
        name = name or f"agent{len(started) + 1}"
        logs = os.path.join(kemu_run_dir, "actors")
        os.makedirs(logs, exist_ok=True)
        env = {**daemon_env(), "KEMU_RUN_DIR": kemu_run_dir, "KEMU_TARGET": target,
               "KEMU_NAME": name, "PYTHONPATH": _pythonpath(os.fspath(program))}
        log = os.open(os.path.join(logs, f"{name}.log"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC,
                      0o644)
        null = os.open(os.devnull, os.O_RDONLY)
        out_r, out_w = os.pipe()
        try:
            proc = zygote.spawn(zygote.PATH_PREFIX + os.path.abspath(os.fspath(program)),
                                [str(a) for a in args], env=env, stdio=(null, out_w, log))
        except BaseException:
            os.close(out_r)
            raise
        finally:
            os.close(log)
            os.close(null)
            os.close(out_w)
        agent = Agent(proc, out_r, name)
        started.append(agent)
        return agent

    try:
        yield spawn
    finally:
        for agent in started:
            if agent.poll() is None:
                agent.kill()
                agent.wait()
            agent.close()


def _pythonpath(program: str) -> str:
    parts = [kemu.HOME, os.path.dirname(os.path.abspath(program))]
    if os.environ.get("PYTHONPATH"):
        parts.append(os.environ["PYTHONPATH"])
    return os.pathsep.join(parts)


__all__ = ["Agent", "Outcome", "assert_passed", "explain"]
