"""Run a scenario: start the daemon and the actors, drive the lines, check the outcome.

The runner is the launcher's logic (``launch.py`` is its front door).  It starts the
kernel daemon (emulator target) and one scripted agent per actor as real processes,
sends each line to its actor in the scenario's global order, waits for the result (or,
for a background call, for its start), injects faults (SIGKILL, SIGSTOP, SIGCONT by
PID), and prints an strace-like transcript.  After a kill it waits until the process is
dead and, on the emulator, until the daemon has finished its exit, so the next line
always sees the aftermath.  Every line's result is checked against its expectation for
the run's policy and target.

No death goes unnoticed: before every line and at the end of the run every actor (fork
children included) is looked at, and one that died where no line expects it (``=>
killed SIG``, ``!kill``, ``!wait``, ``!expect-death``, ``exit``) fails the run with the
line during or after which it died and how it died.
"""

from __future__ import annotations

import ast
import contextlib
import ctypes
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import IO, Any

import psutil

import kemu
from kemu.agents import report
from kemu.agents.launcher import designs, hostfs, hostsysctl, runs, zygote
from kemu.agents.launcher.daemon_process import DaemonProcess, start_daemon
from kemu.agents.lib.api import HostSystem
from kemu.agents.lib.runtime import Connection, DaemonGone
from kemu.agents.scenario import strace, transcript
from kemu.agents.scenario.calls import SLEEPS_IN, check_calls
from kemu.agents.scenario.expr import UNSET, ExprError
from kemu.agents.scenario.link import Link, LinkClosed, Watched
from kemu.agents.scenario.parse import Expect, Scenario, Step, signal_number
from kemu.protocol.config import SETTINGS as DAEMON_SETTINGS
from kemu.protocol.config import STACKS_FILE
from kemu.protocol.linux import F_GETOWN, F_SETOWN, PR_SET_CHILD_SUBREAPER, errno_name

ROOT = kemu.HOME
#: the host's own value while a run has changed it (survives the run being killed)


@dataclass
class ActorState:
    """The launcher's view of one actor."""

    name: str
    pid: int
    link: Link | None
    proc: zygote.Process | None = None
    alive: bool = True
    stopped: bool = False
    #: how it died: "SIGKILL", "exit 0"... once known
    status: str | None = None
    #: background lines still running, oldest first
    pending: list[Step] = field(default_factory=list)
    #: when the process was created (psutil's clock), to tell it from a later process
    #: that got its PID once it was gone
    created: float = 0.0
    #: a pidfd of a fork child (a top-level actor has ``proc``), to see it die without
    #: mistaking a later process that got its PID (-1: none)
    pidfd: int = -1
    #: the program file it exec'd (``exec("/prog")``): it runs that, takes no lines
    program: str | None = None

    def send_signal(self, sig: int) -> None:
        """Send ``sig`` to the actor's process through its pidfd where it has one: a
        process already reaped (by the zygote, for a parallel run's spawn) is not
        signalled, nor a later process of the machine that got its PID."""
        if self.proc is not None:
            self.proc.send_signal(sig)
        elif self.pidfd >= 0:
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(self.pidfd, sig)
        else:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)


@dataclass
class LineResult:
    """What one line did and whether it met its expectation."""

    step: Step
    actor: str
    pid: int
    text: str
    reply: dict[str, Any]
    expect: Expect | None
    ok: bool
    #: the design is one the scenario says nothing about and the line's expectation
    #: depends on the design: its outcome is shown, not judged
    unjudged: bool = False


@dataclass
class Outcome:
    """The result of a run."""

    scenario: str
    target: str
    policy: str
    lines: list[LineResult]
    transcript: list[str]
    run_dir: str
    failures: list[str]
    #: how actors died during the run ("A killed by SIGIO")
    deaths: list[str] = field(default_factory=list)
    #: the kernel's object counts once every actor has gone (emulator)
    final_stats: dict[str, int] = field(default_factory=dict)
    #: every foreign write of the run (emulator)
    foreign_writes: list[dict[str, Any]] = field(default_factory=list)
    #: the kernel's pin audit when the last line had run (emulator)
    audit: dict[str, Any] = field(default_factory=dict)
    #: seconds the run took
    wall: float = 0.0
    #: the line where ``!kill kernel`` killed the daemon (0: not killed)
    kernel_killed: int = 0
    #: host target: leases /proc/locks still shows on the run's files after the run
    final_locks: list[dict[str, Any]] = field(default_factory=list)
    #: processes of the run (actors, the daemon) still alive after it
    leaked: list[int] = field(default_factory=list)
    #: deaths shown but not judged (a design the scenario does not know, and what the
    #: scenario says of the actor's death depends on the design)
    unjudged_deaths: int = 0

    @property
    def unjudged(self) -> int:
        """Lines (and deaths) whose outcome was shown but not judged (a design the
        scenario does not know, on a line whose expectation differs between designs)."""
        return sum(1 for line in self.lines if line.unjudged) + self.unjudged_deaths

    @property
    def passed(self) -> bool:
        """True when every expectation held and nothing went wrong."""
        return not self.failures


#: seconds a time expectation (``after 1s``) may be off by default (``time_tolerance``)
TIME_TOLERANCE = 0.5
#: seconds a new actor (a fresh interpreter: spawn, exec) may take to say hello
START_TIMEOUT = 30.0
#: an actor's RLIMIT_NOFILE soft limit: the usual 1024 of a login shell
USUAL_NOFILE = 1024


class RunError(Exception):
    """The run could not go on (an actor did not answer in time, a link broke)."""


def matches(expect: Expect | None, reply: dict[str, Any], env: dict[str, Any] | None = None,
            pids: dict[str, int] | None = None, tolerance: float = 0.5) -> bool:
    """True when ``reply`` meets ``expect`` (no expectation: any success; see
    :meth:`Expect.matches` for ``env``, ``pids`` and ``tolerance``)."""
    if expect is None:
        return not ({"error", "skipped", "killed"} & set(reply))
    return expect.matches(reply, env, pids, tolerance)


