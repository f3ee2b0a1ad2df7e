"""A safe evaluator for the expressions of scenario lines.

A scenario line's arguments are Python expressions over a small grammar: literals,
Linux constant names (``O_RDWR``), the actor's own variables, actor names, ``|``,
``&``, ``+``, ``-``, ``<<``, ``~``, lists, tuples, subscripts and attribute access on
maps (``mr.rkey`` reads ``mr["rkey"]``).  Nothing else is evaluated: no calls, no
builtins.
"""

from __future__ import annotations

import ast
import operator
from collections.abc import Callable, Mapping
from typing import Any

from kemu.protocol import linux

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


def is_unset(value: Any) -> bool:
    """True for the marker a failed call leaves in its variable."""
    return isinstance(value, dict) and UNSET in value

def evaluate(node: ast.AST, names: Mapping[str, Any],
             actors: Mapping[str, int] | frozenset[str] = frozenset()) -> Any:
    """Evaluate ``node`` with ``names`` (variables) and Linux constants in scope.

    An actor's name evaluates to itself as a string, so ``sendfd(B, fd)`` names B;
    ``B.pid`` is B's PID when ``actors`` maps names to PIDs.
    """
    if isinstance(node, ast.Expression):
        return evaluate(node.body, names, actors)
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.Name):
        if node.id in names:
            return names[node.id]
        if node.id in linux.CONSTANTS:
            return linux.CONSTANTS[node.id]
        if node.id in linux.ERRNO_BY_NAME:
            return linux.ERRNO_BY_NAME[node.id]
        if node.id in actors:
            return node.id
        if node.id in ("None", "True", "False"):
            return {"None": None, "True": True, "False": False}[node.id]
        raise ExprError(f"unknown name {node.id!r}")
    if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
        return _BINOPS[type(node.op)](evaluate(node.left, names, actors),
                                      evaluate(node.right, names, actors))
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _UNARY[type(node.op)](evaluate(node.operand, names, actors))
    if isinstance(node, ast.List | ast.Tuple):
        return [evaluate(e, names, actors) for e in node.elts]
    if isinstance(node, ast.Dict):
        return {evaluate(k, names, actors): evaluate(v, names, actors)
                for k, v in zip(node.keys, node.values, strict=True) if k is not None}
    if isinstance(node, ast.Subscript):
        return evaluate(node.value, names, actors)[evaluate(node.slice, names, actors)]
    if isinstance(node, ast.Attribute):
        if (node.attr == "pid" and isinstance(node.value, ast.Name)
                and node.value.id in actors and node.value.id not in names):
            if not isinstance(actors, Mapping):
                raise ExprError("actor PIDs are known only when the line runs")
            return actors[node.value.id]
        base = evaluate(node.value, names, actors)
        if is_unset(base):
            raise Unset(str(base[UNSET]))
        if isinstance(base, dict) and node.attr in base:
            return base[node.attr]
        raise ExprError(f"no field {node.attr!r}")
    raise ExprError(f"not allowed in a scenario: {ast.unparse(node)!r}")


def check(node: ast.AST) -> None:
    """Refuse, before a run starts, any syntax :func:`evaluate` would refuse."""
    allowed = (ast.Expression, ast.Constant, ast.Name, ast.BinOp, ast.UnaryOp, ast.List,
               ast.Tuple, ast.Dict, ast.Subscript, ast.Attribute, ast.Load, ast.operator,
               ast.unaryop)
    for sub in ast.walk(node):
        if not isinstance(sub, allowed):
            raise ExprError(f"not allowed in a scenario: {ast.unparse(sub)!r}")
        if isinstance(sub, ast.BinOp) and type(sub.op) not in _BINOPS:
            raise ExprError(f"operator not allowed: {ast.unparse(sub)!r}")
