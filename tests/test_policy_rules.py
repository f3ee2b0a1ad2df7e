"""Every rule of ``../shared/spec/designs.md``, one test per rule, with real processes.

Each case is a scenario (the language of README.md) run on the emulator under the
policy the rule belongs to: the actors are real OS processes, events across processes
are ordered by the scenario's line order and ``&``/``join`` (a background call is
reported started only once it sleeps in the kernel), never by sleeping.  A case's id
names the rule it checks; rules that hold for several policies run under each.
Where the emulator departs from designs.md the case is ``xfail(strict=True)`` with the
reason, so fixing the emulator turns it into a failure to be promoted.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from agents.scenario import calls
from agents.scenario.parse import parse
from agents.scenario.runner import run_scenario

LEASE_POLICIES = ("layout-lease", "layout-lease-exclusive-checked")
ALL_POLICIES = ("legacy", "map-direct", "map-direct-sealed", "layout-lease",
                "layout-lease-exclusive-checked", "mr-lease", "upstream")

#: ``fallocate`` and ``clone`` (FICLONE) are daemon calls (docs/syscalls.md) that the
#: scenario language does not offer yet; each actor process gets them from this
#: sitecustomize, the same one-line wrappers over the daemon channel as the RDMA calls.
_SHIM = '''\
try:
    from agents.scenario import calls as _c
except Exception:
    pass
else:
    _c.CALLS.setdefault("fallocate", lambda a, fd, mode, off, n:
                        _c._emu(a).call("fallocate", fd, mode, off, n) or 0)
    _c.CALLS.setdefault("clone", lambda a, src, dst: _c._emu(a).call("clone", src, dst) or 0)
    _c.EMU_BACKGROUND.setdefault("clone", lambda v: 0)
'''


@pytest.fixture(scope="module", autouse=True)
def block_map_calls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Give the actor processes ``fallocate`` and ``clone`` if the language lacks them."""
    if "fallocate" in calls.CALLS and "clone" in calls.CALLS and "clone" in calls.EMU_BACKGROUND:
        yield
        return
    shim = tmp_path_factory.mktemp("calls-shim")
    (shim / "sitecustomize.py").write_text(_SHIM)
    with pytest.MonkeyPatch.context() as mp:
        old = os.environ.get("PYTHONPATH")
        mp.setenv("PYTHONPATH", str(shim) + (os.pathsep + old if old else ""))
        yield


def run(text: str, policy: str, name: str) -> None:
    """Run one scenario under ``policy``; every expectation must hold."""
    outcome = run_scenario(parse(text, name), "emulator", policy, show_pids=False)
    assert outcome.passed, f"{outcome.failures}\n" + "\n".join(outcome.transcript)


def cases(table: dict[str, tuple[tuple[str, ...], str]],
          xfail: dict[str, str] | None = None) -> list[object]:
    """pytest params ``rule`` or ``rule-policy`` for every policy a rule runs under."""
    out: list[object] = []
    for rule, (policies, text) in table.items():
        for policy in policies:
            marks = []
            reason = (xfail or {}).get(rule) or (xfail or {}).get(f"{rule}-{policy}")
            if reason:
                marks.append(pytest.mark.xfail(strict=True, reason=reason))
            ident = rule if len(policies) == 1 else f"{rule}-{policy}"
            out.append(pytest.param(text, policy, id=ident, marks=marks))
    return out


# --- common ground: layout leases and the filesystem flavour ---------------------------