class Runner:
    """One run of one scenario on one target under one policy."""

    def __init__(self, scenario: Scenario, target: str = "emulator", policy: str = "upstream",
                 run_dir: str | None = None, out: IO[str] | None = None,
                 show_pids: bool = True, step_timeout: float | None = None,
                 render: bool = True) -> None:
        check_calls(scenario)  # an unknown function: refused before any process starts
        self.sc = scenario
        self.target = target
        #: what the daemon is told (a name, or PATH.py[:Class] of a user's design)
        self.policy_spec = policy
        #: the design's name: what expectations and line prefixes are matched against (a
        #: user's design file is loaded once to learn it; a name is taken as it is)
        self.policy = (designs.resolve(policy) if target == "emulator"
                       and designs.is_file_spec(policy) else policy)
        #: False for a design the scenario names nowhere and the daemon does not have
        #: built in (known once it answers): design-dependent lines are shown unjudged
        self.judged = self.policy in scenario.designs_named() or target != "emulator"
        self.settings = dict(scenario.settings)
        self.run_dir = run_dir or runs.new_run_dir()
        os.makedirs(self.run_dir, exist_ok=True)
        os.chmod(self.run_dir, 0o755)  # an actor that gave up root must still reach root/
        self.out = out
        self.show_pids = show_pids
        #: write the pictures and the run's page into the run directory after the run
        self.render = render
        self.step_timeout = step_timeout or float(self.settings.get("step_timeout", 20.0))
        self.actors: dict[str, ActorState] = {}
        self.daemon: DaemonProcess | None = None
        self.daemon_created = 0.0
        self.kconn: Connection | None = None
        self.transcript: list[str] = []
        self.lines: list[LineResult] = []
        self.failures: list[str] = []
        self.deaths: list[str] = []
        self.final_stats: dict[str, int] = {}
        self.foreign: list[dict[str, Any]] = []
        # the run's logs are the user's alone: mode 0600 in a folder others may traverse
        self.events = runs.RunLog(os.path.join(self.run_dir, "launcher.jsonl"))
        self.t0 = time.monotonic()
        self._dead_logged: set[int] = set()
        # the launcher's clock origin, so its records and the daemon's line up
        self._log("launch", clock=self.t0, pid=os.getpid(), scenario=scenario.name,
                  title=scenario.title, target=target, policy=policy, show_pids=show_pids)
        self.director_path = os.path.join(self.run_dir, "director.sock")
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        self.listener.bind(self.director_path)
        self.listener.listen(64)
        self.unclaimed: dict[str, tuple[Link, dict[str, Any]]] = {}
        #: the host's lease-break-time, while this run holds it
        self.host_sysctl = hostsysctl.LeaseBreakTime()
        #: the line at which ``!kill kernel`` killed the daemon (0: it lives)
        self.kernel_killed = 0
        #: how the daemon died on its own ("killed by SIGKILL"; None: it lives)
        self.kernel_died: str | None = None
        #: timers that resume actors held up by ``!delay``
        self.timers: list[threading.Timer] = []
        #: the pin audit of the kernel taken when the last line has run
        self.audit: dict[str, Any] = {}
        #: host target: the leases /proc/locks still shows on the run's files at the end
        self.final_locks: list[dict[str, Any]] = []
        #: processes of the run still alive once it is over (PIDs)
        self.leaked: list[int] = []
        #: the line that ran last (0: none yet): a death found before the next line
        #: happened during or after it
        self.last_line = 0
        #: the line running now (0: none)
        self.line_now = 0
        #: the run was aborted (RunError): the launcher killed the actors itself
        self.aborted = False
        #: deaths shown unjudged (see ``Outcome.unjudged_deaths``)
        self.unjudged_deaths = 0
        #: each actor's variables as its lines bound them (the results the actor
        #: reported), for expectations that name them
        self.vars: dict[str, dict[str, Any]] = {}
        #: actors that have an ``on SIGNAME:`` handler installed: after a line, each is
        #: asked what its handlers did (``_sync_handlers``)
        self.handler_actors: set[str] = set()
        #: host target: where the actors' root lives (``set host_fs``)
        self.host_root = hostfs.HostRoot(str(self.settings.get("host_fs", "run")),
                                         self.run_dir)
        #: the ``on`` lines, by line number (a handler's report names its line)
        self.on_steps: dict[int, Step] = {s.lineno: s for s in scenario.steps if s.handler}

    # --- output -----------------------------------------------------------------------

    def _emit(self, kind: str, **fields: Any) -> str:
        """Record a transcript line in the event log, then show it (same formatter as
        ``transcript.txt`` uses afterwards); returns its text."""
        self._log("line", kind=kind, **fields)
        line = transcript.format_line({"kind": kind, **fields}, self.show_pids)
        self.transcript.append(line)
        if self.out is not None:
            print(line, file=self.out, flush=True)
        return line

    def _dead(self, actor: ActorState, status: str, how: str) -> None:
        """Log an actor's death (once) for the event log's readers."""
        if actor.pid in self._dead_logged:
            return
        self._dead_logged.add(actor.pid)
        self._log("death", actor=actor.name, pid=actor.pid, status=status, how=how)

    def _log(self, ev: str, **fields: Any) -> None:
        rec = {"t": round(time.monotonic() - self.t0, 6), "ev": ev, **fields}
        self.events.record(rec)

    def _canonical(self, call: str, reply: dict[str, Any]) -> dict[str, Any]:
        """Put results whose order the kernel does not define into a fixed order.

        /proc/locks lists locks per CPU, so its order changes from run to run: each lease
        is kept with the breakers blocked on it, and the groups are sorted by what the
        transcript shows of them (PIDs as actor names).
        """
        if call != "locks" or not isinstance(reply.get("ok"), list):
            return reply
        groups: list[list[Any]] = []
        for entry in reply["ok"]:
            if isinstance(entry, dict) and entry.get("waiter") and groups:
                groups[-1].append(entry)
            else:
                groups.append([entry])
        groups.sort(key=lambda g: strace.value(self._name_pids(g)))
        return {**reply, "ok": [e for g in groups for e in g]}

    def _pid_name(self, value: int) -> Any:
        """``<A>`` for A's PID, ``-<A>`` for its process group, else the number."""
        for a in self.actors.values():
            if a.pid == abs(value) and value:
                return strace.Bare(f"{'-' if value < 0 else ''}<{a.name}>")
        return value

    def _display_args(self, call: str, args: list[Any]) -> list[Any]:
        """Arguments as the transcript shows them: PIDs by actor name."""
        shown = [self._name_pids(a) for a in args]
        if call == "fcntl" and len(shown) > 2 and isinstance(shown[2], int) \
                and shown[1] == F_SETOWN:
            shown[2] = self._pid_name(shown[2])
        if call in ("kill", "waitpid") and shown and isinstance(shown[0], int):
            shown[0] = self._pid_name(shown[0])
        return shown

    def _result_text(self, call: str, args: list[Any], reply: dict[str, Any]) -> str:
        if call == "fcntl" and len(args) > 1 and args[1] == F_GETOWN \
                and isinstance(reply.get("ok"), int):
            return str(self._pid_name(reply["ok"]))
        if call in ("getpid", "getpgid") and isinstance(reply.get("ok"), int):
            return self._pid_text(reply["ok"])
        if "skipped" in reply:
            return f"? <skipped: {reply['skipped']}>"
        if "killed" in reply:
            return "?"  # the +++ line that follows says how it died
        if "ok" in reply:
            reply = {**reply, "ok": self._name_pids(reply["ok"])}
        return strace.result(call, args, reply)

    def _name_pids(self, value: Any, key: str = "") -> Any:
        """Show PIDs in results (``pid``, ``si_pid`` fields) as actor names."""
        if isinstance(value, dict):
            return {k: self._name_pids(v, k) for k, v in value.items()}
        if isinstance(value, list):
            return [self._name_pids(v, key) for v in value]
        if key in ("pid", "si_pid") and isinstance(value, int) and value:
            for a in self.actors.values():
                if a.pid == value:
                    return strace.Bare(f"<{a.name}>")
            if self.kconn is not None and value == self.kconn.daemon_pid:
                return strace.Bare("<kernel>")
            if value == os.getpid():
                return strace.Bare("<launcher>")
        return value

    def _pid_text(self, value: int) -> str:
        for a in self.actors.values():
            if a.pid == value:
                return f"{value} <{a.name}>" if self.show_pids else f"<{a.name}>"
        return str(value)

    # --- processes --------------------------------------------------------------------

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["PYTHONPATH"] = ROOT + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        return env

    def start(self) -> None:
        """Start the daemon (emulator) and every top-level actor."""
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
        if self.target == "emulator":
            daemon_settings = {DAEMON_SETTINGS[k][0]: v for k, v in self.settings.items()
                               if k in DAEMON_SETTINGS}
            self.daemon = start_daemon(
                self.run_dir, policy=self.policy_spec,
                event_log=os.path.join(self.run_dir, "kernel.jsonl"), **daemon_settings)
            self.daemon_created = _created(self.daemon.pid)
            self.kconn = Connection(self.run_dir, name="launcher")
            self.judged = self.judged or self.policy in self.kconn.policies
        else:
            try:
                self.host_root.make()
            except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
                detail = getattr(exc, "stderr", "") or ""
                raise RunError(f"host_fs {self.host_root.choice}: {exc} {detail}".strip()
                               ) from None
            if "lease_break_time" in self.settings:
                self._set_host_lease_break_time(float(self.settings["lease_break_time"]))
        logs = os.path.join(self.run_dir, "actors")
        os.makedirs(logs, exist_ok=True)
        for name in self.sc.actors:
            # One O_RDWR description on 0, 1 and 2, like the emulator's console.
            log = os.open(os.path.join(logs, f"{name}.log"), os.O_RDWR | os.O_CREAT | os.O_TRUNC,
                          0o644)
            try:
                proc = zygote.spawn(
                    "kemu.agents.scenario.scripted",
                    ["--name", name, "--run-dir", self.run_dir, "--target", self.target,
                     "--director", self.director_path],
                    env=self._env(), stdio=(log, log, log), nofile=USUAL_NOFILE)
            finally:
                os.close(log)
            self.actors[name] = ActorState(name, proc.pid, None, proc)
        for name in self.sc.actors:
            link, hello = self._await_hello(name)
            self.actors[name].link = link
            self.actors[name].pid = int(hello["pid"])
            self.actors[name].created = _created(int(hello["pid"]))
            self._log("actor", name=name, pid=hello["pid"], how="spawn")

    def _await_hello(self, name: str) -> tuple[Link, dict[str, Any]]:
        """Accept launcher links until actor ``name`` says hello (a new interpreter may
        take seconds on a loaded machine: this is not the step timeout)."""
        deadline = time.monotonic() + max(self.step_timeout, START_TIMEOUT)
        while name not in self.unclaimed:
            left = deadline - time.monotonic()
            if left <= 0:
                raise RunError(f"actor {name} did not connect (see {self.run_dir}/actors/)")
            listener = self.listener.fileno()
            ready, _, _ = select.select([listener, *self._daemon_watch()], [], [], left)
            if listener not in ready:
                self._check_kernel()
                continue
            conn, _ = self.listener.accept()
            link = Link(conn)
            try:
                hello = link.recv(timeout=max(self.step_timeout, START_TIMEOUT))
            except (TimeoutError, LinkClosed):
                link.close()
                continue
            self.unclaimed[str(hello.get("hello"))] = (link, hello)
        return self.unclaimed.pop(name)

    def _wait_dead(self, actor: ActorState) -> None:
        """Return once ``actor``'s process has died and, on the emulator, been cleaned up."""
        if not self._gone(actor, self.step_timeout):
            raise RunError(f"{actor.name} did not die within {self.step_timeout} s")
        if actor.proc is not None:
            actor.status = _describe_status(actor.proc.returncode)
        if self.kconn is not None:
            self.kconn.call("wait_exit", actor.pid)

    def _gone(self, actor: ActorState, timeout: float = 0.0) -> bool:
        """Has ``actor``'s process ended (waiting at most ``timeout`` seconds)?  A
        top-level actor is reaped (its status kept in ``proc``); a fork child's zombie is
        left for ``_exit_status`` to read."""
        if actor.proc is not None:
            if timeout <= 0:
                return actor.proc.poll() is not None
            try:
                actor.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                return False
            return True
        if actor.pidfd < 0:
            return True  # gone before it could be watched
        return bool(select.select([actor.pidfd], [], [], max(timeout, 0.0))[0])

    # --- deaths -----------------------------------------------------------------------

    def _expects_death(self, step: Step, actor: ActorState) -> bool:
        """Does ``step`` (about to run) expect ``actor`` to be dead or to die?"""
        if step.actor != actor.name:
            return False
        if step.kind == "fault":
            return step.fault in ("wait", "expect-death")
        tags = {self.policy, self.target}
        exp = step.expectation(tags)
        if step.kind == "join" and not step.expects and actor.pending:
            exp = actor.pending[0].expectation(tags)
        return step.kind in ("call", "join") and exp is not None and exp.expects_death()

    def _death_unjudged(self, name: str) -> bool:
        """A design the scenario does not know, and the scenario's word on ``name``'s
        death depends on the design: a death is shown, not judged."""
        return not self.judged and any(
            s.actor == name and s.design_dependent()
            and ((s.kind == "fault" and s.fault in ("wait", "expect-death", "kill"))
                 or any(e.expects_death() for e in s.expects))
            for s in self.sc.steps)

    def _unexpected_death(self, actor: ActorState, status: str, line: int) -> None:
        """Fail the run: ``actor`` died (``status``) during or after ``line`` where no
        line expects it."""
        how = _how(status)
        if self._death_unjudged(actor.name):
            self.unjudged_deaths += 1
            self.deaths.append(f"{actor.name} {how} (unjudged)")
            self._emit("unjudged", design=self.policy)
            return
        self.failures.append(f"line {line}: actor {actor.name} died unexpectedly: {how}")
        self.deaths.append(f"{actor.name} {how} (unexpected, line {line})")
        self._emit("unexpected", actor=actor.name, pid=actor.pid, line=line)

    def _check_deaths(self, step: Step | None) -> None:
        """Look at every actor the run thinks alive: one that has died, unless ``step``
        (the line about to run; None at the end of the run) expects it, died
        unexpectedly during or after the line that ran last."""
        for actor in list(self.actors.values()):
            if not actor.alive or not self._gone(actor):
                continue
            if step is not None and self._expects_death(step, actor):
                continue  # the line takes it
            line = self.last_line or (step.lineno if step is not None else 0)
            status = self._death(actor, "died unexpectedly")
            self._emit("waited", actor=actor.name, pid=actor.pid, status=status)
            lost = ", ".join(s.call for s in actor.pending)
            if lost:
                self._emit("lost", actor=actor.name, pid=actor.pid, calls=lost)
            actor.pending.clear()
            self._unexpected_death(actor, status, line)

    def _expect_death(self, step: Step, actor: ActorState) -> None:
        """``!expect-death A [HOW]``: wait (at most the step timeout) for A to be dead;
        the line fails if A died otherwise or is still alive."""
        self._log("step", line=step.lineno, kind="fault", actor=actor.name, pid=actor.pid,
                  source=step.text.split("#", 1)[0].strip())
        # a stopped process does not die of a signal until it is continued
        if self._gone(actor, 0.0 if actor.stopped else self.step_timeout):
            status = self._death(actor, "expected")
            self.deaths.append(f"{actor.name} {_how(status)}")
            text = self._emit("waited", actor=actor.name, pid=actor.pid, status=status)
            reply: dict[str, Any] = {"killed": status}
            actor.pending.clear()
        else:
            wait = 0.0 if actor.stopped else self.step_timeout
            who = transcript.who(actor.name, actor.pid, self.show_pids)
            text = self._emit("text", text=f"+++ {who} still alive after {wait:g} s +++")
            reply = {"error": f"{actor.name} did not die"
                              f"{' (it is stopped)' if actor.stopped else ''}"}
        self._check(step, actor, text, reply)

    def _asleep(self, step: Step, actor: ActorState) -> None:
        """``!asleep B``: wait (at most the step timeout) until B's background call
        sleeps in the kernel (host: its main thread blocked in the call's system call;
        emulator: the daemon has the call parked)."""
        self._log("step", line=step.lineno, kind="fault", actor=actor.name, pid=actor.pid,
                  source=f"!asleep {actor.name}")
        if not actor.pending:
            self.failures.append(f"line {step.lineno}: !asleep {actor.name}: no background call")
            return
        call = actor.pending[0].call
        deadline = time.monotonic() + self.step_timeout
        while not self._sleeping(actor, call):
            # a stopped actor is not continued by anyone while this line waits
            if time.monotonic() > deadline or self._gone(actor) or actor.stopped:
                self.failures.append(f"line {step.lineno}: {actor.name}'s {call} did not "
                                     f"sleep in the kernel within {self.step_timeout} s")
                self._emit("mismatch", expected=f"{actor.name} asleep in {call}")
                return
            time.sleep(0.001)  # polling the kernel's state of the process, not ordering
        self._emit("asleep", actor=actor.name, pid=actor.pid, call=call)

    def _sleeping(self, actor: ActorState, call: str) -> bool:
        """Is ``actor``'s main thread asleep in the kernel in ``call`` now?"""
        if self.kconn is not None:
            for p in self.kconn.call("proc_list"):
                if p["pid"] == actor.pid:
                    return int(p["parked"]) > 0
            return False
        # The state first: a woken thread is R (TASK_WAKING or RUNNING) from the waker's
        # wake-up on, until it sleeps again; stopped (T), its syscall file still names the
        # call.  Then the call it sleeps in.
        task = f"/proc/{actor.pid}/task/{actor.pid}"
        try:
            with open(f"{task}/stat", "rb") as fh:
                stat = fh.read()
            with open(f"{task}/syscall") as fh:
                words = fh.read().split()
        except OSError:
            return False
        if stat[stat.rindex(b")") + 2 :].split()[0] not in (b"S", b"D"):
            return False
        nr = SLEEPS_IN.get(call)
        return bool(words) and words[0] != "running" and (nr is None or words[0] == str(nr))

    # --- driving ----------------------------------------------------------------------

    def _sync_handlers(self, exclude: str | None) -> list[tuple[ActorState, dict[str, Any]]]:
        """Ask every idle actor with an ``on`` handler (but ``exclude``) what its handlers
        did: a signal sent to it during the line that just ran is pending before the
        question is sent, so it is delivered, and its handler run, before the actor
        reads it.  The answers that report something, in the actors' order."""
        out: list[tuple[ActorState, dict[str, Any]]] = []
        for actor in self.actors.values():
            if actor.name not in self.handler_actors or actor.name == exclude \
                    or not actor.alive or actor.stopped or actor.pending or actor.link is None:
                continue
            try:
                actor.link.send({"op": "sync"})
                reply = actor.link.recv(timeout=self.step_timeout, watch=self._daemon_fd())
            except (LinkClosed, Watched):
                continue  # it died (seen before the next line) or the kernel did
            except TimeoutError:
                raise RunError(f"actor {actor.name} did not answer within "
                               f"{self.step_timeout} s (a handler call that blocks?)") from None
            if reply.get("delivered") or reply.get("handled"):
                out.append((actor, reply))
        return out

    def _handled(self, actor: ActorState, entries: list[dict[str, Any]]) -> None:
        """Show what ``actor``'s ``on`` handlers did (the signal, then each call, as
        strace shows calls), checking each call against its expectation."""
        for entry in entries:
            self._emit("signal", actor=actor.name, pid=actor.pid,
                       siginfo=self._name_pids(entry.get("si") or {}))
            on = self.on_steps.get(int(entry.get("line", 0)))
            for i, reply in enumerate(entry.get("calls") or []):
                if on is None or i >= len(on.handler):
                    continue
                hstep = on.handler[i]
                args = reply.get("args", [])
                shown = strace.call(hstep.call, self._display_args(hstep.call, args))
                text = self._emit("call", actor=actor.name, pid=actor.pid, call=shown,
                                  result=self._result_text(hstep.call, args, reply))
                self._bind(actor.name, hstep.bind, reply)
                self._check(hstep, actor, text, reply)

    def _send(self, actor: ActorState, body: dict[str, Any]) -> dict[str, Any]:
        if not actor.alive or actor.link is None:
            raise RunError(f"actor {actor.name} is dead")
        try:
            actor.link.send(body)
            reply = actor.link.recv(timeout=self.step_timeout, watch=self._daemon_fd())
            if "error" in reply:
                self._check_kernel()  # an actor's DaemonGone: the kernel's death says more
            return self._delivered(actor, reply)
        except Watched:
            self._check_kernel()
            raise RunError("the kernel daemon ended while a line ran") from None
        except TimeoutError:
            if body.get("op") == "join":
                started = body.get("source") or "its background call"
                raise RunError(
                    f"actor {actor.name}: {started} did not finish within "
                    f"{self.step_timeout} s of its join (it still sleeps: what should wake "
                    "it, a lease released, a pin dropped, comes on a line after the join?)"
                ) from None
            raise RunError(
                f"actor {actor.name} did not answer within {self.step_timeout} s "
                "(a call that blocks must be started in the background with '&')") from None
        except LinkClosed:
            # the process died under the call (a signal with no handler, a kill)
            return {"killed": self._death(actor)}

    def _delivered(self, actor: ActorState, reply: dict[str, Any]) -> dict[str, Any]:
        """Show the signals the actor took before it answered (``--- SIGIO {...} ---``,
        strace's line for a delivery); ``reply`` without them."""
        for si in reply.pop("delivered", None) or []:
            self._emit("signal", actor=actor.name, pid=actor.pid, siginfo=self._name_pids(si))
        self._handled(actor, reply.pop("handled", None) or [])
        return reply

    def _ended(self, actor: ActorState, reply: dict[str, Any]) -> None:
        """strace's last line of an actor that died under its call (``+++ killed by SIGIO
        +++``)."""
        if "killed" in reply:
            self._emit("exited", actor=actor.name, pid=actor.pid, status=reply["killed"])

    def _death(self, actor: ActorState, how: str = "died under a call") -> str:
        """Wait for ``actor`` to be dead and cleaned up; the signal that killed it."""
        if actor.alive:
            actor.alive = False
            self._wait_dead(actor)
        status = actor.status if actor.status is not None else _exit_status(actor)
        actor.status = status
        self._dead(actor, status, how)
        return status

    def _check(self, step: Step, actor: ActorState, text: str, reply: dict[str, Any]) -> None:
        exp = step.expectation({self.policy, self.target})
        ok = matches(exp, reply, self.vars.get(actor.name, {}),
                     {a.name: a.pid for a in self.actors.values()},
                     float(self.settings.get("time_tolerance", TIME_TOLERANCE)))
        unjudged = not self.judged and step.design_dependent() and "error" not in reply
        if unjudged:
            ok = True
        self.lines.append(LineResult(step, actor.name, actor.pid, text, reply, exp, ok,
                                     unjudged))
        self._log("ret", line=step.lineno, actor=actor.name, pid=actor.pid, reply=reply)
        self._log("verdict", line=step.lineno, actor=actor.name, pid=actor.pid, ok=ok,
                  expected=exp.describe() if exp else None)
        if not ok:
            want = exp.describe() if exp else "success"
            if exp is not None and exp.source:
                with contextlib.suppress(ExprError):
                    value = exp.evaluate(self.vars.get(actor.name, {}),
                                         {a.name: a.pid for a in self.actors.values()})
                    want += " (= " + strace.value(self._pid_name(value) if type(value) is int
                                                  else self._name_pids(value)) + ")"
            if exp is not None and exp.time is not None:
                took = reply.get("elapsed")
                want += f" (took {took:.3f} s)" if isinstance(took, float) else " (not timed)"
            why = reply.get("error") or f"expected {want}"
            self.failures.append(f"line {step.lineno}: {text}: {why}")
            self._emit("mismatch", expected=want)
            if "trace" in reply:
                self._emit("trace", text=str(reply["trace"]))
        elif unjudged:
            self._emit("unjudged", design=self.policy)
        if "killed" in reply and not unjudged and (exp is None or not exp.expects_death()):
            # the actor died under a call that does not expect it
            self._unexpected_death(actor, str(reply["killed"]), self.line_now or step.lineno)

    def show_locks(self) -> None:
        """``!locks``: the kernel's lease list in /proc/locks format (PIDs as actors,
        devices and inodes as paths), read by the launcher itself on either target."""
        if self.kconn is not None:
            entries = [{k: e[k] for k in ("state", "type", "pid", "path", "waiter", "depth")}
                       for e in self.kconn.call("proc_locks")]
        else:
            entries = HostSystem(os.path.join(self.run_dir, "root")).locks()
        entries = self._canonical("locks", {"ok": entries})["ok"]
        self._emit("text", text="--- /proc/locks ---")
        n = 0
        for e in entries:
            who = strace.value(self._name_pids(e["pid"], "pid"))
            if e["waiter"]:
                arrow = " " * (int(e.get("depth") or 1) - 1) + "-> "  # lock_get_status()
                self._emit("text", text=f"{n}: {arrow}LEASE  {e['state']:<9} {e['type']:<5} "
                           f"{who} <none>:0 0 EOF")
            else:
                n += 1
                self._emit("text", text=f"{n}: LEASE  {e['state']:<9} {e['type']:<5} {who} "
                           f"{e['path']} 0 EOF")
        self._emit("text", text="---")

    def run_step(self, step: Step) -> None:
        """Execute one line of the scenario, after looking for actors that died since the
        last one."""
        if not step.runs_under({self.policy, self.target}):
            return  # a line of another design
        self._check_kernel()
        self._check_deaths(step)
        self.line_now = step.lineno
        try:
            self._run_step(step)
            if self.handler_actors:  # what handlers did after the line (a fault's signal)
                for other, reply in self._sync_handlers(None):
                    self._delivered(other, reply)
        finally:
            self.last_line, self.line_now = step.lineno, 0

    def _run_step(self, step: Step) -> None:
        """Execute one line of the scenario."""
        if step.kind == "locks":
            self._log("step", line=step.lineno, kind="locks", source="!locks")
            self.show_locks()
            return
        if step.kind == "fault":
            self.fault(step)
            return
        actor = self.actors.get(step.actor)
        if actor is None or not actor.alive:
            self.failures.append(f"line {step.lineno}: actor {step.actor} is not alive")
            self._emit("dead", actor=step.actor, source=step.source or step.text)
            return
        if actor.program is not None:
            self.failures.append(f"line {step.lineno}: actor {actor.name} runs "
                                 f"{actor.program} (it exec'd it): it takes no more lines")
            self._emit("dead", actor=step.actor, source=step.source or step.text)
            return
        if step.kind == "join":
            if not actor.pending:
                self.failures.append(f"line {step.lineno}: join without a background call")
                return
            started = actor.pending.pop(0)
            self._log("step", line=step.lineno, kind="join", actor=actor.name, pid=actor.pid,
                      source="join", started=started.lineno)
            reply = self._send(actor, {"op": "join", "source": started.source})
            self._bind(actor.name, started.bind, reply)
            name = reply.get("call", started.call)
            reply = self._canonical(name, reply)
            res = self._result_text(name, reply.get("args", []), reply)
            for other, answer in self._sync_handlers(actor.name):
                self._delivered(other, answer)  # what woke it, shown before it resumes
            text = self._emit("resumed", actor=actor.name, pid=actor.pid, call=name, result=res)
            self._ended(actor, reply)
            # the expectation may sit on the join line or on the background line
            self._check(step if step.expects else started, actor, text, reply)
            return
        body: dict[str, Any] = {"op": "call", "source": step.source, "bind": step.bind,
                "background": step.background, "child": step.child,
                "pids": {a.name: a.pid for a in self.actors.values()},
                "step_timeout": self.step_timeout}
        if step.handler:
            body.update(handler=[{"source": h.source, "bind": h.bind} for h in step.handler],
                        signal=signal_number(step.signal), line=step.lineno)
        self._log("call", line=step.lineno, actor=actor.name, pid=actor.pid, source=step.source)
        if step.call == "exec":
            self._exec(step, actor, body)
            return
        raw = self._send(actor, body)
        if not raw.get("started") and step.call != "fork":
            self._bind(actor.name, step.bind, raw)
        reply = self._canonical(step.call, raw)
        shown = strace.call(step.call, self._display_args(step.call, reply.get("args", [])))
        if step.handler:
            shown = (f"rt_sigaction({step.signal}, {{sa_handler=<"
                     + "; ".join(strace.octal_modes(h.source) for h in step.handler)
                     + ">, sa_flags=SA_SIGINFO})")
            if "ok" in reply:
                self.handler_actors.add(actor.name)
        if reply.get("started"):
            actor.pending.append(step)
            self._emit("unfinished", actor=actor.name, pid=actor.pid, call=shown)
            return
        res = self._result_text(step.call, reply.get("args", []), reply)
        if step.call == "fork" and "ok" in reply:
            res = self._pid_text(int(reply["ok"]))
            child = step.child or f"{actor.name}.child"
            link, hello = self._await_hello(child)
            self.actors[child] = ActorState(child, int(hello["pid"]), link,
                                            created=_created(int(hello["pid"])),
                                            pidfd=_pidfd(int(hello["pid"])))
            self._log("actor", name=child, pid=hello["pid"], how="fork", parent=actor.name)
            self.vars[child] = dict(self.vars.get(actor.name, {}))
            if actor.name in self.handler_actors:  # fork(2) keeps the dispositions
                self.handler_actors.add(child)
            self._bind(child, step.bind, {"ok": 0})
            self._bind(actor.name, step.bind, reply)
            res = self._pid_text(int(reply["ok"]))
        others = self._sync_handlers(actor.name) if step.call != "fork" else []
        if others:  # handlers that ran while the call did: strace's unfinished/resumed
            self._emit("unfinished", actor=actor.name, pid=actor.pid, call=shown)
            for other, answer in others:
                self._delivered(other, answer)
            text = self._emit("resumed", actor=actor.name, pid=actor.pid, call=step.call,
                              result=res)
        else:
            text = self._emit("call", actor=actor.name, pid=actor.pid, call=shown, result=res)
        self._ended(actor, reply)
        self._check(step, actor, text, reply)
        if step.call == "exit" and "ok" in reply:
            actor.alive = False
            self._wait_dead(actor)
            # a fork child's status is its zombie's (the launcher is not its parent)
            status = actor.status or _exit_status(actor)
            if status == "gone":  # its parent reaped it first: the status it asked for
                status = "exited with 0"
            actor.status = status
            self._dead(actor, status, "exit")
            self._emit("exited", actor=actor.name, pid=actor.pid, status=status)

    def _bind(self, actor: str, var: str | None, reply: dict[str, Any]) -> None:
        """Keep what ``var = call(...)`` bound in ``actor``'s variables, as the actor
        itself does (``scripted.Actor.execute``): the result, or a failed call's mark."""
        if not var:
            return
        if "ok" in reply:
            self.vars.setdefault(actor, {})[var] = reply["ok"]
        elif "errno" in reply:
            self.vars.setdefault(actor, {})[var] = {
                UNSET: f"the call failed with {errno_name(int(reply['errno']))}"}
        elif "skipped" in reply:  # skipped for an unset input: unset in turn
            self.vars.setdefault(actor, {})[var] = {UNSET: str(reply["skipped"])}

    def _exec_program(self, step: Step, actor: ActorState, body: dict[str, Any]) -> None:
        """``A: exec("/prog", ...)``: execve(2) of a program file.  An error comes back
        as the line's errno; on success the actor's link closes (close-on-exec) while
        its process lives on, running the program: it takes no more lines, and is
        SIGKILLed at the end of the run if nothing ended it before."""
        assert actor.link is not None
        try:
            actor.link.send(body)
            reply = actor.link.recv(timeout=self.step_timeout, watch=self._daemon_fd())
            reply = self._delivered(actor, reply)
        except LinkClosed:
            actor.link.close()
            actor.link = None
            reply = {"ok": 0} if not self._gone(actor, 0.05) else {"killed": self._death(actor)}
        except (TimeoutError, Watched):
            self._check_kernel()
            raise RunError(f"actor {actor.name} did not exec within {self.step_timeout} s"
                           ) from None
        args = reply.get("args") or self._static_args(step)
        argv = strace.value([str(a) for a in args])
        shown = f"execve({strace.value(str(args[0]) if args else '')}, {argv})"
        if "ok" in reply:
            actor.program = str(args[0]) if args else "?"
            self.handler_actors.discard(actor.name)
        text = self._emit("call", actor=actor.name, pid=actor.pid, call=shown,
                          result=self._result_text("exec", args, reply)
                          if "ok" not in reply else "0")
        self._ended(actor, reply)
        self._check(step, actor, text, reply)

    @staticmethod
    def _static_args(step: Step) -> list[Any]:
        """The literal arguments of a line's call (what the transcript shows when the
        actor could not report them)."""
        node = ast.parse(step.source, mode="eval").body
        assert isinstance(node, ast.Call)
        return [a.value if isinstance(a, ast.Constant) else ast.unparse(a) for a in node.args]

    def _exec(self, step: Step, actor: ActorState, body: dict[str, Any]) -> None:
        if step.source != "exec()":
            self._exec_program(step, actor, body)
            return
        assert actor.link is not None
        actor.link.send(body)
        old = actor.link
        self.handler_actors.discard(actor.name)  # execve(2) resets caught signals
        # The old image's link closes at exec (close-on-exec); the new image says hello.
        link, hello = self._await_hello(actor.name)
        old.close()
        actor.link = link
        actor.pending.clear()
        reply: dict[str, Any] = {"ok": 0}
        if int(hello["pid"]) != actor.pid:
            reply = {"error": f"exec'd image has pid {hello['pid']}, not {actor.pid}"}
        text = self._emit("call", actor=actor.name, pid=actor.pid,
                          call='execve("kemu.agents.scenario.scripted")', result="0")
        self._check(step, actor, text, reply)

    def fault(self, step: Step) -> None:
        """``!kill``, ``!stop``, ``!cont``, ``!delay`` an actor by its PID; ``!kill kernel``
        the daemon (the run then ends, with that as its error)."""
        if step.actor == "kernel":
            self._kill_kernel(step)
            return
        actor = self.actors.get(step.actor)
        if actor is None or not actor.alive:
            self.failures.append(f"line {step.lineno}: cannot {step.fault} {step.actor}: not alive")
            return
        if step.fault == "expect-death":
            self._expect_death(step, actor)
            return
        if step.fault == "asleep":
            self._asleep(step, actor)
            return
        self._log("fault", line=step.lineno, actor=actor.name, pid=actor.pid, fault=step.fault,
                  signal=step.signal or {"kill": "SIGKILL", "stop": "SIGSTOP",
                                         "cont": "SIGCONT"}.get(step.fault, ""))
        if step.fault == "wait":
            status = self._death(actor, "waited for")
            self.deaths.append(f"{actor.name} {'killed by ' if status.startswith('SIG') else ''}"
                               f"{status}")
            self._emit("waited", actor=actor.name, pid=actor.pid, status=status)
            return
        if step.fault == "delay":
            # SIGSTOP now, SIGCONT after the delay, whatever the lines do meanwhile
            actor.send_signal(signal.SIGSTOP)
            _wait_state(actor.pid, "T", self.step_timeout)
            timer = threading.Timer(step.delay, actor.send_signal, (signal.SIGCONT,))
            timer.daemon = True
            timer.start()
            self.timers.append(timer)
            self._emit("fault", actor=actor.name, pid=actor.pid, fault=f"delay {step.delay} s")
            return
        if step.fault == "signal":
            signo = signal_number(step.signal)
            assert signo is not None
            actor.send_signal(signo)
            self._emit("sent", actor=actor.name, pid=actor.pid, signal=step.signal)
            return
        sig = {"kill": signal.SIGKILL, "stop": signal.SIGSTOP, "cont": signal.SIGCONT}[step.fault]
        actor.send_signal(sig)
        if step.fault == "kill":
            actor.alive = False
            self._wait_dead(actor)
            actor.status = "SIGKILL"
            self._dead(actor, "SIGKILL", "!kill")
            lost = ", ".join(s.call for s in actor.pending)
            if lost:
                self._emit("lost", actor=actor.name, pid=actor.pid, calls=lost)
            actor.pending.clear()
        elif step.fault == "stop":
            actor.stopped = True
            _wait_state(actor.pid, "T", self.step_timeout)
        else:
            actor.stopped = False
        self._emit("fault", actor=actor.name, pid=actor.pid, fault=step.fault)

    def _kill_kernel(self, step: Step) -> None:
        """``!kill kernel``: SIGKILL the daemon.  Its agents can no longer make a call, so
        the run ends here with that as its error (within a bounded time: nobody waits
        for the dead kernel)."""
        if self.daemon is None:
            self.failures.append(f"line {step.lineno}: no kernel daemon to kill (host target)")
            return
        self._log("fault", line=step.lineno, actor="kernel", pid=self.daemon.pid, fault="kill",
                  signal="SIGKILL")
        self.daemon.kill()
        if self.kconn is not None:
            self.kconn.close()
            self.kconn = None
        self.kernel_killed = step.lineno
        self._emit("fault", actor="kernel", pid=self.daemon.pid, fault="kill")
        raise RunError(f"the kernel daemon was killed at line {step.lineno} (SIGKILL): "
                       "the run ends")

    def _daemon_fd(self) -> int:
        """The daemon's pidfd while it is expected to live (-1: none to watch)."""
        if self.daemon is None or self.kernel_killed or self.kernel_died is not None:
            return -1
        return self.daemon.pidfd

    def _daemon_watch(self) -> list[int]:
        fd = self._daemon_fd()
        return [fd] if fd >= 0 else []

    def _check_kernel(self) -> None:
        """The daemon died on its own (nobody's ``!kill kernel``: a crash, an outside
        kill): every actor's next call would wait for it, so the run ends here, saying
        how it died (its wait status, from its parent).  Its event log up to the death
        stays in the run folder."""
        if self._daemon_fd() < 0 or not select.select([self._daemon_fd()], [], [], 0)[0]:
            return
        assert self.daemon is not None
        how = self.daemon.died() or "gone"
        self.kernel_died = how
        line = self.line_now or self.last_line
        self._log("kernel-died", pid=self.daemon.pid, how=how, line=line)
        self._dead_logged.add(self.daemon.pid)
        if self.kconn is not None:
            self.kconn.close()
            self.kconn = None
        where = f"during line {line}" if self.line_now else (
            f"after line {line}" if line else "before the first line")
        raise RunError(f"the kernel daemon (pid {self.daemon.pid}) died {where}: {how}: "
                       "the run ends")

    def _set_host_lease_break_time(self, seconds: float) -> None:
        """Set /proc/sys/fs/lease-break-time (whole seconds) for this run; restored
        after.  Host runs that set it take turns (:mod:`.hostsysctl`)."""
        try:
            self.host_sysctl.set(seconds)
        except PermissionError as exc:
            raise RunError(str(exc)) from None

    def finish(self) -> None:
        """Look for actors that died unexpectedly, tell the live ones to exit (one that
        does not exit with status 0 died unexpectedly too), stop the daemon, reap
        everything."""
        if not self.aborted:
            self._check_deaths(None)
        for actor in self.actors.values():
            if actor.alive and actor.program is not None:
                # still running the program it exec'd: ended here, as a shell's kill -9
                actor.send_signal(signal.SIGKILL)
                actor.alive = False
                self._wait_dead(actor)
                actor.status = "SIGKILL"
                self._dead(actor, "SIGKILL", "end of run")
                self._emit("fault", actor=actor.name, pid=actor.pid, fault="kill")
        self._log("finish")
        for timer in self.timers:
            timer.cancel()
        for actor in self.actors.values():
            if actor.alive and not actor.stopped:
                # one held up by !delay whose timer did not fire yet
                actor.send_signal(signal.SIGCONT)
        if self.kconn is not None:
            try:
                self.audit = dict(self.kconn.call("pin_audit"))
            except Exception as exc:
                self.failures.append(f"kernel daemon did not answer the pin audit: {exc}")
        self.host_sysctl.restore()
        told: list[ActorState] = []
        for actor in self.actors.values():
            if actor.alive and actor.stopped:
                actor.send_signal(signal.SIGCONT)
            if actor.alive and actor.link is not None:
                told.append(actor)  # alive as far as the run knows: must exit with 0
                with contextlib.suppress(LinkClosed, OSError):
                    actor.link.send({"op": "exit"})
        for actor in self.actors.values():
            exiting = False
            if actor.link is not None:
                with contextlib.suppress(LinkClosed, TimeoutError, OSError):
                    self._delivered(actor, actor.link.recv(timeout=5))
                    exiting = actor in told
                actor.link.close()
            if exiting:  # strace's last two lines of a process that exits
                self._emit("call", actor=actor.name, pid=actor.pid, call="exit_group(0)",
                           result="?")
            status: str | None = None  # how a told actor ended (None: killed here)
            if actor.proc is not None:
                try:
                    status = _describe_status(actor.proc.wait(10))
                except subprocess.TimeoutExpired:
                    actor.proc.kill()
                    actor.proc.wait()
            elif actor.alive:
                if self._gone(actor, 5):
                    status = _exit_status(actor)
                else:
                    actor.send_signal(signal.SIGKILL)
            if actor in told and status not in (None, "exited with 0", "gone") \
                    and not self.aborted:
                # it died before it could take the exit: a signal on its way at the end
                actor.alive = False
                actor.status = status
                self._dead(actor, status, "died unexpectedly")
                self._emit("waited", actor=actor.name, pid=actor.pid, status=status)
                self._unexpected_death(actor, status, self.last_line)
            elif exiting:
                self._emit("exited", actor=actor.name, pid=actor.pid,
                           status=status if status not in (None, "gone") else
                           ("SIGKILL" if status is None else "exited with 0"))
            if actor.pidfd >= 0:
                os.close(actor.pidfd)
                actor.pidfd = -1
        _reap_all()
        if self.target == "host":
            root = os.path.join(self.run_dir, "root")
            with contextlib.suppress(OSError):
                self.final_locks = HostSystem(root).locks()
            self.host_root.remove()
        if self.kconn is not None:
            try:
                for actor in self.actors.values():
                    self.kconn.call("wait_exit", actor.pid)
                self.final_stats = dict(self.kconn.call("kernel_stats"))
                self.foreign = list(self.kconn.call("foreign_writes"))
            except Exception as exc:  # the daemon is gone or broken: that is the finding
                self.failures.append(f"kernel daemon did not answer after the run: {exc}")
            self.kconn.close()
        if self.daemon is not None:
            code = self.daemon.stop()
            if code not in (0, -signal.SIGTERM) and not self.kernel_killed \
                    and self.kernel_died is None:
                why = (f" (it did not stop within 10 s of SIGTERM; its stacks then: "
                       f"{os.path.join(self.run_dir, STACKS_FILE)})" if self.daemon.hung else "")
                self.failures.append(f"kernel daemon exited with status {code}{why}")
            if self.kernel_killed or self.kernel_died is not None:
                self._convert_kernel_log()
        for link, _ in self.unclaimed.values():
            link.close()  # actors that said hello after the run gave up on them
        self.unclaimed.clear()
        self.listener.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.director_path)  # a socket file is no use in a finished run
        known = [(a.pid, a.created) for a in self.actors.values()]
        if self.daemon is not None:
            known.append((self.daemon.pid, self.daemon_created))
        self.leaked = _leaked(known)

    def _convert_kernel_log(self) -> None:
        """A killed daemon left its event log as msgpack records: convert them to JSON
        lines (``python -m kemu.kernel_daemon --convert-log``), as its shutdown would
        have; the merge reads either."""
        path = os.path.join(self.run_dir, "kernel.jsonl")
        if os.path.exists(path + ".msgpack"):
            with contextlib.suppress(Exception):
                zygote.run("kemu.kernel_daemon.__main__", ["--convert-log", path],
                           env=designs.daemon_env(), timeout=30)

    def run(self) -> Outcome:
        """Run the whole scenario and return its outcome."""
        self._emit("header", scenario=self.sc.name, title=self.sc.title, target=self.target,
                   policy=self.policy)
        try:
            self.start()
            for step in self.sc.steps:
                self.run_step(step)
            for actor in self.actors.values():
                if actor.pending and actor.alive:
                    self.failures.append(
                        f"actor {actor.name}: background call never joined: "
                        f"{', '.join(s.source for s in actor.pending)}")
        except (RunError, DaemonGone) as exc:
            if isinstance(exc, DaemonGone):  # the launcher's own call found it dead
                try:
                    self._check_kernel()
                except RunError as known:
                    exc = known
            self.failures.append(str(exc))
            self._emit("aborted", reason=str(exc))
            self.aborted = True
            for actor in self.actors.values():
                if actor.alive:
                    actor.send_signal(signal.SIGKILL)
        finally:
            self.finish()
        self._emit("verdict", failures=len(self.failures),
                   unjudged=sum(1 for line in self.lines if line.unjudged)
                   + self.unjudged_deaths)
        self._log("end", failures=self.failures, deaths=self.deaths, stats=self.final_stats)
        self.events.close()
        self._write_folder()
        runs.mark_done(self.run_dir)
        return Outcome(self.sc.name, self.target, self.policy, self.lines, self.transcript,
                       self.run_dir, self.failures, self.deaths, self.final_stats, self.foreign,
                       self.audit, time.monotonic() - self.t0, self.kernel_killed,
                       self.final_locks, self.leaked, self.unjudged_deaths)


    def _write_folder(self) -> None:
        """Merge the daemon's and the launcher's records into the run's ``events.jsonl``,
        write ``transcript.txt`` from it and, with ``render``, the pictures and the page."""
        try:
            records = report.eventlog.merge(self.run_dir)
        except Exception as exc:  # a broken log must not hide the run's own outcome
            print(f"launcher: could not merge the event logs of {self.run_dir}: {exc!r}",
                  file=sys.stderr)
            return
        try:
            with open(os.path.join(self.run_dir, "transcript.txt"), "w") as fh:
                fh.writelines(line + "\n" for line in transcript.transcript(records))
            if self.render:
                report.write_run(self.run_dir, records)
        except OSError as exc:  # a full disk is the run folder's problem, not the run's
            print(f"launcher: the run folder {self.run_dir} is incomplete: {exc}",
                  file=sys.stderr)


