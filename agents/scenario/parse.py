"""Scenario files: multi-process programs that read like the mailing-list threads.

Syntax, one item a line (``#`` starts a comment)::

    # title: pass the descriptor, then the sender dies
    set lease_break_time = 0.2          # a run setting
    A: fd = open("/f", O_RDWR|O_CREAT, 0o644)   => 3
    A: fork() as C                      # C is the child actor
    B: open("/f", O_RDONLY) &           # started in the background ...
    B: join                             => 3     # ... and joined later
    A: ftruncate(fd, 0)                 => EINVAL [upstream, legacy] => 0
    [map-direct] A: p = mmap(...)       # a line that runs under these policies only
    [!map-direct] A: p = mmap(...)      # ... or under every policy but these
    !kill A                             # faults: kill, stop, cont, wait, signal A SIGUSR1
    !delay A 0.5                        # SIGSTOP A now, SIGCONT it 0.5 s later
    !asleep B                           # wait until B's background call sleeps (again)
    !expect-death A SIGIO               # A dies of SIGIO during or after the line before
    !expect-death A exit 3              # ... exits with status 3; without how: any death
    !kill kernel                        # SIGKILL the kernel daemon: the run ends
    !locks                              # the lease list, as /proc/locks shows it
    A: on SIGIO: fcntl(fd, F_SETLEASE, F_UNLCK) => 0   # a handler that makes calls
    B: open("/f", O_RDWR)               => 3 within 1s # ... so the breaker is let in
    A: fcntl(fd, F_GETOWN)              => A.pid or 0  # run-time values, alternatives
    B: exec("/prog")                    # execve(2) of a program file (ELF_PAUSE)
    set host_fs = xfs                   # the host target's root on a fresh XFS
    expect: fds(B) ...                  # reserved for later checks

Each call line is ``ACTOR: [var =] call(args) [as CHILD] [&] [=> expectation [tags]]...``.
An expectation is a value, an errno name, ``ok`` (any success) or ``*`` (anything);
its optional ``[tags]`` name the policies or targets (``host``, ``emulator``) it holds
for; an untagged one holds wherever no tagged one matches.  Expectations combine:
``EBUSY or EAGAIN`` (``EBUSY | EAGAIN`` between errno names), ``not EAGAIN``; a value
may be known only when the line runs (``A.pid``, a variable the actor bound earlier);
a map may need a key ``absent`` or match ``exactly``; a time bound follows the value
(``=> 3 after 1s``, ``after 2s±0.5``, ``=> EINTR within 0.1s``), measured by the
actor around the call, with ``set time_tolerance = SECONDS`` when no ``±`` is given.

Deaths.  An actor may die only where a line says so: ``=> killed SIGNAME`` on the line
whose call it dies under, ``!kill A``, ``!wait A`` (any death), an ``exit(N)`` line, or
``!expect-death A [SIGNAME | exit N]`` for a death between lines (a signal sent while
another actor's line ran): the line waits, at most the step timeout, for A to be dead
and fails if A died otherwise or not at all.  Before every line and at the end of the
run the launcher looks at every actor (fork children included); one found dead that no
line expects fails the run: ``line 7: actor A died unexpectedly: killed by SIGIO`` (the
line during or after which it died).

``!asleep B`` waits, at most the step timeout, until B's background call (``&``) sleeps
in the kernel: after a wake-up that sends a sleeper back to sleep (a breaker that finds
another lease to break), the next line sees it asleep again, whatever the load.
"""

from __future__ import annotations

import ast
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from kemu.agents.scenario.expr import BUILTINS, ExprError, check, check_static, evaluate
from kemu.protocol import linux
from kemu.protocol.config import SETTINGS as DAEMON_SETTINGS
from kemu.protocol.config import DaemonConfig

ACTOR_RE = re.compile(r"^([A-Z][A-Za-z0-9_]*)\s*:\s*(.*)$")
ACTOR_NAME_RE = re.compile(r"^[A-Z][A-Za-z0-9_]*$")
ONLY_RE = re.compile(r"^\[(!?[a-z][\w-]*(?:\s*,\s*!?[a-z][\w-]*)*)\]\s+(.*)$")
FAULT_RE = re.compile(r"^!(kill|stop|cont|wait|signal)\s+([A-Z][A-Za-z0-9_]*|kernel)(?:\s+(SIG[A-Z0-9+]+))?\s*$")
EXPECT_DEATH_RE = re.compile(r"^!expect-death\s+([A-Z][A-Za-z0-9_]*)"
                             r"(?:\s+(SIG[A-Z0-9+]+|exit\s+[0-9]+))?\s*$")
