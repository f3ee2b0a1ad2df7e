"""The design interface, for a design of one's own: ``from kemu.policy import Policy``.

The same names as :mod:`kemu.kernel_daemon.policy` (the interface, the kernel objects
and operations a design may use); see ``docs/designs.md``.
"""

from __future__ import annotations

from kemu.kernel_daemon.policy import *  # noqa: F403
from kemu.kernel_daemon.policy import __all__  # noqa: F401
