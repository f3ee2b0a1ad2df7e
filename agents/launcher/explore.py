"""``launch.py explore FILE``: a scenario under every design, with a fault at every step.

The scenario runs once per design without faults, then once per design per *fault
point*: after each line, each actor alive there is killed (``!kill``), or stopped until
just before its next line (``!stop`` ... ``!cont``), or held up for a while (``!delay``),
or the kernel daemon is killed (``!kill kernel``).  In the fault variants the
expectations are dropped (a fault changes them) and what is checked instead are the
invariants (:mod:`kemu.agents.launcher.invariants`, ``docs/invariants.md``): no foreign
write where the design promises none, nothing left of dead processes, every pin
attributable, no breaker past its deadline, the daemon answering.  Runs go in parallel
on the local cores, with progress on the terminal.

Each violation is cut down to a reproducer: lines are removed while the same invariant
still breaks under the same design (the fault line is kept), and the result is written
as a runnable ``.scn`` whose last lines state the invariant as expectations, so it fails
when run on its own.  ``--report DIR`` writes one page: the fault point × design table,
and the fault-free runs side by side, line by line, with the first line where the
designs part and the design rule that decided it (the ``design`` events of the log).
"""

from __future__ import annotations

import html
import os
import re
import shlex
import shutil
import stat
import sys
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import IO, Any

from kemu.agents.launcher import designs, invariants, runs
from kemu.agents.launcher.invariants import Violation
from kemu.agents.launcher.matrix import summarize
from kemu.agents.launcher.runner import Outcome, default_jobs, run_scenario
from kemu.agents.scenario import strace
from kemu.agents.scenario.parse import (
    ACTOR_RE,
    ONLY_RE,
    Scenario,
    ScenarioError,
    _split_expectations,
    parse,
)
from kemu.protocol import linux

#: the kinds of fault, and what a variant inserts for each
FAULT_KINDS = ("kill", "stop", "delay", "kernel")
DEFAULT_FAULTS = ("kill",)
#: how long ``delay`` holds an actor up (seconds)
DELAY = 0.3
#: a line waiting for what a dead actor never sends gives up after this long
STEP_TIMEOUT = 1.0
#: runs a reproducer search may spend per violation
MAX_SHRINK_RUNS = 60


@dataclass(frozen=True)
class Fault:
    """One fault point: ``kind`` of ``actor`` after scenario line ``after`` (a line number;
    0 for none: the fault-free run)."""

    kind: str
    actor: str
    after: int

    def describe(self) -> str:
        """``kill A after line 12``."""
        if not self.after:
            return "no fault"
        who = "the kernel" if self.kind == "kernel" else self.actor
        verb = {"kernel": "kill", "kill": "kill", "stop": "stop", "delay": "delay"}[self.kind]
        return f"{verb} {who} after line {self.after}"

    @property
    def slug(self) -> str:
        """A file-name-safe name: ``kill-A@12``."""
        return "none" if not self.after else f"{self.kind}-{self.actor}@{self.after}"


NO_FAULT = Fault("none", "", 0)


@dataclass
class Result:
    """One run of the exploration."""

    design: str
    fault: Fault
    outcome: Outcome
    violations: list[Violation]
    #: the variant's text (to reproduce the single run)
    text: str

    @property
    def summary(self) -> str:
        """The run in a few words."""
        return summarize(self.outcome)


@dataclass
class Exploration:
    """Everything an exploration found."""

    scenario: Scenario
    source: str
    designs: list[str]
    results: list[Result] = field(default_factory=list)
    #: (design, invariant) -> the path of its reproducer
    reproducers: dict[tuple[str, str], str] = field(default_factory=dict)
    wall: float = 0.0

    @property
    def violations(self) -> list[Result]:
        """The runs that broke an invariant."""
        return [r for r in self.results if r.violations]


# --- variants ---------------------------------------------------------------------------


def _split(line: str) -> tuple[str, str, str]:
    """(prefix ``[..] ``, ``ACTOR: body`` without its expectations, the expectations)."""
    prefix = ""
    m = ONLY_RE.match(line.strip())
    rest = line.strip()
    if m:
        prefix, rest = line.strip()[: m.start(2)], m.group(2)
    am = ACTOR_RE.match(rest)
    if not am:
        return prefix, rest, ""
    body, expects = _split_expectations(am.group(2))
    tail = "".join(f" => {e}" for e in expects)
    return prefix, f"{am.group(1)}: {body}", tail