ASLEEP_RE = re.compile(r"^!asleep\s+([A-Z][A-Za-z0-9_]*)\s*$")
DELAY_RE = re.compile(r"^!delay\s+([A-Z][A-Za-z0-9_]*)\s+([0-9]*\.?[0-9]+)\s*$")
#: the longest an actor may be held up by ``!delay`` (seconds)
MAX_DELAY = 10.0
KILLED_RE = re.compile(r"^killed(?:\s+(SIG[A-Z0-9+]+))?$")
LOCKS_RE = re.compile(r"^!locks\s*$")
SET_RE = re.compile(r"^set\s+([a-z_]+)\s*=\s*(\S+)\s*$")
TAGS_RE = re.compile(r"^(.*?)\s*\[([A-Za-z][\w-]*(?:\s*,\s*[A-Za-z][\w-]*)*)\]\s*$")
AS_RE = re.compile(r"^(.*\))\s+as\s+([A-Z][A-Za-z0-9_]*)$")
ON_RE = re.compile(r"^on\s+(SIG[A-Z0-9+]+)\s*:\s*(.*)$")
#: what a signal handler may not call: what changes the process or waits for the launcher
NOT_IN_HANDLER = frozenset({"fork", "exec", "exit", "recv", "recvfd", "sigwait", "pause",
                            "sigtimedwait"})

#: the choices of the ``host_fs`` setting (kemu.agents.launcher.hostfs.CHOICES)
HOST_FS = ("run", "ext4", "tmpfs", "xfs")
#: tags that name a target, not a design
TARGETS = frozenset({"host", "emulator"})
#: settings a scenario may change, with their types: the daemon's (protocol.config,
#: mapped to the daemon's setting by the launcher) and the launcher's own
SETTINGS: dict[str, type] = {**{name: kind for name, (_, kind) in DAEMON_SETTINGS.items()},
                             "policy": str, "step_timeout": float, "time_tolerance": float,
                             "host_fs": str}


def render_settings() -> str:
    """docs/scenarios.md's table of ``set`` settings, from the daemon's configuration
    (:mod:`kemu.protocol.config`) and the launcher's own (``tests/test_docs.py`` keeps the
    page equal to it)."""
    from dataclasses import fields

    from kemu.protocol.config import DaemonConfig

    rows = ["| setting | type | default | what |", "|---|---|---|---|"]
    for f in fields(DaemonConfig):
        name = f.metadata.get("scenario")
        if name:
            rows.append(f"| `{name}` | {DAEMON_SETTINGS[name][1].__name__} | {f.default} | "
                        f"{f.metadata.get('help', '')} |")
    rows.append("| `policy` | str | upstream | the design `kemu run` (and `kemu_run`) use "
                "when none is given; the matrix and explore choose their own |")
    rows.append("| `step_timeout` | float | 20.0 | seconds the launcher waits for a line's "
                "answer before it gives the run up |")
    rows.append("| `host_fs` | str | run | host target: where the actors' root lives: run "
                "(the run folder), ext4 (under /tmp), tmpfs (under /dev/shm), xfs (a loop "
                "image); skipped with the reason where it cannot be had |")
    rows.append("| `time_tolerance` | float | 0.5 | seconds a time expectation "
                "(`=> 0 after 2s`) may be off, when it does not say (`after 2s±0.2`) |")
    return "\n".join(rows)


class ScenarioError(Exception):
    """A scenario file does not parse; the message names the file and line."""


class _Absent:
    """``absent`` in an expected map: the key must not be there."""

    def __repr__(self) -> str:
        return "absent"


#: the value of the name ``absent`` in an expectation
ABSENT = _Absent()


