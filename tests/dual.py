"""The dual-target check shared by the conformance tests."""

from __future__ import annotations

from agents.scenario.parse import Scenario
from agents.scenario.runner import run_scenario


def same_on_both_targets(scenario: Scenario) -> None:
    """Run ``scenario`` on the host kernel (the oracle) and then on the emulator: both
    must meet every expectation and give the same transcript, PIDs aside."""
    host = run_scenario(scenario, "host", show_pids=False)
    assert host.passed, f"host kernel (the oracle): {host.failures}\n" + "\n".join(host.transcript)
    emu = run_scenario(scenario, "emulator", show_pids=False)
    assert emu.passed, f"emulator: {emu.failures}\n" + "\n".join(emu.transcript)
    assert [x for x in host.transcript if not x.startswith("===")] == \
        [x for x in emu.transcript if not x.startswith("===")]
