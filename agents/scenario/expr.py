"""A safe evaluator for the expressions of scenario lines.

A scenario line's arguments are Python expressions over a small grammar: literals,
Linux constant names (``O_RDWR``), the actor's own variables, actor names, ``|``,
``&``, ``+``, ``-``, ``<<``, ``~``, lists, tuples, subscripts and attribute access on
maps (``mr.rkey`` reads ``mr["rkey"]``).  Nothing else is evaluated: no calls, no
builtins.

Whatever an expression does wrong is an :class:`ExprError` with a message, never a
Python exception of its own: a division by zero, an unhashable map key, a shift or a
repetition that would build a value no system call takes (more than ``MAX_SHIFT`` bits
of shift, ``MAX_VALUE`` bytes or items), an expression nested deeper than ``MAX_DEPTH``.
"""

from __future__ import annotations

import ast
import contextlib
import operator
from collections.abc import Callable, Mapping
from typing import Any

from kemu.protocol import linux

#: the largest shift count (``1 << 64`` is the largest a 64-bit argument needs)
MAX_SHIFT = 4096
#: the largest string, bytes or list a repetition (``"x" * n``) may build
MAX_VALUE = 64 << 20
#: the deepest an expression may nest (Python's parser allows 200 parentheses)
MAX_DEPTH = 200

_BINOPS: dict[type[ast.operator], Callable[[Any, Any], Any]] = {
    ast.BitOr: operator.or_, ast.BitAnd: operator.and_, ast.BitXor: operator.xor,
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
    ast.LShift: operator.lshift, ast.RShift: operator.rshift, ast.FloorDiv: operator.floordiv,
}
_UNARY: dict[type[ast.unaryop], Callable[[Any], Any]] = {
    ast.USub: operator.neg, ast.Invert: operator.invert, ast.UAdd: operator.pos,
}


class ExprError(Exception):
    """An expression uses something the scenario grammar does not allow, or a name
    that is neither a variable, a constant nor an actor."""


class Unset(ExprError):
    """A value was needed from a variable whose call failed (``mr.rkey`` after
    ``ibv_reg_mr`` failed): the line is skipped, not failed."""


UNSET = "__unset__"


def _elf_pause() -> bytes:
    """A 129-byte x86-64 ELF executable (one PT_LOAD segment, no libc) that calls
    pause(2) in a loop: a program that runs until a signal ends it."""
    import struct

    base, entry = 0x400000, 64 + 56
    code = b"\xb8\x22\x00\x00\x00\x0f\x05\xeb\xf7"  # mov eax, 34 (pause); syscall; jmp
    size = entry + len(code)
    ehdr = (b"\x7fELF\x02\x01\x01" + bytes(9)
            + struct.pack("<HHIQQQIHHHHHH", 2, 0x3E, 1, base + entry, 64, 0, 0, 64, 56, 1,
                          0, 0, 0))
    phdr = struct.pack("<IIQQQQQQ", 1, 5, 0, base, base, size, size, 0x1000)
    return ehdr + phdr + code


#: values a scenario may name besides Linux's constants: ``ELF_PAUSE``, the bytes of a
#: program file to ``write`` and ``exec`` (a running executable)
BUILTINS: dict[str, Any] = {"ELF_PAUSE": _elf_pause()}


def is_unset(value: Any) -> bool:
    """True for the marker a failed call leaves in its variable."""
    return isinstance(value, dict) and UNSET in value

def _lshift(a: Any, b: Any) -> Any:
    if isinstance(b, int) and b > MAX_SHIFT:
        raise ExprError(f"shift count {b} is more than {MAX_SHIFT}")
    return operator.lshift(a, b)


def _mul(a: Any, b: Any) -> Any:
    for seq, n in ((a, b), (b, a)):
        if isinstance(seq, str | bytes | list | tuple) and isinstance(n, int) \
                and len(seq) * n > MAX_VALUE:
            raise ExprError(f"a repetition of {len(seq) * n} items is more than {MAX_VALUE}")
    return operator.mul(a, b)


_BINOPS[ast.LShift] = _lshift
_BINOPS[ast.Mult] = _mul


def evaluate(node: ast.AST, names: Mapping[str, Any],
             actors: Mapping[str, int] | frozenset[str] = frozenset()) -> Any:
    """Evaluate ``node`` with ``names`` (variables) and Linux constants in scope.

    An actor's name evaluates to itself as a string, so ``sendfd(B, fd)`` names B;
    ``B.pid`` is B's PID when ``actors`` maps names to PIDs.  What goes wrong is an
    :class:`ExprError` (see the module docstring).
    """
    _check_depth(node)
    try:
        return _evaluate(node, names, actors)
    except (ArithmeticError, TypeError, ValueError, KeyError, IndexError) as exc:
        raise ExprError(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
                        ) from None
    except (RecursionError, MemoryError):
        raise ExprError("the expression is too large to evaluate") from None


