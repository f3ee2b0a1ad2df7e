"""Where run folders live, and how many are kept.

Every run's folder (event log, transcript, pictures) goes under one directory a user
can find and clean: ``$KEMU_RUNS``, else ``/tmp/kemu-<uid>``.  It belongs to the user
and is mode 0711: nobody else can list it or create anything in it, and an actor that
gave up root can still reach its own run's folder by name.  A directory of that name
owned by somebody else is refused (it could be a trap planted in ``/tmp``).

Folders are capped: each new run removes the oldest *finished* runs beyond
``$KEMU_KEEP_RUNS`` (default 50), or beyond ``$KEMU_RUNS_MAX_BYTES`` (default 2 GiB)
altogether, and ``kemu clean [--keep N]`` removes them on demand.  A folder is finished
once its run wrote ``.done``; an unfinished one (a launcher that was killed) is removed
once it is a day old.

Every file of a folder is bounded too: the kernel's event log stops at its cap
(``event_log_max``, 64 MiB) with a ``log-full`` note, the launcher's log
(:class:`RunLog`) likewise, payloads are kept as their first 64 bytes, and the merged
log, transcript and pictures are computed from those (the sequence diagram stops at
5,000 events).  A file system that cannot hold a log stops that log the same way: a
full disk is an error of the run, never of the machine.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import stat
import tempfile
import time
from typing import Any

RUNS_ENV = "KEMU_RUNS"
KEEP_ENV = "KEMU_KEEP_RUNS"
DEFAULT_KEEP = 50
MAX_BYTES_ENV = "KEMU_RUNS_MAX_BYTES"
#: finished folders kept take at most this much altogether (the newest is always kept)
DEFAULT_MAX_BYTES = 2 << 30
#: the launcher's log of one run holds at most this much (then a ``log-full`` note)
LOG_MAX = 64 << 20
#: bytes of a payload (data read or written, a message) a launcher record keeps
PAYLOAD = 64
#: characters of a string a launcher record keeps
TEXT = 4096
DONE = ".done"
#: an unfinished folder this old belongs to a launcher that died
STALE_S = 86400.0
#: the folders this module makes (and removes): runs, explorations
PREFIXES = ("run-", "explore-")


class RunsDirError(RuntimeError):
    """The runs directory cannot be used safely."""


def runs_dir() -> str:
    """The user's runs directory, created (0711) if it is not there."""
    path = os.environ.get(RUNS_ENV) or f"/tmp/kemu-{os.getuid()}"
    with contextlib.suppress(FileExistsError):
        os.mkdir(path, 0o711)
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid():
        raise RunsDirError(f"{path} is not a directory of yours: set {RUNS_ENV} to one")
    if stat.S_IMODE(st.st_mode) & 0o022:
        os.chmod(path, 0o711)
    return path


def new_run_dir(prefix: str = "run-") -> str:
    """A fresh folder for one run (or exploration), after pruning old ones."""
    base = runs_dir()
    prune(keep())
    return tempfile.mkdtemp(prefix=prefix, dir=base)


def mark_done(run_dir: str) -> None:
    """The run that owns ``run_dir`` is over: its folder may be pruned."""
    with contextlib.suppress(OSError), open(os.path.join(run_dir, DONE), "w"):
        pass


def max_bytes() -> int:
    """Bytes the finished folders may take (``$KEMU_RUNS_MAX_BYTES``, default 2 GiB)."""
    try:
        return max(0, int(os.environ.get(MAX_BYTES_ENV, DEFAULT_MAX_BYTES)))
    except ValueError:
        return DEFAULT_MAX_BYTES


def keep() -> int:
    """How many finished runs are kept (``$KEMU_KEEP_RUNS``, default 50)."""
    try:
        return max(0, int(os.environ.get(KEEP_ENV, DEFAULT_KEEP)))
    except ValueError:
        return DEFAULT_KEEP


