"""The design interface: designs load from files, the docs say what the code does, and
the kernel's layering keeps designs plug-ins.

The scenario-level checks (a design from a temporary directory gets its own matrix
column, busy-extent under the thread scenarios) are in ``tests/test_matrix.py``.
"""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from kemu.kernel_daemon.boot import PolicyLoadError, describe, load_policy
from kemu.kernel_daemon.designs import BUILTIN, render_hook_table
from kemu.kernel_daemon.policy import HOOKS, Policy

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "designs.md"


def _daemon(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "kemu.kernel_daemon", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=30, check=False)


# --- loading a design from a file ------------------------------------------------------


def test_builtin_names_and_the_welcome_agree() -> None:
    assert list(BUILTIN) == describe()["policies"]
    assert describe()["promises"]["upstream"] == ["NO_FOREIGN_WRITE_LONGTERM",
                                                  "NO_FOREIGN_WRITE_SHORTTERM"]
    assert "busy-extent" in BUILTIN and len(BUILTIN) == 8  # discovered, no registry
    for name, cls in BUILTIN.items():
        assert load_policy(name) is cls and cls.name == name


def test_a_design_loads_from_a_file_by_path(tmp_path: Path) -> None:
    path = tmp_path / "mine.py"
    path.write_text("from kernel_daemon.policy import Policy\n\n"
                    "class Mine(Policy):\n    name = 'mine'\n")
    cls = load_policy(str(path))
    assert issubclass(cls, Policy) and cls.name == "mine"
    assert load_policy(f"{path}:Mine") is not None
    out = _daemon("--check-policy", str(path))
    assert out.returncode == 0 and json.loads(out.stdout) == {"name": "mine", "promises": []}


@pytest.mark.parametrize(("text", "expect"), [
    (None, r"no such design file"),
    ("x = 1\n", r":1: defines no subclass of kernel_daemon.policy.Policy"),
    ("from kernel_daemon.policy import Policy\n\n\nraise RuntimeError('boom')\n",
     r":4: RuntimeError: boom"),
    ("def f(:\n", r":1: "),
    ("from kernel_daemon.policy import Policy\nclass A(Policy):\n    name = 'a'\n"
     "class B(Policy):\n    name = 'b'\n", r"several Policy subclasses \(A, B\)"),
    ("from kernel_daemon.policy import Policy\nclass A(Policy):\n    pass\n",
     r":2: A needs a name"),
], ids=["missing", "no-policy", "raises", "syntax", "ambiguous", "nameless"])
def test_a_bad_design_file_is_refused_with_file_and_line(
        tmp_path: Path, text: str | None, expect: str) -> None:
    path = tmp_path / "bad.py"
    if text is not None:
        path.write_text(text)
    with pytest.raises(PolicyLoadError, match=expect) as info:
        load_policy(str(path))
    assert str(path) in str(info.value)
    out = _daemon("--check-policy", str(path))
    assert out.returncode == 2 and str(path) in out.stderr, out.stderr
    assert "Traceback" not in out.stderr


def test_an_unknown_name_lists_the_known_ones() -> None:
    with pytest.raises(PolicyLoadError, match="known: busy-extent, layout-lease"):
        load_policy("no-such-design")
    out = _daemon("--run-dir", "/nonexistent/never", "--policy", "nosuch")
    assert out.returncode == 2 and "known:" in out.stderr and "Traceback" not in out.stderr


def test_a_class_can_be_named_when_the_file_has_several(tmp_path: Path) -> None:
    path = tmp_path / "two.py"
    path.write_text("from kernel_daemon.policy import Policy\nclass A(Policy):\n    name = 'a'\n"
                    "class B(Policy):\n    name = 'b'\n")
    assert load_policy(f"{path}:B").name == "b"
    with pytest.raises(PolicyLoadError, match="no Policy subclass named 'C'"):
        load_policy(f"{path}:C")


# --- the docs say what the code does ---------------------------------------------------


def test_the_hook_table_in_the_docs_is_generated_from_the_code() -> None:
    text = DOC.read_text()
    table = text.split("<!-- hook-table:begin -->\n")[1].split("<!-- hook-table:end -->")[0]
    assert table.strip() == render_hook_table(), "regenerate the table in docs/designs.md"