def strip_expectations(text: str) -> list[str]:
    """The scenario's lines with every call line's expectations removed (a fault changes
    what each line gives; the invariants are checked instead)."""
    out = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            out.append(raw)
            continue
        prefix, body, _ = _split(line)
        out.append(prefix + body)
    return out


def _line_numbers(sc: Scenario) -> list[int]:
    """Scenario lines that are steps (line numbers in the file)."""
    return sorted({s.lineno for s in sc.steps})


def fault_points(sc: Scenario, kinds: Iterable[str], victims: Iterable[str] | None = None
                 ) -> list[Fault]:
    """Every fault point: after each step line, each fault kind for each actor that
    exists there (a fork child from its fork on; ``kernel`` once per line)."""
    wanted = set(victims) if victims is not None else None
    points = []
    born: dict[str, int] = {a: 0 for a in sc.actors}
    for step in sc.steps:
        if step.child:
            born.setdefault(step.child, step.lineno)
    for lineno in _line_numbers(sc):
        for kind in kinds:
            if kind == "kernel":
                points.append(Fault("kernel", "kernel", lineno))
                continue
            for actor, since in born.items():
                if since <= lineno and (wanted is None or actor in wanted):
                    points.append(Fault(kind, actor, lineno))
    return points


def variant(text: str, sc: Scenario, fault: Fault) -> str:
    """The scenario text with ``fault`` inserted (expectations dropped), or the text as
    it is for the fault-free run."""
    if not fault.after:
        return text
    lines = strip_expectations(text)
    lines.insert(0, f"set step_timeout = {STEP_TIMEOUT}")
    at = fault.after  # after file line N (1-based): index N, shifted by the set line
    if fault.kind == "kernel":
        lines.insert(at + 1, "!kill kernel")
    elif fault.kind == "kill":
        lines.insert(at + 1, f"!kill {fault.actor}")
    elif fault.kind == "delay":
        lines.insert(at + 1, f"!delay {fault.actor} {DELAY}")
    else:  # stop: until just before the actor's next line, or to the end
        nxt = next((s.lineno for s in sc.steps if s.lineno > fault.after
                    and s.actor == fault.actor and s.kind != "fault"), None)
        if nxt is not None:
            lines.insert(nxt, f"!cont {fault.actor}")
        else:
            lines.append(f"!cont {fault.actor}")
        lines.insert(at + 1, f"!stop {fault.actor}")
    return "\n".join(lines) + "\n"


# --- running ----------------------------------------------------------------------------


def run_one(text: str, name: str, design: str, keep: bool,
            target: str = "emulator", promises: set[str] | None = None
            ) -> tuple[Outcome, list[Violation]]:
    """Run one variant under one design (on the host: the host kernel) and check the
    invariants; ``promises``, if given, instead of what the design promises (``find``
    checks every design for foreign writes)."""
    outcome = run_scenario(parse(text, name), target, design, show_pids=False,
                           render=False)
    promised = designs.promises(design) if target == "emulator" else set()
    if promises is not None:
        promised = promises
    violations = invariants.check(outcome, promised)
    if not violations and not keep:
        shutil.rmtree(outcome.run_dir, ignore_errors=True)
    return outcome, violations


def _progress(out: IO[str], done: int, total: int, bad: int, t0: float) -> None:
    elapsed = time.monotonic() - t0
    left = elapsed / done * (total - done) if done else 0.0
    out.write(f"\r[{done}/{total}] {total - done} left, {bad} violation(s), "
              f"{elapsed:.0f} s, about {left:.0f} s to go ")
    out.flush()


