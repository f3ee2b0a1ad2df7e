"""The dual-target check shared by the conformance tests."""

from __future__ import annotations

import re

from kemu.agents.launcher.runner import run_scenario
from kemu.agents.scenario.parse import Scenario


def same_on_both_targets(scenario: Scenario) -> None:
    """Run ``scenario`` on the host kernel (the oracle) and then on the emulator: both
    must meet every expectation and give the same transcript, PIDs aside."""
    host = run_scenario(scenario, "host", show_pids=False)
    assert host.passed, f"host kernel (the oracle): {host.failures}\n" + "\n".join(host.transcript)
    emu = run_scenario(scenario, "emulator", show_pids=False)
    assert emu.passed, f"emulator: {emu.failures}\n" + "\n".join(emu.transcript)
    assert comparable(host.transcript) == comparable(emu.transcript)


#: addresses of mappings: the host's are randomised (ASLR), the emulator's fixed
_ADDRESS = re.compile(r"0x[0-9a-f]{9,}")


def comparable(transcript: list[str]) -> list[str]:
    """The transcript without its header and verdict lines, mapping addresses hidden."""
    return [_ADDRESS.sub("0xADDR", x) for x in transcript if not x.startswith("===")]
