"""The documents that describe code stay equal to the code."""

from __future__ import annotations

import os
import re

from kemu.kernel_daemon.syscalls.table import render_markdown
from kemu.protocol.wire import PROTOCOL_VERSION

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_protocol_doc_version_matches_code() -> None:
    with open(os.path.join(ROOT, "docs", "protocol.md")) as fh:
        text = fh.read()
    m = re.search(r"Protocol version: \*\*(\d+)\.(\d+)\*\*", text)
    assert m is not None, "docs/protocol.md must state 'Protocol version: **X.Y**'"
    assert (int(m.group(1)), int(m.group(2))) == PROTOCOL_VERSION


def test_syscall_doc_is_generated_from_the_table() -> None:
    with open(os.path.join(ROOT, "docs", "syscalls.md")) as fh:
        text = fh.read()
    assert text.strip() == render_markdown().strip(), (
        "docs/syscalls.md is stale: run python -m kemu.kernel_daemon --syscall-table > docs/syscalls.md"
    )


def _between(path: str, name: str) -> str:
    with open(os.path.join(ROOT, path)) as fh:
        text = fh.read()
    begin, end = f"<!-- {name}:begin -->\n", f"\n<!-- {name}:end -->"
    assert begin in text and end in text, f"{path} lost its {name} markers"
    return text.split(begin, 1)[1].split(end, 1)[0]


def test_the_readme_lists_every_callable_function() -> None:
    from kemu.agents.scenario.calls import render_calls

    assert _between("README.md", "calls") == render_calls(), (
        "regenerate the README's list: kemu.agents.scenario.calls.render_calls()")


def test_the_scenario_page_lists_every_setting() -> None:
    from kemu.agents.scenario.parse import render_settings

    assert _between("docs/scenarios.md", "settings") == render_settings(), (
        "regenerate docs/scenarios.md's table: kemu.agents.scenario.parse.render_settings()")
