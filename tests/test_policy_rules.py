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

import pytest

from kemu.agents.launcher.runner import needs_root, run_scenario
from kemu.agents.scenario.parse import parse
from kemu.kernel_daemon.designs import BUILTIN

LEASE_POLICIES = ("layout-lease", "layout-lease-exclusive-checked")
LL_ONLY = ("layout-lease",)
ALL_POLICIES = tuple(BUILTIN)

def run(text: str, policy: str, name: str) -> None:
    """Run one scenario under ``policy``; every expectation must hold."""
    scenario = parse(text, name)
    reason = needs_root(scenario, "emulator")
    if reason:
        pytest.skip(reason)
    outcome = run_scenario(scenario, "emulator", policy, show_pids=False)
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
B: fallocate(b, FALLOC_FL_KEEP_SIZE, 0, 65536)      => 0
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
    "xfs_truncate_punch_reflink_fallocate_break_an_unmapped_file": (("layout-lease",), """
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
A: fcntl(fd, F_SETLEASE, F_LAYOUT)                  => 0
B: fallocate(b, FALLOC_FL_KEEP_SIZE, 0, 65536) &
A: signals()                                        => [{"si_signo": SIGIO, "si_code": SI_KERNEL}]
A: fcntl(fd, F_SETLEASE, F_UNLCK)                   => 0
B: join                                             => 0
"""),
    "layout_and_ordinary_leases_never_conflict_open_breaks_only_the_ordinary": (LL_ONLY, """
set lease_break_time = 30
set step_timeout = 10
A: signal(SIGIO, "record")                          => 0
A: fd = open("/f", O_RDONLY|O_CREAT, 0o644)         => 3
A: fcntl(fd, F_SETLEASE, F_LAYOUT)                  => 0
C: signal(SIGIO, "record")                          => 0
C: c = open("/f", O_RDONLY)                         => 3
C: fcntl(c, F_SETLEASE, F_RDLCK)                    => 0
B: open("/f", O_RDWR) &
C: signals()                                        => [{"si_signo": SIGIO, "si_code": SI_KERNEL}]
A: signals()                                        => []
C: fcntl(c, F_SETLEASE, F_UNLCK)                    => 0
B: join                                             => 3
A: fcntl(fd, F_GETLEASE)                            => F_LAYOUT
A: locks()                                          => [{"state": "ACTIVE", "type": "READ", "path": "/f"}]
"""),
}


@pytest.mark.timeout(60)
@pytest.mark.parametrize(("text", "policy"), cases(COMMON))
def test_common_layout_lease_ground(text: str, policy: str, request: pytest.FixtureRequest) -> None:
    run(text, policy, request.node.callspec.id)


# --- map-direct ----------------------------------------------------------------------

