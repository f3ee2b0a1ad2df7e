"""The threads' scenarios (scenarios/threads/) under every policy, as `launch.py matrix`
runs them: every cell must meet the expectation the scenario states for its policy."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import pytest

from agents.launcher import matrix
from agents.scenario.parse import load

FILES = sorted(f for f in os.listdir(matrix.THREADS) if f.endswith(".scn"))


@pytest.mark.timeout(180)
@pytest.mark.parametrize("name", FILES)
def test_thread_scenario_under_every_policy(name: str) -> None:
    scenario = load(os.path.join(matrix.THREADS, name))
    with ThreadPoolExecutor(max_workers=4) as pool:
        cells = list(pool.map(lambda p: matrix.run_cell(scenario, p), matrix.POLICIES))
    bad = {c.policy: c.outcome.failures for c in cells if not c.outcome.passed}
    assert not bad, bad


def test_matrix_covers_every_policy_the_daemon_knows() -> None:
    from kernel_daemon.policy import POLICIES

    assert set(matrix.POLICIES) == set(POLICIES)