@dataclass(frozen=True)
class Expect:
    """An expected outcome of a line, for the given tags (empty: everywhere).

    ``alt``: one of several (``value`` is a tuple of expectations); ``not``: anything but
    ``value`` (an expectation); a ``value`` with ``source`` is known only when the line
    runs (it names an actor's PID or a variable); ``exact``: maps compared with every
    key; ``time``: ``("after", T, D)`` (returned T seconds after the call began, give or
    take D; None: the run's ``time_tolerance``) or ``("within", T, None)``.
    """

    kind: Literal["value", "errno", "ok", "any", "killed", "skipped", "alt", "not"]
    value: Any = None
    tags: frozenset[str] = frozenset()
    #: the expression of a value known only when the line runs ("" for a literal)
    source: str = ""
    #: maps must have exactly the keys named, at every depth (``exactly {...}``)
    exact: bool = False
    time: tuple[str, float, float | None] | None = None

    def describe(self) -> str:
        """The expectation as the scenario wrote it."""
        text = self._describe()
        if self.time is not None:
            mode, bound, tol = self.time
            text += f" {mode} {bound:g}s" + (f"±{tol:g}" if tol is not None else "")
        return text

    def _describe(self) -> str:
        if self.kind == "alt":
            return " or ".join(e.describe() for e in self.value)
        if self.kind == "not":
            return "not " + str(self.value.describe())
        if self.kind == "errno":
            return linux.errno_name(self.value)
        if self.kind == "ok":
            return "ok"
        if self.kind == "any":
            return "*"
        if self.kind == "skipped":
            return "skipped"
        if self.kind == "killed":
            if isinstance(self.value, str) and self.value.startswith("exited"):
                return self.value
            return "killed" + (f" {self.value}" if self.value else "")
        return ("exactly " if self.exact else "") + (self.source or repr(self.value))

    def expects_death(self) -> bool:
        """Does this expectation (or one of its alternatives) expect a death?"""
        if self.kind == "alt":
            return any(e.expects_death() for e in self.value)
        return self.kind == "killed"

    def matches(self, reply: dict[str, Any], env: Mapping[str, Any] | None = None,
                pids: Mapping[str, int] | None = None, tolerance: float = 0.5) -> bool:
        """Does ``reply`` (an actor's answer: ``ok``, ``errno``, ``killed``, ``skipped``,
        ``elapsed``) meet this expectation?  ``env`` and ``pids`` are the line's actor's
        variables and the actors' PIDs, for a value known only at run time; ``tolerance``
        the run's ``time_tolerance``.  A value that cannot be evaluated does not match."""
        if self.time is not None:
            elapsed = reply.get("elapsed")
            if not isinstance(elapsed, int | float):
                return False
            mode, bound, tol = self.time
            if mode == "within" and elapsed > bound:
                return False
            if mode == "after" and abs(elapsed - bound) > (tolerance if tol is None else tol):
                return False
        return self._matches(reply, env or {}, pids or {})

    def _matches(self, reply: dict[str, Any], env: Mapping[str, Any],
                 pids: Mapping[str, int]) -> bool:
        if "error" in reply:
            return False
        if self.kind == "alt":
            return any(e._matches(reply, env, pids) for e in self.value)
        if self.kind == "not":
            if "skipped" in reply or "killed" in reply:
                return False
            return not self.value._matches(reply, env, pids)
        if "skipped" in reply or self.kind == "skipped":
            return "skipped" in reply and self.kind in ("skipped", "any")
        if "killed" in reply or self.kind == "killed":
            if self.kind != "killed" or "killed" not in reply:
                return False
            return self.value in (None, reply["killed"])
        if self.kind == "any":
            return True
        if self.kind == "errno":
            return bool(reply.get("errno") == self.value)
        if "errno" in reply:
            return False
        if self.kind == "ok":
            return True
        try:
            want = self.evaluate(env, pids)
        except ExprError:
            return False
        return match_value(reply.get("ok"), want, self.exact)

    def evaluate(self, env: Mapping[str, Any], pids: Mapping[str, int]) -> Any:
        """The expected value: the literal, or the expression evaluated with the line's
        actor's variables ``env`` and the actors' PIDs; :class:`ExprError` if it cannot
        be (a variable whose call failed)."""
        if not self.source:
            return self.value
        return evaluate(ast.parse(self.source, mode="eval"),
                        {**env, "absent": ABSENT}, pids)


def match_value(got: Any, want: Any, exact: bool = False) -> bool:
    """Equality, except that an expected map needs only the keys it names (also inside
    lists), so an expectation can leave out what differs between runs (PIDs); a key
    whose expected value is ``absent`` must not be there; with ``exact`` maps need every
    key, at every depth."""
    if isinstance(want, dict) and isinstance(got, dict):
        if exact and set(got) != {k for k, v in want.items() if v is not ABSENT}:
            return False
        return all((k not in got) if v is ABSENT else
                   (k in got and match_value(got[k], v, exact)) for k, v in want.items())
    if isinstance(want, list) and isinstance(got, list):
        return len(want) == len(got) and all(match_value(g, w, exact)
                                             for g, w in zip(got, want, strict=True))
    if isinstance(want, str) and isinstance(got, bytes | bytearray):
        return got == want.encode()
    return bool(got == want)


