"""The kernel daemon's settings: one dataclass, the single source of their defaults.

Both sides read it: the daemon builds its command line from it
(``python -m kemu.kernel_daemon --help``), the launcher's ``start_daemon`` turns a
:class:`DaemonConfig` into that command line, and a scenario's ``set NAME = VALUE``
lines are checked against :data:`SETTINGS` before any process starts.  A setting
added here appears in all three places.
"""

from __future__ import annotations

import math
from dataclasses import MISSING, dataclass, field, fields
from typing import Any

#: filesystem flavours the daemon emulates (what breaks a layout lease differs)
FLAVOURS = ("xfs", "ext4")
#: the design a daemon runs when none is named
DEFAULT_POLICY = "upstream"
#: where a daemon writes every thread's stack when sent SIGUSR2 (in its run folder)
STACKS_FILE = "kernel-stacks.txt"


def _setting(default: Any, help: str, *, flag: str | None = None,
             scenario: str | None = None, minimum: float | None = None) -> Any:
    """A field with its command-line flag, its scenario ``set`` name and its bounds."""
    meta = {"help": help, "flag": flag, "scenario": scenario, "minimum": minimum}
    return field(default=default, metadata=meta)


@dataclass
class DaemonConfig:
    """Daemon settings.  Every field has its meaning, command-line flag and, where a
    scenario may set it, its ``set`` name in the field's metadata."""

    run_dir: str = _setting("", "directory for the sockets and the event log",
                            flag="--run-dir")
    nblocks: int = _setting(1024, "pmem device size in blocks", flag="--blocks",
                            scenario="blocks", minimum=1)
    block_size: int = _setting(4096, "pmem block size in bytes (a multiple of 512)",
                               flag="--block-size", scenario="block_size", minimum=512)
    lease_break_time: float = _setting(
        45.0, "seconds a lease holder gets before a break is forced "
              "(/proc/sys/fs/lease-break-time); 0: never forced",
        flag="--lease-break-time", scenario="lease_break_time", minimum=0)
    policy: str = _setting(DEFAULT_POLICY, "the kernel design: a name, or PATH.py[:Class] "
                                           "of a Policy subclass", flag="--policy")
    flavour: str = _setting("xfs", "filesystem flavour: " + ", ".join(FLAVOURS) + " (what "
                            "breaks a layout lease; the largest file: xfs 2^63 - 1 bytes, "
                            "ext4 (2^32 - 1) blocks)",
                            flag="--flavour", scenario="flavour")
    pmem_name: str | None = _setting(None, "shared-memory name of the device (default: random)",
                                     flag="--pmem-name")
    event_log: str | None = _setting(None, "write the JSON-lines event log here",
                                     flag="--event-log")
    event_log_max: int = _setting(
        64 << 20, "bytes the run's kernel event log holds at most; then one log-full "
                  "record says where it stopped, and later events are only counted",
        flag="--event-log-max", scenario="event_log_max", minimum=4096)
    fork_claim_timeout: float = _setting(
        10.0, "seconds a fork snapshot waits for its child after the parent died",
        flag="--fork-claim-timeout", scenario="fork_claim_timeout", minimum=0)
    dio_time: float = _setting(0.5, "seconds a direct-I/O transfer keeps its buffer pinned",
                               flag="--dio-time", scenario="dio_time", minimum=0)
    max_unregistered: int = _setting(
        64, "control connections held at once for processes that did not register "
            "(more are shut down)", flag="--max-unregistered", minimum=1)

    def validate(self) -> None:
        """Raise ``ValueError`` naming the setting that is out of range."""
        for f in fields(self):
            value = getattr(self, f.name)
            minimum = f.metadata.get("minimum")
            if minimum is not None and isinstance(value, int | float):
                if isinstance(value, float) and not math.isfinite(value):
                    raise ValueError(f"{f.name} must be a finite number, not {value}")
                if value < minimum:
                    raise ValueError(f"{f.name} must be at least {minimum}, not {value}")
        if self.block_size % 512:
            raise ValueError(f"block_size must be a multiple of 512, not {self.block_size}")
        if self.flavour not in FLAVOURS:
            raise ValueError(f"flavour must be one of {', '.join(FLAVOURS)}, "
                             f"not {self.flavour!r}")

    def argv(self) -> list[str]:
        """The ``python -m kemu.kernel_daemon`` options that give this configuration."""
        out: list[str] = []
        for f in fields(self):
            value = getattr(self, f.name)
            flag = f.metadata.get("flag")
            if flag is None or value is None or value == "":
                continue
            out += [flag, str(value)]
        return out


def defaults() -> dict[str, Any]:
    """Every field's default, by field name."""
    return {f.name: f.default for f in fields(DaemonConfig) if f.default is not MISSING}


#: scenario setting name -> (field name, type): what ``set NAME = VALUE`` may say
SETTINGS: dict[str, tuple[str, type]] = {
    f.metadata["scenario"]: (f.name, int if f.type in ("int", int) else
                             float if f.type in ("float", float) else str)
    for f in fields(DaemonConfig) if f.metadata.get("scenario")
}
