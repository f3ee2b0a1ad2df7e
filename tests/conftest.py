"""Shared fixtures: the project's own tests use its pytest plugin (kemu.testing).

``run_dir`` and ``daemon`` are the plugin's ``kemu_run_dir`` and ``kemu_daemon`` (a
real kernel daemon per test, lease_break_time 0.5 s), under the short names the tests
were written with.
"""

from __future__ import annotations

import pytest

from kemu.agents.launcher.daemon_process import DaemonProcess


@pytest.fixture
def run_dir(kemu_run_dir: str) -> str:
    """A fresh run directory (short path: AF_UNIX paths are limited to 108 bytes)."""
    return kemu_run_dir


@pytest.fixture
def daemon(kemu_daemon: DaemonProcess) -> DaemonProcess:
    """A kernel daemon process serving ``run_dir`` (lease_break_time 0.5 s)."""
    return kemu_daemon
