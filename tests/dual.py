"""The dual-target check shared by the conformance tests."""

from __future__ import annotations

import difflib

import pytest

from kemu.agents.launcher.runner import needs_root, run_scenario
from kemu.agents.scenario import transcript
from kemu.agents.scenario.parse import Scenario


def same_on_both_targets(scenario: Scenario) -> None:
    """Run ``scenario`` on the host kernel (the oracle) and then on the emulator: both
    must meet every expectation and give the same transcript, PIDs and mapping
    addresses aside."""
    for target in ("host", "emulator"):
        reason = needs_root(scenario, target)
        if reason:
            pytest.skip(reason)
    host = run_scenario(scenario, "host", show_pids=False)
    assert host.passed, f"host kernel (the oracle): {host.failures}\n" + "\n".join(host.transcript)
    emu = run_scenario(scenario, "emulator", show_pids=False)
    assert emu.passed, f"emulator: {emu.failures}\n" + "\n".join(emu.transcript)
    assert comparable(host.transcript) == comparable(emu.transcript), "\n".join(
        difflib.unified_diff(comparable(host.transcript), comparable(emu.transcript),
                             "host", "emulator", lineterm=""))


def comparable(lines: list[str]) -> list[str]:
    """The transcript without its header and verdict lines, PIDs and mapping addresses
    normalised (as ``launch.py run --target both`` compares them)."""
    return transcript.comparable(lines)