@dataclass
class Step:
    """One line of a scenario."""

    lineno: int
    text: str
    kind: Literal["call", "join", "fault", "locks"]
    actor: str
    call: str = ""
    #: the call's source, e.g. ``open("/f", O_RDONLY)``; arguments evaluated by the actor
    source: str = ""
    bind: str | None = None
    background: bool = False
    child: str | None = None
    fault: str = ""
    #: the signal of ``!signal ACTOR SIGNAME``
    signal: str = ""
    #: seconds of ``!delay ACTOR SECONDS``
    delay: float = 0.0
    #: ``[policy, ...] LINE``: the line runs only under these policies or targets
    only: frozenset[str] = frozenset()
    #: ``[!policy, ...] LINE``: the line runs under every policy but these
    only_not: frozenset[str] = frozenset()
    expects: list[Expect] = field(default_factory=list)
    #: ``ACTOR: on SIGNAME: call; call``: the calls the handler makes (``signal`` names
    #: the signal), each a step of its own with its expectations
    handler: list[Step] = field(default_factory=list)

    def runs_under(self, tags: set[str]) -> bool:
        """Does the line run under ``tags`` (the run's policy and target)?"""
        if self.only and not self.only & tags:
            return False
        return not self.only_not & tags

    def design_dependent(self) -> bool:
        """Does what the line does or expects depend on the design (a policy named in
        its prefix or in an expectation's tags)?"""
        return bool(self.designs_named())

    def designs_named(self) -> set[str]:
        """The designs the line names."""
        named = set(self.only | self.only_not)
        for e in [*self.expects, *(x for h in self.handler for x in h.expects)]:
            named |= e.tags
        return named - TARGETS

    def expectation(self, tags: set[str]) -> Expect | None:
        """The expectation that applies under ``tags`` (policy, target)."""
        for e in self.expects:
            if e.tags and e.tags & tags:
                return e
        for e in self.expects:
            if not e.tags:
                return e
        return None


@dataclass
class Scenario:
    """A parsed scenario file."""

    name: str
    title: str
    settings: dict[str, Any]
    steps: list[Step]
    #: actors started by the launcher, in order of first appearance
    actors: list[str]
    #: actors created by ``fork() as X``
    children: list[str]

    def designs_named(self) -> set[str]:
        """Every design a line of the scenario names (prefixes, expectation tags): a
        design named nowhere gets only the design-independent lines judged."""
        named: set[str] = set()
        for step in self.steps:
            named |= step.designs_named()
        return named


def _split_expectations(line: str) -> tuple[str, list[str]]:
    """Split ``call => e1 => e2`` outside string literals; a ``#`` outside them ends
    the line (a comment)."""
    parts = _split_top(line, "=>", brackets=False, comments=True)
    return parts[0], parts[1:]


def signal_number(name: str) -> int | None:
    """``SIGIO`` -> 29, ``SIGRTMIN+1`` -> 35 (glibc's SIGRTMIN, as Python's signal module)."""
    if name.startswith("SIGRTMIN"):
        rest = name[len("SIGRTMIN"):]
        base = linux.SIGRTMIN
        return base + int(rest[1:]) if rest.startswith("+") and rest[1:].isdigit() else (
            base if not rest else None)
    value = linux.CONSTANTS.get(name)
    return value if name.startswith("SIG") else None


#: ``after 1s``, ``after 2s±0.5``, ``within 0.1s`` at the end of an expectation
TIME_RE = re.compile(r"^(.*?)\s*\b(after|within)\s+([0-9]*\.?[0-9]+)\s*s"
                     r"(?:\s*(?:±|\+-|\+/-)\s*([0-9]*\.?[0-9]+)\s*s?)?\s*$")
#: the longest a time expectation may name (seconds)
MAX_TIME = 3600.0


def _split_top(text: str, sep: str, brackets: bool = True, comments: bool = False
               ) -> list[str]:
    """``text`` split at ``sep`` where it stands outside string literals (and, with
    ``brackets``, outside brackets), each part stripped; ``sep`` a word such as ``or``
    is matched as a whole word.  With ``comments`` a ``#`` outside strings ends it."""
    parts: list[str] = []
    buf: list[str] = []
    quote: str | None = None
    depth = 0
    i = 0
    word = sep.isalpha()
    while i < len(text):
        c = text[i]
        if quote:
            buf.append(c)
            if c == "\\" and i + 1 < len(text):
                buf.append(text[i + 1])
                i += 1
            elif c == quote:
                quote = None
        elif c in "\"'":
            quote = c
            buf.append(c)
        elif comments and c == "#":
            break
        elif brackets and c in "([{":
            depth += 1
            buf.append(c)
        elif brackets and c in ")]}":
            depth -= 1
            buf.append(c)
        elif depth == 0 and text.startswith(sep, i) and (not word or (
                (i == 0 or not (text[i - 1].isalnum() or text[i - 1] == "_"))
                and (i + len(sep) >= len(text)
                     or not (text[i + len(sep)].isalnum() or text[i + len(sep)] == "_")))):
            parts.append("".join(buf))
            buf = []
            i += len(sep)
            continue
        else:
            buf.append(c)
        i += 1
    parts.append("".join(buf))
    return [p.strip() for p in parts]


