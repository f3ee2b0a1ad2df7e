"""The run's record: every kernel event, in the daemon's total order.

Each event has ``seq`` (the global order), ``t`` (seconds since the daemon started, from
the monotonic clock), ``ev`` (the event name) and the event's fields.  While the daemon
runs, events are appended as msgpack records to ``<path>.msgpack`` (one cheap C call
each); when it stops they are converted to JSON lines at ``<path>``.  If the daemon was
killed, ``python -m kemu.kernel_daemon --convert-log PATH`` (or :func:`convert`) does the
conversion afterwards.

The records are copied into a shared mapping of the file (``MAP_SHARED``), not into a
buffer of the process: a store into it is in the page cache at once, so a daemon that
dies of anything, SIGKILL included, leaves every record it wrote, without a system call
per record or per wake-up.  The file grows in ``CHUNK`` steps (``ftruncate`` and
``mremap``); until the daemon's clean stop cuts it to its length, the file ends with
zero bytes, where a reader stops (a record is a msgpack map whose last field is the
event's name: it neither starts nor ends with a zero byte).

The log is bounded: past ``max_bytes`` (``--event-log-max``) one ``log-full`` record
says where it stopped and later events are only counted; a file system that cannot
hold it (ENOSPC, a file-size limit) stops it the same way, with ``log-full``'s
``why``.  The clean stop appends ``log-dropped`` with the count.  The kernel runs on
either way: a full disk is an error of the run's record, never of the kernel.
"""

from __future__ import annotations

import contextlib
import json
import mmap
import os
import time
from collections.abc import Iterator
from typing import Any

import msgpack

#: the file grows by at least this much at a time (bytes)
CHUNK = 1 << 20
#: the default cap of one run's kernel log (bytes of msgpack records)
MAX_BYTES = 64 << 20
#: room kept past the cap for the ``log-full`` and ``log-dropped`` notes
NOTE_ROOM = 4096
#: bytes of a payload (a write's data, a datagram) a record keeps: the first 64, then
#: ``...`` (what the JSON conversion showed of it anyway); a record packed larger than
#: BIG_RECORD is looked through for such payloads, smaller ones cost nothing more
PAYLOAD = 64
BIG_RECORD = 4096