def _wait_state(pid: int, state: str, timeout: float) -> None:
    """Wait until /proc says ``pid`` is in ``state`` (SIGSTOP takes effect asynchronously)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat", "rb") as fh:
                stat = fh.read()
        except OSError:
            return
        if stat[stat.rindex(b")") + 2 :].split()[0].decode() in (state, "t"):
            return
        time.sleep(0.001)  # polling the process state, not ordering two processes
    raise RunError(f"pid {pid} did not reach state {state}")


def _describe_status(code: int | None) -> str:
    if code is None:
        return "running"
    if code < 0:
        return _signal_name(-code)
    return f"exited with {code}"


def _exit_status(actor: ActorState) -> str:
    """How a process died, from its zombie's /proc/<pid>/stat (field 52, exit_code)."""
    try:
        with open(f"/proc/{actor.pid}/stat", "rb") as fh:
            stat = fh.read()
        code = int(stat[stat.rindex(b")") + 2 :].split()[49])
    except (OSError, ValueError, IndexError):
        return "gone"
    if code & 0x7F:
        return _signal_name(code & 0x7F)
    return f"exited with {code >> 8}"


def _signal_name(signo: int) -> str:
    """``SIGIO``; ``SIGRTMIN+1`` (glibc's SIGRTMIN, as scenarios name them)."""
    try:
        return signal.Signals(signo).name
    except ValueError:
        if signal.SIGRTMIN < signo <= signal.SIGRTMAX:
            return f"SIGRTMIN+{signo - signal.SIGRTMIN}"
        return f"SIG{signo}"