def parse_expect(text: str, bound: frozenset[str] | None = None) -> Expect:
    """Parse one expectation: ``3``, ``ENOENT``, ``ok``, ``*``, ``b"x"``, ``EBUSY or
    EAGAIN``, ``not EAGAIN``, ``exactly {...}``, ``A.pid``, a variable of ``bound`` (the
    names the line's actor has bound on earlier lines; None: any name), with a time
    bound (``after 1s``, ``within 0.1s``) and ``[tags]``."""
    tags: frozenset[str] = frozenset()
    m = TAGS_RE.match(text)
    if m:
        text = m.group(1).strip()
        tags = frozenset(t.strip() for t in m.group(2).split(",") if t.strip())
    when: tuple[str, float, float | None] | None = None
    m = TIME_RE.match(text)
    if m and not _inside_literal(text, m.start(2)):
        text = m.group(1).strip()
        bound_s = float(m.group(3))
        tol = float(m.group(4)) if m.group(4) is not None else None
        if m.group(2) == "within" and tol is not None:
            raise ScenarioError("'within T' is a bound of its own: it takes no ±")
        if bound_s > MAX_TIME:
            raise ScenarioError(f"a time expectation is at most {MAX_TIME:g} s, not {bound_s:g}")
        when = (m.group(2), bound_s, tol)
    if not text:
        if when is None:
            raise ScenarioError("an empty expectation")
        text = "ok"
    exp = _parse_alternatives(text, bound)
    if when is not None and (exp.expects_death() or exp.kind == "skipped"):
        raise ScenarioError("a death or a skipped line has no time to measure")
    return Expect(exp.kind, exp.value, tags, exp.source, exp.exact, when)


def _inside_literal(text: str, pos: int) -> bool:
    """Is ``text[pos]`` inside a string literal (``b"after 1s"`` is a value)?"""
    quote: str | None = None
    i = 0
    while i < pos:
        c = text[i]
        if quote:
            if c == "\\":
                i += 1
            elif c == quote:
                quote = None
        elif c in "\"'":
            quote = c
        i += 1
    return quote is not None


def _parse_alternatives(text: str, bound: frozenset[str] | None) -> Expect:
    """``A or B or ...`` (``EBUSY | EAGAIN`` too, when every part is an errno name)."""
    parts = _split_top(text, "or")
    if len(parts) == 1:
        bars = _split_top(text, "|")
        if len(bars) > 1 and all(b in linux.ERRNO_BY_NAME for b in bars):
            parts = bars
    if len(parts) == 1:
        return _parse_single(text, bound)
    if any(not p for p in parts):
        raise ScenarioError(f"an empty alternative in {_short(text)}")
    return Expect("alt", tuple(_parse_single(p, bound) for p in parts))


def _parse_single(text: str, bound: frozenset[str] | None) -> Expect:
    """One expectation without alternatives, tags or time."""
    if text.startswith("!="):
        raise ScenarioError(f"write 'not {text[2:].strip()}' for anything but a value")
    m = re.match(r"^not\s+(.*)$", text)
    if m:
        inner = _parse_single(m.group(1).strip(), bound)
        if inner.kind in ("not", "killed", "skipped", "any"):
            raise ScenarioError(f"'not' takes a value, an errno or ok, not {_short(text)}")
        return Expect("not", inner)
    exact = False
    m = re.match(r"^exactly\s+(.*)$", text)
    if m:
        exact, text = True, m.group(1).strip()
    if text == "ok" and not exact:
        return Expect("ok", None)
    if text == "*" and not exact:
        return Expect("any", None)
    if text == "skipped" and not exact:
        return Expect("skipped", None)
    m = KILLED_RE.match(text)
    if m and not exact:
        return Expect("killed", m.group(1))
    if text in linux.ERRNO_BY_NAME and not exact:
        return Expect("errno", linux.ERRNO_BY_NAME[text])
    try:
        node = _parse_expression(text, "eval")
        check(node)
        dynamic = dynamic_names(node)
        if not dynamic:
            return Expect("value", evaluate(node, {"absent": ABSENT}), exact=exact)
    except (SyntaxError, ExprError) as exc:
        raise ScenarioError(f"bad expectation {_short(text)}: {exc}") from None
    if bound is not None:
        unknown = sorted(n for n in dynamic if "." not in n and n not in bound)
        if unknown:
            raise ScenarioError(f"expectation {_short(text)} names {unknown[0]!r}, which no "
                                "earlier line of this actor binds")
    return Expect("value", None, source=ast.unparse(node), exact=exact)