MD = ("map-direct",)
MAP_DIRECT = {
    "mmap_reflinked_file_is_EPERM": (("map-direct", "map-direct-sealed"), """
A: fd = open("/f", O_RDWR|O_CREAT, 0o644)           => 3
A: pwrite(fd, "F" * 8192, 0)                        => 8192
A: r = open("/r", O_RDWR|O_CREAT, 0o644)            => 4
A: clone(fd, r)                                     => 0
A: mmap(8192, PROT_READ|PROT_WRITE, MAP_SHARED_VALIDATE|MAP_DIRECT, r, 0)  => EPERM
A: mmap(8192, PROT_READ|PROT_WRITE, MAP_SHARED_VALIDATE|MAP_DIRECT, fd, 0) => EPERM
A: mmap(8192, PROT_READ|PROT_WRITE, MAP_SHARED, r, 0) => ok
A: locks()                                          => []
"""),
    "mmap_not_dax_is_EPERM": (("map-direct", "map-direct-sealed"), """
A: mmap(8192, PROT_READ|PROT_WRITE, MAP_SHARED_VALIDATE|MAP_DIRECT|MAP_ANONYMOUS, -1, 0) => EPERM
"""),
    "mmap_by_neither_owner_nor_root_is_EACCES": (("map-direct", "map-direct-sealed"), """
A: fd = open("/f", O_RDWR|O_CREAT, 0o666)           => 3
A: ftruncate(fd, 8192)                              => 0
A: mkdir("/d", 0o755)                               => 0
A: chmod("/d", 0o777)                               => 0
B: b = open("/f", O_RDWR)                           => 3
B: mmap(4096, PROT_READ, MAP_PRIVATE|MAP_ANONYMOUS, -1, 0) => ok
B: setuid(1000)                                     => 0
B: mmap(8192, PROT_READ|PROT_WRITE, MAP_SHARED_VALIDATE|MAP_DIRECT, b, 0) => EACCES
B: mmap(8192, PROT_READ|PROT_WRITE, MAP_SHARED, b, 0) => ok
B: own = open("/d/own", O_RDWR|O_CREAT, 0o644)      => 4
B: ftruncate(own, 8192)                             => 0
B: mmap(8192, PROT_READ|PROT_WRITE, MAP_SHARED_VALIDATE|MAP_DIRECT, own, 0) => ok
A: mmap(8192, PROT_READ|PROT_WRITE, MAP_SHARED_VALIDATE|MAP_DIRECT, fd, 0) => ok
"""),
    "mmap_unknown_flag_under_MAP_SHARED_VALIDATE_is_EOPNOTSUPP": (MD, """
A: fd = open("/f", O_RDWR|O_CREAT, 0o644)           => 3
A: ftruncate(fd, 8192)                              => 0
A: mmap(8192, PROT_READ|PROT_WRITE, MAP_SHARED_VALIDATE|MAP_DIRECT|0x800000, fd, 0) => EOPNOTSUPP
A: locks()                                          => []
A: mmap(8192, PROT_READ|PROT_WRITE, MAP_SHARED|MAP_DIRECT|0x800000, fd, 0) => ok
"""),
    "plain_MAP_SHARED_silently_drops_MAP_DIRECT": (MD, """
set lease_break_time = 30
set step_timeout = 10
A: signal(SIGIO, "record")                          => 0
A: fd = open("/f", O_RDWR|O_CREAT, 0o644)           => 3
A: ftruncate(fd, 8192)                              => 0
A: p = mmap(8192, PROT_READ|PROT_WRITE, MAP_SHARED|MAP_DIRECT, fd, 0) => ok
A: locks()                                          => []
B: b = open("/f", O_RDWR)                           => 3
B: pwrite(b, "plain", 0)                            => 5
B: truncate("/f", 4096)                             => 0
A: signals()                                        => []
A: ctx = ibv_open_device()                          => 4
A: ibv_reg_mr(ctx, p, 4096, IBV_ACCESS_LOCAL_WRITE|IBV_ACCESS_REMOTE_WRITE) => EOPNOTSUPP
"""),
    "lease_lives_with_the_mapping_fork_shares_it_last_munmap_ends_it": (MD, """
set lease_break_time = 30
set step_timeout = 10
A: signal(SIGIO, "record")                          => 0
A: fd = open("/f", O_RDWR|O_CREAT, 0o644)           => 3
A: ftruncate(fd, 8192)                              => 0
A: p = mmap(8192, PROT_READ|PROT_WRITE, MAP_SHARED_VALIDATE|MAP_DIRECT, fd, 0) => ok
A: locks()                                          => [{"state": "ACTIVE", "path": "/f"}]
A: close(fd)                                        => 0
A: locks()                                          => [{"state": "ACTIVE", "path": "/f"}]
A: fork() as C
A: munmap(p, 8192)                                  => 0
A: locks()                                          => [{"state": "ACTIVE", "path": "/f"}]
B: truncate("/f", 4096) &
A: signals()                                        => [{"si_signo": SIGIO, "si_code": SI_KERNEL}]
C: signals()                                        => []
C: locks()                                          => [{"state": "BREAKING", "path": "/f"}, {"state": "BREAKER", "waiter": True}]
C: munmap(p, 8192)                                  => 0
B: join                                             => 0
A: locks()                                          => []
"""),
    "breakers_write_by_anyone_size_change_punch_reflink_fallocate_signal_and_wait_for_munmap": (MD, """
set lease_break_time = 30
set step_timeout = 10
A: signal(SIGIO, "record")                          => 0
A: fd = open("/f", O_RDWR|O_CREAT, 0o644)           => 3
A: ftruncate(fd, 16384)                             => 0
A: m = dup(fd)                                      => 4
A: fcntl(fd, F_SETSIG, SIGIO)                       => 0
A: p = mmap(16384, PROT_READ|PROT_WRITE, MAP_SHARED_VALIDATE|MAP_DIRECT, m, 0) => ok
B: b = open("/f", O_RDWR)                           => 3
B: pwrite(b, "other", 0) &
A: signals()                                        => [{"si_signo": SIGIO, "si_code": POLL_MSG, "si_fd": 4}]
A: munmap(p, 16384)                                 => 0
B: join                                             => 5
A: p = mmap(16384, PROT_READ|PROT_WRITE, MAP_SHARED_VALIDATE|MAP_DIRECT, m, 0) => ok
B: ftruncate(b, 20480) &
A: signals()                                        => [{"si_signo": SIGIO, "si_code": SI_KERNEL}]
A: munmap(p, 16384)                                 => 0
B: join                                             => 0
A: p = mmap(16384, PROT_READ|PROT_WRITE, MAP_SHARED_VALIDATE|MAP_DIRECT, m, 0) => ok
B: truncate("/f", 16384) &
A: signals()                                        => [{"si_signo": SIGIO, "si_code": SI_KERNEL}]
A: munmap(p, 16384)                                 => 0
B: join                                             => 0
A: p = mmap(16384, PROT_READ|PROT_WRITE, MAP_SHARED_VALIDATE|MAP_DIRECT, m, 0) => ok
B: fallocate(b, FALLOC_FL_PUNCH_HOLE|FALLOC_FL_KEEP_SIZE, 0, 4096) &
A: signals()                                        => [{"si_signo": SIGIO, "si_code": SI_KERNEL}]
A: munmap(p, 16384)                                 => 0
B: join                                             => 0
A: p = mmap(16384, PROT_READ|PROT_WRITE, MAP_SHARED_VALIDATE|MAP_DIRECT, m, 0) => ok
B: fallocate(b, 0, 0, 20480) &
A: signals()                                        => [{"si_signo": SIGIO, "si_code": SI_KERNEL}]
A: munmap(p, 16384)                                 => 0
B: join                                             => 0
B: stat("/f")                                       => {"st_size": 20480}
A: p = mmap(16384, PROT_READ|PROT_WRITE, MAP_SHARED_VALIDATE|MAP_DIRECT, m, 0) => ok
B: g = open("/g", O_RDWR|O_CREAT, 0o644)            => 4
B: clone(g, b) &
A: signals()                                        => [{"si_signo": SIGIO, "si_code": SI_KERNEL}]
A: munmap(p, 16384)                                 => 0
B: join                                             => 0
B: stat("/f")                                       => {"st_size": 0}
"""),
    "breaker_sleeps_interruptibly_and_the_break_is_not_cancelled": (MD, """
set lease_break_time = 30
set step_timeout = 10
A: fd = open("/f", O_RDWR|O_CREAT, 0o644)           => 3
A: ftruncate(fd, 8192)                              => 0
A: signal(SIGIO, "record")                          => 0
A: p = mmap(8192, PROT_READ|PROT_WRITE, MAP_SHARED_VALIDATE|MAP_DIRECT, fd, 0) => ok
B: signal(SIGUSR1, "record")                        => 0
B: truncate("/f", 0) &
!signal B SIGUSR1
B: join                                             => EINTR
B: stat("/f")                                       => {"st_size": 8192}
A: locks()                                          => [{"state": "BREAKING", "path": "/f"}]
A: munmap(p, 8192)                                  => 0
A: locks()                                          => []
B: truncate("/f", 0)                                => 0
"""),
    "holder_write_breaks_its_own_lease": (MD, """
set lease_break_time = 0.3
A: signal(SIGIO, "record-restart")                  => 0
A: signal(SIGBUS, "record")                         => 0
A: fd = open("/f", O_RDWR|O_CREAT, 0o644)           => 3
A: ftruncate(fd, 8192)                              => 0
A: p = mmap(8192, PROT_READ|PROT_WRITE, MAP_SHARED_VALIDATE|MAP_DIRECT, fd, 0) => ok
A: pwrite(fd, "own", 0)                             => 3
A: signals()                                        => [{"si_signo": SIGIO, "si_code": SI_KERNEL}]
A: locks()                                          => []
A: load(p, 3)                                       => EFAULT
A: signals()                                        => [{"si_signo": SIGBUS, "si_code": 2}]
"""),
    "deadline_invalidates_mapping_removes_lease_revokes_mr": (MD, """
set lease_break_time = 0.3
A: signal(SIGIO, "ignore")                          => 0
A: signal(SIGBUS, "record")                         => 0
A: fd = open("/f", O_RDWR|O_CREAT, 0o644)           => 3
A: ftruncate(fd, 8192)                              => 0
A: p = mmap(8192, PROT_READ|PROT_WRITE, MAP_SHARED_VALIDATE|MAP_DIRECT, fd, 0) => ok
A: store(p, "kept")                                 => 4
A: ctx = ibv_open_device()                          => 4
A: mr = ibv_reg_mr(ctx, p, 8192, IBV_ACCESS_LOCAL_WRITE|IBV_ACCESS_REMOTE_WRITE) => ok
A: locks()                                          => [{"path": "/f"}, {"path": "/f"}]
A: send(R, mr)                                      => 0
R: m = recv()                                       => *
R: rdma_write(m.rkey, 0, "RDMA")                    => "IBV_WC_SUCCESS"
B: truncate("/f", 4096) &
B: join                                             => 0
A: locks()                                          => []
A: maps()                                           => [{"path": "/f", "invalid": True}]
A: load(p, 4)                                       => EFAULT
A: signals()                                        => [{"si_signo": SIGBUS, "si_code": 2}]
A: ibv_get_async_event(ctx)                         => {"event_type": "IBV_EVENT_MR_REVOKED"}
R: rdma_write(m.rkey, 0, "XXXX")                    => "IBV_WC_REM_ACCESS_ERR"
R: rdma_write(m.rkey, 4096, "YYYY")                 => "IBV_WC_REM_ACCESS_ERR"
C: g = open("/g", O_RDWR|O_CREAT, 0o644)            => 3
C: pwrite(g, "G" * 8192, 0)                         => 8192
B: b = open("/f", O_RDONLY)                         => 3
B: pread(b, 4, 0)                                   => b"RDMA"
C: pread(g, 8192, 0)                                => "G" * 8192
R: foreign_writes()                                 => []
"""),
    "reg_mr_over_a_mapping_invalidated_at_the_deadline_is_ENXIO": (MD, """
set lease_break_time = 0.3
A: signal(SIGIO, "ignore")                          => 0
A: fd = open("/f", O_RDWR|O_CREAT, 0o644)           => 3
A: ftruncate(fd, 8192)                              => 0
A: p = mmap(8192, PROT_READ|PROT_WRITE, MAP_SHARED_VALIDATE|MAP_DIRECT, fd, 0) => ok
B: truncate("/f", 4096) &
B: join                                             => 0
A: maps()                                           => [{"path": "/f", "invalid": True}]
A: ctx = ibv_open_device()                          => 4
A: ibv_reg_mr(ctx, p, 4096, IBV_ACCESS_LOCAL_WRITE|IBV_ACCESS_REMOTE_WRITE) => ENXIO
"""),
    "reg_mr_needs_a_MAP_DIRECT_mapping_with_an_unbroken_lease": (MD, """
set lease_break_time = 30
set step_timeout = 10
A: signal(SIGIO, "record")                          => 0
A: fd = open("/f", O_RDWR|O_CREAT, 0o644)           => 3
A: ftruncate(fd, 8192)                              => 0
A: ctx = ibv_open_device()                          => 4
A: plain = mmap(8192, PROT_READ|PROT_WRITE, MAP_SHARED, fd, 0) => ok
A: ibv_reg_mr(ctx, plain, 8192, IBV_ACCESS_LOCAL_WRITE|IBV_ACCESS_REMOTE_WRITE) => EOPNOTSUPP
A: anon = mmap(8192, PROT_READ|PROT_WRITE, MAP_PRIVATE|MAP_ANONYMOUS, -1, 0) => ok
A: ibv_reg_mr(ctx, anon, 8192, IBV_ACCESS_LOCAL_WRITE|IBV_ACCESS_REMOTE_WRITE) => ok
A: munmap(plain, 8192)                              => 0
A: p = mmap(8192, PROT_READ|PROT_WRITE, MAP_SHARED_VALIDATE|MAP_DIRECT, fd, 0) => ok
B: truncate("/f", 4096) &
A: signals()                                        => [{"si_signo": SIGIO, "si_code": SI_KERNEL}]
A: ibv_reg_mr(ctx, p, 8192, IBV_ACCESS_LOCAL_WRITE|IBV_ACCESS_REMOTE_WRITE) => ENXIO
A: munmap(p, 8192)                                  => 0
B: join                                             => 0
A: p = mmap(4096, PROT_READ|PROT_WRITE, MAP_SHARED_VALIDATE|MAP_DIRECT, fd, 0) => ok
A: ibv_reg_mr(ctx, p, 4096, IBV_ACCESS_LOCAL_WRITE|IBV_ACCESS_REMOTE_WRITE) => ok
"""),
    "mr_own_lease_is_silent_holds_the_file_and_is_revoked_at_the_deadline": (MD, """
set lease_break_time = 0.3
A: signal(SIGIO, "record")                          => 0
A: fd = open("/f", O_RDWR|O_CREAT, 0o644)           => 3
A: ftruncate(fd, 8192)                              => 0
A: p = mmap(8192, PROT_READ|PROT_WRITE, MAP_SHARED_VALIDATE|MAP_DIRECT, fd, 0) => ok
A: ctx = ibv_open_device()                          => 4
A: mr = ibv_reg_mr(ctx, p, 8192, IBV_ACCESS_LOCAL_WRITE|IBV_ACCESS_REMOTE_WRITE) => ok
A: send(R, mr)                                      => 0
R: m = recv()                                       => *
A: munmap(p, 8192)                                  => 0
A: close(fd)                                        => 0
A: locks()                                          => [{"state": "ACTIVE", "path": "/f"}]
R: rdma_write(m.rkey, 0, "live")                    => "IBV_WC_SUCCESS"
B: truncate("/f", 0) &
B: join                                             => 0
A: signals()                                        => []
A: locks()                                          => []
A: ibv_get_async_event(ctx)                         => {"event_type": "IBV_EVENT_MR_REVOKED"}
C: g = open("/g", O_RDWR|O_CREAT, 0o644)            => 3
C: pwrite(g, "G" * 8192, 0)                         => 8192
R: rdma_write(m.rkey, 0, "XXXX")                    => "IBV_WC_REM_ACCESS_ERR"
C: pread(g, 8192, 0)                                => "G" * 8192
R: foreign_writes()                                 => []
"""),
}


