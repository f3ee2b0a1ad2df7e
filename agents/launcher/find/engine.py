"""``kemu find``: random multi-process programs, the invariants after every run, and
what breaks them shrunk to a scenario a kernel developer reads.

A campaign draws programs from :mod:`~kemu.agents.launcher.find.grammar` in *chunks*:
chunk ``i`` of seed ``s`` is one Hypothesis run (``@seed``, ``max_examples`` programs,
generation only), so the same seed draws the same programs wherever the chunk runs: on
a thread of this process (the default, :func:`~kemu.agents.launcher.runner.default_jobs`
chunks at once) or on a Dask worker (``--scheduler``).  Each program runs under every
chosen design (:func:`kemu.agents.launcher.explore.run_one`) and the invariants of
``explore`` are checked after each run (:mod:`kemu.agents.launcher.invariants`); a line's
result never fails a program.  ``no-foreign-write`` is checked under every design, not
only where the design promises it: under a design that promises it, a foreign write is a
broken promise; under one that does not (``legacy``, ``map-direct-sealed``) it is the
design's hazard, shown by the program.

Violations are de-duplicated by (invariant, design), a foreign write's by the pins it
came through too (long-term, short-term: designs promise them apart, ``Promise``); the
first of each, in (chunk,
program) order, is shrunk by Hypothesis: its chunk is replayed with shrinking on, and a
program counts as failing only if it breaks the same invariant under the same design
(the programs of the chunk already run are not run again).  Then ``explore``'s
reproducer writer cuts lines further and writes the ``.scn`` with the invariant as its
last lines' expectations, and the reproducer is run once more for its run folder
(sequence diagram, block map) and to see that it fails on its own.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import json
import os
import random
import re
import shutil
import stat
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import IO, Any

from hypothesis import HealthCheck, Phase, Verbosity, given, settings
from hypothesis import seed as hseed
from hypothesis.internal.conjecture import providers as _providers

from kemu.agents.launcher import designs, explore, runs
from kemu.agents.launcher.find import grammar
from kemu.agents.launcher.invariants import INVARIANTS, Violation
from kemu.agents.launcher.runner import Outcome, default_jobs, run_scenario
from kemu.agents.scenario.parse import ScenarioError, parse
from kemu.protocol import linux

#: what ``find`` checks for foreign writes under every design (docs/find.md)
EVERY_FOREIGN_WRITE = frozenset({"NO_FOREIGN_WRITE_LONGTERM", "NO_FOREIGN_WRITE_SHORTTERM"})
#: programs one chunk draws (one Hypothesis run)
CHUNK = 16
#: runs the Hypothesis shrink of one violation may spend
SHRINK_RUNS = 80
#: at most this many programs are kept in a corpus directory
CORPUS_MAX = 200
#: at most this many reproducers are written into an --out directory
OUT_MAX = 50
#: chunk ``i`` mutates the corpus made by the chunks before ``i - LAG`` (a constant, not
#: the number of jobs, so that the same seed draws the same programs with any --jobs)
LAG = 8
#: at most this many programs in a campaign's own (in-memory) corpus
GUIDE_MAX = 2000
#: a corpus program's weight halves with every this many mutants it has had
DECAY = 32
#: kernel events that are not features (every run has them)
_PLAIN_EVENTS = frozenset({"call", "ret", "register", "boot", "shutdown", "launch"})


class GeneratorBug(Exception):
    """The grammar drew a line the scenario parser refuses: a bug of the grammar."""


@dataclass(frozen=True)
class Found:
    """One run that broke an invariant."""

    invariant: str
    design: str
    spec: str
    evidence: str
    #: does the design promise what broke (False: the design's known hazard)
    promised: bool
    text: str
    chunk: int
    index: int
    #: of a foreign write, the pins it came through (``longterm``: RDMA, ``shortterm``:
    #: direct I/O), as the designs promise them apart; empty for other invariants
    kind: str = ""
    #: the program's swarm mask and genes (a mutated program is shrunk on its genes)
    mask: int = 0
    genes: tuple[grammar.Gene, ...] = ()
    #: made by mutating the corpus, not drawn by Hypothesis
    mutated: bool = False

    @property
    def key(self) -> tuple[str, str]:
        """What de-duplicates violations: (invariant, design), the invariant with the
        kind of pin for a foreign write (``no-foreign-write:longterm``)."""
        return (f"{self.invariant}:{self.kind}" if self.kind else self.invariant), self.design


@dataclass
class Chunk:
    """What one chunk ran and found."""

    index: int
    #: every program it ran, in order
    texts: list[str]
    found: list[Found]
    #: programs that showed an outcome (call, result) the chunk had not seen before
    interesting: list[str]
    wall: float
    #: each program's (mask, genes, features), in the order of ``texts``
    programs: list[tuple[int, tuple[grammar.Gene, ...], frozenset[str]]] = \
        field(default_factory=list)
    #: how many of them were mutations of the corpus
    mutants: int = 0
    #: the parent of each mutant: its index in the corpus the chunk was given
    chosen: list[int] = field(default_factory=list)


@dataclass
class Reproducer:
    """A shrunk violation, written out."""

    found: Found
    path: str
    run_dir: str
    lines: int
    actors: int
    #: the reproducer failed when run on its own
    fails: bool


@dataclass
class Campaign:
    """Everything a campaign ran and found."""

    seed: int
    designs: list[str]
    programs: int = 0
    #: how many of them were mutations of the corpus
    mutants: int = 0
    wall: float = 0.0
    #: the first violation of each (invariant, design)
    first: dict[tuple[str, str], Found] = field(default_factory=dict)
    #: (programs run, seconds) when each (invariant, design) was first seen
    when: dict[tuple[str, str], tuple[int, float]] = field(default_factory=dict)
    reproducers: dict[tuple[str, str], Reproducer] = field(default_factory=dict)
    interesting: list[str] = field(default_factory=list)
    #: the campaign's corpus: programs (mask, genes) that showed a feature no program
    #: before them (in chunk order) had, and the union of their features
    guide: list[tuple[int, tuple[grammar.Gene, ...]]] = field(default_factory=list)
    guide_feats: list[frozenset[str]] = field(default_factory=list)
    covered: set[str] = field(default_factory=set)
    #: how many programs covered each feature
    counts: Counter[str] = field(default_factory=Counter)
    #: how many mutants each corpus program (by its index in ``guide``) has had
    chosen: Counter[int] = field(default_factory=Counter)

    def parents(self) -> list[tuple[int, tuple[grammar.Gene, ...], float]]:
        """The corpus with each program's weight: one over the number of programs run
        that covered its rarest feature, squared, halved for every :data:`DECAY`
        mutants it has had already.  The square: a state 10 programs in 3,000 reached
        gets nine times the mutants of one 30 reached, where the plain inverse gave it
        three times and most mutants went to the many programs of middling rarity (and
        every feature one share, split among the corpus programs that cover it, gave
        the few that reached a deep state no more than any other).  Measured on seed 1
        under map-direct-sealed, 3,000 programs: with the shares, no program's
        registrar died holding a passed DAX region; with the squared inverse, 15 did and
        10 freed its blocks.  Without the decay, a program whose rare feature its
        mutants seldom cover again kept its weight for the whole campaign; AFL++'s
        power schedules lower the energy of a seed by how often it was fuzzed for the
        same reason."""
        return [(m, g, max(1.0 / self.counts[f] for f in feats) ** 2
                 * 0.5 ** (self.chosen[i] / DECAY))
                for i, ((m, g), feats) in enumerate(zip(self.guide, self.guide_feats,
                                                        strict=True))]


def chunk_seed(seed: int, index: int) -> int:
    """The Hypothesis seed of chunk ``index`` of campaign ``seed``."""
    return int.from_bytes(hashlib.sha256(f"kemu-find {seed} {index}".encode()).digest()[:8],
                          "big")


def check_text(text: str, name: str) -> None:
    """Refuse a generated program the parser does not take (:class:`GeneratorBug`)."""
    try:
        parse(text, name)
    except ScenarioError as exc:
        raise GeneratorBug(f"the grammar drew a program the parser refuses: {exc}\n"
                           f"{text}") from None


def run_program(text: str, spec: str, name: str, promised_only: bool = False,
                feats: set[str] | None = None
                ) -> tuple[Outcome, list[Violation], set[str]]:
    """Run one program under ``spec``; its violations (the run folder removed) and the
    promises that were checked.  ``feats``, if given, gets what the run covered
    (:func:`features`, :func:`kernel_features`)."""
    promised = designs.promises(spec)
    checked = promised if promised_only else promised | EVERY_FOREIGN_WRITE
    outcome, violations = explore.run_one(text, name, spec, keep=True, promises=checked)
    if feats is not None:
        feats |= features(outcome) | kernel_features(outcome.run_dir, outcome.policy)
    shutil.rmtree(outcome.run_dir, ignore_errors=True)
    violations = [v for v in violations if v.invariant in INVARIANTS]
    return outcome, violations, promised


def kind_of(v: Violation) -> str:
    """The pins a foreign write came through: ``shortterm`` (direct I/O), ``longterm``
    (RDMA: an MR); empty for another invariant."""
    if v.invariant != "no-foreign-write":
        return ""
    return "shortterm" if v.evidence.startswith("direct I/O") else "longterm"


def _promised(v: Violation, promised: set[str]) -> bool:
    kind = kind_of(v)
    if not kind:
        return True
    return f"NO_FOREIGN_WRITE_{kind.upper()}" in promised


def breaks(violations: list[Violation], f: Found) -> bool:
    """Do ``violations`` include what ``f`` broke (the same invariant, the same kind)?"""
    return any(v.invariant == f.invariant and kind_of(v) == f.kind for v in violations)


def features(outcome: Outcome) -> set[str]:
    """What a run showed, coarsely: each call with its result kind, under the design."""
    out = set()
    for line in outcome.lines:
        reply = line.reply
        kind = ("errno " + linux.errno_name(int(reply["errno"])) if "errno" in reply else
                "killed" if "killed" in reply else "skipped" if "skipped" in reply else "ok")
        out.add(f"{outcome.policy} {line.step.call or line.step.kind} {kind}")
    return out


def _token(ev: dict[str, Any]) -> str:
    """One kernel event as a feature: its name, with what the kernel decided where the
    event says (a design hook's result, why a process or mapping went, a fault's or a
    transfer's outcome; what a region pins, whether a peer can reach it by a remote key,
    and what became of its registrar).  A
    queue pair's number is left out of ``via`` (``qp 3`` is ``qp``): which queue pair
    carried a transfer is not a decision of the kernel's."""
    name = str(ev.get("ev"))
    for attr in ("hook", "result", "why", "status", "into", "via", "pin", "pinned", "owner",
                 "shared", "peer", "remote"):
        if attr in ev and isinstance(ev[attr], str | bool | int):
            value = ev[attr]
            if attr == "into":
                value = value == "(free block)"
            elif attr == "via" and isinstance(value, str) and value.startswith("qp "):
                value = "qp"
            name += f" {attr}={value}"
    return name