def _pid_refs(e: Expect) -> set[str]:
    """The ``X.pid`` names an expectation (or its alternatives) uses."""
    if e.kind == "alt":
        return set().union(*(_pid_refs(x) for x in e.value))
    if e.kind == "not":
        return _pid_refs(e.value)
    if e.source:
        return {n for n in dynamic_names(ast.parse(e.source, mode="eval")) if n.endswith(".pid")}
    return set()


def dynamic_names(node: ast.AST) -> set[str]:
    """The names of ``node`` known only when its line runs: variables (``fd``) and actor
    PIDs (``A.pid``, given as ``"A.pid"``); constants, errno names and ``absent`` are
    not."""
    out: set[str] = set()
    for sub in ast.walk(node):
        if isinstance(sub, ast.Attribute) and isinstance(sub.value, ast.Name) \
                and sub.attr == "pid" and ACTOR_NAME_RE.match(sub.value.id) \
                and sub.value.id not in linux.CONSTANTS:
            out.add(f"{sub.value.id}.pid")
    pid_bases = {id(sub.value) for sub in ast.walk(node) if isinstance(sub, ast.Attribute)
                 and isinstance(sub.value, ast.Name) and f"{sub.value.id}.pid" in out}
    for sub in ast.walk(node):
        if isinstance(sub, ast.Name) and id(sub) not in pid_bases \
                and sub.id not in linux.CONSTANTS and sub.id not in linux.ERRNO_BY_NAME \
                and sub.id not in ("None", "True", "False", "absent") \
                and sub.id not in BUILTINS:
            out.add(sub.id)
    return out


def _short(text: str, limit: int = 60) -> str:
    """``text`` quoted, cut to ``limit`` characters for a message."""
    return repr(text) if len(text) <= limit else repr(text[:limit]) + f"... ({len(text)} characters)"


def _parse_expression(text: str, mode: str) -> ast.AST:
    """``ast.parse``, with an expression too large for Python's parser (a sum of 40,000
    terms overflows its recursion) refused as an :class:`ExprError`."""
    try:
        return ast.parse(text, mode=mode)
    except (RecursionError, MemoryError):
        raise ExprError("the expression is too large or too deeply nested") from None


def setting_value(key: str, text: str) -> Any:
    """The value of ``set KEY = TEXT``, of the setting's type and in its range (the
    daemon's own check, :meth:`DaemonConfig.validate`, run now rather than when the
    daemon starts); :class:`ScenarioError` saying what is wrong."""
    kind = SETTINGS[key]
    try:
        value = kind(text)
    except ValueError:
        what = {int: "an integer", float: "a number", str: "a word"}[kind]
        raise ScenarioError(f"{key} is {what}, not {text!r}") from None
    if isinstance(value, float) and not math.isfinite(value):
        raise ScenarioError(f"{key} must be a finite number, not {text}")
    if key == "step_timeout" and value <= 0:
        raise ScenarioError(f"step_timeout must be more than 0, not {text}")
    if key == "host_fs" and value not in HOST_FS:
        raise ScenarioError(f"host_fs is one of {', '.join(HOST_FS)}, not {text!r}")
    if key == "time_tolerance" and not 0 <= value <= MAX_TIME:
        raise ScenarioError(f"time_tolerance is 0 to {MAX_TIME:g} seconds, not {text}")
    if key in DAEMON_SETTINGS:
        name = DAEMON_SETTINGS[key][0]
        try:
            DaemonConfig(**{name: value}).validate()
        except ValueError as exc:
            msg = str(exc)  # the daemon's words, with the scenario's name of the setting
            raise ScenarioError(key + msg[len(name):] if msg.startswith(name + " ")
                                else f"{key}: {msg}") from None
    return value


def _death_expect(how: str | None) -> Expect:
    """The death ``!expect-death ACTOR HOW`` expects: ``SIGIO``, ``exit 3`` or (None) any."""
    if how is None:
        return Expect("killed", None)
    if how.startswith("exit"):
        return Expect("killed", f"exited with {int(how.split()[1])}")
    if signal_number(how) is None:
        raise ScenarioError(f"unknown signal {how}")
    return Expect("killed", how)