def _check_depth(node: ast.AST) -> None:
    """Refuse an expression nested deeper than ``MAX_DEPTH`` (without recursion)."""
    todo = [(node, 1)]
    while todo:
        sub, depth = todo.pop()
        if depth > MAX_DEPTH:
            raise ExprError(f"the expression nests deeper than {MAX_DEPTH} levels")
        todo.extend((child, depth + 1) for child in ast.iter_child_nodes(sub))


def _evaluate(node: ast.AST, names: Mapping[str, Any],
              actors: Mapping[str, int] | frozenset[str]) -> Any:
    if isinstance(node, ast.Expression):
        return _evaluate(node.body, names, actors)
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.Name):
        if node.id in names:
            return names[node.id]
        if node.id in linux.CONSTANTS:
            return linux.CONSTANTS[node.id]
        if node.id in linux.ERRNO_BY_NAME:
            return linux.ERRNO_BY_NAME[node.id]
        if node.id in BUILTINS:
            return BUILTINS[node.id]
        if node.id in actors:
            return node.id
        if node.id in ("None", "True", "False"):
            return {"None": None, "True": True, "False": False}[node.id]
        raise ExprError(f"unknown name {node.id!r}")
    if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
        return _BINOPS[type(node.op)](_evaluate(node.left, names, actors),
                                      _evaluate(node.right, names, actors))
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _UNARY[type(node.op)](_evaluate(node.operand, names, actors))
    if isinstance(node, ast.List | ast.Tuple):
        return [_evaluate(e, names, actors) for e in node.elts]
    if isinstance(node, ast.Dict):
        return {_evaluate(k, names, actors): _evaluate(v, names, actors)
                for k, v in zip(node.keys, node.values, strict=True) if k is not None}
    if isinstance(node, ast.Subscript):
        return _evaluate(node.value, names, actors)[_evaluate(node.slice, names, actors)]
    if isinstance(node, ast.Attribute):
        if (node.attr == "pid" and isinstance(node.value, ast.Name)
                and node.value.id in actors and node.value.id not in names):
            if not isinstance(actors, Mapping):
                raise ExprError("actor PIDs are known only when the line runs")
            return actors[node.value.id]
        base = _evaluate(node.value, names, actors)
        if is_unset(base):
            raise Unset(str(base[UNSET]))
        if isinstance(base, dict) and node.attr in base:
            return base[node.attr]
        raise ExprError(f"no field {node.attr!r}")
    raise ExprError(f"not allowed in a scenario: {ast.unparse(node)!r}")


class _Dynamic(Exception):
    """The expression reads a variable (or an actor): known only when its line runs."""


class _Variables(Mapping[str, Any]):
    """Every name that is not a constant, as a variable whose value is not known yet."""

    def __contains__(self, key: object) -> bool:
        return not (key in linux.CONSTANTS or key in linux.ERRNO_BY_NAME
                    or key in BUILTINS or key in ("None", "True", "False"))

    def __getitem__(self, key: str) -> Any:
        raise _Dynamic(key)

    def __iter__(self) -> Any:
        return iter(())

    def __len__(self) -> int:
        return 0


def check_static(node: ast.AST) -> None:
    """Evaluate, before a run starts, what of ``node`` needs no variable: ``1 // 0`` or
    ``1 << (1 << 40)`` is refused when the file is read (:class:`ExprError`), not when
    the actor runs the line.  What reads a variable is left to the line."""
    check(node)
    with contextlib.suppress(_Dynamic):
        evaluate(node, _Variables())


def check(node: ast.AST) -> None:
    """Refuse, before a run starts, any syntax :func:`evaluate` would refuse."""
    _check_depth(node)
    allowed = (ast.Expression, ast.Constant, ast.Name, ast.BinOp, ast.UnaryOp, ast.List,
               ast.Tuple, ast.Dict, ast.Subscript, ast.Attribute, ast.Load, ast.operator,
               ast.unaryop)
    for sub in ast.walk(node):
        if not isinstance(sub, allowed):
            raise ExprError(f"not allowed in a scenario: {ast.unparse(sub)!r}")
        if isinstance(sub, ast.BinOp) and type(sub.op) not in _BINOPS:
            raise ExprError(f"operator not allowed: {ast.unparse(sub)!r}")