@pytest.mark.timeout(60)
@pytest.mark.parametrize(("text", "policy"), cases(MAP_DIRECT))
def test_map_direct(text: str, policy: str, request: pytest.FixtureRequest) -> None:
    run(text, policy, request.node.callspec.id)


# --- map-direct-sealed ---------------------------------------------------------------

SEALED = {
    "MAP_DIRECT_without_PROT_WRITE_is_EACCES": (("map-direct-sealed",), """
A: fd = open("/f", O_RDWR|O_CREAT, 0o644)           => 3
A: ftruncate(fd, 8192)                              => 0
A: mmap(8192, PROT_READ, MAP_SHARED_VALIDATE|MAP_DIRECT, fd, 0) => EACCES
A: mmap(8192, PROT_READ|PROT_WRITE, MAP_SHARED_VALIDATE|MAP_DIRECT, fd, 0) => ok
"""),
    "while_mapped_size_change_fallocate_reflink_are_ETXTBSY_for_everyone_no_signal": (
        ("map-direct-sealed",), """
set lease_break_time = 0.3
A: signal(SIGIO, "record")                          => 0
A: fd = open("/f", O_RDWR|O_CREAT, 0o644)           => 3
A: pwrite(fd, "F" * 8192, 0)                        => 8192
A: p = mmap(8192, PROT_READ|PROT_WRITE, MAP_SHARED_VALIDATE|MAP_DIRECT, fd, 0) => ok
B: b = open("/f", O_RDWR)                           => 3
B: g = open("/g", O_RDWR|O_CREAT, 0o644)            => 4
B: ftruncate(b, 4096)                               => ETXTBSY
B: ftruncate(b, 16384)                              => ETXTBSY
B: truncate("/f", 0)                                => ETXTBSY
B: fallocate(b, FALLOC_FL_PUNCH_HOLE|FALLOC_FL_KEEP_SIZE, 0, 4096) => ETXTBSY
B: clone(b, g)                                      => ETXTBSY
B: clone(g, b)                                      => ETXTBSY
A: ftruncate(fd, 0)                                 => ETXTBSY
A: truncate("/f", 0)                                => ETXTBSY
B: pwrite(b, "write", 0)                            => 5
A: signals()                                        => []
A: locks()                                          => []
B: stat("/f")                                       => {"st_size": 8192}
A: load(p, 5)                                       => b"write"
"""),
    "every_fallocate_mode_is_ETXTBSY_while_mapped": (("map-direct-sealed",), """
A: fd = open("/f", O_RDWR|O_CREAT, 0o644)           => 3
A: pwrite(fd, "F" * 8192, 0)                        => 8192
A: p = mmap(8192, PROT_READ|PROT_WRITE, MAP_SHARED_VALIDATE|MAP_DIRECT, fd, 0) => ok
B: b = open("/f", O_RDWR)                           => 3
B: fallocate(b, 0, 0, 16384)                        => ETXTBSY
B: fallocate(b, FALLOC_FL_KEEP_SIZE, 8192, 8192)    => ETXTBSY
B: fallocate(b, FALLOC_FL_ZERO_RANGE, 0, 4096)      => ETXTBSY
B: pread(b, 1, 0)                                   => b"F"
B: stat("/f")                                       => {"st_size": 8192}
"""),
    "a_write_that_extends_the_file_is_a_size_change_ETXTBSY": (("map-direct-sealed",), """
A: fd = open("/f", O_RDWR|O_CREAT, 0o644)           => 3
A: pwrite(fd, "F" * 8192, 0)                        => 8192
A: p = mmap(8192, PROT_READ|PROT_WRITE, MAP_SHARED_VALIDATE|MAP_DIRECT, fd, 0) => ok
B: b = open("/f", O_RDWR)                           => 3
B: pwrite(b, "past the end", 8192)                  => ETXTBSY
B: stat("/f")                                       => {"st_size": 8192}
"""),
    "the_seal_goes_with_the_last_MAP_DIRECT_mapping": (("map-direct-sealed",), """
A: fd = open("/f", O_RDWR|O_CREAT, 0o644)           => 3
A: ftruncate(fd, 8192)                              => 0
A: p = mmap(8192, PROT_READ|PROT_WRITE, MAP_SHARED_VALIDATE|MAP_DIRECT, fd, 0) => ok
A: q = mmap(8192, PROT_READ|PROT_WRITE, MAP_SHARED_VALIDATE|MAP_DIRECT, fd, 0) => ok
A: fork() as C
A: close(fd)                                        => 0
B: truncate("/f", 4096)                             => ETXTBSY
A: munmap(p, 8192)                                  => 0
A: munmap(q, 8192)                                  => 0
B: truncate("/f", 4096)                             => ETXTBSY
!kill C
B: truncate("/f", 4096)                             => 0
"""),
}


@pytest.mark.timeout(60)
@pytest.mark.parametrize(("text", "policy"), cases(SEALED))
def test_map_direct_sealed(text: str, policy: str, request: pytest.FixtureRequest) -> None:
    run(text, policy, request.node.callspec.id)


# --- layout-lease (and its option exclusive-checked) ----------------------------------

