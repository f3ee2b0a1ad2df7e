"""The system-call table, as data.

Every call the daemon answers is registered here with its handler, the Linux function
it follows, a support level and a note.  The dispatcher validates the arguments a
message carries against the handler's annotations before the handler runs, so a
malformed call changes nothing.  ``docs/syscalls.md`` is generated from this table and
a test keeps the two equal (gVisor's habit).
"""

from __future__ import annotations

import inspect
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

Support = Literal["full", "partial", "emulator"]

INT_MIN = -(1 << 63)
INT_MAX = (1 << 64) - 1


class BadArguments(Exception):
    """The message's arguments do not fit the call's signature (a protocol error)."""


@dataclass(frozen=True)
class Syscall:
    """One row of the table."""

    name: str
    handler: Callable[..., Any]
    #: the Linux function the handler follows (``fs/open.c do_sys_open``)
    linux: str
    support: Support
    note: str
    #: parameter names and accepted types, after (kernel, task)
    params: tuple[tuple[str, tuple[type, ...], bool], ...]
    #: the family the call belongs to (the module it lives in)
    family: str
    #: one compiled argument check per parameter
    checks: tuple[Callable[[Any], bool], ...] = ()

    def bind(self, args: list[Any]) -> list[Any]:
        """Check ``args`` against the signature; raises :class:`BadArguments`."""
        if not isinstance(args, list):
            raise BadArguments("args is not a list")
        required = sum(1 for _, _, has_default in self.params if not has_default)
        if not required <= len(args) <= len(self.params):
            raise BadArguments(
                f"{self.name} takes {required}..{len(self.params)} arguments, got {len(args)}"
            )
        for value, check, (pname, types_, _) in zip(args, self.checks, self.params, strict=False):
            if not check(value):
                raise BadArguments(f"{self.name}: {pname} must be {_names(types_)}")
        return args


def _names(types_: tuple[type, ...]) -> str:
    return " or ".join(t.__name__ for t in types_)


def _is_int(value: Any) -> bool:
    return type(value) is int and INT_MIN <= value <= INT_MAX


def _compile(types_: tuple[type, ...]) -> Callable[[Any], bool]:
    """A fast check for the common single-type parameters, the general one otherwise."""
    if types_ == (int,):
        return _is_int
    if types_ == (str,):
        return lambda v: type(v) is str
    if types_ == (bytes,):
        return lambda v: type(v) is bytes
    return lambda v: _accepts(v, types_)


def _accepts(value: Any, types_: tuple[type, ...]) -> bool:
    for t in types_:
        if t is type(None) and value is None:
            return True
        if t is int and isinstance(value, int) and not isinstance(value, bool):
            return INT_MIN <= value <= INT_MAX
        if t is str and isinstance(value, str):
            return True
        if t is bytes and isinstance(value, bytes):
            return True
        if t is list and isinstance(value, list):
            return all(isinstance(v, int) and not isinstance(v, bool) for v in value)
        if t is dict and isinstance(value, dict):
            return True
    return False


def _types_of(annotation: Any) -> tuple[type, ...]:
    origin = typing.get_origin(annotation)
    if origin is typing.Union or origin is types.UnionType:
        out: list[type] = []
        for a in typing.get_args(annotation):
            out.extend(_types_of(a))
        return tuple(out)
    if origin is list:
        return (list,)
    if origin is dict:
        return (dict,)
    if annotation is None:
        return (type(None),)
    if isinstance(annotation, type):
        return (annotation,)
    raise TypeError(f"unsupported syscall parameter annotation {annotation!r}")


SYSCALLS: dict[str, Syscall] = {}


def syscall(
    name: str, *, linux: str, support: Support = "full", note: str = ""
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register a handler ``f(kernel, task, *args)`` as system call ``name``."""

    def register(func: Callable[..., Any]) -> Callable[..., Any]:
        if name in SYSCALLS:
            raise ValueError(f"system call {name} registered twice")
        sig = inspect.signature(func, eval_str=True)
        params = []
        for p in list(sig.parameters.values())[2:]:
            params.append((p.name, _types_of(p.annotation), p.default is not p.empty))
        SYSCALLS[name] = Syscall(
            name=name,
            handler=func,
            linux=linux,
            support=support,
            note=note,
            params=tuple(params),
            family=func.__module__.rsplit(".", 1)[-1],
            checks=tuple(_compile(t) for _, t, _ in params),
        )
        return func

    return register


def render_markdown() -> str:
    """The support page (``docs/syscalls.md``), generated from the table."""
    lines = [
        "# System calls the emulator answers",
        "",
        "Generated from `kernel_daemon/syscalls/table.py` by",
        "`python -m kemu.kernel_daemon --syscall-table`; a test keeps this page equal to the table.",
        "Support: **full** behaves as Linux does (and is checked against the host where the",
        "host has it); **partial** says what is missing; **emulator** is a call of the",
        "emulator's own (registration, introspection) with no Linux counterpart.",
        "",
    ]
    families: dict[str, list[Syscall]] = {}
    for sc in SYSCALLS.values():
        families.setdefault(sc.family, []).append(sc)
    for family in sorted(families):
        lines += [f"## {family}", "", "| call | arguments | follows | support | note |"]
        lines += ["|---|---|---|---|---|"]
        for sc in sorted(families[family], key=lambda s: s.name):
            args = ", ".join(n + ("?" if d else "") for n, _, d in sc.params)
            lines.append(f"| `{sc.name}` | {args} | `{sc.linux}` | {sc.support} | {sc.note} |")
        lines.append("")
    return "\n".join(lines)
