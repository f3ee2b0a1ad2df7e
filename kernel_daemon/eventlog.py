"""The run's record: every kernel event, in the daemon's total order.

Each event has ``seq`` (the global order), ``t`` (seconds since the daemon started, from
the monotonic clock), ``ev`` (the event name) and the event's fields.  While the daemon
runs, events are appended as msgpack records to ``<path>.msgpack`` (one cheap C call
each, written in 64 KiB blocks); when it stops they are converted to JSON lines at
``<path>``.  If the daemon was killed, ``python -m kemu.kernel_daemon --convert-log PATH``
(or :func:`convert`) does the conversion afterwards.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from typing import IO, Any

import msgpack

#: a flush happens at most this often while the loop is busy (seconds)
FLUSH_INTERVAL = 0.05


class EventLog:
    """Append-only event log; a no-op when ``path`` is None."""

    def __init__(self, path: str | None) -> None:
        self.enabled = path is not None
        self.path = path
        self._fh: IO[bytes] | None = None
        if path is not None:
            self._fh = open(path + ".msgpack", "ab", buffering=1 << 16)  # noqa: SIM115
        #: CLOCK_MONOTONIC when the log started: every ``t`` is relative to it (the boot
        #: event records it as ``clock``, so other processes' records can be aligned)
        self.t0 = time.monotonic()
        self._seq = 0
        self._last_flush = self.t0
        self._pack = msgpack.Packer(use_bin_type=True, unicode_errors="surrogateescape").pack

    def emit(self, ev: str, **fields: Any) -> None:
        """Record event ``ev`` with ``fields`` (ints, strings, bytes, lists, maps)."""
        if self._fh is None:
            return
        self._seq += 1
        fields["seq"] = self._seq
        fields["t"] = round(time.monotonic() - self.t0, 6)
        fields["ev"] = ev
        try:
            self._fh.write(self._pack(fields))
        except (TypeError, ValueError, OverflowError):
            self._fh.write(self._pack(_plain(fields)))

    def flush(self, force: bool = False) -> None:
        """Write buffered records out (when idle, at most every FLUSH_INTERVAL)."""
        if self._fh is None:
            return
        now = time.monotonic()
        if force or now - self._last_flush >= FLUSH_INTERVAL:
            self._fh.flush()
            self._last_flush = now

    def close(self) -> None:
        """Flush, close, and convert the records to JSON lines at ``path``."""
        if self._fh is not None and self.path is not None:
            self._fh.close()
            self._fh = None
            convert(self.path)


def records(path: str) -> Iterator[dict[str, Any]]:
    """The events recorded at ``path`` (from the msgpack file if not yet converted)."""
    raw = path + ".msgpack"
    if os.path.exists(raw):
        with open(raw, "rb") as fh:
            unpacker = msgpack.Unpacker(fh, raw=False, strict_map_key=False,
                                        unicode_errors="surrogateescape")
            try:
                for rec in unpacker:
                    yield _ordered(rec)
            except (ValueError, msgpack.OutOfData):  # a record cut short by a kill
                return
        return
    with open(path) as fh:
        for line in fh:
            yield json.loads(line)


def convert(path: str) -> int:
    """Turn ``path``.msgpack into JSON lines at ``path``; returns the number of events."""
    raw = path + ".msgpack"
    if not os.path.exists(raw):
        return 0
    encoder = json.JSONEncoder(default=_default, separators=(",", ":"))
    n = 0
    with open(path + ".tmp", "w") as out:
        for rec in records(path):
            try:
                out.write(encoder.encode(rec) + "\n")
            except (TypeError, ValueError):
                out.write(encoder.encode(_plain(rec)) + "\n")
            n += 1
    os.replace(path + ".tmp", path)
    os.unlink(raw)
    return n


def _ordered(rec: dict[str, Any]) -> dict[str, Any]:
    head = {"seq": rec.pop("seq", None), "t": rec.pop("t", None), "ev": rec.pop("ev", None)}
    head.update(rec)
    return head


def _plain(value: Any) -> Any:
    """``value`` with every map key made a string and odd values made text."""
    if isinstance(value, dict):
        return {k if isinstance(k, str) else str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, int) and not -(1 << 63) <= value < (1 << 64):
        return str(value)
    if value is None or isinstance(value, str | int | float | bool | bytes):
        return value
    return repr(value)


def _default(value: Any) -> Any:
    if isinstance(value, bytes | bytearray | memoryview):
        b = bytes(value)
        return b.decode("latin-1") if len(b) <= 64 else b[:64].decode("latin-1") + "..."
    return repr(value)