def _parse_call(body: str) -> tuple[str, str, str | None, str | None, bool]:
    """(call name, call source, bound variable, child actor, background)."""
    background = body.endswith("&")
    if background:
        body = body[:-1].rstrip()
    child = None
    m = AS_RE.match(body)
    if m:
        body, child = m.group(1), m.group(2)
    try:
        tree = _parse_expression(body, "exec")
    except SyntaxError as exc:
        raise ScenarioError(f"syntax: {exc.msg}") from None
    except ExprError as exc:
        raise ScenarioError(str(exc)) from None
    assert isinstance(tree, ast.Module)
    if len(tree.body) != 1:
        raise ScenarioError("one call per line")
    stmt = tree.body[0]
    bind = None
    if isinstance(stmt, ast.Assign):
        if len(stmt.targets) != 1 or not isinstance(stmt.targets[0], ast.Name):
            raise ScenarioError("assign to one plain name")
        bind = stmt.targets[0].id
        value = stmt.value
    elif isinstance(stmt, ast.Expr):
        value = stmt.value
    else:
        raise ScenarioError("a line is a call, optionally assigned to a name")
    if not isinstance(value, ast.Call) or not isinstance(value.func, ast.Name):
        raise ScenarioError("a line must call a function by name")
    if value.keywords:
        raise ScenarioError("keyword arguments are not supported")
    for arg in value.args:
        try:
            check_static(ast.Expression(arg))
        except ExprError as exc:
            raise ScenarioError(f"argument {_short(ast.unparse(arg))}: {exc}") from None
    return value.func.id, ast.unparse(value), bind, child, background


def _parse_handler(lineno: int, line: str, actor: str, sig: str, text: str,
                   bound: set[str]) -> Step:
    """``ACTOR: on SIGNAME: call [=> expectation]; call ...``: a handler that makes these
    calls when the signal is delivered (``sigaction`` without ``SA_RESTART``)."""
    signo = signal_number(sig)
    if signo is None:
        raise ScenarioError(f"unknown signal {sig}")
    if signo in (linux.SIGKILL, linux.SIGSTOP):
        raise ScenarioError(f"{sig} cannot be caught (sigaction(2) refuses it: EINVAL)")
    calls: list[Step] = []
    for part in _split_top(_strip_comment(text), ";"):
        if not part:
            raise ScenarioError("an empty call in a handler")
        body, expect_texts = _split_expectations(part)
        expects = [parse_expect(e, frozenset(bound)) for e in expect_texts]
        if body == "join" or body.endswith("&"):
            raise ScenarioError("a handler runs its calls to their end: no '&', no join")
        call, source, bind, child, _ = _parse_call(body)
        if child is not None or call in NOT_IN_HANDLER or call == "on":
            raise ScenarioError(f"a signal handler cannot call {call}()")
        if bind:
            bound.add(bind)
        calls.append(Step(lineno, line, "call", actor, call=call, source=source, bind=bind,
                          expects=expects))
    return Step(lineno, line, "call", actor, call="on", source=f"on {sig}", signal=sig,
                handler=calls)


def _strip_comment(text: str) -> str:
    """``text`` up to a ``#`` outside string literals."""
    quote: str | None = None
    i = 0
    while i < len(text):
        c = text[i]
        if quote:
            if c == "\\":
                i += 1
            elif c == quote:
                quote = None
        elif c in "\"'":
            quote = c
        elif c == "#":
            return text[:i]
        i += 1
    return text


