"""The pages: a run's ``index.html`` and the matrix report's ``index.html``.

Both are single self-contained files (inline CSS, the run page's pictures inline SVG),
readable from ``file://`` with no server and no script.
"""

from __future__ import annotations

import html
from dataclasses import dataclass, field

from kemu.agents.report.model import Run

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0 1.5em 2em;
       color: #222; }
h1 { font-size: 1.35em; margin: .8em 0 .2em; } h2 { font-size: 1.1em; margin: 1.4em 0 .4em; }
.pass { color: #2a7d2a; } .fail { color: #d62728; }
nav a, .files a { margin-right: .9em; }
.scroll { overflow: auto; border: 1px solid #ddd; max-height: 88vh; background: #fff; }
pre { background: #f6f8fa; padding: .8em; overflow: auto; font-size: 12px; line-height: 1.35; }
.failures { color: #d62728; }
table.matrix { border-collapse: collapse; font-size: 12px; width: 100%;
                table-layout: fixed; }
table.matrix th, table.matrix td { border: 1px solid #ccc; padding: .3em .35em;
                                   vertical-align: top; overflow-wrap: break-word; }
table.matrix thead th { background: #f0f2f5; position: sticky; top: 0; font-size: 12px; }
table.matrix thead th.scenario { width: 13em; }
table.matrix tbody th { text-align: left; font-weight: normal; }
table.matrix tbody th small { display: block; color: #555; font-size: 11px; line-height: 1.25; }
td.cell.mismatch { background: #fde8e8; }
td.cell .summary { margin-bottom: .25em; }
td.cell .links a { font-size: 11px; margin-right: .4em; white-space: nowrap;
                   display: inline-block; }
.tag { display: inline-block; padding: 0 .3em; border-radius: 3px; font-size: 11px;
       line-height: 1.35; margin: 0 .15em .15em 0; background: #eef1f5; color: #333; }
.tag.corrupt { background: #d62728; color: #fff; font-weight: bold; }
.tag.safe { background: #dcefe9; color: #135e4b; border: 1px solid #8cc5b4; }
.tag.death { background: #ece3f5; color: #5b2a86; border: 1px solid #b99ad6; }
.tag.signal { background: #f4effa; color: #6b4a8f; }
.tag.error { background: #fff1d6; color: #8a5a00; }
.tag.none { background: #f1f3f5; color: #666; }
.tag.unjudged { background: #fff; color: #555; border: 1px dashed #999; }
.legend { display: flex; flex-wrap: wrap; gap: .3em 1.2em; margin: .4em 0 .8em;
          font-size: 12px; }
.legend div { display: flex; align-items: baseline; gap: .4em; max-width: 40em; }
.legend .tag { white-space: nowrap; flex: none; }
.mark { color: #d62728; font-weight: bold; }
"""

#: the kinds of outcome a matrix cell tags, and what their colours mean
KINDS = [("corrupt", "foreign write", "data corruption: a device write landed in a block "
          "another file owns now (the only red)"),
         ("safe", "EPERM (ibv_reg_mr)", "safety: the design refused or fenced as it means "
          "to (a refused layout change or pin, a revoked pin's RDMA error, a breaker told "
          "to wait for the lease)"),
         ("death", "A killed by SIGIO", "a process was killed (a signal with no handler)"),
         ("signal", "SIGIO", "a lease break's signal was delivered"),
         ("error", "EINVAL (fcntl F_SETLEASE)", "an error a call returned (an unknown "
          "command, an unsupported call)"),
         ("none", "no error", "nothing failed")]


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def run_page(run: Run, sequence_svg: str, blockmap_svg: str, transcript: list[str],
             up: str | None = None, errors: list[str] | None = None) -> str:
    """A run folder's ``index.html``: the diagram, the block map, the transcript."""
    verdict = "PASS" if run.passed else f"FAIL ({len(run.failures)})"
    cls = "pass" if run.passed else "fail"
    nav = []
    if up:
        nav.append(f'<a href="{_e(up)}">&larr; matrix</a>')
    nav += ['<a href="#sequence">sequence diagram</a>', '<a href="#blockmap">block map</a>',
            '<a href="#transcript">transcript</a>']
    files = ['<a href="sequence.svg">sequence.svg</a>', '<a href="blockmap.svg">blockmap.svg</a>',
             '<a href="transcript.txt">transcript.txt</a>',
             '<a href="events.jsonl">events.jsonl</a> (the event log)',
             '<a href="trace.json">trace.json</a> (open it in '
             '<a href="https://ui.perfetto.dev">ui.perfetto.dev</a> or chrome://tracing)']
    facts = []
    killed = [p.label + " by " + str(p.death) for p in run.procs.values() if p.killed]
    if killed:
        facts.append("killed: " + ", ".join(killed))
    foreign = sum(1 for r in run.records if r.get("ev") == "foreign-write")
    if foreign:
        facts.append(f'<span class="fail">{foreign} foreign write(s)</span>')
    ncalls = sum(1 for r in run.records if r.get("ev") == "call" and r.get("pid") in run.procs)
    signals = sum(1 for r in run.records if r.get("ev") == "signal")
    facts.append(f"{len(run.procs)} processes, {ncalls} system calls, {signals} signals, "
                 f"{len(run.records)} events")
    failures = "".join(f"<li>{_e(f)}</li>" for f in run.failures)
    errs = "".join(f"<li>{_e(e)}</li>" for e in errors or [])
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>{_e(run.scenario)} under {_e(run.policy)}</title><style>{CSS}</style></head>
<body data-scenario="{_e(run.scenario)}" data-policy="{_e(run.policy)}"
 data-passed="{"yes" if run.passed else "no"}">
<h1>{_e(run.scenario)} &mdash; policy {_e(run.policy)} &mdash; {_e(run.target)} &mdash;
<span class="{cls}">{verdict}</span></h1>
<p>{_e(run.title)}</p>
<nav>{" ".join(nav)}</nav>
<p class="files">{" ".join(files)}</p>
<p>{"; ".join(facts)}</p>
{f'<ul class="failures">{failures}</ul>' if failures else ""}
{f'<ul class="failures">{errs}</ul>' if errs else ""}
<h2 id="sequence">Sequence diagram</h2>
<p>Time runs down in event order (not to scale); hover over anything for its details.</p>
<div class="scroll">{sequence_svg}</div>
<h2 id="blockmap">Block map</h2>
<div class="scroll">{blockmap_svg}</div>
<h2 id="transcript">Transcript</h2>
<pre>{_e(chr(10).join(transcript))}</pre>
</body></html>
"""


@dataclass
class MatrixCell:
    """One run of the matrix as the report shows it."""

    scenario: str
    policy: str
    summary: str
    passed: bool
    #: the run folder, relative to the report's index.html
    folder: str
    failures: list[str] = field(default_factory=list)
    #: the outcome as (text, kind) tags (kinds: :data:`KINDS`); empty: from ``summary``
    tags: list[tuple[str, str]] = field(default_factory=list)


def _guess(word: str) -> str:
    """The kind of a word of a plain summary (a cell given without tags)."""
    if word == "foreign write" or word.startswith("BUG"):
        return "corrupt"
    if word.startswith("killed") or " killed by " in word:
        return "death"
    if word == "RDMA error":
        return "safe"
    if word == "SIGIO":
        return "signal"
    return "error" if word.startswith("E") else "none"


def _tags(cell: MatrixCell) -> str:
    tags = cell.tags or [(w, _guess(w)) for w in cell.summary.split(", ")]
    meaning = {k: m for k, _, m in KINDS}
    return "".join(f'<span class="tag {_e(kind)}" data-kind="{_e(kind)}"'
                   f' title="{_e(meaning.get(kind, kind))}">{_e(text)}</span>'
                   for text, kind in tags)


def _legend() -> str:
    items = "".join(f'<div><span class="tag {k}">{_e(example)}</span>'
                    f'<span>{_e(meaning)}</span></div>' for k, example, meaning in KINDS)
    return f'<div class="legend" id="legend">{items}</div>'


def _breakable(name: str) -> str:
    """A name that may break after its hyphens and underscores in a narrow column."""
    return "".join(_e(c) + ("<wbr>" if c in "-_" else "") for c in name)


def matrix_page(scenarios: list[tuple[str, str]], policies: list[str],
                cells: dict[tuple[str, str], MatrixCell], wall: float) -> str:
    """The report's ``index.html``: the scenario x policy table."""
    head = "".join(f'<th data-policy="{_e(p)}">{_breakable(p)}</th>' for p in policies)
    rows = []
    bad: list[MatrixCell] = []
    for name, title in scenarios:
        tds = []
        for p in policies:
            c = cells.get((name, p))
            if c is None:
                tds.append("<td></td>")
                continue
            if not c.passed:
                bad.append(c)
            base = c.folder.rstrip("/") + "/"
            mark = '<span class="mark" title="differs from the expectation">!! </span>' \
                if not c.passed else ""
            tip = "; ".join(c.failures) if c.failures else "meets the expectation"
            tds.append(
                f'<td class="cell {"pass" if c.passed else "mismatch"}" data-scenario="{_e(name)}"'
                f' data-policy="{_e(p)}" data-passed="{"yes" if c.passed else "no"}"'
                f' title="{_e(tip)}"><div class="summary">{mark}{_tags(c)}</div>'
                f'<div class="links"><a class="diagram" href="{_e(base)}index.html">diagram</a>'
                f'<a class="transcript" href="{_e(base)}transcript.txt">transcript</a>'
                f'<a class="blockmap" href="{_e(base)}blockmap.svg">blocks</a>'
                f'<a class="trace" href="{_e(base)}trace.json">trace</a></div></td>')
        rows.append(f'<tr data-scenario="{_e(name)}"><th title="{_e(title)}">'
                    f'{_breakable(name.removesuffix(".scn"))}<small>{_e(title)}</small></th>'
                    + "".join(tds) + "</tr>")
    total = len(cells)
    mism = "".join(
        f'<li><a href="{_e(c.folder.rstrip("/"))}/index.html">{_e(c.scenario)} under '
        f'{_e(c.policy)}</a>: {_e("; ".join(c.failures))}</li>' for c in bad)
    status = ('<span class="pass">every cell meets its expectation</span>' if not bad else
              f'<span class="fail">{len(bad)} differ from the expectation</span>')
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Scenario matrix</title>
<style>{CSS}</style></head>
<body data-runs="{total}" data-mismatches="{len(bad)}">
<h1>Thread scenarios under every policy</h1>
<p>{total} runs in {wall:.1f} s; {status}.  Each cell: what the run met (each errno with
the calls that gave it, signals, foreign writes, deaths); <span class="mark">!!</span>
marks a cell that differs from the expectation the scenario states.  Links open the
run's sequence diagram page, its transcript, its block map and its trace (for
ui.perfetto.dev).</p>
{_legend()}
{f"<ul class='failures'>{mism}</ul>" if mism else ""}
<table class="matrix" id="matrix"><thead><tr><th class="scenario">scenario</th>{head}</tr>
</thead>
<tbody>
{chr(10).join(rows)}
</tbody></table>
</body></html>
"""