def explore(path: str, design_specs: list[str] | None = None,
            kinds: Iterable[str] = DEFAULT_FAULTS, victims: Iterable[str] | None = None,
            jobs: int | None = None, progress: IO[str] | None = sys.stderr,
            minimize: bool = True, out_dir: str | None = None,
            target: str = "emulator") -> Exploration:
    """Explore the scenario at ``path`` (see the module's docstring).  On the host
    target the host kernel is the one design, runs go one at a time (they share
    /proc/sys/fs/lease-break-time), and the kernel cannot be killed."""
    with open(path, encoding="utf-8") as fh:
        text = fh.read()
    sc = parse(text, os.path.basename(path))
    if target == "host":
        specs, names = ["host"], ["host"]
        kinds = [k for k in kinds if k != "kernel"]
        jobs = 1
    else:
        specs = design_specs or designs.builtin()
        names = [designs.resolve(s) for s in specs]
    points = [NO_FAULT, *fault_points(sc, kinds, victims)]
    work = [(spec, name, p) for p in points for spec, name in zip(specs, names, strict=True)]
    exp = Exploration(sc, text, names)
    t0 = time.monotonic()
    jobs = jobs or default_jobs()

    def one(item: tuple[str, str, Fault]) -> Result:
        spec, name, fault = item
        body = variant(text, sc, fault)
        outcome, violations = run_one(body, f"{sc.name}:{fault.slug}", spec,
                                      keep=not fault.after, target=target)
        if not fault.after and not outcome.passed:
            violations = [*violations, *(Violation("expectation", f) for f in outcome.failures)]
        return Result(name, fault, outcome, violations, body)

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        for n, result in enumerate(pool.map(one, work), 1):
            exp.results.append(result)
            if progress is not None:
                _progress(progress, n, len(work), len(exp.violations), t0)
    if progress is not None:
        progress.write("\n")
    if minimize:
        out_dir = out_dir or runs.new_run_dir("explore-")
        os.makedirs(out_dir, exist_ok=True)
        seen: set[tuple[str, str]] = set()
        for r in exp.violations:
            for v in r.violations:
                key = (r.design, v.invariant)
                if key in seen or v.invariant not in invariants.INVARIANTS:
                    continue
                seen.add(key)
                spec = specs[names.index(r.design)]
                exp.reproducers[key] = write_reproducer(r, v, spec, out_dir, target)
    exp.wall = time.monotonic() - t0
    return exp


# --- reproducers -----------------------------------------------------------------------


def _still_breaks(lines: list[str], name: str, spec: str, invariant: str,
                  target: str = "emulator", promises: set[str] | None = None) -> bool:
    text = "\n".join(lines) + "\n"
    try:
        parse(text, name)
    except ScenarioError:
        return False
    _, violations = run_one(text, name, spec, keep=False, target=target, promises=promises)
    return any(v.invariant == invariant for v in violations)


#: ``send(B, v)``, ``sendfd(B, v)``: a message to ``B``; ``v = recv()``, ``recvfd()``: one taken
_SEND_RE = re.compile(r"^(?:send|sendfd)\((\w+),")
_RECV_RE = re.compile(r"^(?:\w+ = )?(?:recv|recvfd)\(\)")


def _units(lines: list[str]) -> list[list[int]]:
    """Line indices grouped into what can be removed together: a background call
    (``&``) with the ``join`` of the same actor that ends it; a message (``send``,
    ``sendfd``) with the ``recv`` or ``recvfd`` that takes it (an actor's mailbox is
    first in, first out: a message removed alone would hand its receiver the next one
    in its place, and its ``recv`` removed alone would leave it for the next ``recv``);
    any other line alone."""
    units: list[list[int]] = []
    pending: dict[str, list[int]] = {}  # actor -> the unit of its unjoined background call
    mail: dict[str, list[list[int]]] = {}  # actor -> units of the messages it has not taken
    for i, line in enumerate(lines):
        _, body, _ = _split(line)
        actor, _, call = body.partition(":")
        actor, call = actor.strip(), call.strip()
        sent = _SEND_RE.match(call)
        if call.endswith("&"):
            pending[actor] = [i]
            units.append(pending[actor])
        elif call == "join" and actor in pending:
            pending.pop(actor).append(i)
        elif sent:
            unit = [i]
            mail.setdefault(sent.group(1), []).append(unit)
            units.append(unit)
        elif _RECV_RE.match(call) and mail.get(actor):
            mail[actor].pop(0).append(i)
        else:
            units.append([i])
    return units


def shrink(text: str, name: str, spec: str, invariant: str,
           keep: Callable[[str], bool], target: str = "emulator",
           promises: set[str] | None = None) -> list[str]:
    """Remove lines (never those ``keep`` says; a background call goes with its join,
    a message with its receipt) while ``invariant`` still breaks under ``spec``: a
    greedy pass from the end to the start (a removal does not send it back to the end,
    so a long program's first lines are tried too), repeated until a pass removes
    nothing or the run budget is spent."""
    lines = [ln for ln in text.splitlines() if ln.strip() and not ln.strip().startswith("#")]
    runs = 0
    while runs < MAX_SHRINK_RUNS:
        removed = False
        bound = len(lines)  # this pass tries the units that start above this line
        while runs < MAX_SHRINK_RUNS:
            units = [u for u in _units(lines) if min(u) < bound]
            if not units:
                break
            unit = units[-1]
            bound = min(unit)  # what a removal takes is below: the lines above stay put
            if any(keep(lines[i]) for i in unit) or max(unit) >= len(lines):
                continue
            trial = [ln for i, ln in enumerate(lines) if i not in unit]
            runs += 1
            if _still_breaks(trial, name, spec, invariant, target, promises):
                lines = trial
                removed = True
        if not removed:
            break
    return lines