def kernel_features(run_dir: str, policy: str) -> set[str]:
    """What the kernel did in a run, as the coverage a guided campaign grows: each kind
    of kernel event with what was decided in it (:func:`_token`), under the design.
    Calls and returns are left out: :func:`features` has them.  What the kernel does
    once the lines are over (from the launcher's ``pin_audit`` on: the actors told to
    exit at once, what their deaths release) is left out too: the order in which they
    die is the scheduler's, not the program's, and what their deaths release depends on
    it (a region let go of after its registrar or before; measured: 20 of 96 programs
    showed another set of teardown events in one of three runs, and a campaign run
    twice grew two corpora).  A registrar that died while the others went on is the
    program's (``mm-held``, then whatever they do).  What the audit says of the regions
    that live on when the lines are over (``mr-state``: what each kind pins, its
    registrar's fate, whether another process holds its context and has reached it by
    its rkey) is kept: it is the state the program left, and a state no event names (a
    dead registrar's region, its context held and its key in a peer's hands, is one
    truncate and one write from a foreign write).  Pairs of successive events (AFL's
    edges) were tried and left out: nearly every program then covers a pair no other
    did, the corpus grows by one program in two, and the few programs that reached a
    rare state (a block freed while pinned) get no more of the mutations than any
    other."""
    out: set[str] = set()
    launcher, end = None, False
    try:
        with open(os.path.join(run_dir, "kernel.jsonl"), encoding="utf-8") as fh:
            for line in fh:
                try:
                    ev = json.loads(line)
                except ValueError:
                    continue
                if not isinstance(ev, dict):
                    continue
                name = ev.get("ev")
                if name == "register" and ev.get("name") == "launcher":
                    launcher = ev.get("pid")
                elif name == "call" and ev.get("call") == "pin_audit" \
                        and launcher is not None and ev.get("pid") == launcher:
                    end = True  # the lines are over: the audit, then the teardown
                if name in _PLAIN_EVENTS:
                    continue
                if end and name != "mr-state":
                    break
                out.add(f"{policy} {_token(ev)}")
    except OSError:
        pass
    return out


