"""A plain (not editable) install into a fresh virtual environment, used from elsewhere.

``pip install <checkout>`` into a new venv; then, from an unrelated directory, the
``kemu`` command runs part of the matrix and writes its report (the scenarios come from
the package's data), and the installed tree has one top-level import name, ``kemu``:
no ``agents`` or ``protocol`` that could clash with another package.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def scratch() -> Iterator[str]:
    path = tempfile.mkdtemp(prefix="kemu-install-", dir="/tmp")
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _run(argv: list[str], cwd: str, timeout: float) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout, check=False)


@pytest.mark.timeout(600)
def test_a_plain_install_works_from_anywhere(scratch: str) -> None:
    venv = os.path.join(scratch, "venv")
    made = _run([sys.executable, "-m", "venv", venv], scratch, 120)
    assert made.returncode == 0, made.stderr
    pip = _run([os.path.join(venv, "bin", "pip"), "install", "-q", ROOT], scratch, 400)
    assert pip.returncode == 0, pip.stdout + pip.stderr
    site = _run([os.path.join(venv, "bin", "python"), "-c",
                 "import sysconfig; print(sysconfig.get_paths()['purelib'])"], scratch, 60)
    names = set(os.listdir(site.stdout.strip()))
    assert "kemu" in names
    assert not names & {"agents", "protocol", "kernel_daemon"}, sorted(names)
    elsewhere = os.path.join(scratch, "elsewhere")
    os.makedirs(elsewhere)
    report = os.path.join(scratch, "report")
    done = _run([os.path.join(venv, "bin", "kemu"), "matrix", "--only", "S01", "S12",
                 "--report", report], elsewhere, 300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "16 runs" in done.stdout and "0 differ" in done.stdout, done.stdout
    assert os.path.isfile(os.path.join(report, "index.html"))
    helped = _run([os.path.join(venv, "bin", "kemu"), "clean", "--help"], elsewhere, 60)
    assert helped.returncode == 0 and "--keep" in helped.stdout