def _how(status: str) -> str:
    """``killed by SIGIO`` or ``exited with 1``: how a process died, in words."""
    return f"killed by {status}" if status.startswith("SIG") else status


def _pidfd(pid: int) -> int:
    """A pidfd of process ``pid`` (-1 if it is gone already)."""
    try:
        return os.pidfd_open(pid)
    except OSError:
        return -1


def _created(pid: int) -> float:
    """When process ``pid`` was created (0 if it is gone already)."""
    try:
        return float(psutil.Process(pid).create_time())
    except psutil.Error:
        return 0.0


def _leaked(known: list[tuple[int, float]]) -> list[int]:
    """PIDs of processes of this run still running once it is over: of its actors
    (an exec'd image keeps its actor's PID) and its daemon, each given with its creation
    time, so that a later process that got a PID once it was free is not taken for it."""
    out = []
    for pid, created in known:
        with contextlib.suppress(psutil.Error):
            proc = psutil.Process(pid)
            if (created and proc.create_time() == created
                    and proc.status() != psutil.STATUS_ZOMBIE):
                out.append(pid)
    return sorted(set(out))


def _reap_all() -> None:
    """Reap the orphans re-parented to this launcher (it is a child subreaper): fork
    children of dead actors.  Processes another run of this launcher still waits for
    (other threads of a matrix) are left to it."""
    mine = zygote.tracked()
    with contextlib.suppress(psutil.Error):
        for child in psutil.Process().children():
            with contextlib.suppress(psutil.Error, ChildProcessError):
                if child.pid not in mine and child.status() == psutil.STATUS_ZOMBIE:
                    os.waitpid(child.pid, os.WNOHANG)


