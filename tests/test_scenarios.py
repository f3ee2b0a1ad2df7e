"""Every scenario shipped in scenarios/ runs on the host kernel and on the emulator, meets
its expectations on both, and gives identical transcripts (PIDs aside)."""

from __future__ import annotations

import os

import pytest

from agents.scenario.parse import load
from agents.scenario.runner import run_scenario

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FILES = sorted(f for f in os.listdir(os.path.join(ROOT, "scenarios")) if f.endswith(".scn"))


@pytest.mark.host
@pytest.mark.timeout(120)
@pytest.mark.parametrize("name", FILES)
def test_scenario_file_on_both_targets(name: str) -> None:
    scenario = load(os.path.join(ROOT, "scenarios", name))
    host = run_scenario(scenario, "host", show_pids=False)
    assert host.passed, f"host: {host.failures}\n" + "\n".join(host.transcript)
    emu = run_scenario(scenario, "emulator", show_pids=False)
    assert emu.passed, f"emulator: {emu.failures}\n" + "\n".join(emu.transcript)
    assert [x for x in host.transcript if not x.startswith("===")] == \
        [x for x in emu.transcript if not x.startswith("===")]