def _checks(invariant: str, violation: Violation, lines: list[str]) -> list[str]:
    """Lines that state the invariant as expectations, for an actor that is alive."""
    checker = "Z"
    while any(ln.strip().startswith(f"{checker}:") for ln in lines):
        checker += "Z"
    if invariant == "no-foreign-write":
        return [f"{checker}: foreign_writes()                       => []"]
    if invariant == "pins-attributable":
        return [f'{checker}: pin_audit()                            => {{"unattributed": []}}']
    if invariant == "nothing-left":
        keys = re.findall(r"^(\w+) left", violation.evidence)
        sc = parse("\n".join(lines) + "\n", "reproducer")
        alive = [a for a in sc.actors + sc.children
                 if not any(s.kind == "fault" and s.fault == "kill" and s.actor == a
                            for s in sc.steps)]
        kills = [f"!kill {a}" for a in alive]
        if "/proc/locks" in violation.evidence:  # the host kernel: its lease list
            return [*kills, f"{checker}: locks()                                => []"]
        want = ", ".join(f'"{k}": 0' for k in (keys or ["mrs", "leases", "pinned_blocks"]))
        return [*kills, f"{checker}: kernel_stats()                         => {{{want}}}"]
    return []


def write_reproducer(result: Result, violation: Violation, spec: str, out_dir: str,
                     target: str = "emulator", promises: set[str] | None = None,
                     found_by: str = "launch.py explore", where: str = "") -> str:
    """Cut ``result``'s variant down and write it as a runnable, failing ``.scn``
    (``promises`` as for :func:`run_one`; ``where`` says what the title says the run
    was, by default its fault and scenario)."""
    name = f"{result.outcome.scenario.split(':')[0].removesuffix('.scn')}-{result.design}-" \
           f"{violation.invariant}"

    def keep(line: str) -> bool:
        s = line.strip()
        return s.startswith(("!kill", "!stop", "!cont", "!delay", "set "))

    text = result.text
    if not result.fault.after:  # a run without a fault: its expectations go too
        timeout = [] if "set step_timeout" in text else [f"set step_timeout = {STEP_TIMEOUT}"]
        text = "\n".join([*timeout, *strip_expectations(result.text)]) + "\n"
    lines = shrink(text, name, spec, violation.invariant, keep, target, promises)
    checks = _checks(violation.invariant, violation, lines)
    where = where or f"{result.fault.describe()} in {result.outcome.scenario.split(':')[0]}"
    title = f"# title: {violation.invariant} broken under {result.design} ({where})"
    body = [title, f"# found by: {found_by}, design {spec}", f"# evidence: {violation}",
            *lines, *checks]
    path = os.path.join(out_dir, f"{name}.scn")
    with open(path, "w", encoding="utf-8") as fh:
        fh.write("\n".join(body) + "\n")
    return path


# --- output ------------------------------------------------------------------------------


def command(result: Result, spec: str, out_dir: str) -> str:
    """The command that reproduces one run: its variant written next to the report."""
    path = os.path.join(out_dir, f"{result.design}-{result.fault.slug}.scn")
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(result.text)
    if spec == "host":
        return f"python launch.py run {shlex.quote(path)} --target host"
    return f"python launch.py run {shlex.quote(path)} --policy {shlex.quote(spec)}"


def first_parting(exp: Exploration) -> tuple[int | None, dict[str, list[str]]]:
    """The first scenario line whose outcome differs between the fault-free runs, and
    for each design the design rules (``design`` events) that acted on that line."""
    base = {r.design: r for r in exp.results if not r.fault.after}
    by_line: dict[int, dict[str, str]] = {}
    for name, r in base.items():
        for line in r.outcome.lines:
            by_line.setdefault(line.step.lineno, {})[name] = _outcome_of(line.reply)
    for lineno in sorted(by_line):
        seen = by_line[lineno]
        if len(set(seen.values())) > 1 or len(seen) < len(base):
            return lineno, {name: _rules_on(r, lineno) for name, r in base.items()}
    return None, {}


