"""Run folders and the matrix report: the merged event log, the transcript computed from
it, the sequence diagram, the block map, the Perfetto export, and the report opened in
headless Chromium."""

from __future__ import annotations

import functools
import http.server
import io
import json
import os
import shutil
import threading
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from typing import Any

import pytest
import webdriver

from kemu.agents.launcher import matrix
from kemu.agents.launcher.runner import Outcome, run_scenario
from kemu.agents.report import blockmap, build, eventlog, perfetto, sequence
from kemu.agents.report.model import internal_call
from kemu.agents.scenario import transcript
from kemu.agents.scenario.parse import load, parse

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ARTIFACTS = os.path.join(ROOT, "tests", "artifacts")
SVG = "{http://www.w3.org/2000/svg}"


def _run(name: str, policy: str) -> Outcome:
    return run_scenario(load(os.path.join(matrix.THREADS, name)), "emulator", policy,
                        show_pids=False)


@pytest.fixture(scope="module")
def s05() -> Iterator[Outcome]:
    """S5 under legacy: a pin, a truncate that sleeps, reuse, a foreign write."""
    out = _run("S05_pin_truncate_reuse.scn", "legacy")
    yield out
    shutil.rmtree(out.run_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def s06() -> Iterator[Outcome]:
    """S6 under map-direct-sealed: a descriptor pass, a message, a kill, a foreign write
    into a free block."""
    out = _run("S06_pass_context_then_exit.scn", "map-direct-sealed")
    yield out
    shutil.rmtree(out.run_dir, ignore_errors=True)


def _records(out: Outcome) -> list[dict[str, Any]]:
    return eventlog.load(out.run_dir)


def _actor_pids(recs: list[dict[str, Any]]) -> set[int]:
    return {int(r["pid"]) for r in recs if r["src"] == "launcher" and r["ev"] == "actor"}


def _svg(out: Outcome, name: str) -> ET.Element:
    return ET.parse(os.path.join(out.run_dir, name)).getroot()


def _seqs(root: ET.Element, ev: str) -> set[int]:
    found: set[int] = set()
    for g in root.iter(SVG + "g"):
        if g.get("data-ev") == ev:
            found.update(int(s) for s in (g.get("data-seq") or "").split())
    return found


# --- the run folder and its event log -------------------------------------------------------


@pytest.mark.timeout(60)
def test_run_folder_has_every_artifact(s05: Outcome) -> None:
    assert s05.passed, s05.failures
    for name in ("events.jsonl", "transcript.txt", "sequence.svg", "blockmap.svg",
                 "trace.json", "index.html", "kernel.jsonl", "launcher.jsonl"):
        assert os.path.getsize(os.path.join(s05.run_dir, name)) > 0, name


@pytest.mark.timeout(60)
def test_merged_log_keeps_both_orders_on_one_clock(s05: Outcome) -> None:
    recs = _records(s05)
    assert recs[0]["src"] == "launcher" and recs[0]["ev"] == "launch"
    assert [r["seq"] for r in recs] == list(range(1, len(recs) + 1))
    assert {r["src"] for r in recs} == {"kernel", "launcher"}
    kernel = [r for r in recs if r["src"] == "kernel"]
    assert [r["kseq"] for r in kernel] == sorted(r["kseq"] for r in kernel)
    assert [r["t"] for r in recs] == sorted(r["t"] for r in recs)
    with open(os.path.join(s05.run_dir, "kernel.jsonl")) as fh:
        assert len(kernel) == sum(1 for _ in fh)
    # causality: each line's launcher call comes before the kernel call it caused
    by_pid: dict[int, list[dict[str, Any]]] = {}
    for r in recs:
        if r["src"] == "launcher" and r["ev"] in ("call", "ret"):
            by_pid.setdefault(r["pid"], []).append(r)
    for r in recs:
        if r["src"] == "kernel" and r["ev"] == "call" and r["call"] == "open":
            before = [x for x in by_pid[r["pid"]] if x["seq"] < r["seq"]]
            assert before and before[-1]["ev"] == "call", r


@pytest.mark.timeout(60)
def test_log_has_the_event_classes_of_the_issue(s05: Outcome, s06: Outcome) -> None:
    evs = {(r["src"], r["ev"]) for r in _records(s05) + _records(s06)}
    for ev in ("call", "ret", "park", "restart", "pass", "receive", "block-alloc",
               "block-free", "reg_mr", "fault", "rdma-write", "foreign-write", "create",
               "exit", "boot"):
        assert ("kernel", ev) in evs, ev
    for ev in ("launch", "actor", "call", "ret", "verdict", "fault", "death", "line", "end"):
        assert ("launcher", ev) in evs, ev
    killed = [r for r in _records(s06) if r["ev"] == "death"]
    assert killed and killed[0]["status"] == "SIGKILL"


@pytest.mark.timeout(60)
def test_transcript_is_computed_from_the_log(s05: Outcome, s06: Outcome) -> None:
    for out in (s05, s06):
        with open(os.path.join(out.run_dir, "transcript.txt")) as fh:
            assert fh.read().splitlines() == "\n".join(out.transcript).splitlines()
        assert transcript.transcript(_records(out)) == out.transcript
        launcher = eventlog.launcher_records(out.run_dir)
        assert transcript.transcript(launcher) == out.transcript


def test_format_line_kinds() -> None:
    rec = {"kind": "call", "actor": "A", "pid": 12, "call": "close(3)", "result": "0"}
    assert transcript.format_line(rec) == "[A 12] close(3) = 0"
    assert transcript.format_line(rec, show_pids=False) == "[A] close(3) = 0"
    # an actor's life in strace -f's words, in its own lane
    assert transcript.format_line({"kind": "fault", "actor": "A", "pid": 12,
                                   "fault": "kill"}) == "[A 12] +++ killed by SIGKILL +++"
    assert transcript.format_line({"kind": "exited", "actor": "A", "pid": 12,
                                   "status": "exited with 0"}) == "[A 12] +++ exited with 0 +++"
    assert transcript.format_line({"kind": "waited", "actor": "A", "pid": 12, "status": "SIGIO"},
                                  show_pids=False) == "[A] +++ killed by SIGIO +++"
    si = {"si_signo": 29, "si_code": 3, "si_band": 0x441, "si_fd": 3}
    assert transcript.format_line({"kind": "signal", "actor": "A", "pid": 12, "siginfo": si}) \
        == "[A 12] --- SIGIO {si_signo=SIGIO, si_code=POLL_MSG, si_band=1089, si_fd=3} ---"
    assert transcript.format_line({"kind": "signal", "actor": "B", "pid": 13, "siginfo": {
        "si_signo": 10, "si_code": 0, "si_pid": "<A>"}}) \
        == "[B 13] --- SIGUSR1 {si_signo=SIGUSR1, si_code=SI_USER, si_pid=<A>} ---"
    assert transcript.format_line({"kind": "lost", "actor": "A", "pid": 12,
                                   "calls": "truncate"}) == "[A 12] <... truncate resumed> = ?"
    assert transcript.format_line({"kind": "verdict", "failures": 2}) == "=== FAIL (2) ==="
    with pytest.raises(ValueError):
        transcript.format_line({"kind": "nonsense"})


def test_combine_aligns_the_clocks() -> None:
    launcher = [{"t": 0.0, "ev": "launch", "clock": 100.0},
                {"t": 0.5, "ev": "call", "line": 1},
                {"t": 0.9, "ev": "ret", "line": 1}]
    kernel = [{"seq": 1, "t": 0.0, "ev": "boot", "clock": 100.2},
              {"seq": 2, "t": 0.4, "ev": "call"}, {"seq": 3, "t": 0.5, "ev": "ret"}]
    merged = eventlog.combine(kernel, launcher)
    assert [(r["src"], r["ev"]) for r in merged] == [
        ("launcher", "launch"), ("kernel", "boot"), ("launcher", "call"), ("kernel", "call"),
        ("kernel", "ret"), ("launcher", "ret")]
    assert merged[3]["t"] == pytest.approx(0.6) and merged[3]["kseq"] == 2


def _lease_break(target: str) -> Outcome:
    return run_scenario(load(os.path.join(ROOT, "scenarios", "lease_break_basic.scn")), target,
                        show_pids=False)


@pytest.mark.timeout(60)
def test_transcript_speaks_strace(s06: Outcome) -> None:
    """A delivery is strace's ``--- SIGIO {...} ---`` in the actor's lane before the line
    that took it; an exit ``exit_group(0) = ?`` and ``+++ exited with 0 +++``; a kill
    ``+++ killed by SIGKILL +++``; a mode is octal."""
    out = _lease_break("emulator")
    try:
        lines = out.transcript
        delivery = "[A] --- SIGIO {si_signo=SIGIO, si_code=POLL_MSG, si_band=1089, si_fd=3} ---"
        i = lines.index(delivery)
        assert lines[i + 1].startswith("[A] sigwait(SIGIO) = {si_signo=SIGIO")
        assert lines.index('[B] open("/data", O_RDONLY) <unfinished ...>') < i
        assert '[A] open("/data", O_RDONLY|O_CREAT, 0644) = 3' in lines
        for actor in ("A", "B"):
            j = lines.index(f"[{actor}] exit_group(0) = ?")
            assert lines[j + 1] == f"[{actor}] +++ exited with 0 +++"
        with open(os.path.join(out.run_dir, "transcript.txt")) as fh:
            assert fh.read().splitlines() == lines
    finally:
        shutil.rmtree(out.run_dir, ignore_errors=True)
    assert "[A] +++ killed by SIGKILL +++" in s06.transcript
    assert not any("exit_group" in x for x in s06.transcript if x.startswith("[A]"))


@pytest.mark.host
@pytest.mark.timeout(120)
def test_strace_lines_are_the_same_on_the_host() -> None:
    """The host kernel delivers the same SIGIO, recorded by the actor's own handler: the
    two transcripts are one, deliveries and exits included."""
    host, emu = _lease_break("host"), _lease_break("emulator")
    try:
        assert host.passed and emu.passed, (host.failures, emu.failures)
        assert any(x.startswith("[A] --- SIGIO {") for x in host.transcript)
        assert host.transcript[1:] == emu.transcript[1:]  # the header names the target
    finally:
        for out in (host, emu):
            shutil.rmtree(out.run_dir, ignore_errors=True)


# --- the sequence diagram -------------------------------------------------------------------


@pytest.mark.timeout(60)
@pytest.mark.parametrize("which", ["s05", "s06"])
def test_sequence_diagram_has_every_event_of_the_log(which: str,
                                                     request: pytest.FixtureRequest) -> None:
    out: Outcome = request.getfixturevalue(which)
    recs = _records(out)
    root = _svg(out, "sequence.svg")
    assert root.tag == SVG + "svg"
    pids = _actor_pids(recs)
    lanes = {g.get("data-lane") for g in root.iter(SVG + "g") if g.get("class") == "sq-lane"}
    names = {f"{r['name']} {r['pid']}" for r in recs if r["src"] == "launcher"
             and r["ev"] == "actor"}
    assert names | {"kernel", "RDMA card", "pmem device"} <= lanes
    kernel = [r for r in recs if r["src"] == "kernel"]
    for ev in ("call", "ret", "signal", "pass", "foreign-write", "park", "shootdown",
               "reg_mr", "rdma-write", "block-alloc", "block-free", "fault"):
        want = {r["seq"] for r in kernel if r["ev"] == ev
                and (r.get("pid") in pids or ev not in ("call", "ret", "park", "fault"))}
        # the agent's own calls are accounted for, not drawn
        drawn = _seqs(root, ev) | _seqs(root, "internal")
        assert want <= drawn, (ev, want - drawn)
    exits = {r["seq"] for r in kernel if r["ev"] == "exit" and r["pid"] in pids}
    assert exits <= _seqs(root, "exit")
    arrows = [e for e in root.iter(SVG + "line") if e.get("class") == "sq-arrow"]
    hidden = _seqs(root, "internal")
    assert len(arrows) >= 2 * sum(1 for r in kernel if r["ev"] == "call" and r["pid"] in pids
                                  and r["seq"] not in hidden)


@pytest.mark.timeout(60)
def test_the_agents_own_calls_are_not_drawn_as_the_scenarios(s05: Outcome) -> None:
    """Registration, signal bookkeeping, page-fault service, a background call's getpid:
    in the log, never an arrow of the diagram nor a line of the transcript."""
    recs = _records(s05)
    root = _svg(s05, "sequence.svg")
    own = {r["seq"]: r["call"] for r in recs if r["src"] == "kernel" and r["ev"] == "call"
           and r["call"] in ("bind", "getpid", "mm_fault", "rt_sigaction", "sigdelivered")}
    assert {"bind", "getpid"} <= set(own.values())
    assert set(own) <= _seqs(root, "internal") and not set(own) & _seqs(root, "call")
    labels = " ".join("".join(g.itertext()) for g in root.iter(SVG + "g")
                      if g.get("data-ev") in ("call", "ret"))
    for name in ("bind(", "getpid(", "mm_fault(", "sigdelivered(", "rt_sigaction("):
        assert name not in labels and not any(name in x for x in s05.transcript), name


@pytest.mark.timeout(60)
def test_a_long_run_is_drawn_up_to_a_limit_and_says_so(s05: Outcome) -> None:
    recs = _records(s05)
    run = build(recs)
    whole = _seqs(ET.fromstring(sequence.render(run)), "call")
    root = ET.fromstring(sequence.render(run, max_events=40))
    assert _seqs(root, "truncated") and not _seqs(ET.fromstring(sequence.render(run)),
                                                    "truncated")
    assert 0 < len(_seqs(root, "call")) < len(whole)


@pytest.mark.timeout(60)
def test_sequence_diagram_marks_kills_injections_and_foreign_writes(s06: Outcome) -> None:
    root = _svg(s06, "sequence.svg")
    killed = [e for e in root.iter(SVG + "path") if e.get("class") == "sq-killed"]
    assert len(killed) == 1
    assert _seqs(root, "injected")
    assert any(g.get("data-lane") == "launcher" for g in root.iter(SVG + "g"))
    foreign = [g for g in root.iter(SVG + "g") if g.get("data-ev") == "foreign-write"]
    assert foreign and "(free block)" in "".join(foreign[0].itertext())
    passes = [g for g in root.iter(SVG + "g") if g.get("data-ev") == "pass"]
    assert len(passes) == 1 and "fd 4 -> 3" in "".join(passes[0].itertext())


# --- the block map --------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_block_map_shows_owners_pins_and_foreign_writes(s05: Outcome) -> None:
    root = _svg(s05, "blockmap.svg")
    panels = [g for g in root.iter(SVG + "g") if g.get("class") == "bm-panel"]
    assert len(panels) >= 3
    cells = [[g for g in p.iter(SVG + "g") if g.get("class") == "bm-block"] for p in panels]
    assert any(c.get("data-pinned") == "yes" and c.get("data-file") == "/f"
               for panel in cells for c in panel)
    # after the truncate C's /g gets the blocks A's MR still pins: an alarm
    assert any(p.get("data-alarm") == "yes" for p in panels)
    assert any(c.get("data-pinned") == "yes" and c.get("data-file") == "/g"
               for panel in cells for c in panel)
    end = cells[-1]
    assert [c.get("data-block") for c in end if c.get("data-foreign") == "yes"] == ["0"]
    fw = [r for r in _records(s05) if r["ev"] == "foreign-write"]
    assert len(fw) == 1 and fw[0]["block"] == 0


@pytest.mark.timeout(60)
def test_block_map_shows_busy_blocks_as_their_own_state() -> None:
    """S5 under busy-extent: the truncated, still pinned blocks are busy (freed, held),
    not the red hazard; no panel raises an alarm, and /g gets other blocks."""
    out = _run("S05_pin_truncate_reuse.scn", "busy-extent")
    try:
        root = _svg(out, "blockmap.svg")
        panels = [g for g in root.iter(SVG + "g") if g.get("class") == "bm-panel"]
        cells = [[g for g in p.iter(SVG + "g") if g.get("class") == "bm-block"]
                 for p in panels]
        busy = {c.get("data-block") for panel in cells for c in panel
                if c.get("data-busy") == "yes"}
        assert busy == {"0", "1"}
        assert not any(p.get("data-alarm") == "yes" for p in panels)
        g_blocks = {c.get("data-block") for panel in cells for c in panel
                    if c.get("data-file") == "/g"}
        assert g_blocks and not g_blocks & busy
        assert "busy (freed, held)" in ET.tostring(root, encoding="unicode")
    finally:
        shutil.rmtree(out.run_dir, ignore_errors=True)


def _legend_colours(out: Outcome) -> dict[str, str]:
    root = _svg(out, "blockmap.svg")
    return {str(g.get("data-file")): str(g.get("data-colour")) for g in root.iter(SVG + "g")
            if g.get("class") == "bm-legend"}


@pytest.mark.timeout(60)
def test_block_map_gives_a_file_one_colour_in_every_run(s05: Outcome) -> None:
    """A file's colour comes from its path, not from the order the files appeared in, so
    two maps of one scenario (here under two designs) can be compared side by side."""
    other = _run("S05_pin_truncate_reuse.scn", "mr-lease")
    try:
        one, two = _legend_colours(s05), _legend_colours(other)
        assert "/f" in one and "/f" in two
        assert {f: one[f] for f in one.keys() & two.keys()} == \
            {f: two[f] for f in one.keys() & two.keys()}
        assert one["/f"] == blockmap.file_colour("/f")
    finally:
        shutil.rmtree(other.run_dir, ignore_errors=True)
    # the order of appearance does not matter; colliding paths are still told apart
    names = {7: "/g", 3: "/f", 9: "/data (deleted)"}
    flipped = dict(reversed(list(names.items())))
    assert blockmap.file_colours(names) == blockmap.file_colours(flipped)
    assert blockmap.file_colours(names)[9] == blockmap.file_colour("/data")
    many = {i: f"/file{i}" for i in range(1, 12)}
    assert len(set(blockmap.file_colours(many).values())) == len(many)


@pytest.mark.timeout(60)
def test_block_map_at_chosen_points(s05: Outcome) -> None:
    run = build(_records(s05))
    alloc = [r["seq"] for r in run.records if r["ev"] == "block-alloc"]
    panels, high = blockmap.replay(run, points=alloc)
    assert len(panels) == len(alloc) and high >= 1
    assert [len(p.device.owner) for p in panels][:2] == [1, 2]
    ET.fromstring(blockmap.render(run, points=alloc))


# --- the Perfetto export --------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_trace_events_match_the_log(s06: Outcome) -> None:
    recs = _records(s06)
    with open(os.path.join(s06.run_dir, "trace.json")) as fh:
        doc = json.load(fh)
    events = doc["traceEvents"]
    assert all(e["ph"] in "XiMCsf" for e in events)
    pids = _actor_pids(recs)
    names = {e["pid"]: e["args"]["name"] for e in events
             if e["ph"] == "M" and e["name"] == "process_name"}
    assert pids <= set(names)
    # the scenario's calls, not the agent's own (registration, sigdelivered, mm_fault)
    assert any(r["src"] == "kernel" and r["ev"] == "call" and internal_call(r["call"])
               for r in recs)
    calls = {r["seq"] for r in recs if r["src"] == "kernel" and r["ev"] == "call"
             and r["pid"] in pids and not internal_call(r["call"], _source_of(recs, r))
             and any(x["src"] == "kernel" and x["ev"] == "ret"
                                          and x["pid"] == r["pid"]
                                          and x["id"] == r["id"] for x in recs)}
    slices = {e["args"]["seq"] for e in events if e["ph"] == "X" and e.get("cat") == "syscall"}
    assert calls == slices
    assert all(e["dur"] > 0 and e["ts"] >= 0 for e in events if e["ph"] == "X")
    starts = {(e["id"], e["cat"], e["name"]) for e in events if e["ph"] == "s"}
    ends = {(e["id"], e["cat"], e["name"]) for e in events if e["ph"] == "f"}
    assert ends <= starts and ends
    assert any(name == "SCM_RIGHTS" for _, _, name in ends)
    assert any(e["ph"] == "i" and e.get("s") == "g" and e["name"] == "FOREIGN WRITE"
               for e in events)
    assert perfetto.trace(build(recs)) == doc


def _source_of(recs: list[dict[str, Any]], rec: dict[str, Any]) -> str:
    """The scenario line its process was running when the kernel logged ``rec``."""
    source = ""
    for r in recs:
        if r is rec:
            break
        if r["src"] == "launcher" and r["ev"] in ("call", "step") and r.get("pid") == rec["pid"]:
            source = str(r.get("source") or "")
    return source


# --- host runs and odd logs -------------------------------------------------------------


@pytest.mark.host
@pytest.mark.timeout(60)
def test_host_run_gets_a_diagram_from_the_launcher_alone() -> None:
    sc = parse('A: fd = open("/f", O_RDWR|O_CREAT, 0o644) => 3\n'
               'B: g = open("/f", O_RDONLY) => 3\n!kill B\nA: close(fd) => 0\n', "host.scn")
    out = run_scenario(sc, "host", show_pids=False)
    try:
        assert out.passed, out.failures
        root = _svg(out, "sequence.svg")
        lanes = {g.get("data-lane") for g in root.iter(SVG + "g")
                 if g.get("class") == "sq-lane"}
        assert "host kernel" in lanes and "RDMA card" not in lanes
        assert len(_seqs(root, "user")) == 3
        assert any(e.get("class") == "sq-killed" for e in root.iter(SVG + "path"))
        ET.parse(os.path.join(out.run_dir, "blockmap.svg"))
    finally:
        shutil.rmtree(out.run_dir, ignore_errors=True)


def test_renderers_survive_a_log_cut_short() -> None:
    launcher = [{"t": 0.0, "ev": "launch", "clock": 5.0, "scenario": "x.scn"},
                {"t": 0.1, "ev": "actor", "name": "A", "pid": 4242, "how": "spawn"},
                {"t": 0.2, "ev": "call", "line": 1, "actor": "A", "pid": 4242,
                 "source": "truncate('/f', 0)"}]
    kernel = [{"seq": 1, "t": 0.0, "ev": "boot", "clock": 5.0, "pid": 1, "nblocks": 8,
               "block_size": 4096},
              {"seq": 2, "t": 0.21, "ev": "call", "pid": 4242, "id": 1, "call": "truncate",
               "args": ["/f", 0]},
              {"seq": 3, "t": 0.22, "ev": "park", "pid": 4242, "id": 1, "call": "truncate"},
              {"seq": 4, "t": 0.23, "ev": "sendmsg-oddity", "pid": 4242}]
    run = build(eventlog.combine(kernel, launcher))
    root = ET.fromstring(sequence.render(run))
    assert _seqs(root, "park") and _seqs(root, "call")
    ET.fromstring(blockmap.render(run))
    json.dumps(perfetto.trace(run))


# --- the report in a browser ----------------------------------------------------------------


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.mark.timeout(300)
def test_matrix_report_in_headless_chromium(tmp_path: Any) -> None:
    why = webdriver.available()
    if why is not None:
        if os.environ.get("KEMU_REQUIRE_BROWSER"):
            pytest.fail(f"KEMU_REQUIRE_BROWSER is set: {why}")
        pytest.skip(why)
    report = str(tmp_path / "out")
    only, policies = ["S05_pin", "S06"], ["legacy", "map-direct-sealed", "mr-lease"]
    text = io.StringIO()
    assert matrix.main(out=text, jobs=3, only=only, report=report, policies=policies) == 0, \
        text.getvalue()
    scenarios = sorted(f.removesuffix(".scn") for f in os.listdir(matrix.THREADS)
                       if f.startswith(tuple(only)))
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(_Quiet, directory=report))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}/"
    os.makedirs(ARTIFACTS, exist_ok=True)
    try:
        with webdriver.Browser(width=1700, height=1000) as b:
            b.get(base + "index.html")
            cells = b.run("""return Array.from(document.querySelectorAll('td.cell')).map(td => ({
                scenario: td.dataset.scenario, policy: td.dataset.policy,
                passed: td.dataset.passed,
                links: Array.from(td.querySelectorAll('a')).map(a => [a.className, a.href])}))""")
            assert sorted((c["scenario"].removesuffix(".scn"), c["policy"]) for c in cells) == \
                sorted((s, p) for s in scenarios for p in policies)
            assert all(c["passed"] == "yes" for c in cells)
            assert all([k for k, _ in c["links"]] == ["diagram", "transcript", "blockmap",
                                                      "trace"] for c in cells)
            # every link resolves
            hrefs = [h for c in cells for _, h in c["links"]]
            status = b.run("""const hrefs = arguments[0];
                return Promise.all(hrefs.map(h => fetch(h).then(r => r.status)))""", hrefs)
            assert status == [200] * len(hrefs)
            b.screenshot(os.path.join(ARTIFACTS, "report-index.png"))
            print(f"\nscreenshots in {ARTIFACTS}")
            # a 1400-pixel window: no horizontal scroll, no text spilling out of its cell
            b.resize(1400, 1000)
            b.get(base + "index.html")
            fit = b.run("""const d = document.documentElement;
                const spill = Array.from(document.querySelectorAll('th, td, .tag, .legend div'))
                    .filter(e => e.scrollWidth > e.clientWidth + 1).map(e => e.outerHTML);
                return {width: d.scrollWidth, client: d.clientWidth, spill: spill,
                        tags: Array.from(document.querySelectorAll('td.cell .tag')).map(t => [
                            t.dataset.kind, t.innerText,
                            getComputedStyle(t).backgroundColor])}""")
            assert fit["width"] <= 1400 and fit["width"] <= fit["client"], fit["width"]
            assert not fit["spill"], fit["spill"][:3]
            b.screenshot(os.path.join(ARTIFACTS, "report-index-1400.png"), full_page=False)
            colour = {kind: bg for kind, _, bg in fit["tags"]}
            texts = {(kind, text) for kind, text, _ in fit["tags"]}
            # a foreign write is corruption, a design's refusals are safety:
            # in colours of their own, every errno with the call that gave it
            assert ("corrupt", "foreign write") in texts
            assert ("safe", "EPERM (ibv_reg_mr)") in texts
            assert ("safe", "ETXTBSY (truncate)") in texts
            assert colour["corrupt"] != colour["safe"]
            assert all("(" in text for kind, text, _ in fit["tags"] if text.startswith("E"))
            b.resize(1700, 1000)
            for c in cells:
                folder = os.path.join(report, c["scenario"].removesuffix(".scn"), c["policy"])
                recs = eventlog.load(folder)
                run = build(recs)
                diagram = dict(c["links"])["diagram"]
                b.get(diagram)
                page = b.run("""const svg = document.querySelector('svg.sq-diagram');
                    const q = s => Array.from(svg.querySelectorAll(s));
                    return {lanes: q('g.sq-lane').map(g => g.dataset.lane),
                            arrows: q('line.sq-arrow').length,
                            calls: q('g[data-ev="call"], g[data-ev="internal"]').map(
                                g => +g.dataset.seq),
                            internal: q('g[data-ev="internal"]').length,
                            bands: q('g.sq-line').length,
                            width: svg.getBoundingClientRect().width,
                            panels: document.querySelectorAll('svg.bm-map g.bm-panel').length,
                            transcript: document.querySelector('pre').innerText,
                            back: document.querySelector('nav a').href}""")
                want_lanes = {p.label for p in run.procs.values()} | {"kernel", "RDMA card",
                                                                      "pmem device"}
                assert want_lanes <= set(page["lanes"]), (c, page["lanes"])
                calls = {r["seq"] for r in recs if r["src"] == "kernel" and r["ev"] == "call"
                         and r["pid"] in run.procs}
                assert calls <= set(page["calls"])
                assert page["arrows"] >= 2 * (len(calls) - page["internal"])
                assert page["width"] > 800
                assert page["bands"] == len(run.lines) and page["panels"] >= 1
                with open(os.path.join(folder, "transcript.txt")) as fh:
                    assert page["transcript"].strip() == fh.read().strip()
                assert page["back"] == base + "index.html"
                if c["scenario"].startswith("S06") and c["policy"] == "map-direct-sealed":
                    b.screenshot(os.path.join(ARTIFACTS, "report-run-S06-sealed.png"))
                    b.resize(1700, 1000)
                b.get(dict(c["links"])["blockmap"])
                assert b.run("return document.documentElement.tagName") == "svg"
                b.get(dict(c["links"])["transcript"])
                assert "=== PASS ===" in b.run("return document.body.innerText")
    finally:
        server.shutdown()
        server.server_close()


def test_every_event_is_documented() -> None:
    """docs/report.md names every event the daemon and the launcher write."""
    import re

    names: set[str] = set()
    for package in ("kernel_daemon", "agents"):
        for dirpath, _, files in os.walk(os.path.join(ROOT, package)):
            for f in files:
                if f.endswith(".py"):
                    with open(os.path.join(dirpath, f)) as fh:
                        text = fh.read()
                    names.update(re.findall(r'\b(?:log|evlog)\.emit\(\s*"([a-z_-]+)"', text))
                    names.update(re.findall(r'self\._log\(\s*"([a-z_-]+)"', text))
    assert {"call", "foreign-write", "launch", "verdict"} <= names
    with open(os.path.join(ROOT, "docs", "report.md")) as fh:
        doc = fh.read()
    missing = sorted(n for n in names if f"`{n}`" not in doc)
    assert not missing, f"docs/report.md does not describe: {missing}"
