"""One event log per run: the daemon's and the launcher's records merged on one clock.

The daemon writes ``kernel.jsonl`` (kernel events in its total order, ``t`` seconds since
its start; its ``boot`` event carries ``clock``, the CLOCK_MONOTONIC of that start) and
the launcher writes ``launcher.jsonl`` (``t`` seconds since its ``launch`` record's
``clock``).  :func:`merge` puts both into ``events.jsonl``: every record gets ``src``
(``"kernel"`` or ``"launcher"``), ``t`` becomes seconds since the launch, ``seq`` the
merged order, and a kernel record keeps the daemon's own number as ``kseq``.  Each
stream keeps its own order; CLOCK_MONOTONIC is one clock for every process on the host,
so a launcher record written before it sent a line comes before the kernel events that
line caused.

The daemon's raw file stays as ``kernel.jsonl`` (a killed daemon's ``.msgpack`` buffer
is read too); ``launcher.jsonl`` stays as it is.
"""

from __future__ import annotations

import heapq
import json
import os
from collections.abc import Iterator
from typing import Any

import msgpack

EVENTS = "events.jsonl"
KERNEL = "kernel.jsonl"
LAUNCHER = "launcher.jsonl"


def _json_lines(path: str) -> Iterator[dict[str, Any]]:
    """The records of a JSON-lines file; a line cut short by a kill ends it."""
    with open(path, encoding="utf-8", errors="surrogateescape") as fh:
        for line in fh:
            try:
                rec = json.loads(line)
            except ValueError:
                return
            if isinstance(rec, dict):
                yield rec


def _bytes_as_text(value: Any) -> Any:
    """Bytes as the daemon's converter writes them (latin-1 text, 64 bytes at most)."""
    if isinstance(value, bytes | bytearray):
        b = bytes(value)
        return b.decode("latin-1") if len(b) <= 64 else b[:64].decode("latin-1") + "..."
    if isinstance(value, dict):
        return {str(k): _bytes_as_text(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_bytes_as_text(v) for v in value]
    return value


def kernel_records(run_dir: str) -> list[dict[str, Any]]:
    """The daemon's events of a run (none on the host target)."""
    path = os.path.join(run_dir, KERNEL)
    raw = path + ".msgpack"
    if os.path.exists(raw):  # the daemon died before converting its log
        out: list[dict[str, Any]] = []
        with open(raw, "rb") as fh:
            unpacker = msgpack.Unpacker(fh, raw=False, strict_map_key=False,
                                        unicode_errors="surrogateescape")
            try:
                for rec in unpacker:
                    if isinstance(rec, dict):
                        out.append(_bytes_as_text(rec))
            except (ValueError, msgpack.OutOfData):
                pass
        return out
    if not os.path.exists(path):
        return []
    return list(_json_lines(path))


def launcher_records(run_dir: str) -> list[dict[str, Any]]:
    """The launcher's records of a run."""
    path = os.path.join(run_dir, LAUNCHER)
    return list(_json_lines(path)) if os.path.exists(path) else []


def combine(kernel: list[dict[str, Any]], launcher: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The merged log of a run (see the module docstring)."""
    l_clock = next((float(r["clock"]) for r in launcher if r.get("ev") == "launch"), None)
    k_clock = next((float(r["clock"]) for r in kernel
                    if r.get("ev") == "boot" and "clock" in r), None)
    if l_clock is None:
        l_clock = 0.0
    # without clocks, start the kernel's records at the launcher's start
    k_offset = (k_clock - l_clock) if k_clock is not None else 0.0

    def tagged(recs: list[dict[str, Any]], src: str, offset: float
               ) -> Iterator[tuple[float, dict[str, Any]]]:
        for rec in recs:
            yield float(rec.get("t") or 0.0) + offset, {**rec, "src": src}

    merged: list[dict[str, Any]] = []
    streams = (tagged(launcher, "launcher", 0.0), tagged(kernel, "kernel", k_offset))
    for n, (t, rec) in enumerate(heapq.merge(*streams, key=lambda x: x[0]), 1):
        fields = {k: v for k, v in rec.items() if k not in ("seq", "t", "ev", "src")}
        out: dict[str, Any] = {"seq": n, "t": round(t, 6), "src": rec["src"], "ev": rec.get("ev")}
        if rec["src"] == "kernel" and "seq" in rec:
            out["kseq"] = rec["seq"]
        out.update(fields)
        merged.append(out)
    return merged


def merge(run_dir: str) -> list[dict[str, Any]]:
    """Merge the run's logs into ``events.jsonl`` and return its records."""
    records = combine(kernel_records(run_dir), launcher_records(run_dir))
    encoder = json.JSONEncoder(separators=(",", ":"), default=repr)
    fd = os.open(os.path.join(run_dir, EVENTS), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8", errors="surrogateescape") as fh:  # the user's
        for rec in records:
            fh.write(encoder.encode(rec) + "\n")
    return records


def load(run_dir: str) -> list[dict[str, Any]]:
    """The merged records of a run folder (``events.jsonl``)."""
    return list(_json_lines(os.path.join(run_dir, EVENTS)))
