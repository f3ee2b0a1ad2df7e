"""The one choke point that turns a Linux errno into the exception Python raises.

Follows pyfakefs: ``OSError(errno, strerror)`` lets Python pick the subclass
(``FileNotFoundError`` for ``ENOENT``, ``BlockingIOError`` for ``EAGAIN``, ...), so an
agent sees exactly the exception ``os`` would raise on the host.  Tests compare
``errno``, never message text.
"""

from __future__ import annotations

import os


def os_error(code: int, filename: str | None = None) -> OSError:
    """Build the ``OSError`` subclass Python's ``os`` raises for Linux errno ``code``."""
    if filename is None:
        return OSError(code, os.strerror(code))
    return OSError(code, os.strerror(code), filename)


class ProtocolError(Exception):
    """The peer broke the wire protocol (bad version, bad signature, malformed message).

    Raised by the agent runtime when the daemon answers a request with a protocol-level
    error instead of a result or an errno.  It means a bug or an attack, never a
    Linux-visible failure: fix the sender, do not catch it as an ``OSError``.
    """

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


class VersionMismatch(ProtocolError):
    """The other side speaks an incompatible protocol major version."""