def _no_local_constants() -> None:
    """Make a chunk's draws a function of its seed alone.

    Hypothesis (6.131 and later) mixes into its draws, now and then, the literals of
    every *local* module in ``sys.modules`` (``providers._get_local_constants``): the
    same seed then draws other programs in a process that imported other modules (a
    test run after others, a Dask worker), and a campaign is no longer reproducible.
    There is no setting for it; the pool is emptied here (the global constants, the
    same everywhere, stay)."""
    if hasattr(_providers, "_get_local_constants") \
            and _providers._get_local_constants is not _empty_constants:
        _providers._get_local_constants = _empty_constants


def _empty_constants() -> Any:
    """An empty pool, of the type the Hypothesis in use has."""
    return type(_providers.GLOBAL_CONSTANTS)()


def draw_texts(seed: int, index: int, examples: int = CHUNK,
               max_steps: int = grammar.MAX_STEPS) -> list[str]:
    """The programs chunk ``index`` of campaign ``seed`` draws, without running them."""
    _no_local_constants()
    texts: list[str] = []

    @_settings(examples, shrink=False)
    @hseed(chunk_seed(seed, index))
    @given(grammar.programs(max_steps))
    def body(prog: grammar.Program) -> None:
        texts.append(prog.text)

    body()
    return texts


def _settings(examples: int, shrink: bool) -> Callable[[Any], Any]:
    phases = (Phase.generate, Phase.shrink) if shrink else (Phase.generate,)
    return settings(max_examples=examples, deadline=None, phases=phases, database=None,
                    report_multiple_bugs=False, verbosity=Verbosity.quiet,
                    suppress_health_check=list(HealthCheck))


def run_chunk(seed: int, index: int, specs: list[str], examples: int = CHUNK,
              max_steps: int = grammar.MAX_STEPS, promised_only: bool = False,
              deadline: float | None = None,
              parents: list[tuple[int, tuple[grammar.Gene, ...], float]] | None = None
              ) -> Chunk:
    """Chunk ``index`` of campaign ``seed``: ``examples`` programs, each run under every
    design of ``specs``.  Without ``parents`` all are drawn by one Hypothesis run; with
    them (the campaign's corpus) half are, and the other half are mutations of the
    corpus (:func:`grammar.mutate`, seeded by the chunk).  ``deadline`` (a
    ``time.time()``): programs drawn after it are not run.  Runs where it is called (a
    thread here, or a Dask worker)."""
    t0 = time.monotonic()
    _no_local_constants()
    names = [designs.resolve(s) for s in specs]
    chunk = Chunk(index, [], [], [], 0.0)
    seen: set[str] = set()

    def one(prog: grammar.Program, mutated: bool) -> None:
        text = prog.text
        name = f"find-s{seed}-c{index}-p{len(chunk.texts)}"
        check_text(text, name)
        chunk.texts.append(text)
        covered: set[str] = set()
        for spec, design in zip(specs, names, strict=True):
            feats: set[str] = set()
            _, violations, promised = run_program(text, spec, name, promised_only, feats)
            covered |= feats
            chunk.found.extend(
                Found(v.invariant, design, spec, v.evidence, _promised(v, promised), text,
                      index, len(chunk.texts) - 1, kind_of(v), prog.mask, prog.genes,
                      mutated) for v in violations)
        if covered - seen:
            seen.update(covered)
            chunk.interesting.append(text)
        chunk.programs.append((prog.mask, prog.genes, frozenset(covered)))

    mutants = examples // 2 if parents else 0

    @_settings(examples - mutants, shrink=False)
    @hseed(chunk_seed(seed, index))
    @given(grammar.programs(max_steps))
    def body(prog: grammar.Program) -> None:
        if deadline is not None and time.time() > deadline:
            return
        one(prog, False)

    if examples - mutants > 0:
        body()
    rng = random.Random(chunk_seed(seed, index))
    for _ in range(mutants):
        if deadline is not None and time.time() > deadline:
            break
        mask, genes = grammar.mutate(rng, [(m, g) for m, g, _ in parents or []], max_steps,
                                     [w for _, _, w in parents or []], chunk.chosen)
        one(grammar.decode(genes, mask), True)
        chunk.mutants += 1
    chunk.wall = time.monotonic() - t0
    return chunk