LAYOUT_LEASE = {
    "F_LAYOUT_granted_whatever_the_open_mode_F_GETLEASE_answers_F_LAYOUT": (LEASE_POLICIES, """
A: r = open("/f", O_RDONLY|O_CREAT, 0o644)          => 3
A: w = open("/f", O_WRONLY)                         => 4
A: fcntl(r, F_SETLEASE, F_RDLCK)                    => EAGAIN
A: fcntl(r, F_SETLEASE, F_LAYOUT)                   => 0
A: fcntl(r, F_GETLEASE)                             => F_LAYOUT
A: fcntl(w, F_SETLEASE, F_LAYOUT|F_EXCLUSIVE)       => 0
A: fcntl(w, F_GETLEASE)                             => F_LAYOUT
A: fcntl(w, F_SETLEASE, F_LAYOUT|F_EXCLUSIVE|64)    => EINVAL
A: locks()                                          => [{"state": "ACTIVE", "path": "/f"}, {"state": "ACTIVE", "path": "/f"}]
"""),
    "two_exclusive_leases_both_granted_or_EAGAIN_when_checked": (LEASE_POLICIES, """
A: fa = open("/f", O_RDWR|O_CREAT, 0o644)           => 3
B: fb = open("/f", O_RDWR)                          => 3
A: fcntl(fa, F_SETLEASE, F_LAYOUT|F_EXCLUSIVE)      => 0
B: fcntl(fb, F_SETLEASE, F_LAYOUT|F_EXCLUSIVE)      => 0 [layout-lease] => EAGAIN
B: fcntl(fb, F_SETLEASE, F_LAYOUT)                  => 0
B: locks()                                          => [{"state": "ACTIVE", "path": "/f"}, {"state": "ACTIVE", "path": "/f"}]
"""),
    "reg_mr_needs_the_callers_own_exclusive_lease_else_EPERM": (LEASE_POLICIES, """
A: fd = open("/f", O_RDWR|O_CREAT, 0o644)           => 3
A: ftruncate(fd, 8192)                              => 0
A: p = mmap(8192, PROT_READ|PROT_WRITE, MAP_SHARED, fd, 0) => ok
A: ctx = ibv_open_device()                          => 4
A: ibv_reg_mr(ctx, p, 8192, IBV_ACCESS_LOCAL_WRITE|IBV_ACCESS_REMOTE_WRITE) => EPERM
B: b = open("/f", O_RDWR)                           => 3
B: fcntl(b, F_SETLEASE, F_LAYOUT|F_EXCLUSIVE)       => 0
A: ibv_reg_mr(ctx, p, 8192, IBV_ACCESS_LOCAL_WRITE|IBV_ACCESS_REMOTE_WRITE) => EPERM
A: fcntl(fd, F_SETLEASE, F_LAYOUT)                  => 0
A: ibv_reg_mr(ctx, p, 8192, IBV_ACCESS_LOCAL_WRITE|IBV_ACCESS_REMOTE_WRITE) => EPERM
A: fcntl(fd, F_SETLEASE, F_LAYOUT|F_EXCLUSIVE)      => EAGAIN [layout-lease-exclusive-checked] => 0
B: fcntl(b, F_SETLEASE, F_UNLCK)                    => 0
A: fcntl(fd, F_SETLEASE, F_LAYOUT|F_EXCLUSIVE)      => 0
A: ibv_reg_mr(ctx, p, 8192, IBV_ACCESS_LOCAL_WRITE|IBV_ACCESS_REMOTE_WRITE) => ok
A: file_pins()                                      => [{"files": ["/f"], "pages": 2}]
"""),
    "foreign_exclusive_ETXTBSY_before_any_change_own_EDEADLK_normal_lease_still_told": (LEASE_POLICIES, """
set lease_break_time = 30
A: fd = open("/f", O_RDWR|O_CREAT, 0o644)           => 3
A: pwrite(fd, "A" * 8192, 0)                        => 8192
N: signal(SIGIO, "record")                          => 0
N: n = open("/f", O_RDONLY)                         => 3
N: fcntl(n, F_SETLEASE, F_LAYOUT)                   => 0
A: fcntl(fd, F_SETLEASE, F_LAYOUT|F_EXCLUSIVE)      => 0
B: b = open("/f", O_RDWR)                           => 3
B: truncate("/f", 4096)                             => ETXTBSY
B: stat("/f")                                       => {"st_size": 8192}
N: signals()                                        => [{"si_signo": SIGIO, "si_code": SI_KERNEL}]
N: fcntl(n, F_GETLEASE)                             => F_UNLCK
N: locks()                                          => [{"state": "ACTIVE"}, {"state": "BREAKING"}]
B: fallocate(b, FALLOC_FL_PUNCH_HOLE|FALLOC_FL_KEEP_SIZE, 0, 4096) => ETXTBSY
B: g = open("/g", O_RDWR|O_CREAT, 0o644)            => 4
B: clone(b, g)                                      => ETXTBSY
B: pwrite(b, "B", 0)                                => ETXTBSY
B: pread(b, 1, 0)                                   => b"A"
A: ftruncate(fd, 0)                                 => EDEADLK
A: pwrite(fd, "a", 0)                               => EDEADLK
A: pread(fd, 1, 0)                                  => b"A"
N: signals()                                        => []
"""),
    "normal_layout_lease_broken_the_Linux_way_SIGIO_deadline_removal": (LEASE_POLICIES, """
set lease_break_time = 0.3
A: signal(SIGIO, "record")                          => 0
A: fd = open("/f", O_RDWR|O_CREAT, 0o644)           => 3
A: ftruncate(fd, 8192)                              => 0
A: fcntl(fd, F_SETSIG, SIGIO)                       => 0
A: fcntl(fd, F_SETLEASE, F_LAYOUT)                  => 0
B: truncate("/f", 4096) &
B: join                                             => 0
A: signals()                                        => [{"si_signo": SIGIO, "si_code": POLL_MSG, "si_fd": 3}]
A: fcntl(fd, F_GETLEASE)                            => F_UNLCK
A: locks()                                          => []
B: stat("/f")                                       => {"st_size": 4096}
"""),
    "exclusive_lease_never_signalled_never_times_out": (LEASE_POLICIES, """
set lease_break_time = 0.2
A: signal(SIGIO, "record")                          => 0
A: fd = open("/f", O_RDWR|O_CREAT, 0o644)           => 3
A: ftruncate(fd, 8192)                              => 0
A: fcntl(fd, F_SETLEASE, F_LAYOUT|F_EXCLUSIVE)      => 0
B: truncate("/f", 0)                                => ETXTBSY
# the break time (0.2 s) passes; a longer wait shows the same
B: pause(0.5)                                       => 0
B: truncate("/f", 0)                                => ETXTBSY
A: signals()                                        => []
A: fcntl(fd, F_GETLEASE)                            => F_LAYOUT
A: locks()                                          => [{"state": "ACTIVE", "path": "/f"}]
!kill A
B: truncate("/f", 0)                                => 0
"""),
    "zombie_lease_refuses_truncate_authorises_no_pin_ends_at_dereg": (LEASE_POLICIES, """
set lease_break_time = 0.3
A: fd = open("/f", O_RDWR|O_CREAT, 0o644)           => 3
A: ftruncate(fd, 8192)                              => 0
A: fcntl(fd, F_SETLEASE, F_LAYOUT|F_EXCLUSIVE)      => 0
A: p = mmap(8192, PROT_READ|PROT_WRITE, MAP_SHARED, fd, 0) => ok
A: ctx = ibv_open_device()                          => 4
A: mr = ibv_reg_mr(ctx, p, 8192, IBV_ACCESS_LOCAL_WRITE|IBV_ACCESS_REMOTE_WRITE) => ok
A: fcntl(fd, F_SETLEASE, F_UNLCK)                   => EBUSY
A: munmap(p, 8192)                                  => 0
A: close(fd)                                        => 0
A: locks()                                          => [{"state": "ACTIVE", "path": "/f"}]
B: truncate("/f", 0)                                => ETXTBSY
A: f2 = open("/f", O_RDWR)                          => 3
A: q = mmap(8192, PROT_READ|PROT_WRITE, MAP_SHARED, f2, 0) => ok
A: ibv_reg_mr(ctx, q, 8192, IBV_ACCESS_LOCAL_WRITE|IBV_ACCESS_REMOTE_WRITE) => EPERM
A: fcntl(f2, F_GETLEASE)                            => F_UNLCK
A: ibv_dereg_mr(ctx, mr)                            => 0
A: locks()                                          => []
B: truncate("/f", 0)                                => 0
"""),
    "zombie_lease_ends_at_last_close_of_the_context_and_at_exit": (LEASE_POLICIES, """
A: f1 = open("/f1", O_RDWR|O_CREAT, 0o644)          => 3
A: ftruncate(f1, 4096)                              => 0
A: fcntl(f1, F_SETLEASE, F_LAYOUT|F_EXCLUSIVE)      => 0
A: p1 = mmap(4096, PROT_READ|PROT_WRITE, MAP_SHARED, f1, 0) => ok
A: c1 = ibv_open_device()                           => 4
A: ibv_reg_mr(c1, p1, 4096, IBV_ACCESS_LOCAL_WRITE) => ok
A: f2 = open("/f2", O_RDWR|O_CREAT, 0o644)          => 5
A: ftruncate(f2, 4096)                              => 0
A: fcntl(f2, F_SETLEASE, F_LAYOUT|F_EXCLUSIVE)      => 0
A: p2 = mmap(4096, PROT_READ|PROT_WRITE, MAP_SHARED, f2, 0) => ok
A: c2 = ibv_open_device()                           => 6
A: ibv_reg_mr(c2, p2, 4096, IBV_ACCESS_LOCAL_WRITE) => ok
A: munmap(p1, 4096)                                 => 0
A: munmap(p2, 4096)                                 => 0
A: close(f1)                                        => 0
A: close(f2)                                        => 0
B: truncate("/f1", 0)                               => ETXTBSY
B: truncate("/f2", 0)                               => ETXTBSY
A: close(c1)                                        => 0
B: truncate("/f1", 0)                               => 0
B: truncate("/f2", 0)                               => ETXTBSY
A: exit(0)
B: truncate("/f2", 0)                               => 0
B: locks()                                          => []
"""),
    "passed_context_receiver_holds_pins_may_not_pin_more_sender_exit_leaves_zombie": (LEASE_POLICIES, """
A: fd = open("/f", O_RDWR|O_CREAT, 0o644)           => 3
A: ftruncate(fd, 8192)                              => 0
A: fcntl(fd, F_SETLEASE, F_LAYOUT|F_EXCLUSIVE)      => 0
A: p = mmap(8192, PROT_READ|PROT_WRITE, MAP_SHARED, fd, 0) => ok
A: ctx = ibv_open_device()                          => 4
A: mr = ibv_reg_mr(ctx, p, 8192, IBV_ACCESS_LOCAL_WRITE|IBV_ACCESS_REMOTE_WRITE) => ok
A: sendfd(B, ctx)                                   => 0
B: bctx = recvfd()                                  => 3
B: file_pins()                                      => [{"files": ["/f"], "pages": 2}]
C: file_pins(B.pid)                                 => [{"files": ["/f"], "pages": 2}]
B: bf = open("/f", O_RDWR)                          => 4
B: q = mmap(8192, PROT_READ|PROT_WRITE, MAP_SHARED, bf, 0) => ok
B: ibv_reg_mr(bctx, q, 8192, IBV_ACCESS_LOCAL_WRITE|IBV_ACCESS_REMOTE_WRITE) => EPERM
A: close(ctx)                                       => 0
A: file_pins()                                      => []
!kill A
C: locks()                                          => [{"state": "ACTIVE", "path": "/f"}]
C: truncate("/f", 0)                                => ETXTBSY
B: ibv_reg_mr(bctx, q, 8192, IBV_ACCESS_LOCAL_WRITE|IBV_ACCESS_REMOTE_WRITE) => EPERM
B: close(bctx)                                      => 0
C: locks()                                          => []
C: truncate("/f", 0)                                => 0
"""),
    "forked_child_holds_the_pins_but_may_not_pin_under_the_parents_lease": (LL_ONLY, """
A: fd = open("/f", O_RDWR|O_CREAT, 0o644)           => 3
A: ftruncate(fd, 8192)                              => 0
A: fcntl(fd, F_SETLEASE, F_LAYOUT|F_EXCLUSIVE)      => 0
A: p = mmap(8192, PROT_READ|PROT_WRITE, MAP_SHARED, fd, 0) => ok
A: ctx = ibv_open_device()                          => 4
A: mr = ibv_reg_mr(ctx, p, 4096, IBV_ACCESS_LOCAL_WRITE|IBV_ACCESS_REMOTE_WRITE) => ok
A: fork() as K
K: file_pins()                                      => [{"files": ["/f"], "pages": 1}]
K: ibv_reg_mr(ctx, p + 4096, 4096, IBV_ACCESS_LOCAL_WRITE|IBV_ACCESS_REMOTE_WRITE) => EPERM
A: ibv_reg_mr(ctx, p + 4096, 4096, IBV_ACCESS_LOCAL_WRITE|IBV_ACCESS_REMOTE_WRITE) => ok
!kill A
B: truncate("/f", 0)                                => ETXTBSY
K: close(ctx)                                       => 0
K: close(fd)                                        => 0
K: munmap(p, 8192)                                  => 0
B: truncate("/f", 0)                                => 0
"""),
}


