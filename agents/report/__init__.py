"""Pictures of a run, computed from its event log (see docs/report.md).

Every run folder gets, from the merged ``events.jsonl``:

- ``sequence.svg``: the sequence diagram (:mod:`.sequence`);
- ``blockmap.svg``: the pmem device's blocks at chosen points (:mod:`.blockmap`);
- ``trace.json``: the Chrome/Perfetto trace-event export (:mod:`.perfetto`);
- ``index.html``: a page with both pictures inline and the transcript (:mod:`.html`).

Pure standard library; nothing is read but the log and the transcript written from it.
"""

from __future__ import annotations

import os
import sys
import traceback
from typing import Any

from kemu.agents.report import blockmap, eventlog, html, perfetto, sequence
from kemu.agents.report.model import Run, build
from kemu.agents.scenario import transcript

__all__ = ["Run", "build", "eventlog", "write_run"]

ARTIFACTS = ("events.jsonl", "transcript.txt", "sequence.svg", "blockmap.svg", "trace.json",
             "index.html")


def _write(path: str, text: str) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(text)


def write_run(run_dir: str, records: list[dict[str, Any]] | None = None,
              up: str | None = None) -> list[str]:
    """Write the pictures and the page of the run in ``run_dir``; returns the problems
    met (each picture is written even if another fails).  ``up``: a link back to the
    matrix report, relative to the run folder."""
    if records is None:
        records = eventlog.load(run_dir)
    errors: list[str] = []
    run = build(records)

    def attempt(what: str, make: Any) -> str:
        try:
            return str(make())
        except Exception:
            detail = traceback.format_exc(limit=6)
            errors.append(f"{what} could not be drawn: {detail}")
            print(f"report: {run_dir}: {what} failed:\n{detail}", file=sys.stderr)
            return f"<p>{what} could not be drawn (see the page's errors).</p>"

    seq_svg = attempt("the sequence diagram", lambda: sequence.render(run))
    map_svg = attempt("the block map", lambda: blockmap.render(run))
    trace = attempt("the trace export", lambda: perfetto.dumps(run))
    _write(os.path.join(run_dir, "sequence.svg"), seq_svg)
    _write(os.path.join(run_dir, "blockmap.svg"), map_svg)
    _write(os.path.join(run_dir, "trace.json"), trace)
    lines = transcript.transcript(records)
    _write(os.path.join(run_dir, "index.html"),
           html.run_page(run, seq_svg, map_svg, lines, up=up, errors=errors))
    return errors