def parse(text: str, name: str = "<scenario>") -> Scenario:
    """Parse scenario ``text``; raises :class:`ScenarioError` naming the line."""
    steps: list[Step] = []
    settings: dict[str, Any] = {}
    actors: list[str] = []
    children: list[str] = []
    #: the variables each actor has bound so far (a fork child starts with its parent's)
    bound: dict[str, set[str]] = {}
    #: actors whose PID an expectation names, with the line
    pid_refs: list[tuple[int, str]] = []
    title = ""
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not title and line.startswith("# title:"):
            title = line[len("# title:"):].strip()
        if not line or line.startswith("#"):
            continue
        only: frozenset[str] = frozenset()
        only_not: frozenset[str] = frozenset()
        m_only = ONLY_RE.match(line)
        if m_only:
            names = [x.strip() for x in m_only.group(1).split(",")]
            negated = [n.startswith("!") for n in names]
            if any(negated) and not all(negated):
                raise ScenarioError(f"{name}:{lineno}: a line prefix names the policies a "
                                    "line runs under, or (all with '!') those it does not "
                                    "run under, not both")
            if all(negated):
                only_not = frozenset(n[1:] for n in names)
            else:
                only = frozenset(names)
            line = m_only.group(2).strip()
        before = len(steps)
        try:
            m = SET_RE.match(line.split("#", 1)[0].strip())
            if m:
                key, value = m.groups()
                if key not in SETTINGS:
                    raise ScenarioError(f"unknown setting {key!r}")
                settings[key] = setting_value(key, value)
                continue
            if LOCKS_RE.match(line.split("#", 1)[0].strip()):
                steps.append(Step(lineno, line, "locks", ""))
                continue
            m = FAULT_RE.match(line.split("#", 1)[0].strip())
            if m:
                fault, who, sig = m.groups()
                if (fault == "signal") != (sig is not None):
                    raise ScenarioError("'!signal ACTOR SIGNAME' names a signal; other faults do not")
                if sig is not None and signal_number(sig) is None:
                    raise ScenarioError(f"unknown signal {sig}")
                if who == "kernel" and fault != "kill":
                    raise ScenarioError("the kernel daemon can only be killed ('!kill kernel')")
                steps.append(Step(lineno, line, "fault", who, fault=fault, signal=sig or ""))
                continue
            m = DELAY_RE.match(line.split("#", 1)[0].strip())
            if m:
                who, seconds = m.group(1), float(m.group(2))
                if not 0 < seconds <= MAX_DELAY:
                    raise ScenarioError(f"a delay is more than 0 and at most {MAX_DELAY} s")
                steps.append(Step(lineno, line, "fault", who, fault="delay",
                                  delay=seconds))
                continue
            m = EXPECT_DEATH_RE.match(line.split("#", 1)[0].strip())
            if m:
                who, how = m.groups()
                steps.append(Step(lineno, line, "fault", who, fault="expect-death",
                                  expects=[_death_expect(how)]))
                continue
            m = ASLEEP_RE.match(line.split("#", 1)[0].strip())
            if m:
                steps.append(Step(lineno, line, "fault", m.group(1), fault="asleep"))
                continue
            if line.startswith(("!expect-death", "!asleep")):
                raise ScenarioError("expected '!expect-death ACTOR [SIGNAME | exit N]' or "
                                    "'!asleep ACTOR'")
            m = ACTOR_RE.match(line)
            if not m:
                raise ScenarioError("expected 'ACTOR: call(...)', '!kill ACTOR' or 'set k = v'")
            actor, rest = m.groups()
            m_on = ON_RE.match(rest)
            if m_on:
                if actor not in actors and actor not in children:
                    actors.append(actor)
                steps.append(_parse_handler(lineno, line, actor, m_on.group(1),
                                            m_on.group(2), bound.setdefault(actor, set())))
                continue
            body, expect_texts = _split_expectations(rest)
            mine = bound.setdefault(actor, set())
            expects = [parse_expect(e, frozenset(mine)) for e in expect_texts]
            pid_refs.extend((lineno, ref[:-4]) for e in expects for ref in _pid_refs(e))
            if actor not in actors and actor not in children:
                actors.append(actor)
            if body == "join":
                steps.append(Step(lineno, line, "join", actor, expects=expects))
                continue
            call, source, bind, child, bg = _parse_call(body)
            if child is not None:
                if call != "fork":
                    raise ScenarioError("'as CHILD' names the child of fork() only")
                if child in actors or child in children:
                    raise ScenarioError(f"actor {child} exists already")
                children.append(child)
                bound[child] = set(mine) | ({bind} if bind else set())
            if bind:
                mine.add(bind)
            steps.append(Step(lineno, line, "call", actor, call=call, source=source, bind=bind,
                              background=bg, child=child, expects=expects))
        except ScenarioError as exc:
            raise ScenarioError(f"{name}:{lineno}: {exc}") from None
        finally:  # also for the lines that end their parsing with `continue`
            for s in steps[before:]:
                s.only = only
                s.only_not = only_not
    for s in steps:
        if s.kind == "locks":
            continue
        if s.kind == "fault" and s.actor not in actors and s.actor not in children \
                and s.actor != "kernel":
            raise ScenarioError(f"{name}:{s.lineno}: unknown actor {s.actor}")
    for lineno, who in pid_refs:
        if who not in actors and who not in children:
            raise ScenarioError(f"{name}:{lineno}: {who}.pid names no actor of the scenario")
    # An actor first seen as a fork child is not started by the launcher.
    actors = [a for a in actors if a not in children]
    return Scenario(name, title, settings, steps, actors, children)


def load(path: str | Path) -> Scenario:
    """Parse a scenario file (UTF-8 text)."""
    p = Path(path)
    data = p.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        lineno = data.count(b"\n", 0, exc.start) + 1
        column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        raise ScenarioError(f"{p.name}:{lineno}: not UTF-8 text: byte 0x{data[exc.start]:02x} "
                            f"at column {column}") from None
    return parse(text, p.name)
