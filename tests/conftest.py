"""Shared fixtures: the project's own tests use its pytest plugin (kemu.testing).

``run_dir`` and ``daemon`` are the plugin's ``kemu_run_dir`` and ``kemu_daemon`` (a
real kernel daemon per test, lease_break_time 0.5 s), under the short names the tests
were written with; ``conn`` registers the test process itself with that daemon.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from kemu.agents.launcher.daemon_process import DaemonProcess
from kemu.agents.lib.runtime import Connection


@pytest.fixture
def run_dir(kemu_run_dir: str) -> str:
    """A fresh run directory (short path: AF_UNIX paths are limited to 108 bytes)."""
    return kemu_run_dir


@pytest.fixture
def daemon(kemu_daemon: DaemonProcess) -> DaemonProcess:
    """A kernel daemon process serving ``run_dir`` (lease_break_time 0.5 s)."""
    return kemu_daemon


@pytest.fixture
def conn(daemon: DaemonProcess) -> Iterator[Connection]:
    """This test process, registered with ``daemon`` (before any child it starts, so
    children have it as their parent)."""
    c = Connection(daemon.run_dir, name="pytest")
    try:
        yield c
    finally:
        c.close()