def needs_root(scenario: Scenario, target: str) -> str | None:
    """Why ``scenario`` cannot run on ``target`` here, or None: the filesystem its
    ``host_fs`` setting asks for is not to be had (:func:`hostfs.unavailable`); or it
    needs root and this is not root: a host run that
    sets ``lease_break_time`` writes /proc/sys/fs/lease-break-time, and ``setuid`` of
    an actor (on either target: the emulator's actors change their credentials for
    real) needs CAP_SETUID."""
    if target == "host":
        why = hostfs.unavailable(str(scenario.settings.get("host_fs", "run")))
        if why:
            return why
    if os.geteuid() == 0:
        return None
    if target == "host" and "lease_break_time" in scenario.settings:
        return "needs root: the host target writes /proc/sys/fs/lease-break-time"
    for step in scenario.steps:
        if step.call in ("setuid", "setresuid", "setgid", "setgroups"):
            return f"needs root: an actor calls {step.call} (CAP_SETUID, CAP_SETGID)"
    return None


def default_jobs() -> int:
    """Runs at once by default: a run's processes mostly wait for each other, so three
    runs per core keep the cores busy (at most 8)."""
    return min(8, 3 * (os.cpu_count() or 1))


def run_scenario(scenario: Scenario, target: str = "emulator", policy: str = "upstream",
                 run_dir: str | None = None, out: IO[str] | None = None,
                 show_pids: bool = True, render: bool = True) -> Outcome:
    """Run ``scenario`` once; see :class:`Runner`."""
    return Runner(scenario, target, policy, run_dir, out, show_pids, render=render).run()