@pytest.mark.timeout(60)
@pytest.mark.parametrize(("text", "policy"), cases(LAYOUT_LEASE))
def test_layout_lease(text: str, policy: str, request: pytest.FixtureRequest) -> None:
    run(text, policy, request.node.callspec.id)


# --- mr-lease ------------------------------------------------------------------------

MR = ("mr-lease",)
MR_LEASE = {
    "reg_mr_without_the_callers_layout_lease_is_EPERM": (MR, """
A: fd = open("/f", O_RDWR|O_CREAT, 0o644)           => 3
A: ftruncate(fd, 8192)                              => 0
A: p = mmap(8192, PROT_READ|PROT_WRITE, MAP_SHARED, fd, 0) => ok
A: ctx = ibv_open_device()                          => 4
A: ibv_reg_mr(ctx, p, 8192, IBV_ACCESS_LOCAL_WRITE|IBV_ACCESS_REMOTE_WRITE) => EPERM
B: b = open("/f", O_RDWR)                           => 3
B: fcntl(b, F_SETLEASE, F_LAYOUT)                   => 0
A: ibv_reg_mr(ctx, p, 8192, IBV_ACCESS_LOCAL_WRITE|IBV_ACCESS_REMOTE_WRITE) => EPERM
A: fcntl(fd, F_SETLEASE, F_LAYOUT)                  => 0
A: ibv_reg_mr(ctx, p, 8192, IBV_ACCESS_LOCAL_WRITE|IBV_ACCESS_REMOTE_WRITE) => ok
"""),
    "mr_keeps_the_lease_across_close_munmap_exit_passing_the_context_breaks_nothing": (MR, """
set lease_break_time = 0.3
A: signal(SIGIO, "record")                          => 0
A: fd = open("/f", O_RDWR|O_CREAT, 0o644)           => 3
A: ftruncate(fd, 8192)                              => 0
A: fcntl(fd, F_SETLEASE, F_LAYOUT)                  => 0
A: p = mmap(8192, PROT_READ|PROT_WRITE, MAP_SHARED, fd, 0) => ok
A: ctx = ibv_open_device()                          => 4
A: mr = ibv_reg_mr(ctx, p, 8192, IBV_ACCESS_LOCAL_WRITE|IBV_ACCESS_REMOTE_WRITE) => ok
A: send(R, mr)                                      => 0
R: m = recv()                                       => *
A: munmap(p, 8192)                                  => 0
A: close(fd)                                        => 0
A: locks()                                          => [{"state": "ACTIVE", "path": "/f"}]
A: sendfd(B, ctx)                                   => 0
B: bctx = recvfd()                                  => 3
A: close(ctx)                                       => 0
!kill A
B: locks()                                          => [{"state": "ACTIVE", "path": "/f"}]
B: file_pins()                                      => [{"files": ["/f"], "valid": True}]
R: rdma_write(m.rkey, 0, "kept")                    => "IBV_WC_SUCCESS"
B: f = open("/f", O_RDONLY)                         => 4
B: pread(f, 4, 0)                                   => b"kept"
B: ibv_get_async_event(bctx)                        => EAGAIN
B: close(bctx)                                      => 0
B: locks()                                          => []
"""),
    "break_told_per_mr_as_async_event_no_sigio_fenced_at_deadline_breaker_proceeds": (MR, """
set lease_break_time = 0.3
A: signal(SIGIO, "record")                          => 0
A: fd = open("/f", O_RDWR|O_CREAT, 0o644)           => 3
A: ftruncate(fd, 8192)                              => 0
A: fcntl(fd, F_SETSIG, SIGIO)                       => 0
A: fcntl(fd, F_SETLEASE, F_LAYOUT)                  => 0
A: p = mmap(8192, PROT_READ|PROT_WRITE, MAP_SHARED, fd, 0) => ok
A: ctx = ibv_open_device()                          => 4
A: m1 = ibv_reg_mr(ctx, p, 4096, IBV_ACCESS_LOCAL_WRITE|IBV_ACCESS_REMOTE_WRITE) => ok
A: m2 = ibv_reg_mr(ctx, p + 4096, 4096, IBV_ACCESS_LOCAL_WRITE|IBV_ACCESS_REMOTE_WRITE) => ok
A: send(R, m2)                                      => 0
R: m = recv()                                       => *
B: truncate("/f", 0) &
B: join                                             => 0
A: signals()                                        => []
A: ibv_get_async_event(ctx)                         => {"event_type": "IBV_EVENT_LEASE_BREAK"}
A: ibv_get_async_event(ctx)                         => {"event_type": "IBV_EVENT_LEASE_BREAK"}
A: ibv_get_async_event(ctx)                         => {"event_type": "IBV_EVENT_MR_REVOKED"}
A: ibv_get_async_event(ctx)                         => {"event_type": "IBV_EVENT_MR_REVOKED"}
A: ibv_get_async_event(ctx)                         => EAGAIN
A: locks()                                          => []
A: file_pins()                                      => [{"valid": False}, {"valid": False}]
C: g = open("/g", O_RDWR|O_CREAT, 0o644)            => 3
C: pwrite(g, "G" * 8192, 0)                         => 8192
R: rdma_write(m.rkey, 0, "XXXX")                    => "IBV_WC_REM_ACCESS_ERR"
C: pread(g, 8192, 0)                                => "G" * 8192
R: foreign_writes()                                 => []
"""),
    "exclusive_lease_held_by_an_mr_makes_the_breaker_ETXTBSY": (MR, """
set lease_break_time = 0.3
A: fd = open("/f", O_RDWR|O_CREAT, 0o644)           => 3
A: ftruncate(fd, 8192)                              => 0
A: fcntl(fd, F_SETLEASE, F_LAYOUT|F_EXCLUSIVE)      => 0
A: p = mmap(8192, PROT_READ|PROT_WRITE, MAP_SHARED, fd, 0) => ok
A: ctx = ibv_open_device()                          => 4
A: mr = ibv_reg_mr(ctx, p, 8192, IBV_ACCESS_LOCAL_WRITE|IBV_ACCESS_REMOTE_WRITE) => ok
B: truncate("/f", 0)                                => ETXTBSY
B: b = open("/f", O_RDWR)                           => 3
B: fallocate(b, FALLOC_FL_PUNCH_HOLE|FALLOC_FL_KEEP_SIZE, 0, 4096) => ETXTBSY
A: ibv_get_async_event(ctx)                         => EAGAIN
A: file_pins()                                      => [{"files": ["/f"], "valid": True}]
"""),
}