def test_every_interface_point_is_documented() -> None:
    text = DOC.read_text()
    section = text.split("## Writing your own design")[1].split("\n## ")[0]
    for hook in HOOKS:
        assert f"`{hook}(" in section, f"{hook} is missing from docs/designs.md"
        assert getattr(Policy, hook).__doc__, f"Policy.{hook} has no docstring"
    for name in BUILTIN:
        assert f"## `{name}`" in text, f"docs/designs.md has no section for {name}"


def test_the_worked_example_is_the_file_it_names() -> None:
    text = DOC.read_text()
    shown = text.split("```python\n")[1].split("```")[0]
    assert shown == (ROOT / "docs" / "examples" / "refuse_truncate.py").read_text()
    assert load_policy(str(ROOT / "docs" / "examples" / "refuse_truncate.py")).name == \
        "refuse-pinned-truncate"


# --- layering: the core does not construct its plug-ins --------------------------------


def _runtime_imports(path: Path) -> set[str]:
    """Modules ``path`` imports when it runs (``if TYPE_CHECKING:`` blocks skipped)."""
    tree = ast.parse(path.read_text(), str(path))
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip.update(id(n) for child in node.body for n in ast.walk(child))
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)
    return found


def test_only_the_root_and_the_daemon_import_the_families_and_the_designs() -> None:
    package = ROOT / "kernel_daemon"
    allowed = {"boot.py", "daemon.py", "__main__.py"}
    plugins = re.compile(r"^kernel_daemon\.(syscalls|policy|designs)(\.|$)")
    for path in package.rglob("*.py"):
        rel = path.relative_to(package)
        if rel.parts[0] in ("syscalls", "designs") or str(rel) in allowed:
            continue
        bad = sorted(m for m in _runtime_imports(path) if plugins.match(m))
        if str(rel) == "policy.py":
            assert not bad, f"the interface imports plug-ins: {bad}"
            continue
        assert not bad, f"kernel_daemon/{rel} imports {bad}: only boot and daemon may"


def test_designs_import_only_the_interface() -> None:
    for path in (ROOT / "kernel_daemon" / "designs").glob("*.py"):
        if path.name == "__init__.py":
            continue
        ours = {m for m in _runtime_imports(path) if m.startswith("kernel_daemon")}
        allowed = re.compile(r"^kernel_daemon\.(policy|designs\.layout_lease)(\.|$)")
        assert all(allowed.match(m) for m in ours), f"{path.name} imports {sorted(ours)}"
    busy = ROOT / "kernel_daemon" / "designs" / "busy_extent.py"
    assert {m for m in _runtime_imports(busy) if m.startswith("kernel_daemon")} <= {
        "kemu.kernel_daemon.policy", *(f"kernel_daemon.policy.{n}" for n in
                                  ("Kernel", "Owner", "Policy", "Promise"))}


def test_kernel_state_is_typed() -> None:
    """No string-keyed bag of kernel state is left (the ext dicts are gone)."""
    for path in (ROOT / "kernel_daemon").rglob("*.py"):
        text = path.read_text()
        assert not re.search(r"\.ext\b", text), f"{path} uses an ext bag"
        tree = ast.parse(text)
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef):
                for stmt in node.body:
                    if isinstance(stmt, ast.AnnAssign) and \
                            ast.unparse(stmt.annotation) == "dict[str, Any]":
                        raise AssertionError(f"{path}: {node.name} holds a dict[str, Any]")


def test_the_daemon_defaults_come_from_one_config() -> None:
    from kemu.protocol.config import DaemonConfig, defaults

    out = _daemon("--help")
    assert out.returncode == 0
    for name, value in defaults().items():
        if value not in (None, ""):
            assert f"(default: {value})" in " ".join(out.stdout.split()), name
    assert DaemonConfig().policy == "upstream"
    with pytest.raises(ValueError, match="lease_break_time"):
        DaemonConfig(lease_break_time=float("nan")).validate()
    with pytest.raises(ValueError, match="flavour"):
        DaemonConfig(flavour="zfs").validate()
