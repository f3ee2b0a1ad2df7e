"""Where run folders live, and how many are kept.

Every run's folder (event log, transcript, pictures) goes under one directory a user
can find and clean: ``$KEMU_RUNS``, else ``/tmp/kemu-<uid>``.  It belongs to the user
and is mode 0711: nobody else can list it or create anything in it, and an actor that
gave up root can still reach its own run's folder by name.  A directory of that name
owned by somebody else is refused (it could be a trap planted in ``/tmp``).

Folders are capped: each new run removes the oldest *finished* runs beyond
``$KEMU_KEEP_RUNS`` (default 50), and ``kemu clean [--keep N]`` removes them on demand.
A folder is finished once its run wrote ``.done``; an unfinished one (a launcher that
was killed) is removed once it is a day old.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import tempfile
import time

RUNS_ENV = "KEMU_RUNS"
KEEP_ENV = "KEMU_KEEP_RUNS"
DEFAULT_KEEP = 50
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


def prune(keep_n: int, base: str | None = None) -> list[str]:
    """Remove finished folders beyond the newest ``keep_n``, and unfinished ones a day
    old; the folders removed."""
    base = base or runs_dir()
    removed = []
    now = time.time()
    finished = 0
    for mtime, path, done in _folders(base):
        if done:
            finished += 1
            if finished <= keep_n:
                continue
        elif now - mtime < STALE_S:
            continue
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
    return removed


def usage(base: str | None = None) -> tuple[int, int]:
    """(folders, bytes) under the runs directory."""
    base = base or runs_dir()
    n = size = 0
    for _, path, _ in _folders(base):
        n += 1
        for dirpath, _, files in os.walk(path):
            for f in files:
                with contextlib.suppress(OSError):
                    size += os.lstat(os.path.join(dirpath, f)).st_size
    return n, size
