"""``protocol/linux.py`` is the one home of Linux and verbs constants, and its values
are the host's wherever Python's own modules name the same constant."""

from __future__ import annotations

import ast
import errno
import fcntl
import mmap
import os
import select
import signal
import types
from collections.abc import Iterator
from typing import Any

import pytest

from kemu.protocol import linux, ring

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

#: Python modules that define Linux constants under the kernel's names
HOST_MODULES: tuple[types.ModuleType, ...] = (os, fcntl, signal, mmap, select, errno)

#: names whose value differs on purpose from the host Python's, and why
DIFFERS_ON_PURPOSE = {
    # glibc defines O_LARGEFILE as 0 on 64-bit hosts (the kernel forces the flag there);
    # the emulator shows the kernel's bit, as strace does, in F_GETFL and /proc fdinfo
    ("os", "O_LARGEFILE"),
}


def _int_constants() -> dict[str, int]:
    return {name: value for name, value in vars(linux).items()
            if not name.startswith("_") and isinstance(value, int)
            and not isinstance(value, bool)}


def _public_names() -> set[str]:
    """Every name protocol.linux defines for others to use (not the modules it imports)."""
    return {name for name, value in vars(linux).items()
            if not name.startswith("_") and not isinstance(value, types.ModuleType)
            and name != "annotations"}


def test_every_constant_equals_the_hosts_where_python_defines_it() -> None:
    compared: set[str] = set()
    wrong = []
    for name, value in sorted(_int_constants().items()):
        for module in HOST_MODULES:
            if not hasattr(module, name):
                continue
            host = getattr(module, name)
            if (module.__name__, name) in DIFFERS_ON_PURPOSE:
                assert host != value, f"{module.__name__}.{name} agrees now: drop the exception"
                continue
            compared.add(module.__name__)
            if host != value:
                wrong.append(f"linux.{name} = {value:#x}, {module.__name__}.{name} = {host:#x}")
    assert wrong == []
    assert compared == {m.__name__ for m in HOST_MODULES}  # each module is reached


def test_errno_names_are_pythons() -> None:
    assert linux.ERRNO_BY_NAME["ENOSYS"] == errno.ENOSYS == linux.ENOSYS
    for name, code in linux.ERRNO_BY_NAME.items():
        assert getattr(errno, name) == code


def test_wc_status_is_rdma_cores_numbering() -> None:
    values = [s.value for s in linux.WcStatus]
    assert values == list(range(len(values)))  # enum ibv_wc_status counts from 0 in order
    assert linux.WcStatus.IBV_WC_SUCCESS.value == 0
    assert linux.WcStatus.IBV_WC_LOC_PROT_ERR.value == 4
    assert linux.WcStatus.IBV_WC_REM_INV_REQ_ERR.value == 9
    assert linux.WcStatus.IBV_WC_REM_ACCESS_ERR.value == 10


def test_the_ring_encodes_every_status_and_none_as_pending() -> None:
    assert ring.WcStatus is linux.WcStatus
    for status in linux.WcStatus:
        word = ring.STATUS_CODE[status.name]
        assert word == status + 1 and word != ring.PENDING
        assert ring.STATUS_NAME[word] == status.name
    assert ring.PENDING not in ring.STATUS_NAME


def _sources() -> Iterator[str]:
    for package in ("agents", "protocol", "kernel_daemon"):
        for dirpath, _, files in os.walk(os.path.join(ROOT, package)):
            for name in sorted(files):
                path = os.path.join(dirpath, name)
                if name.endswith(".py") and path != os.path.join(ROOT, "protocol", "linux.py"):
                    yield path


def _bound(target: ast.expr) -> Iterator[str]:
    if isinstance(target, ast.Name):
        yield target.id
    elif isinstance(target, ast.Tuple | ast.List):
        for elt in target.elts:
            yield from _bound(elt)
    elif isinstance(target, ast.Starred):
        yield from _bound(target.value)


def _module_level_names(body: list[ast.stmt]) -> Iterator[tuple[int, str]]:
    """Names a module binds at its top level (also in if/try/with/for blocks there):
    assignments, and the names of its classes and functions."""
    for node in body:
        if isinstance(node, ast.Assign):
            for target in node.targets:
                yield from ((node.lineno, n) for n in _bound(target))
        elif isinstance(node, ast.AnnAssign | ast.AugAssign):
            yield from ((node.lineno, n) for n in _bound(node.target))
        elif isinstance(node, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            yield node.lineno, node.name
        else:
            for field in ("body", "orelse", "finalbody", "handlers"):
                inner: Any = getattr(node, field, None)
                if isinstance(inner, list):
                    stmts = [s for s in inner if isinstance(s, ast.stmt)]
                    stmts += [s for h in inner if isinstance(h, ast.ExceptHandler)
                              for s in h.body]
                    yield from _module_level_names(stmts)


def test_nothing_else_defines_a_name_of_protocol_linux() -> None:
    """A constant copied into a module of its own drifts from the one home: import it."""
    ours = _public_names()
    copies = []
    for path in _sources():
        with open(path, encoding="utf-8") as fh:
            tree = ast.parse(fh.read(), path)
        for lineno, name in _module_level_names(tree.body):
            if name in ours:
                copies.append(f"{os.path.relpath(path, ROOT)}:{lineno}: {name}")
    assert copies == []


@pytest.mark.parametrize("source", [
    "F_SETOWN_EX = 15",
    "F_SETOWN, F_GETOWN = 8, 9",
    "if True:\n    SI_SIGIO: int = -5",
    "def errno_name(code):\n    pass",
    "class WcStatus:\n    pass",
])
def test_the_scan_sees_a_copy(source: str) -> None:
    names = {n for _, n in _module_level_names(ast.parse(source).body)}
    assert names & _public_names()
