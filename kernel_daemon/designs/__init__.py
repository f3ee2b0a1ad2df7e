"""The built-in kernel designs, each in its own file written against
:mod:`kemu.kernel_daemon.policy` alone.

Every module of this package is a design file: :data:`BUILTIN` collects the
``Policy`` subclasses they define (in file-name order, then in the order of their
definition), so adding a built-in design is adding its file.
:func:`kemu.kernel_daemon.boot.load_policy` also loads a design from a user's file by path.
``docs/designs.md`` describes each one.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys

from kemu.kernel_daemon.policy import HOOKS, Lease, Policy


def _discover() -> dict[str, type[Policy]]:
    found: dict[str, type[Policy]] = {}
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        module = importlib.import_module(f"{__name__}.{info.name}")
        # vars() keeps the order of definition; imported classes belong to other modules
        classes = [c for c in vars(module).values() if isinstance(c, type)
                   and issubclass(c, Policy) and c is not Policy
                   and c.__module__ == module.__name__]
        for cls in classes:
            if cls.name in found:
                raise ValueError(f"two designs are called {cls.name!r}")
            found[cls.name] = cls
    return found


#: every built-in design by name
BUILTIN: dict[str, type[Policy]] = _discover()

__all__ = ["BUILTIN", "overrides", "render_hook_table"]


def overrides(cls: type[Policy]) -> list[str]:
    """The interface points ``cls`` changes (methods overridden, class settings set)."""
    out = [h for h in HOOKS if getattr(cls, h) is not getattr(Policy, h)]
    if cls.map_flags:
        out.append("map_flags")
    return out


def lease_types(cls: type[Policy]) -> list[str]:
    """The lease types the design's module defines, each with the lease-manager
    operations it overrides: ``MrHeldLease(lm_break, lm_expire)``."""
    module = sys.modules[cls.__module__]
    out = []
    for name, obj in sorted(vars(module).items()):
        if (isinstance(obj, type) and issubclass(obj, Lease) and obj.__module__ == module.__name__):
            ops = [op for op in ("lm_break", "lm_expire") if getattr(obj, op) is not getattr(Lease, op)]
            out.append(f"{name}({', '.join(ops)})" if ops else name)
    return out


def render_hook_table() -> str:
    """The hook × design table of ``docs/designs.md``, from the built-in designs: a cell
    is ``x`` where the design overrides the point, blank where it keeps Linux's; then
    the lease types it defines and what it promises."""
    points = [*HOOKS, "map_flags"]
    head = "| design | " + " | ".join(f"`{p}`" for p in points) + " | lease types | promises |"
    rule = "|---|" + "---|" * len(points) + "---|---|"
    rows = [head, rule]
    for name, cls in BUILTIN.items():
        changed = set(overrides(cls))
        promises = ", ".join(sorted(p.value for p in cls.promises)) or "none"
        leases = ", ".join(f"`{t}`" for t in lease_types(cls)) or " "
        rows.append(f"| `{name}` | " + " | ".join("x" if p in changed else " " for p in points)
                    + f" | {leases} | {promises} |")
    return "\n".join(rows)