def run_texts(texts: list[str], specs: list[str], promised_only: bool = False,
              index: int = -1, first: int = 0) -> Chunk:
    """Programs of the corpus, run as chunk ``index`` (a negative one: before anything
    is drawn); ``first``: the place of ``texts[0]`` in the corpus."""
    t0 = time.monotonic()
    found: list[Found] = []
    names = [designs.resolve(s) for s in specs]
    programs = []
    for i, text in enumerate(texts):
        mask, genes = corpus_genes(text)
        covered: set[str] = set()
        for spec, design in zip(specs, names, strict=True):
            feats: set[str] = set()
            _, violations, promised = run_program(text, spec, f"find-corpus-{first + i}",
                                                  promised_only, feats)
            covered |= feats
            found.extend(Found(v.invariant, design, spec, v.evidence, _promised(v, promised),
                               text, index, first + i, kind_of(v), mask, genes)
                         for v in violations)
        programs.append((mask, genes, frozenset(covered)))
    return Chunk(index, list(texts), found, [], time.monotonic() - t0, programs)


# --- shrinking ---------------------------------------------------------------------------


class _Broke(Exception):
    """The program breaks the invariant being shrunk (Hypothesis's failure)."""


def hypothesis_shrink(f: Found, seed: int, chunk: Chunk, examples: int, max_steps: int,
                      promised_only: bool = False, budget: int = SHRINK_RUNS) -> Found:
    """The smallest program Hypothesis finds that still breaks ``f.invariant`` under
    ``f.design``: ``f``'s chunk replayed with shrinking on.  The chunk's programs before
    ``f`` broke nothing of the kind and are not run again; at most ``budget`` runs."""
    if f.chunk < 0:  # from the corpus: no draw to replay
        return f
    _no_local_constants()
    passing = set(chunk.texts[:f.index]) - {f.text}
    breaking = {f.text}
    spent = 0

    @_settings(examples, shrink=True)
    @hseed(chunk_seed(seed, f.chunk))
    @given(grammar.programs(max_steps))
    def body(prog: grammar.Program) -> None:
        nonlocal spent
        text = prog.text
        if text in breaking:
            raise _Broke(prog)
        if text in passing or spent >= budget:
            return
        spent += 1
        _, violations, _ = run_program(text, f.spec, "find-shrink", promised_only)
        if breaks(violations, f):
            breaking.add(text)
            raise _Broke(prog)
        passing.add(text)

    try:
        body()
    except _Broke as exc:
        prog = exc.args[0]
        return dataclasses.replace(f, text=prog.text, genes=prog.genes, mask=prog.mask)
    return f


