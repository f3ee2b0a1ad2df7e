"""A deliberately broken design for the tests of ``explore``: it frees pinned blocks at
once, as legacy does, but claims that no long-term pin ever writes into another file's
block.  ``explore`` must catch the broken promise and cut it down to a reproducer."""

from __future__ import annotations

from kemu.kernel_daemon.policy import Policy, Promise


class FalsePromise(Policy):
    """legacy's behaviour, upstream's promise."""

    name = "false-promise"
    promises = frozenset({Promise.NO_FOREIGN_WRITE_LONGTERM})
