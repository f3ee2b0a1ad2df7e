"""The host's ``/proc/sys/fs/lease-break-time``, borrowed by one run at a time.

The setting is the whole machine's.  A run that sets ``lease_break_time`` on the host
target takes an exclusive lock (``flock``) on ``/run/kemu/lease-break-time.lock``, so
concurrent host runs on one machine take their turns, saves the current value next to
it, writes its own, and restores the saved value when it ends.  A holder that was
killed leaves its saved value behind; the next one to take the lock restores it first.

``/run/kemu`` is root's, mode 0700, and checked (not a symbolic link, owned by root)
before anything is read from it: nobody else can plant a value there or make root
write through a link.  Without root the sysctl cannot be written at all, and that is
said in one line (:class:`NeedsRoot`).
"""

from __future__ import annotations

import contextlib
import fcntl
import math
import os
import stat

SYSCTL = "/proc/sys/fs/lease-break-time"
STATE_DIR = "/run/kemu"
LOCK = os.path.join(STATE_DIR, "lease-break-time.lock")
SAVED = os.path.join(STATE_DIR, "lease-break-time.saved")


class NeedsRoot(PermissionError):
    """Changing the host's lease-break-time needs root."""


def _state_dir() -> str:
    with contextlib.suppress(FileExistsError):
        os.mkdir(STATE_DIR, 0o700)
    st = os.lstat(STATE_DIR)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != 0 or stat.S_IMODE(st.st_mode) & 0o077:
        raise PermissionError(f"{STATE_DIR} is not a directory of root's, mode 0700: "
                              "refusing to keep the host's lease-break-time there")
    return STATE_DIR


class LeaseBreakTime:
    """The host's lease-break-time held for one run (``set``, then ``restore``)."""

    def __init__(self) -> None:
        self._fd = -1

    def set(self, seconds: float) -> None:
        """Take the lock (waiting for another run's turn), save, write whole seconds."""
        if os.geteuid() != 0:
            raise NeedsRoot("set lease_break_time on the host target needs root "
                            f"(it writes {SYSCTL})")
        _state_dir()
        fd = os.open(LOCK, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)
        self._fd = fd
        _restore_saved()  # a holder that was killed left its value behind
        with open(SYSCTL) as fh:
            value = fh.read().strip()
        _write_saved(value)
        with open(SYSCTL, "w") as fh:
            fh.write(str(math.ceil(seconds)))

    @property
    def held(self) -> bool:
        """Is the value this run's to restore?"""
        return self._fd >= 0

    def restore(self) -> None:
        """Put the saved value back and let the next run have its turn."""
        if self._fd < 0:
            return
        try:
            _restore_saved()
        finally:
            os.close(self._fd)  # releases the lock
            self._fd = -1


def _write_saved(value: str) -> None:
    fd = os.open(SAVED, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(value)


def _restore_saved() -> None:
    try:
        fd = os.open(SAVED, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        return
    with os.fdopen(fd) as fh:
        value = fh.read().strip()
    if value.isdigit():
        with open(SYSCTL, "w") as out:
            out.write(value)
    os.unlink(SAVED)