class EventLog:
    """Append-only event log; a no-op when ``path`` is None."""

    def __init__(self, path: str | None, max_bytes: int = MAX_BYTES) -> None:
        self.enabled = path is not None
        self.path = path
        #: bytes of records the log holds at most (then ``log-full``, and events dropped)
        self.max_bytes = max_bytes
        self._fd = -1
        self._map: mmap.mmap | None = None
        #: bytes of records in the file; its mapped size
        self._len = self._size = 0
        if path is not None:
            # the run's record is the user's alone (mode 0600, as every log of the run)
            self._fd = os.open(path + ".msgpack", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            self._len = _length(self._fd)  # appended to, as a file opened "ab" would be
            self._size = _chunked(self._len + 1)
            try:
                _reserve(self._fd, self._len, self._size)
                os.ftruncate(self._fd, self._size)
                self._map = mmap.mmap(self._fd, self._size)
            except OSError:  # no room for even the first chunk: the kernel runs unlogged
                os.close(self._fd)
                self._fd = -1
        #: CLOCK_MONOTONIC when the log started: every ``t`` is relative to it (the boot
        #: event records it as ``clock``, so other processes' records can be aligned)
        self.t0 = time.monotonic()
        self._seq = 0
        #: records dropped: past ``max_bytes``, or the file system could not hold them
        self.dropped = 0
        #: the ``log-full`` note was written (the log takes nothing more)
        self.full = False
        self._pack = msgpack.Packer(use_bin_type=True, unicode_errors="surrogateescape").pack

    def emit(self, ev: str, **fields: Any) -> None:
        """Record event ``ev`` with ``fields`` (ints, strings, bytes, lists, maps)."""
        if self._map is None:
            return
        if self.full:
            self.dropped += 1
            return
        self._seq += 1
        fields["seq"] = self._seq
        fields["t"] = round(time.monotonic() - self.t0, 6)
        fields["ev"] = ev
        try:
            data = self._pack(fields)
        except (TypeError, ValueError, OverflowError):
            data = self._pack(_plain(fields))
        if len(data) > BIG_RECORD:  # never a payload whole: 1 MiB datagrams, writes
            data = self._pack(_plain(_capped(fields)))
        if self._len + len(data) > self.max_bytes:
            self._stop(f"the log reached its cap of {self.max_bytes} bytes")
            return
        if not self._append(data):
            self._stop("the file system cannot hold more of it")

    def _append(self, data: bytes) -> bool:
        """Store one record; False when the file could not grow for it."""
        assert self._map is not None
        end = self._len + len(data)
        if end >= self._size:  # one zero byte always follows the last record
            size = _chunked(max(end + 1, 2 * self._size))
            try:
                # blocks are reserved before the mapping grows: a store into a page the
                # file system cannot back would be SIGBUS, a full disk must not be
                _reserve(self._fd, self._size, size)
                self._map.resize(size)  # ftruncate + mremap
            except OSError:
                return False
            self._size = size
        self._map[self._len : end] = data
        self._len = end
        return True

    def _note(self, ev: str, **fields: Any) -> bool:
        """Append a note of the log itself, past the cap (it is small)."""
        self._seq += 1
        fields.update(seq=self._seq, t=round(time.monotonic() - self.t0, 6), ev=ev)
        return self._append(self._pack(fields))

    def _stop(self, why: str) -> None:
        """The log takes no more: say where it stopped (``log-full``), count the rest."""
        self.full = True
        self.dropped += 1
        self._seq -= 1  # the event that did not fit has no number
        self._note("log-full", why=why, bytes=self._len)

    def close(self) -> None:
        """Cut the file to its records, close it, and convert it to JSON lines at ``path``.

        A log that dropped events ends with ``log-dropped`` (how many).  A conversion
        the file system cannot hold leaves the msgpack file, which readers take as it
        is (:func:`records`)."""
        if self._map is not None and self.path is not None:
            if self.dropped:
                self._note("log-dropped", dropped=self.dropped)
            self._map.close()
            self._map = None
            os.ftruncate(self._fd, self._len)
            os.close(self._fd)
            self._fd = -1
            try:
                convert(self.path)
            except OSError:
                with contextlib.suppress(OSError):
                    os.unlink(self.path + ".tmp")


def _reserve(fd: int, start: int, end: int) -> None:
    """Allocate the file's blocks from ``start`` to ``end`` (``fallocate``); ENOSPC is
    raised here, where it can be handled, not as SIGBUS on a store into the mapping."""
    if end > start:
        os.posix_fallocate(fd, start, end - start)


def _chunked(n: int) -> int:
    """``n`` bytes rounded up to whole chunks."""
    return -(-n // CHUNK) * CHUNK


def _length(fd: int) -> int:
    """Bytes of records in a log file: up to the zero bytes a killed daemon's file ends
    with (none in a file cut at a clean stop)."""
    size = os.fstat(fd).st_size
    if size == 0:
        return 0
    with mmap.mmap(fd, size, access=mmap.ACCESS_READ) as m:
        end = size
        while end > 0 and m[end - 1] == 0:
            end -= 1
        return end


def records(path: str) -> Iterator[dict[str, Any]]:
    """The events recorded at ``path`` (from the msgpack file if not yet converted)."""
    raw = path + ".msgpack"
    if os.path.exists(raw):
        with open(raw, "rb") as fh:
            unpacker = msgpack.Unpacker(fh, raw=False, strict_map_key=False,
                                        unicode_errors="surrogateescape")
            try:
                for rec in unpacker:
                    if not isinstance(rec, dict):  # the zero bytes after the last record
                        return
                    yield _ordered(rec)
            except (ValueError, msgpack.OutOfData):  # a record cut short
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
    with os.fdopen(os.open(path + ".tmp", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600),
                   "w") as out:
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


def _capped(value: Any) -> Any:
    """``value`` with every bytes payload longer than PAYLOAD cut to its first PAYLOAD
    bytes and ``...``, and every string longer than BIG_RECORD likewise."""
    if isinstance(value, bytes | bytearray | memoryview):
        b = bytes(value[: PAYLOAD + 1])
        return b if len(b) <= PAYLOAD else b[:PAYLOAD] + b"..."
    if isinstance(value, str):
        return value if len(value) <= BIG_RECORD else value[:BIG_RECORD] + "..."
    if isinstance(value, dict):
        return {k: _capped(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_capped(v) for v in value]
    return value


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
