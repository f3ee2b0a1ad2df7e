"""The four homes inside ``agents/`` import each other in one direction only.

``kemu.agents.lib`` (the agent library), ``kemu.agents.scenario`` (the scenario language and the
scripted agent), ``kemu.agents.launcher`` and ``kemu.agents.report`` (see ``agents/__init__.py``):

* the **agent library** imports only itself and ``protocol``: an agent program that is
  not a scenario actor gets nothing of scenarios, the launcher or the report;
* the **scenario language** (``parse``, ``expr``, ``transcript``, ``strace``) imports
  only itself and ``protocol``; the **scripted agent** (``scripted``, ``calls``,
  ``link``) may add the agent library, because it is an agent program: it makes its
  calls through ``System`` and its mailboxes, and moves its launcher link out of the
  program's descriptor numbers with ``move_high``.  Nothing in ``kemu.agents.scenario``
  imports the launcher or the report.  The launcher link lives here, not in the
  launcher, because both ends need it and the launcher may import the scenario side;
* the **transcript formatter** (``transcript``, ``strace``) imports only ``protocol``;
* the **report** imports only itself (its event-log format is ``kemu.agents.report.eventlog``),
  the transcript formatter and ``protocol``: it reads a run's event log and nothing else;
* the **launcher** may import all of them (it is the composition root).

``agents/__init__.py`` and ``agents/scenario/__init__.py`` import nothing, so that
importing the transcript formatter does not load the parser or the scripted agent.
The rules are checked on the source (every ``import``, also inside functions and under
``TYPE_CHECKING``) and, for what is really loaded, in a fresh interpreter.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIRST_PARTY = ("agents", "protocol", "kernel_daemon", "launch")

LANGUAGE = {"kemu.agents.scenario.parse", "kemu.agents.scenario.expr", "kemu.agents.scenario.transcript",
            "kemu.agents.scenario.strace"}
FORMATTER = {"kemu.agents.scenario.transcript", "kemu.agents.scenario.strace"}
SCRIPTED = {"kemu.agents.scenario.scripted", "kemu.agents.scenario.calls", "kemu.agents.scenario.link"}


def _module_name(path: str) -> str:
    rel = os.path.relpath(path, ROOT)[: -len(".py")].split(os.sep)
    if rel[-1] == "__init__":
        rel = rel[:-1]
    return ".".join(rel)


def _modules(package: str) -> dict[str, str]:
    """Dotted module name -> source path, for every module of ``package``."""
    out: dict[str, str] = {}
    for dirpath, _, files in os.walk(os.path.join(ROOT, *package.split("."))):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(dirpath, name)
                out[_module_name(path)] = path
    return out


def _imports(module: str, path: str) -> set[str]:
    """First-party modules ``module`` imports, as dotted names (``from a import b``
    counts as ``a.b`` when ``a.b`` is a module, else as ``a``)."""
    with open(path, encoding="utf-8") as fh:
        tree = ast.parse(fh.read(), path)
    package = module if path.endswith("__init__.py") else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            for alias in node.names:
                sub = f"{mod}.{alias.name}"
                found.add(sub if _is_module(sub) else mod)
    return {m for m in found if m.split(".")[0] in FIRST_PARTY}


def _is_module(dotted: str) -> bool:
    base = os.path.join(ROOT, *dotted.split("."))
    return os.path.isfile(base + ".py") or os.path.isfile(os.path.join(base, "__init__.py"))


def _within(name: str, prefixes: set[str]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def _violations(modules: dict[str, str], allowed: set[str]) -> dict[str, list[str]]:
    bad: dict[str, list[str]] = {}
    for module, path in sorted(modules.items()):
        wrong = sorted(m for m in _imports(module, path) if not _within(m, allowed))
        if wrong:
            bad[module] = wrong
    return bad


def test_the_agent_library_imports_only_itself_and_protocol() -> None:
    assert _violations(_modules("kemu.agents.lib"), {"kemu.agents.lib", "protocol"}) == {}


def test_the_scenario_language_imports_only_itself_and_protocol() -> None:
    language = {m: p for m, p in _modules("kemu.agents.scenario").items() if m in LANGUAGE}
    assert set(language) == LANGUAGE
    assert _violations(language, LANGUAGE | {"protocol"}) == {}


def test_the_transcript_formatter_imports_only_protocol() -> None:
    formatter = {m: p for m, p in _modules("kemu.agents.scenario").items() if m in FORMATTER}
    assert _violations(formatter, FORMATTER | {"protocol"}) == {}


def test_the_scripted_agent_adds_only_the_agent_library() -> None:
    scenario = _modules("kemu.agents.scenario")
    assert set(scenario) == LANGUAGE | SCRIPTED | {"kemu.agents.scenario"}, (
        "a new module of agents.scenario: put it in LANGUAGE or SCRIPTED (and the docstring)")
    assert _violations(scenario, {"kemu.agents.scenario", "kemu.agents.lib", "protocol"}) == {}


def test_the_report_imports_only_its_log_format_and_the_transcript_formatter() -> None:
    assert _violations(_modules("kemu.agents.report"),
                       {"kemu.agents.report", "protocol"} | FORMATTER) == {}


def test_the_package_roots_import_nothing() -> None:
    for module in ("agents", "kemu.agents.scenario", "kemu.agents.lib"):
        path = os.path.join(ROOT, *module.split("."), "__init__.py")
        assert _imports(module, path) == set(), module


def test_nothing_imports_the_launcher_but_the_launcher_and_launch_py() -> None:
    outside = {m: p for m, p in _modules("agents").items() if not _within(m, {"kemu.agents.launcher"})}
    users = {m for m, p in outside.items() if any(_within(i, {"kemu.agents.launcher"})
                                                    for i in _imports(m, p))}
    assert users == set()


def _loaded_by(module: str) -> list[str]:
    """The first-party modules a fresh interpreter has loaded after ``import module``."""
    code = ("import json, sys\n"
            f"import {module}\n"
            "print(json.dumps(sorted(m for m in sys.modules\n"
            "                        if m.split('.')[0] in ('agents', 'protocol', 'kernel_daemon'))))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                         text=True, timeout=60, check=True)
    return list(json.loads(out.stdout))


#: module imported -> (packages whose __init__ may run, prefixes every other module
#: loaded must fall under)
LOADED = {
    "kemu.agents.report": ({"agents", "kemu.agents.scenario"}, {"kemu.agents.report", "protocol"} | FORMATTER),
    "kemu.agents.lib.api": ({"agents"}, {"kemu.agents.lib", "protocol"}),
    "kemu.agents.lib.peer": ({"agents"}, {"kemu.agents.lib", "protocol"}),
    "kemu.agents.scenario.parse": ({"agents", "kemu.agents.scenario"}, {"protocol"} | LANGUAGE),
    "kemu.agents.scenario.scripted": ({"agents"}, {"kemu.agents.scenario", "kemu.agents.lib", "protocol"}),
}


@pytest.mark.parametrize("module", sorted(LOADED))
def test_what_is_really_loaded(module: str) -> None:
    packages, prefixes = LOADED[module]
    loaded = _loaded_by(module)
    assert module in loaded
    assert [m for m in loaded if m not in packages and not _within(m, prefixes)] == []