COMMON = {
    "open_never_breaks_a_layout_lease_but_xfs_write_does": (LEASE_POLICIES, """
set lease_break_time = 30
set step_timeout = 10
A: signal(SIGIO, "record")                          => 0
A: fd = open("/f", O_RDWR|O_CREAT, 0o644)           => 3
A: ftruncate(fd, 8192)                              => 0
A: fcntl(fd, F_SETLEASE, F_LAYOUT)                  => 0
B: b = open("/f", O_RDWR)                           => 3
B: c = open("/f", O_RDONLY)                         => 4
A: signals()                                        => []
A: fcntl(fd, F_GETLEASE)                            => F_LAYOUT
B: pwrite(b, "xfs", 0) &
A: signals()                                        => [{"si_signo": SIGIO, "si_code": SI_KERNEL}]
A: fcntl(fd, F_GETLEASE)                            => F_UNLCK
A: fcntl(fd, F_SETLEASE, F_UNLCK)                   => 0
B: join                                             => 3
B: pread(b, 3, 0)                                   => b"xfs"
"""),
    "ext4_only_truncate_and_punch_break_and_only_while_mapped": (("layout-lease",), """
set flavour = ext4
set lease_break_time = 30
set step_timeout = 10
A: signal(SIGIO, "record")                          => 0
A: fd = open("/f", O_RDWR|O_CREAT, 0o644)           => 3
A: ftruncate(fd, 16384)                             => 0
A: fcntl(fd, F_SETLEASE, F_LAYOUT)                  => 0
B: b = open("/f", O_RDWR)                           => 3
B: pwrite(b, "ext4", 0)                             => 4
B: truncate("/f", 12288)                            => 0
B: fallocate(b, FALLOC_FL_PUNCH_HOLE|FALLOC_FL_KEEP_SIZE, 8192, 4096) => 0
A: signals()                                        => []
A: fcntl(fd, F_GETLEASE)                            => F_LAYOUT
A: p = mmap(12288, PROT_READ|PROT_WRITE, MAP_SHARED, fd, 0) => ok
B: pwrite(b, "EXT4", 0)                             => 4
A: signals()                                        => []
B: truncate("/f", 8192) &
A: signals()                                        => [{"si_signo": SIGIO, "si_code": SI_KERNEL}]
A: fcntl(fd, F_SETLEASE, F_UNLCK)                   => 0
B: join                                             => 0
A: fcntl(fd, F_SETLEASE, F_LAYOUT)                  => 0
B: fallocate(b, FALLOC_FL_PUNCH_HOLE|FALLOC_FL_KEEP_SIZE, 4096, 4096) &
A: signals()                                        => [{"si_signo": SIGIO, "si_code": SI_KERNEL}]
A: fcntl(fd, F_SETLEASE, F_UNLCK)                   => 0
B: join                                             => 0
B: stat("/f")                                       => {"st_size": 8192}
"""),
    "xfs_truncate_punch_reflink_break_an_unmapped_file": (("layout-lease",), """
set lease_break_time = 30
set step_timeout = 10
A: signal(SIGIO, "record")                          => 0
A: fd = open("/f", O_RDWR|O_CREAT, 0o644)           => 3
A: ftruncate(fd, 16384)                             => 0
A: fcntl(fd, F_SETLEASE, F_LAYOUT)                  => 0
B: b = open("/f", O_RDWR)                           => 3
B: truncate("/f", 12288) &
A: signals()                                        => [{"si_signo": SIGIO, "si_code": SI_KERNEL}]
A: fcntl(fd, F_SETLEASE, F_UNLCK)                   => 0
B: join                                             => 0
A: fcntl(fd, F_SETLEASE, F_LAYOUT)                  => 0
B: fallocate(b, FALLOC_FL_PUNCH_HOLE|FALLOC_FL_KEEP_SIZE, 0, 4096) &
A: signals()                                        => [{"si_signo": SIGIO, "si_code": SI_KERNEL}]
A: fcntl(fd, F_SETLEASE, F_UNLCK)                   => 0
B: join                                             => 0
A: fcntl(fd, F_SETLEASE, F_LAYOUT)                  => 0
B: g = open("/g", O_RDWR|O_CREAT, 0o644)            => 4
B: clone(b, g) &
A: signals()                                        => [{"si_signo": SIGIO, "si_code": SI_KERNEL}]
A: fcntl(fd, F_SETLEASE, F_UNLCK)                   => 0
B: join                                             => 0
B: fstat(g)                                         => {"st_size": 12288}
"""),
}


@pytest.mark.timeout(60)
@pytest.mark.parametrize(("text", "policy"), cases(COMMON))
def test_common_layout_lease_ground(text: str, policy: str, request: pytest.FixtureRequest) -> None:
    run(text, policy, request.node.callspec.id)
