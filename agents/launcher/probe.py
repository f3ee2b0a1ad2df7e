"""``python -m kemu.agents.launcher.probe``: print what this process inherited, as JSON.

The kernel's view of everything a started program can observe of how it was started:
its descriptors (target and open flags from ``/proc/self/fdinfo``), signal mask,
ignored, caught and pending signals (``/proc/self/status``), credentials, umask,
process group and session, environment, resource limits, working directory and
``sys.argv[0]``.  ``tests/test_zygote.py`` runs it once with ``subprocess.Popen`` and
once forked from a zygote and requires the two to be equal.
"""

from __future__ import annotations

import json
import os
import resource
import sys
from typing import Any

STATUS_KEYS = ("SigBlk", "SigIgn", "SigCgt", "SigPnd", "ShdPnd", "Uid", "Gid", "Groups",
               "Umask", "NoNewPrivs", "Seccomp", "CapInh", "CapPrm", "CapEff", "CapBnd",
               "CapAmb", "Cpus_allowed_list")


def state() -> dict[str, Any]:
    """This process's inherited state (see the module docstring)."""
    fds: dict[str, Any] = {}
    for name in sorted(os.listdir("/proc/self/fd"), key=int):
        try:
            target = os.readlink(f"/proc/self/fd/{name}")
            with open(f"/proc/self/fdinfo/{name}") as fh:
                info = dict(line.split(":", 1) for line in fh.read().splitlines() if ":" in line)
        except OSError:  # the descriptor listdir itself used
            continue
        fds[name] = {"target": target, "flags": info.get("flags", "").strip()}
    with open("/proc/self/status") as fh:
        status = {k: v.strip() for k, _, v in (line.partition(":")
                                               for line in fh.read().splitlines())}
    limits = {}
    for attr in dir(resource):
        if attr.startswith("RLIMIT_"):
            limits[attr] = list(resource.getrlimit(getattr(resource, attr)))
    with open("/proc/self/oom_score_adj") as fh:
        oom = fh.read().strip()
    return {
        "fds": fds,
        "status": {k: status.get(k) for k in STATUS_KEYS},
        "sid": os.getsid(0),
        "pgid": os.getpgrp(),
        "env": dict(os.environ),
        "rlimits": limits,
        "cwd": os.getcwd(),
        "argv0": sys.argv[0],
        "nice": os.nice(0),
        "oom_score_adj": oom,
    }


def main(argv: list[str] | None = None) -> int:
    """Print :func:`state` as one JSON line on standard output."""
    sys.stdout.write(json.dumps(state(), sort_keys=True) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
