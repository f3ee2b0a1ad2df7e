"""Lease and signal conformance: every case on the host kernel, then on the emulator.

Cases that set ``lease_break_time`` change ``/proc/sys/fs/lease-break-time`` on the host
for their run and restore it; tests run one at a time (no parallel runner is used).
"""

from __future__ import annotations

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from dual import same_on_both_targets
from lease_cases import CASES, render

from kemu.agents.scenario.parse import parse

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.host
@pytest.mark.timeout(120)
@pytest.mark.parametrize("name", [c.name for c in CASES])
def test_lease_behaviour(name: str) -> None:
    case = next(c for c in CASES if c.name == name)
    same_on_both_targets(parse(case.scenario, name))


def test_conformance_doc_matches_the_cases() -> None:
    with open(os.path.join(ROOT, "docs", "conformance.md")) as fh:
        assert fh.read() == render(), "regenerate: python tests/lease_cases.py > docs/conformance.md"


def test_at_least_thirty_behaviours() -> None:
    assert len(CASES) >= 30
    assert len({c.name for c in CASES}) == len(CASES)