def _folders(base: str) -> list[tuple[float, str, bool]]:
    out = []
    with contextlib.suppress(FileNotFoundError):
        for name in os.listdir(base):
            path = os.path.join(base, name)
            if not name.startswith(PREFIXES) or not os.path.isdir(path):
                continue
            done = os.path.exists(os.path.join(path, DONE))
            with contextlib.suppress(OSError):
                out.append((os.stat(path).st_mtime, path, done))
    return sorted(out, reverse=True)


def prune(keep_n: int, base: str | None = None, limit: int | None = None) -> list[str]:
    """Remove finished folders beyond the newest ``keep_n`` or beyond ``limit`` bytes
    altogether (default :func:`max_bytes`; the newest finished one is always kept),
    and unfinished ones a day old; the folders removed."""
    base = base or runs_dir()
    limit = max_bytes() if limit is None else limit
    removed = []
    now = time.time()
    finished = 0
    total = 0
    for mtime, path, done in _folders(base):
        if done:
            finished += 1
            total += _size(path)
            if finished <= keep_n and (finished == 1 or total <= limit):
                continue
        elif now - mtime < STALE_S:
            continue
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
    return removed


def _size(path: str) -> int:
    """Bytes of the files under ``path``."""
    size = 0
    for dirpath, _, files in os.walk(path):
        for f in files:
            with contextlib.suppress(OSError):
                size += os.lstat(os.path.join(dirpath, f)).st_size
    return size


def usage(base: str | None = None) -> tuple[int, int]:
    """(folders, bytes) under the runs directory."""
    base = base or runs_dir()
    n = size = 0
    for _, path, _ in _folders(base):
        n += 1
        size += _size(path)
    return n, size


def capped(value: Any) -> Any:
    """``value`` as a record keeps it: bytes past PAYLOAD cut to their first PAYLOAD and
    ``...``, strings past TEXT likewise (what a transcript shows of them is the same)."""
    if isinstance(value, bytes | bytearray | memoryview):
        b = bytes(value[: PAYLOAD + 1])
        return b if len(b) <= PAYLOAD else b[:PAYLOAD] + b"..."
    if isinstance(value, str):
        return value if len(value) <= TEXT else value[:TEXT] + "..."
    if isinstance(value, dict):
        return {k: capped(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [capped(v) for v in value]
    return value


class RunLog:
    """A run's JSON-lines log (mode 0600) that never outgrows ``max_bytes``.

    Each record's payloads are :func:`capped`.  Past the cap, or when the file system
    cannot take a record (ENOSPC, EFBIG), one ``log-full`` record says where the log
    stopped and later records are counted in :attr:`dropped`; :meth:`close` appends
    ``log-dropped`` with the count when it can."""

    def __init__(self, path: str, max_bytes: int = LOG_MAX) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self._fh = os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w")
        self.written = 0
        self.dropped = 0
        #: why the log stopped ("" while it takes records)
        self.stopped = ""

    def record(self, rec: dict[str, Any]) -> None:
        """Append one record (or count it, once the log stopped)."""
        if self.stopped:
            self.dropped += 1
            return
        line = json.dumps(capped(rec), default=repr) + "\n"
        if self.written + len(line) > self.max_bytes:
            self._stop(rec, f"the log reached its cap of {self.max_bytes} bytes")
            return
        if not self._write(line):
            self._stop(rec, "the file system cannot hold more of it")

    def _write(self, line: str) -> bool:
        try:
            self._fh.write(line)
            self._fh.flush()
        except OSError:
            return False
        self.written += len(line)
        return True

    def _stop(self, rec: dict[str, Any], why: str) -> None:
        self.stopped = why
        self.dropped += 1
        self._write(json.dumps({"t": rec.get("t"), "ev": "log-full", "why": why,
                                "bytes": self.written}) + "\n")

    def close(self) -> None:
        """Note what was dropped, and close."""
        if self.dropped:
            self._write(json.dumps({"ev": "log-dropped", "dropped": self.dropped}) + "\n")
        with contextlib.suppress(OSError):
            self._fh.close()
