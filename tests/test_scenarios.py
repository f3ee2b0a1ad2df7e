"""Every scenario shipped in scenarios/ runs on the host kernel and on the emulator, meets
its expectations on both, and gives identical transcripts (PIDs aside)."""

from __future__ import annotations

import os

import pytest
from dual import same_on_both_targets

from kemu.agents.scenario.parse import load

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FILES = sorted(f for f in os.listdir(os.path.join(ROOT, "scenarios")) if f.endswith(".scn"))


@pytest.mark.host
@pytest.mark.timeout(120)
@pytest.mark.parametrize("name", FILES)
def test_scenario_file_on_both_targets(name: str) -> None:
    same_on_both_targets(load(os.path.join(ROOT, "scenarios", name)))
