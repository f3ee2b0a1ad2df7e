"""The run's record: every kernel event as a JSON line, in the daemon's total order.

Each line has ``seq`` (the global order), ``t`` (seconds since the daemon started, from
the monotonic clock), ``ev`` (the event name) and the event's fields.  The writes are
buffered and flushed whenever the loop goes idle, so logging costs no system call per
event.
"""

from __future__ import annotations

import json
import time
from typing import IO, Any


class EventLog:
    """Append-only JSON-lines event log; a no-op when ``path`` is None."""

    def __init__(self, path: str | None) -> None:
        self.enabled = path is not None
        self._fh: IO[str] | None = open(path, "a", buffering=1 << 16) if path else None  # noqa: SIM115
        self._t0 = time.monotonic()
        self._seq = 0

    def emit(self, ev: str, **fields: Any) -> None:
        """Record event ``ev`` with ``fields`` (JSON-serialisable; bytes shown as hex)."""
        if self._fh is None:
            return
        self._seq += 1
        rec = {"seq": self._seq, "t": round(time.monotonic() - self._t0, 6), "ev": ev}
        rec.update(fields)
        try:
            line = json.dumps(rec, default=_default, separators=(",", ":"))
        except (TypeError, ValueError):  # map keys that are not strings, and the like
            line = json.dumps(_plain(rec), default=_default, separators=(",", ":"))
        self._fh.write(line + "\n")

    def flush(self) -> None:
        """Push buffered lines to the file (called when the loop goes idle)."""
        if self._fh is not None:
            self._fh.flush()

    def close(self) -> None:
        """Flush and close."""
        if self._fh is not None:
            self._fh.close()
            self._fh = None


def _plain(value: Any) -> Any:
    """``value`` with every map key made a string, for JSON."""
    if isinstance(value, dict):
        return {str(k) if not isinstance(k, str) else k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def _default(value: Any) -> Any:
    if isinstance(value, bytes | bytearray | memoryview):
        b = bytes(value)
        return b.decode("latin-1") if len(b) <= 64 else b[:64].decode("latin-1") + "..."
    return repr(value)