def _outcome_of(reply: dict[str, Any]) -> str:
    if "errno" in reply:
        return f"-1 {linux.errno_name(int(reply['errno']))}"
    if "killed" in reply:
        return f"killed {reply['killed']}"
    if "skipped" in reply:
        return "skipped"
    return strace.value(reply.get("ok"))


def _rules_on(r: Result, lineno: int) -> list[str]:
    """The ``design`` events of the kernel between line ``lineno``'s call and answer."""
    recs = invariants.records(r.outcome)
    inside, rules = False, []
    for rec in recs:
        if rec.get("src") == "launcher" and rec.get("ev") == "call":
            inside = rec.get("line") == lineno
        elif rec.get("src") == "launcher" and rec.get("ev") == "ret" and rec.get("line") == lineno:
            inside = False
        elif inside and rec.get("ev") == "design":
            rules.append(f"Policy.{rec.get('hook')} {rec.get('result')}")
    return rules


def print_summary(exp: Exploration, specs: dict[str, str], out: IO[str],
                  out_dir: str) -> None:
    """The table of violations and, for each, the command that reproduces it."""
    total = len(exp.results)
    bad = exp.violations
    out.write(f"{exp.scenario.name}: {total} runs under {len(exp.designs)} designs in "
              f"{exp.wall:.1f} s; {len(bad)} with violations\n")
    lineno, rules = first_parting(exp)
    if lineno is not None:
        out.write(f"designs first part at line {lineno}: "
                  + "; ".join(f"{d}: {', '.join(r) or 'Linux default'}" for d, r in rules.items())
                  + "\n")
    for r in bad[:50]:
        out.write(f"!! {r.design}, {r.fault.describe()}:\n")
        for v in r.violations:
            out.write(f"   {v}\n")
        out.write(f"   reproduce: {command(r, specs[r.design], out_dir)}\n")
    if len(bad) > 50:
        out.write(f"   ... and {len(bad) - 50} more\n")
    for (design, invariant), path in exp.reproducers.items():
        out.write(f"reproducer for {invariant} under {design}: {path}\n")


def write_report(exp: Exploration, report: str) -> str:
    """``REPORT/index.html``: fault point × design, and the designs side by side."""
    os.makedirs(report, exist_ok=True)
    cells: dict[tuple[str, str], Result] = {(r.fault.slug, r.design): r for r in exp.results}
    faults = list(dict.fromkeys(r.fault for r in exp.results))
    for r in exp.results:  # keep the runs the table links to
        if os.path.isdir(r.outcome.run_dir) and (r.violations or not r.fault.after):
            dest = os.path.join(report, "runs", f"{r.design}-{r.fault.slug}")
            if not os.path.exists(dest):
                shutil.copytree(r.outcome.run_dir, dest, ignore=_sockets)
            r.outcome.run_dir = dest
    e = html.escape
    rows = []
    for f in faults:
        tds = []
        for d in exp.designs:
            cell = cells.get((f.slug, d))
            if cell is None:
                tds.append("<td></td>")
                continue
            link = (f'<a href="runs/{e(d)}-{e(f.slug)}/transcript.txt">run</a>'
                    if os.path.isdir(os.path.join(report, "runs", f"{d}-{f.slug}")) else "")
            text = "<br>".join(e(str(v)) for v in cell.violations) or e(cell.summary)
            cls = "bad" if cell.violations else "ok"
            tds.append(f'<td class="{cls}" data-design="{e(d)}" data-fault="{e(f.slug)}">'
                       f"{text} {link}</td>")
        rows.append(f"<tr><th>{e(f.describe())}</th>{''.join(tds)}</tr>")
    lineno, rules = first_parting(exp)
    base = {r.design: r for r in exp.results if not r.fault.after}
    side = []
    for step in exp.scenario.steps:
        tds = []
        for d in exp.designs:
            run = base.get(d)
            line = next((ln for ln in run.outcome.lines if ln.step.lineno == step.lineno),
                        None) if run else None
            if line is not None:
                text = _outcome_of(line.reply)
                short = text if len(text) <= 28 else text[:26] + "\u2026"
                tds.append(f'<td title="{e(text)}">{e(short)}</td>')
            elif step.background and run is not None:
                tds.append("<td>started (&amp;)</td>")
            else:
                tds.append("<td>(not run)</td>")
        cls = ' class="parting"' if step.lineno == lineno else ""
        note = ""
        if step.lineno == lineno:
            note = "<br><small>" + "; ".join(
                f"{e(d)}: {e(', '.join(r) or 'Linux default')}" for d, r in rules.items()
            ) + "</small>"
        side.append(f"<tr{cls}><th>{step.lineno}: {e(step.text)}{note}</th>{''.join(tds)}</tr>")
    repro = "".join(f"<li>{e(i)} under {e(d)}: <code>{e(p)}</code></li>"
                    for (d, i), p in exp.reproducers.items())
    head = "".join(f"<th>{e(d)}</th>" for d in exp.designs)
    page = f"""<!doctype html><html><head><meta charset="utf-8">
<title>explore {e(exp.scenario.name)}</title><style>
body {{ font: 13px sans-serif; margin: 1em; max-width: 1380px; }}
table.side th {{ max-width: 360px; }}
table {{ border-collapse: collapse; margin-bottom: 2em; }}
td, th {{ border: 1px solid #ccc; padding: 3px 6px; vertical-align: top; text-align: left; }}
td.bad {{ background: #fde8e8; }} td.ok {{ background: #eef8ee; }}
tr.parting th, tr.parting td {{ background: #fff3c4; font-weight: bold; }}
</style></head><body data-runs="{len(exp.results)}" data-violations="{len(exp.violations)}">
<h1>explore {e(exp.scenario.name)}</h1>
<p>{e(exp.scenario.title)}</p>
<p>{len(exp.results)} runs, {len(exp.violations)} with violations, {exp.wall:.1f} s.
Invariants: docs/invariants.md.</p>
<h2>Fault point &times; design</h2>
<table class="faults"><tr><th>fault</th>{head}</tr>{''.join(rows)}</table>
<h2>Without faults, side by side</h2>
<p>The first line where the designs part is highlighted, with the design rule that
decided it (the <code>design</code> events of each run's log).</p>
<table class="side"><tr><th>line</th>{head}</tr>{''.join(side)}</table>
<h2>Reproducers</h2><ul>{repro or "<li>none: no invariant broke</li>"}</ul>
</body></html>
"""
    path = os.path.join(report, "index.html")
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(page)
    return path


