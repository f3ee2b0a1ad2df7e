"""Shared fixtures: a real kernel daemon per test, and the dual-target switch."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator

import pytest

from kemu.agents.launcher.daemon_process import DaemonProcess, start_daemon
from kemu.agents.lib.api import EmuSystem, HostSystem, System

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def run_dir() -> Iterator[str]:
    """A fresh run directory (short path: AF_UNIX paths are limited to 108 bytes)."""
    with tempfile.TemporaryDirectory(prefix="kemu-", dir="/tmp") as d:
        yield d


@pytest.fixture
def daemon(run_dir: str) -> Iterator[DaemonProcess]:
    """A kernel daemon process serving ``run_dir`` (lease_break_time 0.5 s)."""
    d = start_daemon(run_dir, lease_break_time=0.5, event_log=os.path.join(run_dir, "events.jsonl"))
    try:
        yield d
    finally:
        d.stop()


@pytest.fixture(params=["host", "emulator"])
def system(request: pytest.FixtureRequest, run_dir: str) -> Iterator[System]:
    """The os-like API of this test process, on the host kernel or on the emulator.

    A test written against it runs twice: first against Linux (the oracle), then
    against the emulator, with the same expectations.
    """
    if request.param == "host":
        root = os.path.join(run_dir, "root")
        os.makedirs(root)
        yield HostSystem(root)
        return
    d = start_daemon(run_dir, lease_break_time=0.5)
    try:
        sysm = EmuSystem(run_dir, name="pytest")
        yield sysm
        sysm.conn.close()
    finally:
        d.stop()