@pytest.mark.timeout(60)
@pytest.mark.parametrize(("text", "policy"), cases(MR_LEASE))
def test_mr_lease(text: str, policy: str, request: pytest.FixtureRequest) -> None:
    run(text, policy, request.node.callspec.id)


# --- upstream ------------------------------------------------------------------------

UP = ("upstream",)
UPSTREAM = {
    "reg_mr_of_dax_without_odp_is_EOPNOTSUPP_anonymous_memory_works": (UP, """
A: fd = open("/f", O_RDWR|O_CREAT, 0o644)           => 3
A: ftruncate(fd, 8192)                              => 0
A: ctx = ibv_open_device()                          => 4
A: p = mmap(8192, PROT_READ|PROT_WRITE, MAP_SHARED, fd, 0) => ok
A: ibv_reg_mr(ctx, p, 8192, IBV_ACCESS_LOCAL_WRITE|IBV_ACCESS_REMOTE_WRITE) => EOPNOTSUPP
A: priv = mmap(8192, PROT_READ|PROT_WRITE, MAP_PRIVATE, fd, 0) => ok
A: ibv_reg_mr(ctx, priv, 8192, IBV_ACCESS_LOCAL_WRITE|IBV_ACCESS_REMOTE_WRITE) => EOPNOTSUPP
A: ibv_reg_mr(ctx, p, 8192, IBV_ACCESS_LOCAL_WRITE|IBV_ACCESS_REMOTE_WRITE|IBV_ACCESS_ON_DEMAND) => ok
A: q = mmap(8192, PROT_READ|PROT_WRITE, MAP_PRIVATE|MAP_ANONYMOUS, -1, 0) => ok
A: mr = ibv_reg_mr(ctx, q, 8192, IBV_ACCESS_LOCAL_WRITE|IBV_ACCESS_REMOTE_WRITE) => ok
A: send(R, mr)                                      => 0
R: m = recv()                                       => *
R: rdma_write(m.rkey, 4096, "anon")                 => "IBV_WC_SUCCESS"
A: load(q + 4096, 4)                                => b"anon"
A: file_pins()                                      => [{"files": ["/f"], "pages": 0, "odp": True}, {"files": [], "pages": 2, "odp": False}]
"""),
    "truncate_and_punch_wait_for_a_short_term_pin_nothing_lands_in_freed_blocks": (
        ("upstream", "legacy"), """
set dio_time = 0.4
A: fd = open("/f", O_RDWR|O_CREAT, 0o644)           => 3
A: ftruncate(fd, 16384)                             => 0
A: p = mmap(16384, PROT_READ|PROT_WRITE, MAP_SHARED, fd, 0) => ok
A: s = open("/src", O_RDWR|O_CREAT, 0o644)          => 4
A: pwrite(s, "D" * 16384, 0)                        => 16384
A: dio_read(s, p, 8192, 0) &
B: b = open("/f", O_RDWR)                           => 3
B: fallocate(b, FALLOC_FL_PUNCH_HOLE|FALLOC_FL_KEEP_SIZE, 0, 8192) &
C: g = open("/g", O_RDWR|O_CREAT, 0o644)            => 3
C: pwrite(g, "G" * 8192, 0)                         => 8192
A: join                                             => 8192
B: join                                             => 0
A: dio_read(s, p + 8192, 8192, 0) &
B: truncate("/f", 8192) &
C: h = open("/h", O_RDWR|O_CREAT, 0o644)            => 4
C: pwrite(h, "H" * 8192, 0)                         => 8192
A: join                                             => 8192
B: join                                             => 0
C: pread(g, 8192, 0)                                => "D" * 8192 [legacy] => "G" * 8192
C: pread(h, 8192, 0)                                => * [legacy] => "H" * 8192
C: foreign_writes()                                 => * [legacy] => []
"""),
    "F_LAYOUT_is_EINVAL_MAP_DIRECT_unknown_MAP_SYNC_needs_validate_and_dax": (UP, """
A: fd = open("/f", O_RDWR|O_CREAT, 0o644)           => 3
A: ftruncate(fd, 8192)                              => 0
A: r = open("/f", O_RDONLY)                         => 4
A: fcntl(fd, F_SETLEASE, F_LAYOUT)                  => EINVAL
A: fcntl(fd, F_SETLEASE, F_LAYOUT|F_EXCLUSIVE)      => EINVAL
A: close(fd)                                        => 0
A: fcntl(r, F_SETLEASE, F_RDLCK)                    => 0
A: fcntl(r, F_SETLEASE, F_UNLCK)                    => 0
A: mmap(8192, PROT_READ, MAP_SHARED_VALIDATE|MAP_DIRECT, r, 0) => EOPNOTSUPP
A: mmap(8192, PROT_READ, MAP_SHARED|MAP_DIRECT, r, 0) => ok
A: mmap(8192, PROT_READ, MAP_SHARED_VALIDATE|MAP_SYNC, r, 0) => ok
A: mmap(8192, PROT_READ, MAP_SHARED|MAP_SYNC, r, 0)  => ok
A: mmap(8192, PROT_READ|PROT_WRITE, MAP_SHARED_VALIDATE|MAP_SYNC|MAP_ANONYMOUS, -1, 0) => EOPNOTSUPP
A: locks()                                          => []
"""),
}


@pytest.mark.timeout(60)
@pytest.mark.parametrize(("text", "policy"), cases(UPSTREAM))
def test_upstream(text: str, policy: str, request: pytest.FixtureRequest) -> None:
    run(text, policy, request.node.callspec.id)


# --- legacy --------------------------------------------------------------------------

