"""Faults in the threads' scenarios, through ``explore``: the pinning process, the
receiver of a passed context and the remote peer killed at every step of S5 and S6,
under every design.

After each run the invariants of docs/invariants.md must hold: the daemon kept serving
and passed its pin audit, nothing of any process is left (no task but the launcher, no
mapping, lease, region, pin, busy or orphaned block, parked call, message or pending
shoot-down), and no foreign write appears under a design that promises none.  What a
design keeps on purpose while a process lives (a zombie lease held by pins elsewhere)
must be gone once the pins' holder is gone too.
"""

from __future__ import annotations

import os

import pytest

from kemu.agents.launcher import explore, matrix


@pytest.mark.timeout(900)
@pytest.mark.parametrize("scenario,victims", [
    ("S05_pin_truncate_reuse.scn", ("A", "R")),
    ("S06_pass_context_then_exit.scn", ("A", "B", "R")),
])
def test_kill_at_every_step(scenario: str, victims: tuple[str, ...]) -> None:
    # the runs mostly wait for each other's processes: more of them than cores
    exp = explore.explore(os.path.join(matrix.THREADS, scenario), None, ["kill"],
                          victims=victims, jobs=6, progress=None, minimize=False)
    assert len(exp.designs) == len(matrix.policies())
    points = len(explore.fault_points(exp.scenario, ["kill"], victims)) + 1
    assert len(exp.results) == points * len(exp.designs)
    bad = {f"{r.fault.describe()} under {r.design}": [str(v) for v in r.violations]
           for r in exp.violations}
    assert not bad, f"{len(bad)} of {len(exp.results)} runs: {dict(list(bad.items())[:5])}"