def _sockets(directory: str, names: list[str]) -> list[str]:
    return [n for n in names if stat.S_ISSOCK(os.lstat(os.path.join(directory, n)).st_mode)]


def main(path: str, design_specs: list[str] | None, kinds: list[str], victims: list[str] | None,
         jobs: int | None, report: str | None, out_dir: str | None, minimize: bool,
         out: IO[str] = sys.stdout, target: str = "emulator") -> int:
    """``launch.py explore``: 0 when no invariant broke, 1 otherwise, 2 for bad input."""
    bad_kinds = sorted(set(kinds) - set(FAULT_KINDS))
    if bad_kinds:
        print(f"explore: unknown fault kinds {', '.join(bad_kinds)} "
              f"(known: {', '.join(FAULT_KINDS)})", file=sys.stderr)
        return 2
    try:
        with open(path, encoding="utf-8") as fh:
            sc = parse(fh.read(), os.path.basename(path))
        specs = ["host"] if target == "host" else design_specs or designs.builtin()
        names = specs if target == "host" else [designs.resolve(s) for s in specs]
    except (OSError, ScenarioError, designs.DesignError) as exc:
        print(f"explore: {exc}", file=sys.stderr)
        return 2
    unknown = sorted(set(victims or []) - set(sc.actors) - set(sc.children))
    if unknown:
        print(f"explore: {path} has no actor {', '.join(unknown)} "
              f"(actors: {', '.join(sc.actors + sc.children)})", file=sys.stderr)
        return 2
    out_dir = out_dir or (os.path.join(report, "reproducers") if report else
                          runs.new_run_dir("explore-"))
    exp = explore(path, specs, kinds, victims, jobs, minimize=minimize, out_dir=out_dir,
                  target=target)
    print_summary(exp, dict(zip(names, specs, strict=True)), out, out_dir)
    if report is not None:
        print(f"report: {write_report(exp, report)}", file=out)
    for r in exp.results:  # the runs nobody links to
        linked = report is not None and r.outcome.run_dir.startswith(os.path.abspath(report))
        if not linked and not r.violations:
            shutil.rmtree(r.outcome.run_dir, ignore_errors=True)
    return 1 if exp.violations else 0