LEGACY = {
    "plain_mmap_pin_without_lease_truncate_frees_pinned_blocks_foreign_write": (("legacy",), """
A: signal(SIGBUS, "record")                         => 0
A: signal(SIGIO, "record")                          => 0
A: fd = open("/f", O_RDWR|O_CREAT, 0o644)           => 3
A: ftruncate(fd, 8192)                              => 0
A: fcntl(fd, F_SETLEASE, F_LAYOUT)                  => EINVAL
A: mmap(8192, PROT_READ|PROT_WRITE, MAP_SHARED_VALIDATE|MAP_DIRECT, fd, 0) => EOPNOTSUPP
A: p = mmap(8192, PROT_READ|PROT_WRITE, MAP_SHARED, fd, 0) => ok
A: store(p + 4096, "y")                             => 1
A: ctx = ibv_open_device()                          => 4
A: mr = ibv_reg_mr(ctx, p, 8192, IBV_ACCESS_LOCAL_WRITE|IBV_ACCESS_REMOTE_WRITE) => ok
A: locks()                                          => []
A: send(R, mr)                                      => 0
R: m = recv()                                       => *
B: truncate("/f", 4096)                             => 0
A: signals()                                        => []
A: ibv_get_async_event(ctx)                         => EAGAIN
A: load(p + 4096, 1)                                => EFAULT
A: signals()                                        => [{"si_signo": SIGBUS, "si_code": 2}]
C: g = open("/g", O_RDWR|O_CREAT, 0o644)            => 3
C: pwrite(g, "G" * 4096, 0)                         => 4096
R: rdma_write(m.rkey, 4096, "XXXX")                 => "IBV_WC_SUCCESS"
C: pread(g, 4, 0)                                   => b"XXXX"
R: foreign_writes()                                 => [{"via": "RDMA WRITE", "file": "/f", "offset": 4096, "into": "/g", "into_offset": 0}]
"""),
    "pins_live_until_dereg_or_the_last_reference_to_the_context": (("legacy",), """
A: fd = open("/f", O_RDWR|O_CREAT, 0o644)           => 3
A: ftruncate(fd, 8192)                              => 0
A: p = mmap(8192, PROT_READ|PROT_WRITE, MAP_SHARED, fd, 0) => ok
A: ctx = ibv_open_device()                          => 4
A: m1 = ibv_reg_mr(ctx, p, 4096, IBV_ACCESS_LOCAL_WRITE|IBV_ACCESS_REMOTE_WRITE) => ok
A: m2 = ibv_reg_mr(ctx, p + 4096, 4096, IBV_ACCESS_LOCAL_WRITE|IBV_ACCESS_REMOTE_WRITE) => ok
A: send(R, m1)                                      => 0
A: send(R, m2)                                      => 0
R: r1 = recv()                                      => *
R: r2 = recv()                                      => *
A: ibv_dereg_mr(ctx, m1)                            => 0
R: rdma_write(r1.rkey, 0, "gone")                   => "IBV_WC_REM_ACCESS_ERR"
A: sendfd(B, ctx)                                   => 0
B: bctx = recvfd()                                  => 3
!kill A
B: file_pins()                                      => [{"files": ["/f"], "pages": 1}]
R: rdma_write(r2.rkey, 0, "kept")                   => "IBV_WC_SUCCESS"
B: f = open("/f", O_RDONLY)                         => 4
B: pread(f, 4, 4096)                                => b"kept"
B: close(bctx)                                      => 0
R: rdma_write(r2.rkey, 0, "late")                   => "IBV_WC_REM_ACCESS_ERR"
B: kernel_stats()                                   => {"mrs": 0, "pinned_blocks": 0}
"""),
}


@pytest.mark.timeout(60)
@pytest.mark.parametrize(("text", "policy"), cases(LEGACY))
def test_legacy(text: str, policy: str, request: pytest.FixtureRequest) -> None:
    run(text, policy, request.node.callspec.id)


# --- busy-extent ------------------------------------------------------------------------

BUSY = {
    "truncate_succeeds_at_once_pinned_blocks_stay_busy_until_dereg": (("busy-extent",), """
A: signal(SIGIO, "record")                          => 0
A: fd = open("/f", O_RDWR|O_CREAT, 0o644)           => 3
A: ftruncate(fd, 8192)                              => 0
A: p = mmap(8192, PROT_READ|PROT_WRITE, MAP_SHARED, fd, 0) => ok
A: ctx = ibv_open_device()                          => 4
A: mr = ibv_reg_mr(ctx, p, 8192, IBV_ACCESS_LOCAL_WRITE|IBV_ACCESS_REMOTE_WRITE) => ok
A: send(R, mr)                                      => 0
R: m = recv()                                       => *
B: truncate("/f", 0)                                => 0
A: kernel_stats()                                   => {"busy_blocks": 2, "blocks_used": 2, "pinned_blocks": 2}
C: g = open("/g", O_RDWR|O_CREAT, 0o644)            => 3
C: pwrite(g, "G" * 8192, 0)                         => 8192
R: rdma_write(m.rkey, 0, "XXXX")                    => "IBV_WC_SUCCESS"
C: pread(g, 8192, 0)                                => "G" * 8192
R: foreign_writes()                                 => []
A: signals()                                        => []
A: locks()                                          => []
A: ibv_dereg_mr(ctx, mr)                            => 0
A: kernel_stats()                                   => {"busy_blocks": 0, "blocks_used": 2, "pinned_blocks": 0}
D: h = open("/h", O_RDWR|O_CREAT, 0o644)            => 3
D: pwrite(h, "H" * 8192, 0)                         => 8192
A: kernel_stats()                                   => {"blocks_used": 4}
"""),
    "hole_punch_and_unlink_of_pinned_blocks_are_busy_too": (("busy-extent",), """
A: fd = open("/f", O_RDWR|O_CREAT, 0o644)           => 3
A: pwrite(fd, "F" * 16384, 0)                       => 16384
A: p = mmap(16384, PROT_READ|PROT_WRITE, MAP_SHARED, fd, 0) => ok
A: ctx = ibv_open_device()                          => 4
A: mr = ibv_reg_mr(ctx, p, 8192, IBV_ACCESS_LOCAL_WRITE|IBV_ACCESS_REMOTE_WRITE) => ok
A: fallocate(fd, FALLOC_FL_PUNCH_HOLE|FALLOC_FL_KEEP_SIZE, 0, 16384) => 0
A: kernel_stats()                                   => {"busy_blocks": 2, "blocks_used": 2}
A: close(ctx)                                       => 0
A: kernel_stats()                                   => {"busy_blocks": 0, "blocks_used": 0}
"""),
    "a_passed_context_keeps_the_blocks_busy_the_last_holder_frees_them": (("busy-extent",), """
A: fd = open("/f", O_RDWR|O_CREAT, 0o644)           => 3
A: ftruncate(fd, 8192)                              => 0
A: p = mmap(8192, PROT_READ|PROT_WRITE, MAP_SHARED, fd, 0) => ok
A: ctx = ibv_open_device()                          => 4
A: mr = ibv_reg_mr(ctx, p, 8192, IBV_ACCESS_LOCAL_WRITE|IBV_ACCESS_REMOTE_WRITE) => ok
A: sendfd(B, ctx)                                   => 0
B: bctx = recvfd()                                  => 3
!kill A
C: truncate("/f", 0)                                => 0
C: kernel_stats()                                   => {"busy_blocks": 2}
C: g = open("/g", O_RDWR|O_CREAT, 0o644)            => 3
C: pwrite(g, "G" * 8192, 0)                         => 8192
C: kernel_stats()                                   => {"busy_blocks": 2, "blocks_used": 4}
!kill B
C: kernel_stats()                                   => {"busy_blocks": 0, "blocks_used": 2, "mrs": 0}
C: foreign_writes()                                 => []
"""),
    "direct_io_pins_keep_a_truncated_block_busy_until_the_dma_lands": (("busy-extent",), """
set dio_time = 0.3
A: fd = open("/f", O_RDWR|O_CREAT, 0o644)           => 3
A: pwrite(fd, "S" * 8192, 0)                        => 8192
A: p = mmap(8192, PROT_READ|PROT_WRITE, MAP_SHARED, fd, 0) => ok
A: dio_read(fd, p, 8192, 0) &
B: truncate("/f", 0)                                => 0
B: kernel_stats()                                   => {"busy_blocks": 2}
C: g = open("/g", O_RDWR|O_CREAT, 0o644)            => 3
C: pwrite(g, "G" * 8192, 0)                         => 8192
A: join                                             => 8192
C: pread(g, 8192, 0)                                => "G" * 8192
C: foreign_writes()                                 => []
C: kernel_stats()                                   => {"busy_blocks": 0}
"""),
}


@pytest.mark.timeout(60)
@pytest.mark.parametrize(("text", "policy"), cases(BUSY))
def test_busy_extent(text: str, policy: str, request: pytest.FixtureRequest) -> None:
    run(text, policy, request.node.callspec.id)


