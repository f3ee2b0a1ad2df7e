"""kemu: an actor-based multiprocess emulator of Linux file leases, fs-DAX and RDMA pins.

Everything the project installs lives under this one name, so that it cannot clash with
other packages: :mod:`kemu.kernel_daemon` (the kernel), :mod:`kemu.agents` (the agent
library, the scenario language, the launcher, the reports), :mod:`kemu.protocol` (what
both sides share) and the bundled scenarios (:data:`SCENARIOS`).  In the repository
they are the top-level folders ``kernel_daemon/``, ``agents/``, ``protocol/`` and
``scenarios/``; ``kemu/`` holds symbolic links to them, and an installed wheel holds the
files themselves.

Entry points: the ``kemu`` command (``python -m kemu``, the same as ``python launch.py``
in a checkout), :mod:`kemu.policy` for a design of one's own, :mod:`kemu.agent` for an
agent program of one's own and :mod:`kemu.testing` for one's own pytest tests.
"""

from __future__ import annotations

import os

__version__ = "0.2.0"

#: the directory that holds this package: what a child process needs on ``PYTHONPATH``
#: to import ``kemu`` (a checkout, or site-packages)
HOME = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
#: the bundled scenarios (``threads/`` holds the thread scenarios of the matrix)
SCENARIOS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "scenarios")
