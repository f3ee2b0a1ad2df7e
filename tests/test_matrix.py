"""The threads' scenarios (scenarios/threads/) under every policy, as `launch.py matrix`
runs them: every cell must meet the expectation the scenario states for its policy."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from kemu.agents.launcher import matrix
from kemu.agents.scenario.parse import load

FILES = sorted(f for f in os.listdir(matrix.THREADS) if f.endswith(".scn"))


@pytest.mark.timeout(180)
@pytest.mark.parametrize("name", FILES)
def test_thread_scenario_under_every_policy(name: str) -> None:
    scenario = load(os.path.join(matrix.THREADS, name))
    with ThreadPoolExecutor(max_workers=4) as pool:
        cells = list(pool.map(lambda p: matrix.run_cell(scenario, p), matrix.policies()))
    bad = {c.policy: c.outcome.failures for c in cells if not c.outcome.passed}
    assert not bad, bad


def test_matrix_covers_every_policy_the_daemon_knows() -> None:
    from kemu.kernel_daemon.designs import BUILTIN

    assert matrix.policies() == list(BUILTIN)


DESIGN = '''"""A design of one file, outside the repository: DAX pins refused with EPERM."""
import errno

from kemu.kernel_daemon.policy import MR, Kernel, KernelError, Policy, Task


class NoPins(Policy):
    name = "no-pins-at-all"

    def reg_mr(self, k: Kernel, task: Task, mr: MR) -> None:
        if not mr.odp and any(m.file is not None for m in mr.mappings):
            raise KernelError(errno.EPERM)
'''


@pytest.mark.timeout(180)
def test_a_design_from_outside_the_repository_gets_its_own_column(tmp_path: Path) -> None:
    """``launch.py matrix --policy /tmp/.../mydesign.py``: a column for it; lines whose
    expectation differs between designs are shown unjudged, the others are judged."""
    design = tmp_path / "mydesign.py"
    design.write_text(DESIGN)
    out = subprocess.run(
        [sys.executable, "launch.py", "matrix", "--only", "S05_", "S12", "--policies", "legacy",
         "--policy", str(design)], cwd=matrix.ROOT, capture_output=True, text=True,
        timeout=170, check=False)
    assert out.returncode == 0, out.stdout + out.stderr
    head = next(line for line in out.stdout.splitlines() if line.startswith("scenario"))
    assert "legacy" in head and "no-pins-at-all" in head
    rows = {line.split()[0]: line for line in out.stdout.splitlines()
            if line.startswith(("S05_", "S12"))}
    assert "? EINVAL, EPERM" in rows["S05_pin_truncate_reus"]  # ?: unjudged lines
    assert "EPERM" in rows["S12_reg_mr_no_lease"]
    assert "with unjudged lines" in out.stdout
    # the design's own outcome: its reg_mr refusal, no foreign write
    scenario = load(os.path.join(matrix.THREADS, "S05_pin_truncate_reuse.scn"))
    cell = matrix.run_cell(scenario, str(design))
    assert cell.policy == "no-pins-at-all" and cell.outcome.passed
    assert cell.outcome.unjudged and not cell.outcome.foreign_writes
    reg = next(line for line in cell.outcome.lines if line.step.call == "ibv_reg_mr")
    assert reg.unjudged and reg.reply.get("errno") == errno.EPERM
    judged = next(line for line in cell.outcome.lines if line.step.call == "ftruncate")
    assert not judged.unjudged  # design-independent: judged as for every design


def test_a_design_file_that_does_not_load_stops_the_run_before_it_starts(tmp_path: Path) -> None:
    bad = tmp_path / "broken.py"
    bad.write_text("from kernel_daemon.policy import Policy\n\nclass B(Policy):\n"
                   "    name = 'b'\n    x = undefined_name\n")
    for argv in (["run", "scenarios/basic.scn", "--policy", str(bad)],
                 ["matrix", "--only", "S12", "--policy", str(bad)]):
        out = subprocess.run([sys.executable, "launch.py", *argv], cwd=matrix.ROOT,
                             capture_output=True, text=True, timeout=60, check=False)
        assert out.returncode == 2, out.stdout + out.stderr
        assert f"{bad}:5: NameError" in out.stderr and "Traceback" not in out.stderr


@pytest.mark.timeout(120)
def test_busy_extent_loaded_by_path_is_the_same_design() -> None:
    """The shipped busy-extent file, given by path as a user's design would be, runs
    S5 and S5b exactly as the built-in name does: judged, passing, no foreign write."""
    path = os.path.join(matrix.ROOT, "kernel_daemon", "designs", "busy_extent.py")
    for name in ("S05_pin_truncate_reuse.scn", "S05b_direct_io_short_pin.scn"):
        scenario = load(os.path.join(matrix.THREADS, name))
        by_path, by_name = (matrix.run_cell(scenario, p) for p in (path, "busy-extent"))
        assert by_path.policy == by_name.policy == "busy-extent"
        assert by_path.outcome.passed and by_name.outcome.passed, by_path.outcome.failures
        assert not by_path.outcome.unjudged and not by_path.outcome.foreign_writes
        assert by_path.summary == by_name.summary