# --- on-demand paging (every policy) -------------------------------------------------

ODP = {
    "odp_pins_nothing_truncate_does_not_wait_later_access_translates_again": (ALL_POLICIES, """
set lease_break_time = 30
A: signal(SIGIO, "record")                          => 0
A: fd = open("/f", O_RDWR|O_CREAT, 0o644)           => 3
A: ftruncate(fd, 16384)                             => 0
A: p = mmap(16384, PROT_READ|PROT_WRITE, MAP_SHARED, fd, 0) => ok
A: ctx = ibv_open_device()                          => 4
A: mr = ibv_reg_mr(ctx, p, 16384, IBV_ACCESS_LOCAL_WRITE|IBV_ACCESS_REMOTE_WRITE|IBV_ACCESS_REMOTE_READ|IBV_ACCESS_ON_DEMAND) => ok
A: file_pins()                                      => [{"files": ["/f"], "pages": 0, "odp": True}]
A: kernel_stats()                                   => {"pinned_blocks": 0}
A: locks()                                          => []
A: send(R, mr)                                      => 0
R: m = recv()                                       => *
R: rdma_write(m.rkey, 8192, "before")               => "IBV_WC_SUCCESS"
B: b = open("/f", O_RDWR)                           => 3
B: pread(b, 6, 8192)                                => b"before"
B: truncate("/f", 8192)                             => 0
R: rdma_write(m.rkey, 8192, "past")                 => "IBV_WC_REM_ACCESS_ERR"
R: rdma_read(m.rkey, 12288, 4)                      => {"status": "IBV_WC_REM_ACCESS_ERR"}
B: fallocate(b, FALLOC_FL_PUNCH_HOLE|FALLOC_FL_KEEP_SIZE, 0, 4096) => 0
C: g = open("/g", O_RDWR|O_CREAT, 0o644)            => 3
C: pwrite(g, "G" * 16384, 0)                        => 16384
R: rdma_write(m.rkey, 0, "within")                  => "IBV_WC_SUCCESS"
B: pread(b, 6, 0)                                   => b"within"
B: ftruncate(b, 16384)                              => 0
R: rdma_write(m.rkey, 12288, "again")               => "IBV_WC_SUCCESS"
B: pread(b, 5, 12288)                               => b"again"
C: pread(g, 16384, 0)                               => "G" * 16384
R: foreign_writes()                                 => []
A: signals()                                        => []
A: ibv_get_async_event(ctx)                         => EAGAIN
"""),
}


@pytest.mark.timeout(60)
@pytest.mark.parametrize(("text", "policy"), cases(ODP))
def test_on_demand_paging(text: str, policy: str, request: pytest.FixtureRequest) -> None:
    run(text, policy, request.node.callspec.id)


# --- block map operations (the filesystem under every design) ------------------------

BLOCK_MAP = {
    "fallocate_punch_hole_zero_range_keep_size_allocate": (("upstream",), """
A: fd = open("/f", O_RDWR|O_CREAT, 0o644)           => 3
A: pwrite(fd, "A" * 12288, 0)                       => 12288
A: kernel_stats()                                   => {"blocks_used": 3}
A: fallocate(fd, FALLOC_FL_PUNCH_HOLE, 4096, 4096)  => EOPNOTSUPP
A: fallocate(fd, FALLOC_FL_PUNCH_HOLE|FALLOC_FL_ZERO_RANGE|FALLOC_FL_KEEP_SIZE, 0, 4096) => EOPNOTSUPP
A: fallocate(fd, FALLOC_FL_PUNCH_HOLE|FALLOC_FL_KEEP_SIZE, 4096, 4096) => 0
A: kernel_stats()                                   => {"blocks_used": 2}
A: pread(fd, 3, 4095)                               => b"A\\x00\\x00"
A: pread(fd, 2, 8191)                               => b"\\x00A"
A: lseek(fd, 0, SEEK_HOLE)                          => 4096
A: lseek(fd, 4096, SEEK_DATA)                       => 8192
A: fstat(fd)                                        => {"st_size": 12288}
A: fallocate(fd, FALLOC_FL_PUNCH_HOLE|FALLOC_FL_KEEP_SIZE, 100, 200) => 0
A: pread(fd, 3, 99)                                 => b"A\\x00\\x00"
A: pread(fd, 2, 299)                                => b"\\x00A"
A: kernel_stats()                                   => {"blocks_used": 2}
A: fallocate(fd, FALLOC_FL_ZERO_RANGE, 8192, 10)    => 0
A: pread(fd, 11, 8192)                              => b"\\x00" * 10 + b"A"
A: kernel_stats()                                   => {"blocks_used": 2}
A: fallocate(fd, FALLOC_FL_KEEP_SIZE, 0, 32768)     => 0
A: fstat(fd)                                        => {"st_size": 12288}
A: kernel_stats()                                   => {"blocks_used": 8}
A: fallocate(fd, 0, 0, 20000)                       => 0
A: fstat(fd)                                        => {"st_size": 20000}
A: pread(fd, 4, 4096)                               => b"\\x00\\x00\\x00\\x00"
"""),
    "reflink_shares_blocks_then_copy_on_write_keeps_the_other_file_intact": (("upstream",), """
A: s = open("/s", O_RDWR|O_CREAT, 0o644)            => 3
A: pwrite(s, "S" * 8192, 0)                         => 8192
A: d = open("/d", O_RDWR|O_CREAT, 0o644)            => 4
A: pwrite(d, "old", 0)                              => 3
A: kernel_stats()                                   => {"blocks_used": 3}
B: bs = open("/s", O_RDONLY)                        => 3
B: bd = open("/d", O_RDWR)                          => 4
B: clone(bs, bd)                                    => 0
A: kernel_stats()                                   => {"blocks_used": 2}
A: fstat(d)                                         => {"st_size": 8192}
A: pread(d, 8192, 0)                                => "S" * 8192
A: pwrite(d, "D", 0)                                => 1
A: kernel_stats()                                   => {"blocks_used": 3}
A: pread(s, 1, 0)                                   => b"S"
A: p = mmap(8192, PROT_READ|PROT_WRITE, MAP_SHARED, s, 0) => ok
A: load(p + 4096, 1)                                => b"S"
A: store(p + 4096, "M")                             => 1
A: kernel_stats()                                   => {"blocks_used": 4}
A: load(p + 4096, 1)                                => b"M"
A: pread(s, 1, 4096)                                => b"M"
A: pread(d, 1, 4096)                                => b"S"
B: clone(bd, bd)                                    => EINVAL
"""),
    "direct_io_pins_the_buffer_for_the_transfer_only": (("upstream",), """
set dio_time = 0.2
A: fd = open("/f", O_RDWR|O_CREAT, 0o644)           => 3
A: ftruncate(fd, 8192)                              => 0
A: p = mmap(8192, PROT_READ|PROT_WRITE, MAP_SHARED, fd, 0) => ok
A: s = open("/src", O_RDWR|O_CREAT, 0o644)          => 4
A: pwrite(s, "D" * 8192, 0)                         => 8192
A: dio_read(s, p, 8192, 0) &
B: kernel_stats()                                   => {"pinned_blocks": 2}
A: join                                             => 8192
B: kernel_stats()                                   => {"pinned_blocks": 0}
A: load(p, 4)                                       => b"DDDD"
A: pread(fd, 4, 4096)                               => b"DDDD"
A: file_pins()                                      => []
"""),
    "store_after_a_load_through_a_PROT_READ_mapping_is_SIGSEGV": (("upstream",), """
A: fd = open("/f", O_RDWR|O_CREAT, 0o644)           => 3
A: pwrite(fd, "abcd", 0)                            => 4
A: p = mmap(4096, PROT_READ, MAP_SHARED, fd, 0)     => ok
A: load(p, 4)                                       => b"abcd"
A: store(p, "XXXX")                                 => killed SIGSEGV
B: b = open("/f", O_RDONLY)                         => 3
B: pread(b, 4, 0)                                   => b"abcd"
"""),
}

BLOCK_MAP_XFAIL: dict[str, str] = {}


@pytest.mark.timeout(60)
@pytest.mark.parametrize(("text", "policy"), cases(BLOCK_MAP, BLOCK_MAP_XFAIL))
def test_block_map(text: str, policy: str, request: pytest.FixtureRequest) -> None:
    run(text, policy, request.node.callspec.id)
