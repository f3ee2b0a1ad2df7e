"""The kernel designs a daemon can run, as the launcher sees them.

The launcher never imports the daemon: it asks ``python -m kemu.kernel_daemon --describe``
(forked from its zygote, :mod:`kemu.agents.launcher.zygote`)
for the built-in designs and flavours (what a daemon's welcome advertises) and
``--check-policy SPEC`` to load a design from a user's file, so a bad file is refused
with its file and line before any process of a run starts.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class DesignError(Exception):
    """A design cannot be run: unknown name, or a file that does not load."""


def daemon_env() -> dict[str, str]:
    """The environment a daemon process runs in (this checkout on its path)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def _ask(*args: str) -> subprocess.CompletedProcess[str]:
    """``python -m kemu.kernel_daemon ARGS``, forked from the launcher's zygote."""
    from kemu.agents.launcher import zygote

    return zygote.run("kemu.kernel_daemon.__main__", list(args), env=daemon_env())


@functools.cache
def describe() -> dict[str, Any]:
    """``{"policies": [...], "flavours": [...]}`` as the daemon advertises them."""
    out = _ask("--describe")
    if out.returncode != 0:
        raise DesignError(f"the kernel daemon cannot start: {out.stderr.strip()}")
    info: dict[str, Any] = json.loads(out.stdout)
    return info


def builtin() -> list[str]:
    """The built-in designs, in the order the matrix shows them."""
    return list(describe()["policies"])


@functools.cache
def _check(spec: str) -> dict[str, Any]:
    if spec in builtin():
        return {"name": spec, "promises": describe()["promises"][spec]}
    out = _ask("--check-policy", spec)
    if out.returncode != 0:
        raise DesignError(out.stderr.strip().removeprefix("kernel_daemon: "))
    info: dict[str, Any] = json.loads(out.stdout)
    return info


def is_file_spec(spec: str) -> bool:
    """Does ``spec`` name a design file (``PATH.py[:Class]``) rather than a design?"""
    return spec.partition(":")[0].endswith(".py") or os.sep in spec


def resolve(spec: str) -> str:
    """The name of the design ``spec`` names (a built-in name, or ``PATH.py[:Class]``);
    :class:`DesignError` with the daemon's message (file and line) if it cannot load."""
    return str(_check(spec)["name"])


def promises(spec: str) -> set[str]:
    """What the design promises (``Promise`` names: ``NO_FOREIGN_WRITE_LONGTERM``...)."""
    return set(_check(spec)["promises"])