def gene_shrink(f: Found, promised_only: bool = False, budget: int = SHRINK_RUNS) -> str:
    """The smallest program found by deleting ``f``'s genes (halves, quarters, ... then
    one at a time, as delta debugging does) while it still breaks ``f.invariant`` under
    ``f.design``: for a program made by mutation, which Hypothesis cannot replay.  The
    decoder keeps every candidate well typed; at most ``budget`` runs."""
    genes = list(f.genes)
    best = grammar.decode(genes, f.mask).text
    tried = {best}
    spent = 0
    size = max(1, len(genes) // 2)
    while genes and spent < budget:
        cut = False
        i = 0
        while i < len(genes) and spent < budget:
            trial = genes[:i] + genes[i + size:]
            text = grammar.decode(trial, f.mask).text if trial else ""
            if trial and text not in tried:
                tried.add(text)
                spent += 1
                _, violations, _ = run_program(text, f.spec, "find-shrink", promised_only)
                if breaks(violations, f):
                    genes, best, cut = trial, text, True
                    continue
            i += size
        if size == 1 and not cut:
            break
        size = max(1, size // 2) if not cut else size
    return best


def write_one(f: Found, seed: int, chunk: Chunk, out_dir: str, examples: int,
              max_steps: int, promised_only: bool = False,
              shrink_runs: int = SHRINK_RUNS) -> Reproducer:
    """Shrink ``f`` (Hypothesis for a program it drew, then delta debugging on the
    genes, then merging and dropping actors and ``explore``'s line cutting), write its
    ``.scn`` into ``out_dir``, and run it once for its run folder (``NAME.run/``)."""
    if not (f.mutated or f.chunk < 0):  # a Hypothesis draw: Hypothesis shrinks it first
        f = hypothesis_shrink(f, seed, chunk, examples, max_steps, promised_only,
                              shrink_runs)
    text = gene_shrink(f, promised_only, shrink_runs) if f.genes else f.text
    text = drop_actors(merge_actors(text, f, promised_only), f, promised_only)
    text = unify_fds(text, f, promised_only)
    promised = designs.promises(f.spec)
    checked = promised if promised_only else promised | EVERY_FOREIGN_WRITE
    name = f"find-s{seed}" + (f"-{f.kind}" if f.kind else "")
    outcome, violations = explore.run_one(text, name, f.spec, keep=False, promises=checked)
    shutil.rmtree(outcome.run_dir, ignore_errors=True)
    v = next((v for v in violations if v.invariant == f.invariant and kind_of(v) == f.kind),
             Violation(f.invariant, f.evidence))
    v = Violation(v.invariant, _actors_for_pids(v.evidence, outcome))
    result = explore.Result(f.design, explore.NO_FAULT, outcome, [v], text)
    what = "a broken promise" if f.promised else "the design's hazard"
    path = explore.write_reproducer(
        result, v, f.spec, out_dir, promises=checked,
        found_by=f"launch.py find --seed {seed}",
        where=f"{what}; found by find, seed {seed}, chunk {f.chunk}, program {f.index}")
    _policy_line(path, f.spec)
    with open(path, encoding="utf-8") as fh:
        sc = parse(fh.read(), os.path.basename(path))
    run = run_scenario(sc, "emulator", f.spec, show_pids=False, render=True)
    dest = path.removesuffix(".scn") + ".run"
    shutil.rmtree(dest, ignore_errors=True)
    shutil.copytree(run.run_dir, dest, ignore=_sockets)
    shutil.rmtree(run.run_dir, ignore_errors=True)
    steps = [s for s in sc.steps if s.kind in ("call", "join")]
    return Reproducer(f, path, dest, len(steps), len(sc.actors) + len(sc.children),
                      not run.passed)


def merge_actor(text: str, into: str, gone: str) -> str | None:
    """The program with actor ``gone``'s lines made ``into``'s (messages to ``gone`` go to
    ``into``), and what ``into`` would then send itself taken out: ``into: send(into,
    v)`` and the ``w = recv()`` that takes it go, and ``w`` is ``v`` from there on.
    A fork child merges into its parent only: its ``fork() as gone`` line goes, and
    what it inherited is the parent's own.  ``None`` when there is nothing to merge
    (``gone`` has no line, is killed, forks, or is the child of another actor)."""
    lines = text.splitlines()
    born = f"{into}: fork() as {gone}"
    if not any(ln.startswith(f"{gone}:") for ln in lines) or any(
            ln == f"!kill {gone}" or (re.match(rf"^\w+: fork\(\) as {gone}$", ln)
                                      and ln != born)
            or ln.startswith(f"{gone}: fork()") for ln in lines):
        return None
    out: list[str] = []
    for ln in lines:
        if ln == born:
            continue
        if ln.startswith(f"{gone}:"):
            ln = into + ln[len(gone):]
        ln = re.sub(rf"^(\w+: (?:send|sendfd)\(){gone},", rf"\g<1>{into},", ln)
        out.append(ln)
    # a message to oneself: the value is at hand, no message and no receipt
    lines, out = out, []
    subst: dict[str, str] = {}
    own: list[str] = []  # values into sent itself, not yet taken
    for ln in lines:
        for old, new in subst.items():
            ln = re.sub(rf"\b{old}\b", new, ln)
        m = re.match(rf"^{into}: (?:send|sendfd)\({into}, (\w+)\)$", ln)
        r = re.match(rf"^{into}: (\w+) = (?:recv|recvfd)\(\)$", ln)
        if m:
            own.append(m.group(1))
            continue
        if r and own:
            subst[r.group(1)] = own.pop(0)
            continue
        out.append(ln)
    return "\n".join(out) + "\n" if not own else None


def merge_actors(text: str, f: Found, promised_only: bool = False) -> str:
    """Merge one actor into another while the program still breaks ``f.invariant``
    under ``f.spec`` (:func:`merge_actor`, one run a pair): a value passed between two
    actors is often not what breaks it, and the line cutting cannot remove a pass whose
    value a later line uses.  Fork children first, each into its parent: a child that
    opens a file and passes it back is often only a way to a second descriptor."""
    for gone in (*reversed(grammar.CHILDREN), *reversed(grammar.TOP)):
        for into in (*grammar.TOP, *grammar.CHILDREN):
            if into == gone or not re.search(rf"^{into}:", text, re.M):
                continue  # into an actor the program has (A stays A)
            candidate = merge_actor(text, into, gone)
            if candidate is not None and _still_breaks(candidate, f, promised_only):
                text = candidate
                break
    return text


def drop_actors(text: str, f: Found, promised_only: bool = False) -> str:
    """Remove every line of one actor at a time (its fork children's with it) while the
    program still breaks ``f.invariant`` under ``f.spec``: the fewest actors, one run an
    actor, before the line-by-line cutting."""
    for actor in [*grammar.TOP, *grammar.CHILDREN]:
        lines = text.splitlines()
        gone = {actor}
        for ln in lines:  # its children go with it
            m = re.match(r"^(\w+): fork\(\) as (\w+)$", ln)
            if m and m.group(1) in gone:
                gone.add(m.group(2))
        trial = [ln for ln in lines if not any(
            ln.startswith(f"{a}:") or ln == f"!kill {a}" for a in gone)]
        if len(trial) == len(lines) or not any(":" in ln for ln in trial):
            continue
        candidate = "\n".join(trial) + "\n"
        if _still_breaks(candidate, f, promised_only):
            text = candidate
    return text


def unify_fd(text: str, later: str, earlier: str) -> str:
    """The program with ``later`` (a descriptor variable) replaced by ``earlier`` from
    the line after the one that made ``later``, and that line gone."""
    out: list[str] = []
    made = re.compile(rf"^\w+: {later} = ")
    for ln in text.splitlines():
        if made.match(ln):
            continue
        out.append(re.sub(rf"\b{later}\b", earlier, ln))
    return "\n".join(out) + "\n"


def unify_fds(text: str, f: Found, promised_only: bool = False) -> str:
    """Use one descriptor where a program opened (or ``dup``-ed) the same file twice in
    one actor, while it still breaks ``f.invariant`` under ``f.spec`` (:func:`unify_fd`,
    one run a pair): the second ``open`` goes and its descriptor's uses take the first.  A
    program made by mutation often reaches a file by a descriptor of its own where one
    it had would do, and neither the gene cutting nor the line cutting can rename a
    variable.  The newest pair first; at most one run per pair."""
    opens = re.compile(r'^(\w+): (fd\d+) = open\("([^"]*)"')
    dups = re.compile(r"^(\w+): (fd\d+) = dup\((fd\d+)\)")
    tried: set[tuple[str, str]] = set()
    while True:
        seen: dict[tuple[str, str], list[str]] = {}
        path: dict[str, str] = {}
        for ln in text.splitlines():
            m = opens.match(ln)
            d = dups.match(ln)
            if m:
                path[m.group(2)] = m.group(3)
            elif d and d.group(3) in path:  # a dup is of its descriptor's file
                path[d.group(2)] = path[d.group(3)]
                m = d
            if m:
                seen.setdefault((m.group(1), path[m.group(2)]), []).append(m.group(2))
        pairs = [(later, earlier) for vs in seen.values() for i, later in enumerate(vs)
                 for earlier in reversed(vs[:i])]
        for later, earlier in reversed(pairs):
            if (later, earlier) in tried:
                continue
            tried.add((later, earlier))
            candidate = unify_fd(text, later, earlier)
            if _still_breaks(candidate, f, promised_only):
                text = candidate
                break
        else:
            return text


def _still_breaks(candidate: str, f: Found, promised_only: bool) -> bool:
    """Does the program ``candidate`` parse, and still break what ``f`` broke?"""
    try:
        parse(candidate, "find-shrink")
    except ScenarioError:
        return False
    _, violations, _ = run_program(candidate, f.spec, "find-shrink", promised_only)
    return breaks(violations, f)


def _actors_for_pids(evidence: str, outcome: Outcome) -> str:
    """``by pid 1234`` as ``by A``: the same program gives the same reproducer."""
    names = {line.pid: line.actor for line in outcome.lines}
    return re.sub(r"\bpid (\d+)", lambda m: names.get(int(m.group(1)), "pid N"), evidence)


def _policy_line(path: str, spec: str) -> None:
    """Put ``set policy = DESIGN`` after the comments, so that ``kemu run FILE`` runs the
    reproducer under the design it broke."""
    with open(path, encoding="utf-8") as fh:
        lines = fh.read().splitlines()
    at = next((i for i, ln in enumerate(lines) if not ln.startswith("#")), len(lines))
    lines.insert(at, f"set policy = {spec}")
    with open(path, "w", encoding="utf-8") as fh:
        fh.write("\n".join(lines) + "\n")


def _sockets(directory: str, names: list[str]) -> list[str]:
    return [n for n in names if stat.S_ISSOCK(os.lstat(os.path.join(directory, n)).st_mode)]


def _expect_text(call: str, reply: dict[str, Any]) -> str:
    """What a recorded line expects: its errno, its death, ``skipped``, the foreign
    writes (file and where they landed), or ``ok``."""
    if "errno" in reply:
        return linux.errno_name(int(reply["errno"]))
    if "killed" in reply:
        return f"killed {reply['killed']}"
    if "skipped" in reply:
        return "skipped"
    if "error" in reply:
        return "*"
    if call == "foreign_writes":
        writes = [{"file": w.get("file"), "into": w.get("into")} for w in reply.get("ok") or []]
        return repr([dict(t) for t in dict.fromkeys(tuple(sorted(w.items())) for w in writes)])
    return "ok"


def record_expectations(text: str, specs: list[str]) -> str:
    """``text`` (a reproducer) with every call line's expectations as the runs under
    ``specs`` met them: the most common one untagged, the others tagged with their
    designs, so that the scenario holds under every design (``scenarios/found/``)."""
    from collections import Counter

    plain = explore.strip_expectations(text)
    sc = parse("\n".join(plain) + "\n", "record.scn")
    seen: dict[int, dict[str, str]] = {}
    for spec in specs:
        outcome = run_scenario(sc, "emulator", spec, show_pids=False, render=False)
        shutil.rmtree(outcome.run_dir, ignore_errors=True)
        for line in outcome.lines:
            seen.setdefault(line.step.lineno, {})[outcome.policy] = _expect_text(
                line.step.call, line.reply)
    out = []
    started: dict[str, dict[str, str]] = {}  # actor -> what its background call met
    for lineno, raw in enumerate(plain, 1):
        got = seen.get(lineno)
        step = next((s for s in sc.steps if s.lineno == lineno), None)
        if step is not None and step.background:  # its result is the join's
            started[step.actor] = got or {}
            out.append(raw)
            continue
        if step is not None and step.kind == "join":
            got = started.pop(step.actor, None) or got
        if not got or step is None or step.kind not in ("call", "join"):
            out.append(raw)
            continue
        common = Counter(got.values()).most_common(1)[0][0]
        tagged: dict[str, list[str]] = {}
        for design, want in got.items():
            if want != common:
                tagged.setdefault(want, []).append(design)
        if len(got) < len(specs):  # a design that did not reach the line
            common = "*"
        tail = "".join(f" => {w} [{', '.join(sorted(d))}]" for w, d in tagged.items())
        out.append(f"{raw.rstrip():<52}{tail} => {common}")
    return "\n".join(out) + "\n"


# --- the corpus ----------------------------------------------------------------------------


GENES_HEADER = "# genes: "


def corpus_genes(text: str) -> tuple[int, tuple[grammar.Gene, ...]]:
    """The (mask, genes) a corpus file was decoded from (its ``# genes:`` line), or
    ``(0, ())`` for a program written by hand or by an older ``find``."""
    for line in text.splitlines():
        if line.startswith(GENES_HEADER):
            try:
                mask, genes = json.loads(line[len(GENES_HEADER):])
                out = tuple(tuple(int(x) for x in g) for g in genes)
                if isinstance(mask, int) and all(len(g) == grammar.GENE_LEN for g in out):
                    return mask, out
            except (ValueError, TypeError):
                pass
            break
    return 0, ()


def corpus_text(mask: int, genes: tuple[grammar.Gene, ...]) -> str:
    """A corpus file: the program, after a ``# genes:`` line the next campaign mutates."""
    return (GENES_HEADER + json.dumps([mask, [list(g) for g in genes]], separators=(",", ":"))
            + "\n" + grammar.decode(list(genes), mask).text)


def load_corpus(corpus: str) -> list[str]:
    """The programs of a corpus directory (``*.scn``), oldest first."""
    if not os.path.isdir(corpus):
        return []
    paths = sorted((os.path.join(corpus, n) for n in os.listdir(corpus) if n.endswith(".scn")),
                   key=lambda p: (os.path.getmtime(p), p))
    out = []
    for p in paths:
        with open(p, encoding="utf-8") as fh:
            out.append(fh.read())
    return out


def save_corpus(corpus: str, texts: list[str], limit: int = CORPUS_MAX) -> None:
    """Add ``texts`` to the corpus directory (named by content) and remove the oldest
    beyond ``limit``."""
    os.makedirs(corpus, exist_ok=True)
    for text in texts:
        digest = hashlib.sha256(text.encode()).hexdigest()[:16]
        path = os.path.join(corpus, f"{digest}.scn")
        if not os.path.exists(path):
            with open(path, "w", encoding="utf-8") as fh:
                fh.write(text)
    bound(corpus, ".scn", limit)


def bound(directory: str, suffix: str, limit: int) -> None:
    """Remove the oldest ``*suffix`` entries of ``directory`` beyond ``limit`` (with a
    reproducer its ``.run`` folder)."""
    entries = sorted((os.path.join(directory, n) for n in os.listdir(directory)
                      if n.endswith(suffix)), key=lambda p: (os.path.getmtime(p), p))
    for p in entries[:max(0, len(entries) - limit)]:
        os.remove(p)
        shutil.rmtree(p.removesuffix(suffix) + ".run", ignore_errors=True)


# --- the campaign --------------------------------------------------------------------------


class _Engine:
    """Where chunks run: :meth:`submit` one, :meth:`done` waits for some to finish."""

    slots = 1

    def submit(self, fn: Callable[..., Chunk], *args: Any) -> Any:
        raise NotImplementedError

    def done(self, pending: set[Any]) -> Iterator[Any]:
        raise NotImplementedError

    @staticmethod
    def result(fut: Any) -> Chunk:
        chunk: Chunk = fut.result()
        return chunk

    def close(self) -> None:
        """Let go of the threads or the scheduler."""


class _Local(_Engine):
    """Chunks on threads of this process."""

    def __init__(self, jobs: int) -> None:
        self.pool = ThreadPoolExecutor(max_workers=jobs)
        self.slots = jobs

    def submit(self, fn: Callable[..., Chunk], *args: Any) -> Future[Chunk]:
        return self.pool.submit(fn, *args)

    def done(self, pending: set[Any]) -> Iterator[Any]:
        finished, _ = wait(pending, return_when=FIRST_COMPLETED)
        yield from finished

    def close(self) -> None:
        self.pool.shutdown(wait=True)


class _Dask(_Engine):
    """Chunks on the workers of a Dask distributed scheduler."""

    def __init__(self, address: str, jobs: int | None) -> None:
        try:
            self.dist: Any = importlib.import_module("distributed")
        except ImportError:
            raise SystemExit("find: --scheduler needs Dask distributed: "
                             "pip install 'kemu[distributed]'") from None
        self.client = self.dist.Client(address, timeout=30)
        workers = self.client.scheduler_info()["workers"]
        threads = sum(int(w.get("nthreads", 1)) for w in workers.values()) or 1
        self.slots = jobs or 2 * threads

    def submit(self, fn: Callable[..., Chunk], *args: Any) -> Any:
        return self.client.submit(_on_worker, fn, *args, pure=False)

    def done(self, pending: set[Any]) -> Iterator[Any]:
        finished, _ = self.dist.wait(list(pending), return_when="FIRST_COMPLETED")
        yield from finished

    def close(self) -> None:
        self.client.close()


def _on_worker(fn: Callable[..., Chunk], *args: Any) -> Chunk:
    """``fn(*args)`` on a Dask worker.  The worker's own threads use the ``random``
    module while a chunk draws; Hypothesis warns of it, though its draws come from its
    own generator (the same seed gives the same programs: ``tests/test_find.py``)."""
    import warnings

    warnings.filterwarnings("ignore", message="Do not use the `random` module inside")
    return fn(*args)


def _progress(out: IO[str], camp: Campaign, t0: float) -> None:
    elapsed = time.monotonic() - t0
    rate = camp.programs / elapsed if elapsed else 0.0
    keys = ", ".join(f"{i}@{d}" for i, d in sorted(camp.first))
    out.write(f"\rfind: {camp.programs} programs, {rate:.1f}/s, {len(camp.first)} distinct "
              f"violation(s){' (' + keys + ')' if keys else ''}, {elapsed:.0f} s ")
    out.flush()


def campaign(specs: list[str], seed: int = 0, programs: int | None = None,
             budget: float | None = None, jobs: int | None = None,
             chunk_size: int = CHUNK, max_steps: int = grammar.MAX_STEPS,
             corpus: str | None = None, out_dir: str | None = None,
             scheduler: str | None = None, promised_only: bool = False,
             minimize: bool = True, progress: IO[str] | None = sys.stderr,
             until: Callable[[Campaign], bool] | None = None, start: int = 0,
             shrink_runs: int = SHRINK_RUNS,
             on_found: Callable[[Found, int, float], None] | None = None,
             guided: bool = True) -> Campaign:
    """Run a campaign: at most ``programs`` programs and at most ``budget`` seconds (one
    of them at least), chunk by chunk, then shrink the first violation of each
    (invariant, design) into ``out_dir``.  ``until``: stop drawing once it says so (the
    chunks running then still finish).  ``start``: the first chunk drawn (a campaign
    that goes on where another of the same seed stopped); ``shrink_runs``: runs the
    Hypothesis shrink of each violation may spend; ``on_found(f, programs, seconds)`` is
    called for every violation of every chunk as its chunk comes back, not only the
    first of each (invariant, design) (``benchmarks/bench_find_hazards.py`` times a shape).
    ``guided``: half of each chunk's programs mutate the campaign's corpus (the programs
    that covered something new, :func:`kernel_features`); else all are drawn afresh."""
    if programs is None and budget is None:
        programs = 10 * chunk_size
    names = [designs.resolve(s) for s in specs]
    camp = Campaign(seed, names)
    t0 = time.monotonic()
    deadline = time.time() + budget if budget is not None else None
    engine: _Engine = (_Dask(scheduler, jobs) if scheduler else
                              _Local(jobs or default_jobs()))
    chunks: dict[int, Chunk] = {}
    lock = threading.Lock()
    # the corpus grows in chunk order (the corpus directory's programs first), and the
    # chunk handed out at position p of that order mutates the corpus as it was after
    # position p - LAG - 1: the same in every run of the seed, with any number of jobs
    order: list[int] = []
    merged = 0  # order[:merged] are in camp.guide
    snaps: dict[int, list[tuple[int, tuple[grammar.Gene, ...], float]] | None] = {}

    def merge() -> None:
        nonlocal merged
        while merged < len(order) and order[merged] in chunks:
            c = chunks[order[merged]]
            camp.chosen.update(c.chosen)
            for mask, genes, feats in c.programs:
                if genes and not feats <= camp.covered and len(camp.guide) < GUIDE_MAX:
                    camp.guide.append((mask, genes))
                    camp.guide_feats.append(feats)
                camp.covered |= feats
                camp.counts.update(feats)
            snaps[merged] = camp.parents() if guided and camp.guide else None
            merged += 1

    def ready() -> bool:
        """May the next chunk be handed out (its corpus merged)?"""
        return merged >= len(order) - LAG

    def parents_now() -> list[tuple[int, tuple[grammar.Gene, ...], float]] | None:
        return snaps.pop(len(order) - LAG - 1, None)

    try:
        pending: set[Any] = set()
        corpus_texts = load_corpus(corpus) if corpus else []
        # the corpus first, in chunks -1, -2, ... of chunk_size programs each, run side by
        # side (as one task it held up every guided chunk after the first LAG)
        for k in range(0, len(corpus_texts), chunk_size):
            order.append(-1 - k // chunk_size)
            pending.add(engine.submit(run_texts, corpus_texts[k:k + chunk_size], specs,
                                      promised_only, order[-1], k))
        planned = 0  # programs handed out
        index = start

        def more() -> bool:
            if programs is not None and planned >= programs:
                return False
            if until is not None and until(camp):
                return False
            return deadline is None or time.time() < deadline

        while True:
            while len(pending) < engine.slots and more() and (not guided or ready()):
                n = chunk_size if programs is None else min(chunk_size, programs - planned)
                parents = parents_now() if guided else None
                pending.add(engine.submit(run_chunk, seed, index, specs, n, max_steps,
                                          promised_only, deadline, parents))
                order.append(index)
                planned += n
                index += 1
            if not pending:
                break
            for fut in engine.done(pending):
                pending.discard(fut)
                chunk = engine.result(fut)
                with lock:
                    chunks[chunk.index] = chunk
                    merge()
                    camp.programs += len(chunk.texts)
                    camp.mutants += chunk.mutants
                    camp.interesting += chunk.interesting
                    for f in chunk.found:
                        if on_found is not None:
                            on_found(f, camp.programs, time.monotonic() - t0)
                        old = camp.first.get(f.key)
                        if old is None:
                            camp.when[f.key] = (camp.programs, time.monotonic() - t0)
                        if old is None or (f.chunk, f.index) < (old.chunk, old.index):
                            camp.first[f.key] = f
                if progress is not None:
                    _progress(progress, camp, t0)
    finally:
        engine.close()
    if progress is not None:
        progress.write("\n")
    camp.wall = time.monotonic() - t0
    if corpus:
        firsts = [corpus_text(f.mask, f.genes) if f.genes else f.text
                  for f in camp.first.values()]
        kept = [corpus_text(m, g) for m, g in camp.guide] if guided else camp.interesting
        save_corpus(corpus, kept + firsts)
    if minimize and camp.first:
        out_dir = out_dir or runs.new_run_dir("find-")
        os.makedirs(out_dir, exist_ok=True)
        keys = sorted(camp.first)
        with ThreadPoolExecutor(max_workers=min(len(keys), jobs or default_jobs())) as pool:
            made = pool.map(lambda k: write_one(camp.first[k], seed, chunks.get(
                camp.first[k].chunk, Chunk(-1, [], [], [], 0.0)), out_dir, chunk_size,
                max_steps, promised_only, shrink_runs), keys)
            camp.reproducers = dict(zip(keys, made, strict=True))
        bound(out_dir, ".scn", OUT_MAX)
    return camp


def parse_budget(text: str) -> float:
    """``90``, ``90s``, ``10m``, ``2h``: seconds."""
    units = {"s": 1.0, "m": 60.0, "h": 3600.0}
    t = text.strip().lower()
    try:
        if t and t[-1] in units:
            return float(t[:-1]) * units[t[-1]]
        return float(t)
    except ValueError:
        raise ValueError(f"a budget is a number of seconds, or with s, m or h: {text!r}"
                         ) from None


def print_summary(camp: Campaign, out: IO[str]) -> None:
    """What the campaign ran and found, a line each, with the reproducers."""
    rate = camp.programs / camp.wall if camp.wall else 0.0
    out.write(f"find: seed {camp.seed}, {camp.programs} programs under "
              f"{', '.join(camp.designs)} in {camp.wall:.1f} s ({rate:.1f} programs/s; "
              f"{camp.mutants} mutants of a corpus of {len(camp.guide)}); "
              f"{len(camp.first)} distinct violation(s)\n")
    for key in sorted(camp.first):
        f = camp.first[key]
        n, t = camp.when[key]
        kind = "broken promise" if f.promised else "hazard"
        out.write(f"!! {key[0]} under {f.design} ({kind}; first seen after {n} "
                  f"programs, {t:.1f} s): {f.evidence}\n")
        r = camp.reproducers.get(key)
        if r is not None:
            out.write(f"   reproducer ({r.lines} lines, {r.actors} actors"
                      f"{'' if r.fails else ', DOES NOT FAIL on its own'}): {r.path}\n"
                      f"   run folder: {r.run_dir}/index.html\n")


def main(specs: list[str] | None, seed: int, programs: int | None, budget: str | None,
         jobs: int | None, corpus: str | None, out_dir: str | None, scheduler: str | None,
         promised_only: bool, minimize: bool, max_steps: int, start: int = 0,
         out: IO[str] = sys.stdout) -> int:
    """``kemu find``: 0 when nothing broke, 1 when something did, 2 for bad input."""
    try:
        seconds = parse_budget(budget) if budget is not None else None
        specs = specs or designs.builtin()
        for s in specs:
            designs.resolve(s)
    except (ValueError, designs.DesignError) as exc:
        print(f"find: {exc}", file=sys.stderr)
        return 2
    if (programs is not None and programs < 1) or max_steps < 1 or start < 0:
        print("find: --programs and --max-steps are at least 1, --start-chunk at least 0",
              file=sys.stderr)
        return 2
    camp = campaign(specs, seed, programs, seconds, jobs, max_steps=max_steps, corpus=corpus,
                    out_dir=out_dir, scheduler=scheduler, promised_only=promised_only,
                    minimize=minimize, start=start)
    print_summary(camp, out)
    return 1 if camp.first else 0
