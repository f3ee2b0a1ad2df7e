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
table.matrix { border-collapse: collapse; font-size: 13px; }
table.matrix th, table.matrix td { border: 1px solid #ccc; padding: .35em .5em;
                                   vertical-align: top; }
table.matrix thead th { background: #f0f2f5; position: sticky; top: 0; }
table.matrix tbody th { text-align: left; font-weight: normal; white-space: nowrap; }
td.cell { min-width: 10em; max-width: 16em; }
td.cell.mismatch { background: #fde8e8; }
td.cell .summary { margin-bottom: .25em; }
td.cell .links { white-space: nowrap; }
td.cell .links a { font-size: 12px; margin-right: .45em; }
.tag { display: inline-block; padding: 0 .35em; border-radius: 3px; font-size: 12px;
       margin: 0 .2em .15em 0; background: #eef1f5; }
.tag.bad { background: #d62728; color: #fff; }
.tag.warn { background: #fff1d6; color: #8a5a00; }
.mark { color: #d62728; font-weight: bold; }
"""


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


def _tags(summary: str) -> str:
    out = []
    for word in summary.split(", "):
        cls = "bad" if word in ("foreign write", "RDMA error") or word.startswith(("killed",
                                                                                   "BUG")) \
            else "warn" if word.startswith("E") or word == "SIGIO" else ""
        cls = "bad" if " killed by " in word else cls
        out.append(f'<span class="tag {cls}">{_e(word)}</span>')
    return "".join(out)


def matrix_page(scenarios: list[tuple[str, str]], policies: list[str],
                cells: dict[tuple[str, str], MatrixCell], wall: float) -> str:
    """The report's ``index.html``: the scenario x policy table."""
    head = "".join(f"<th>{_e(p)}</th>" for p in policies)
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
                f' title="{_e(tip)}"><div class="summary">{mark}{_tags(c.summary)}</div>'
                f'<div class="links"><a class="diagram" href="{_e(base)}index.html">diagram</a>'
                f'<a class="transcript" href="{_e(base)}transcript.txt">transcript</a>'
                f'<a class="blockmap" href="{_e(base)}blockmap.svg">blocks</a>'
                f'<a class="trace" href="{_e(base)}trace.json">trace</a></div></td>')
        rows.append(f'<tr data-scenario="{_e(name)}"><th title="{_e(title)}">'
                    f'{_e(name.removesuffix(".scn"))}<br><small>{_e(title)}</small></th>'
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
<p>{total} runs in {wall:.1f} s; {status}.  Each cell: what the run met (errnos, signals,
foreign writes, deaths); <span class="mark">!!</span> marks a cell that differs from the
expectation the scenario states.  Links open the run's sequence diagram page, its
transcript, its block map and its trace (for ui.perfetto.dev).</p>
{f"<ul class='failures'>{mism}</ul>" if mism else ""}
<table class="matrix" id="matrix"><thead><tr><th>scenario</th>{head}</tr></thead>
<tbody>
{chr(10).join(rows)}
</tbody></table>
</body></html>
"""
