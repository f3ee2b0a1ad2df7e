"""The lease and signal behaviours checked against the host kernel and the emulator.

Each case is a multi-process scenario whose expectations were written for, and first
pass on, the host kernel (the oracle).  ``tests/test_leases.py`` runs every case on both
targets; ``docs/conformance.md`` is generated from this table
(``python tests/lease_cases.py > docs/conformance.md``) and a test keeps it equal.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Case:
    """One behaviour: what it shows, which part of linux.md it covers, the scenario."""

    name: str
    behaviour: str
    area: str
    scenario: str
    #: a divergence kept on purpose: (target it concerns, reason); empty when none
    divergence: str = ""
    #: the issue whose work added the behaviour (shown in the table's "new" column)
    new: str = ""


HOLDER = """
A: signal(SIGIO, "record")                     => 0
A: fd = open("/f", O_RDONLY|O_CREAT, 0o644)    => 3
"""

CASES: list[Case] = [
    # --- acquiring -------------------------------------------------------------------
    Case("read_lease_needs_no_writer", "F_RDLCK is refused (EAGAIN) while the file is open "
         "for writing anywhere, the caller's own descriptor included", "acquiring", """
A: w = open("/f", O_RDWR|O_CREAT, 0o644)        => 3
A: fcntl(w, F_SETLEASE, F_RDLCK)                => EAGAIN
A: r = open("/f", O_RDONLY)                     => 4
A: fcntl(r, F_SETLEASE, F_RDLCK)                => EAGAIN
A: close(w)                                     => 0
B: w2 = open("/f", O_WRONLY)                    => 3
A: fcntl(r, F_SETLEASE, F_RDLCK)                => EAGAIN
B: close(w2)                                    => 0
A: fcntl(r, F_SETLEASE, F_RDLCK)                => 0
A: fcntl(r, F_GETLEASE)                         => F_RDLCK
"""),
    Case("write_lease_needs_sole_open", "F_WRLCK needs the caller's description to be the "
         "only open of the file: a dup and an O_PATH open do not count, the caller's own "
         "second open and another process's open do; a read-only descriptor may hold it",
         "acquiring", """
A: fd = open("/f", O_RDONLY|O_CREAT, 0o644)     => 3
A: fcntl(fd, F_SETLEASE, F_WRLCK)               => 0
A: fcntl(fd, F_GETLEASE)                        => F_WRLCK
A: fcntl(fd, F_SETLEASE, F_UNLCK)               => 0
A: d = dup(fd)                                  => 4
A: fcntl(d, F_SETLEASE, F_WRLCK)                => 0
A: fcntl(fd, F_SETLEASE, F_UNLCK)               => 0
A: p = open("/f", O_PATH)                       => 5
A: fcntl(fd, F_SETLEASE, F_WRLCK)               => 0
A: fcntl(fd, F_SETLEASE, F_UNLCK)               => 0
A: again = open("/f", O_RDONLY)                 => 6
A: fcntl(fd, F_SETLEASE, F_WRLCK)               => EAGAIN
A: close(again)                                 => 0
B: o = open("/f", O_RDONLY)                     => 3
A: fcntl(fd, F_SETLEASE, F_WRLCK)               => EAGAIN
B: close(o)                                     => 0
A: fcntl(fd, F_SETLEASE, F_WRLCK)               => 0
"""),
    Case("upgrade_and_downgrade_in_place", "a lease changes type in place on the same "
         "description; an upgrade is refused while another process holds a read lease",
         "acquiring", """
A: fd = open("/f", O_RDONLY|O_CREAT, 0o644)     => 3
A: fcntl(fd, F_SETLEASE, F_RDLCK)               => 0
A: fcntl(fd, F_SETLEASE, F_WRLCK)               => 0
A: fcntl(fd, F_GETLEASE)                        => F_WRLCK
A: fcntl(fd, F_SETLEASE, F_RDLCK)               => 0
A: fcntl(fd, F_GETLEASE)                        => F_RDLCK
B: r = open("/f", O_RDONLY)                     => 3
B: fcntl(r, F_SETLEASE, F_RDLCK)                => 0
A: fcntl(fd, F_SETLEASE, F_WRLCK)               => EAGAIN
B: locks()                                      => [{"state": "ACTIVE", "type": "READ", "path": "/f"}, {"state": "ACTIVE", "type": "READ", "path": "/f"}]
A: fcntl(fd, F_SETLEASE, F_UNLCK)               => 0
A: fcntl(fd, F_SETLEASE, F_UNLCK)               => EAGAIN
B: locks()                                      => [{"state": "ACTIVE", "type": "READ", "path": "/f"}]
"""),
    Case("refusals_of_setlease", "F_SETLEASE refuses a directory and an unknown type "
         "(EINVAL, F_LAYOUT included), an O_PATH or closed descriptor (EBADF); F_UNLCK "
         "without a lease is EAGAIN", "acquiring", """
A: mkdir("/d", 0o755)                           => 0
A: d = open("/d", O_RDONLY)                     => 3
A: fcntl(d, F_SETLEASE, F_RDLCK)                => EINVAL
A: fd = open("/f", O_RDONLY|O_CREAT, 0o644)     => 4
A: fcntl(fd, F_SETLEASE, 7)                     => EINVAL
A: fcntl(fd, F_SETLEASE, F_LAYOUT)              => EINVAL
A: fcntl(fd, F_SETLEASE, F_RDLCK|F_LAYOUT|F_EXCLUSIVE) => EINVAL
A: p = open("/f", O_PATH)                       => 5
A: fcntl(p, F_SETLEASE, F_RDLCK)                => EBADF
A: fcntl(p, F_GETLEASE)                         => EBADF
A: fcntl(42, F_SETLEASE, F_RDLCK)               => EBADF
A: fcntl(fd, F_GETLEASE)                        => F_UNLCK
A: fcntl(fd, F_SETLEASE, F_UNLCK)               => EAGAIN
"""),
    Case("lease_needs_file_owner", "a process that neither owns the file nor is "
         "privileged may not take or drop a lease (EACCES)", "acquiring", """
A: fd = open("/f", O_RDONLY|O_CREAT, 0o644)     => 3
A: setuid(65534)                                => 0
A: fcntl(fd, F_SETLEASE, F_RDLCK)               => EACCES
A: fcntl(fd, F_SETLEASE, F_UNLCK)               => EACCES
A: fcntl(fd, F_GETLEASE)                        => F_UNLCK
"""),
    Case("lease_sets_owner_async_and_release_clears", "taking a lease makes the caller the "
         "owner and sets O_ASYNC; releasing it clears the owner, the F_SETSIG signal and "
         "O_ASYNC", "signals", """
A: fd = open("/f", O_RDONLY|O_CREAT, 0o644)     => 3
A: fcntl(fd, F_GETOWN)                          => 0
A: fcntl(fd, F_GETOWN_EX)                       => {"type": 0, "pid": 0}
A: fcntl(fd, F_SETSIG, SIGUSR1)                 => 0
A: fcntl(fd, F_SETLEASE, F_WRLCK)               => 0
A: fcntl(fd, F_GETFL)                           => O_RDONLY|O_ASYNC|O_LARGEFILE
A: fcntl(fd, F_GETOWN_EX)                       => {"type": F_OWNER_PID}
A: fcntl(fd, F_GETSIG)                          => SIGUSR1
A: fcntl(fd, F_SETLEASE, F_UNLCK)               => 0
A: fcntl(fd, F_GETOWN)                          => 0
A: fcntl(fd, F_GETOWN_EX)                       => {"type": F_OWNER_PID, "pid": 0}
A: fcntl(fd, F_GETSIG)                          => 0
A: fcntl(fd, F_GETFL)                           => O_RDONLY|O_LARGEFILE
A: fcntl(fd, F_SETFL, O_ASYNC)                  => 0
A: fcntl(fd, F_SETLEASE, F_RDLCK)               => 0
A: fcntl(fd, F_SETLEASE, F_UNLCK)               => 0
A: fcntl(fd, F_GETFL)                           => O_RDONLY|O_LARGEFILE
"""),
    Case("setown_and_setsig_checks", "F_SETOWN of an unknown PID is ESRCH; F_SETSIG beyond "
         "the last signal is EINVAL; F_SETOWN_EX checks its type and reports it back",
         "signals", """
A: fd = open("/f", O_RDONLY|O_CREAT, 0o644)     => 3
A: fcntl(fd, F_SETOWN, 4000000)                 => ESRCH
A: fcntl(fd, F_SETSIG, 65)                      => EINVAL
A: fcntl(fd, F_SETSIG, 64)                      => 0
A: fcntl(fd, F_SETOWN_EX, {"type": 5, "pid": 1}) => EINVAL
A: fcntl(fd, F_SETOWN_EX, {"type": F_OWNER_TID, "pid": A.pid}) => 0
A: fcntl(fd, F_GETOWN_EX)                       => {"type": F_OWNER_TID}
A: fcntl(fd, F_SETOWN_EX, {"type": F_OWNER_PGRP, "pid": 0}) => 0
A: fcntl(fd, F_GETOWN_EX)                       => {"type": F_OWNER_PGRP, "pid": 0}
A: fcntl(fd, F_SETOWN, 0)                       => 0
A: fcntl(fd, F_GETOWN_EX)                       => {"type": F_OWNER_PID, "pid": 0}
"""),
    # --- breaking --------------------------------------------------------------------
    Case("reader_breaks_write_lease_to_downgrade", "an O_RDONLY open breaks a write lease: "
         "the holder gets SIGIO, F_GETLEASE answers F_RDLCK meanwhile, /proc/locks shows the "
         "lease BREAKING and the blocked breaker; a downgrade lets the reader in", "breaking",
         HOLDER + """
A: fcntl(fd, F_SETLEASE, F_WRLCK)               => 0
B: r = open("/f", O_RDONLY) &
A: sigwait(SIGIO)                               => {"si_signo": SIGIO, "si_code": SI_KERNEL}
A: fcntl(fd, F_GETLEASE)                        => F_RDLCK
A: locks()                                      => [{"state": "BREAKING", "type": "READ", "path": "/f"}, {"state": "BREAKER", "type": "READ", "waiter": True}]
A: fcntl(fd, F_SETLEASE, F_RDLCK)               => 0
B: join                                         => 3
A: locks()                                      => [{"state": "ACTIVE", "type": "READ", "path": "/f"}]
"""),
    Case("writer_breaks_read_lease_to_unlock", "an O_WRONLY open breaks a read lease: "
         "F_GETLEASE answers F_UNLCK meanwhile; the holder's F_UNLCK lets the writer in",
         "breaking", HOLDER + """
A: fcntl(fd, F_SETLEASE, F_RDLCK)               => 0
B: w = open("/f", O_WRONLY) &
A: sigwait(SIGIO)                               => {"si_signo": SIGIO, "si_code": SI_KERNEL}
A: fcntl(fd, F_GETLEASE)                        => F_UNLCK
A: locks()                                      => [{"state": "BREAKING", "type": "UNLCK", "path": "/f"}, {"state": "BREAKER", "type": "WRITE", "waiter": True}]
A: fcntl(fd, F_SETLEASE, F_UNLCK)               => 0
B: join                                         => 3
A: locks()                                      => []
"""),
    Case("reader_does_not_break_read_lease", "an O_RDONLY open does not break a read "
         "lease: no signal, no wait", "breaking", HOLDER + """
A: fcntl(fd, F_SETLEASE, F_RDLCK)               => 0
B: open("/f", O_RDONLY)                         => 3
B: open("/f", O_RDONLY|O_PATH)                  => 4
A: signals()                                    => []
A: fcntl(fd, F_GETLEASE)                        => F_RDLCK
"""),
    Case("nonblocking_breaker", "an O_NONBLOCK breaker gets EWOULDBLOCK but the break "
         "starts (the holder is told once); a second one is not told again", "breaking",
         HOLDER + """
A: fcntl(fd, F_SETLEASE, F_WRLCK)               => 0
B: open("/f", O_RDWR|O_NONBLOCK)                => EWOULDBLOCK
A: sigwait(SIGIO)                               => {"si_signo": SIGIO, "si_code": SI_KERNEL}
A: fcntl(fd, F_GETLEASE)                        => F_UNLCK
B: open("/f", O_RDONLY|O_NONBLOCK)              => EWOULDBLOCK
A: signals()                                    => []
A: locks()                                      => [{"state": "BREAKING", "type": "UNLCK", "path": "/f"}]
"""),
    Case("truncate_and_o_trunc_break_namespace_ops_do_not", "truncate(2) and an O_TRUNC "
         "open break a lease; rename, unlink and mkdir beside it do not", "breaking",
         HOLDER + """
A: fcntl(fd, F_SETLEASE, F_WRLCK)               => 0
B: rename("/f", "/g")                           => 0
B: mkdir("/d", 0o755)                           => 0
A: signals()                                    => []
A: fcntl(fd, F_GETLEASE)                        => F_WRLCK
B: truncate("/g", 0) &
A: sigwait(SIGIO)                               => {"si_signo": SIGIO, "si_code": SI_KERNEL}
A: fcntl(fd, F_GETLEASE)                        => F_UNLCK
A: fcntl(fd, F_SETLEASE, F_UNLCK)               => 0
B: join                                         => 0
A: fcntl(fd, F_SETLEASE, F_WRLCK)               => 0
C: open("/g", O_WRONLY|O_TRUNC|O_NONBLOCK)      => EWOULDBLOCK
A: sigwait(SIGIO)                               => {"si_signo": SIGIO, "si_code": SI_KERNEL}
A: fcntl(fd, F_SETLEASE, F_UNLCK)               => 0
B: unlink("/g")                                 => 0
A: signals()                                    => []
"""),
    Case("read_only_o_trunc_leaves_read_leases", "an O_RDONLY|O_TRUNC open breaks for "
         "reading only: another process's read lease survives while the file is "
         "truncated", "breaking", HOLDER + """
A: fcntl(fd, F_SETLEASE, F_RDLCK)               => 0
B: open("/f", O_RDONLY|O_TRUNC)                 => 3
A: signals()                                    => []
A: fcntl(fd, F_GETLEASE)                        => F_RDLCK
"""),
    Case("own_open_breaks_own_lease_eintr", "the holder's own second open breaks its own "
         "lease: SIGIO is sent before the open sleeps, so with a handler (no SA_RESTART) "
         "the open returns EINTR at once", "breaking", HOLDER + """
A: fcntl(fd, F_SETLEASE, F_WRLCK)               => 0
A: open("/f", O_RDWR)                           => EINTR within 0.5s
A: signals()                                    => [{"si_signo": SIGIO, "si_code": SI_KERNEL}]
A: fcntl(fd, F_GETLEASE)                        => F_UNLCK
"""),
    Case("own_open_with_sa_restart_waits_for_deadline", "with SA_RESTART the holder's own "
         "open restarts, does not signal again, sleeps until lease_break_time and then "
         "opens (1 s after it began): the lease was removed", "time", """
set lease_break_time = 1
A: signal(SIGIO, "record-restart")             => 0
A: fd = open("/f", O_RDONLY|O_CREAT, 0o644)    => 3
A: fcntl(fd, F_SETLEASE, F_WRLCK)               => 0
A: open("/f", O_RDWR)                           => 4 after 1s
A: signals()                                    => [{"si_signo": SIGIO, "si_code": SI_KERNEL}]
A: fcntl(fd, F_GETLEASE)                        => F_UNLCK
A: locks()                                      => []
"""),
    Case("deadline_downgrades_or_removes", "a holder that ignores the notice: at the "
         "deadline (each breaker waits lease_break_time) a reader breaker's lease is "
         "downgraded, a writer breaker's removed",
         "time", """
set lease_break_time = 1
""" + HOLDER + """
A: fcntl(fd, F_SETLEASE, F_WRLCK)               => 0
B: r = open("/f", O_RDONLY) &
B: join                                         => 3 after 1s
A: fcntl(fd, F_GETLEASE)                        => F_RDLCK
C: w = open("/f", O_WRONLY) &
C: join                                         => 3 after 1s
A: fcntl(fd, F_GETLEASE)                        => F_UNLCK
A: signals()                                    => [{"si_signo": SIGIO, "si_code": SI_KERNEL}, {"si_signo": SIGIO, "si_code": SI_KERNEL}]
"""),
    Case("zero_break_time_never_expires", "with lease_break_time 0 a broken lease never "
         "times out: the breaker sleeps until the holder gives way", "time", """
set lease_break_time = 0
""" + HOLDER + """
A: fcntl(fd, F_SETLEASE, F_WRLCK)               => 0
B: w = open("/f", O_RDWR) &
A: sigwait(SIGIO)                               => {"si_signo": SIGIO, "si_code": SI_KERNEL}
# time passes (no deadline to wait for: it never comes); more of it changes nothing
A: pause(1.5)                                   => 0
A: fcntl(fd, F_GETLEASE)                        => F_UNLCK
A: locks()                                      => [{"state": "BREAKING", "type": "UNLCK"}, {"state": "BREAKER", "type": "WRITE", "waiter": True}]
A: fcntl(fd, F_SETLEASE, F_UNLCK)               => 0
B: join                                         => 3
"""),
    Case("expired_lease_disappears_lazily", "past its deadline with nobody waiting, a "
         "broken lease stays in /proc/locks until the next lease call on the file (here "
         "F_GETLEASE) times it out", "time", """
set lease_break_time = 1
""" + HOLDER + """
A: fcntl(fd, F_SETLEASE, F_WRLCK)               => 0
B: open("/f", O_RDWR|O_NONBLOCK)                => EWOULDBLOCK
A: sigwait(SIGIO)                               => {"si_signo": SIGIO, "si_code": SI_KERNEL}
# the deadline (1 s after B's open) passes; a longer wait shows the same
A: pause(1.5)                                   => 0
B: locks()                                      => [{"state": "BREAKING", "type": "UNLCK", "path": "/f"}]
A: fcntl(fd, F_GETLEASE)                        => F_UNLCK
B: locks()                                      => []
"""),
    Case("retaking_write_lease_keeps_break_pending", "re-taking F_WRLCK while a "
         "downgrade is pending leaves the break pending: the next reader is not "
         "announced and F_GETLEASE still answers F_RDLCK; F_RDLCK ends the break",
         "breaking", HOLDER + """
A: fcntl(fd, F_SETLEASE, F_WRLCK)               => 0
B: open("/f", O_RDONLY|O_NONBLOCK)              => EWOULDBLOCK
A: sigwait(SIGIO)                               => {"si_signo": SIGIO, "si_code": SI_KERNEL}
A: fcntl(fd, F_SETLEASE, F_WRLCK)               => 0
A: fcntl(fd, F_GETLEASE)                        => F_RDLCK
C: open("/f", O_RDONLY|O_NONBLOCK)              => EWOULDBLOCK
A: signals()                                    => []
A: fcntl(fd, F_SETLEASE, F_RDLCK)               => 0
C: open("/f", O_RDONLY)                         => 3
"""),
    Case("several_breakers", "two breakers sleep on one lease; one release lets both in",
         "breaking", HOLDER + """
A: fcntl(fd, F_SETLEASE, F_WRLCK)               => 0
B: open("/f", O_RDWR) &
A: sigwait(SIGIO)                               => {"si_signo": SIGIO, "si_code": SI_KERNEL}
C: open("/f", O_WRONLY) &
A: signals()                                    => []
A: locks()                                      => [{"state": "BREAKING", "type": "UNLCK"}, {"state": "BREAKER", "type": "WRITE"}, {"state": "BREAKER", "type": "WRITE"}]
A: fcntl(fd, F_SETLEASE, F_UNLCK)               => 0
B: join                                         => 3
C: join                                         => 3
"""),
    Case("several_holders", "a writer breaks every read lease; each holder is told and "
         "the writer waits for all of them", "breaking", """
A: signal(SIGIO, "record")                     => 0
B: signal(SIGIO, "record")                     => 0
A: a = open("/f", O_RDONLY|O_CREAT, 0o644)     => 3
B: b = open("/f", O_RDONLY)                    => 3
A: fcntl(a, F_SETLEASE, F_RDLCK)               => 0
B: fcntl(b, F_SETLEASE, F_RDLCK)               => 0
C: open("/f", O_WRONLY) &
A: sigwait(SIGIO)                              => {"si_signo": SIGIO, "si_code": SI_KERNEL}
B: sigwait(SIGIO)                              => {"si_signo": SIGIO, "si_code": SI_KERNEL}
A: fcntl(a, F_SETLEASE, F_UNLCK)               => 0
# A's release wakes C, which finds B's lease and sleeps again: wait for that
!asleep C
A: locks()                                     => [{"state": "BREAKING", "type": "UNLCK"}, {"state": "BREAKER", "type": "WRITE"}]
B: fcntl(b, F_SETLEASE, F_UNLCK)               => 0
C: join                                        => 3
"""),
    Case("new_arrivals_while_breaking", "while a break is pending, a new reader sleeps "
         "too and the holder is not told again", "breaking", HOLDER + """
A: fcntl(fd, F_SETLEASE, F_WRLCK)               => 0
B: open("/f", O_RDWR) &
A: sigwait(SIGIO)                               => {"si_signo": SIGIO, "si_code": SI_KERNEL}
C: open("/f", O_RDONLY) &
A: signals()                                    => []
A: fcntl(fd, F_SETLEASE, F_UNLCK)               => 0
B: join                                         => 3
C: join                                         => 3
"""),
    Case("breaker_killed_while_sleeping", "a breaker killed while it sleeps leaves the "
         "lease breaking, without its breaker line", "breaking", HOLDER + """
A: fcntl(fd, F_SETLEASE, F_WRLCK)               => 0
B: open("/f", O_RDWR) &
A: sigwait(SIGIO)                               => {"si_signo": SIGIO, "si_code": SI_KERNEL}
!kill B
A: locks()                                      => [{"state": "BREAKING", "type": "UNLCK", "path": "/f"}]
A: fcntl(fd, F_GETLEASE)                        => F_UNLCK
A: fcntl(fd, F_SETLEASE, F_UNLCK)               => 0
"""),
    Case("breaker_interrupted_by_signal", "a breaker whose sleep is interrupted by a "
         "signal with a handler gets EINTR; the lease stays breaking", "breaking",
         HOLDER + """
A: fcntl(fd, F_SETLEASE, F_WRLCK)               => 0
B: signal(SIGUSR1, "record")                   => 0
B: open("/f", O_RDWR) &
!signal B SIGUSR1
B: join                                         => EINTR
B: signals()                                    => [{"si_signo": SIGUSR1, "si_code": SI_USER}]
A: sigwait(SIGIO)                               => {"si_signo": SIGIO, "si_code": SI_KERNEL}
A: fcntl(fd, F_GETLEASE)                        => F_UNLCK
A: locks()                                      => [{"state": "BREAKING", "type": "UNLCK"}]
"""),
    # --- signals ---------------------------------------------------------------------
    Case("siginfo_with_f_setsig_sigio", "with F_SETSIG set to SIGIO the notice carries "
         "si_code POLL_MSG, si_band POLLIN|POLLRDNORM|POLLMSG and si_fd", "signals",
         HOLDER + """
A: fcntl(fd, F_SETSIG, SIGIO)                   => 0
A: fcntl(fd, F_SETLEASE, F_WRLCK)               => 0
B: open("/f", O_RDONLY|O_NONBLOCK)              => EWOULDBLOCK
A: sigwait(SIGIO)                               => {"si_signo": SIGIO, "si_code": POLL_MSG, "si_band": 0x441, "si_fd": 3}
"""),
    Case("siginfo_with_realtime_signal", "with F_SETSIG set to a real-time signal the "
         "notice is that signal with si_fd; real-time notices queue while blocked",
         "signals", """
A: signal(SIGRTMIN+1, "record")                => 0
A: f = open("/f", O_RDONLY|O_CREAT, 0o644)     => 3
A: g = open("/g", O_RDONLY|O_CREAT, 0o644)     => 4
A: fcntl(f, F_SETSIG, SIGRTMIN+1)              => 0
A: fcntl(g, F_SETSIG, SIGRTMIN+1)              => 0
A: fcntl(f, F_SETLEASE, F_WRLCK)               => 0
A: fcntl(g, F_SETLEASE, F_WRLCK)               => 0
A: sigblock(SIGRTMIN+1)                        => 0
B: open("/f", O_RDONLY|O_NONBLOCK)             => EWOULDBLOCK
B: open("/g", O_RDONLY|O_NONBLOCK)             => EWOULDBLOCK
A: signals()                                   => []
A: sigunblock(SIGRTMIN+1)                      => 0
A: signals()                                   => [{"si_signo": SIGRTMIN+1, "si_code": POLL_MSG, "si_band": 0x441, "si_fd": 3}, {"si_signo": SIGRTMIN+1, "si_code": POLL_MSG, "si_band": 0x441, "si_fd": 4}]
"""),
    Case("standard_signal_notices_merge", "SIGIO is a standard signal: two notices while "
         "it is blocked are delivered once, with the first one's siginfo", "signals", """
A: signal(SIGIO, "record")                     => 0
A: f = open("/f", O_RDONLY|O_CREAT, 0o644)     => 3
A: g = open("/g", O_RDONLY|O_CREAT, 0o644)     => 4
A: fcntl(f, F_SETSIG, SIGIO)                   => 0
A: fcntl(g, F_SETSIG, SIGIO)                   => 0
A: fcntl(f, F_SETLEASE, F_WRLCK)               => 0
A: fcntl(g, F_SETLEASE, F_WRLCK)               => 0
A: sigblock(SIGIO)                             => 0
B: open("/f", O_RDONLY|O_NONBLOCK)             => EWOULDBLOCK
B: open("/g", O_RDONLY|O_NONBLOCK)             => EWOULDBLOCK
A: sigunblock(SIGIO)                           => 0
A: signals()                                   => [{"si_signo": SIGIO, "si_code": POLL_MSG, "si_band": 0x441, "si_fd": 3}]
"""),
    Case("stale_si_fd_after_close_and_reuse", "S1: the holder closes the leased number "
         "(a dup keeps the file) and reuses it for another file: si_fd still names it",
         "signals", HOLDER + """
A: fcntl(fd, F_SETSIG, SIGIO)                   => 0
A: fcntl(fd, F_SETLEASE, F_WRLCK)               => 0
A: keep = dup(fd)                               => 4
A: close(fd)                                    => 0
A: other = open("/g", O_RDWR|O_CREAT, 0o644)    => 3
B: open("/f", O_RDONLY|O_NONBLOCK)              => EWOULDBLOCK
A: sigwait(SIGIO)                               => {"si_signo": SIGIO, "si_code": POLL_MSG, "si_band": 0x441, "si_fd": 3}
A: fcntl(keep, F_GETLEASE)                      => F_RDLCK
"""),
    Case("si_fd_after_dup2_and_reissue", "S2: dup2 over the leased number leaves si_fd "
         "stale; re-issuing F_SETLEASE through the duplicate moves si_fd to it", "signals",
         HOLDER + """
A: g = open("/g", O_RDWR|O_CREAT, 0o644)        => 4
A: fcntl(fd, F_SETSIG, SIGIO)                   => 0
A: fcntl(fd, F_SETLEASE, F_WRLCK)               => 0
A: keep = dup(fd)                               => 5
A: dup2(g, fd)                                  => 3
B: open("/f", O_RDONLY|O_NONBLOCK)              => EWOULDBLOCK
A: sigwait(SIGIO)                               => {"si_signo": SIGIO, "si_code": POLL_MSG, "si_band": 0x441, "si_fd": 3}
A: fcntl(keep, F_SETLEASE, F_RDLCK)             => 0
A: fcntl(keep, F_SETLEASE, F_WRLCK)             => 0
C: open("/f", O_RDONLY|O_NONBLOCK)              => EWOULDBLOCK
A: sigwait(SIGIO)                               => {"si_signo": SIGIO, "si_code": POLL_MSG, "si_band": 0x441, "si_fd": 5}
"""),
    Case("si_fd_after_passing_the_descriptor", "the leased file passed to another process "
         "(SCM_RIGHTS) keeps its lease; the notice still goes to the owner with the "
         "sender's old number; the receiver may release the lease", "lifetime", HOLDER + """
A: fcntl(fd, F_SETSIG, SIGIO)                   => 0
A: fcntl(fd, F_SETLEASE, F_WRLCK)               => 0
A: sendfd(B, fd)                                => 0
A: close(fd)                                    => 0
B: signal(SIGIO, "record")                     => 0
B: x = open("/x", O_RDWR|O_CREAT, 0o644)        => 3
B: got = recvfd()                               => 4
B: fcntl(got, F_GETLEASE)                       => F_WRLCK
C: open("/f", O_RDONLY|O_NONBLOCK)              => EWOULDBLOCK
A: sigwait(SIGIO)                               => {"si_signo": SIGIO, "si_code": POLL_MSG, "si_band": 0x441, "si_fd": 3}
B: signals()                                    => []
B: fcntl(got, F_SETLEASE, F_UNLCK)              => 0
A: locks()                                      => []
"""),
    Case("setown_before_lease_is_kept", "F_SETOWN before the lease is kept: the lease "
         "does not take the owner over, and the other process is told", "signals", """
B: signal(SIGIO, "record")                     => 0
A: fd = open("/f", O_RDONLY|O_CREAT, 0o644)    => 3
A: fcntl(fd, F_SETOWN, B.pid)                  => 0
A: fcntl(fd, F_SETLEASE, F_WRLCK)              => 0
A: fcntl(fd, F_GETOWN_EX)                      => {"type": F_OWNER_PID}
C: open("/f", O_RDONLY|O_NONBLOCK)             => EWOULDBLOCK
B: sigwait(SIGIO)                              => {"si_signo": SIGIO, "si_code": SI_KERNEL}
A: fcntl(fd, F_SETLEASE, F_UNLCK)              => 0
"""),
    Case("setown_after_lease_moves_notice", "F_SETOWN after the lease moves the notice to "
         "the new owner", "signals", HOLDER + """
B: signal(SIGIO, "record")                     => 0
A: fcntl(fd, F_SETLEASE, F_WRLCK)              => 0
A: fcntl(fd, F_SETOWN, B.pid)                  => 0
C: open("/f", O_RDONLY|O_NONBLOCK)             => EWOULDBLOCK
B: sigwait(SIGIO)                              => {"si_signo": SIGIO, "si_code": SI_KERNEL}
A: signals()                                   => []
A: fcntl(fd, F_GETLEASE)                       => F_RDLCK
"""),
    Case("process_group_owner", "an owner given as minus a process group: every process "
         "in the group is told", "signals", """
B: setpgid(0, 0)                               => 0
B: signal(SIGIO, "record")                     => 0
B: fork() as C
A: signal(SIGIO, "record")                     => 0
A: fd = open("/f", O_RDONLY|O_CREAT, 0o644)    => 3
A: fcntl(fd, F_SETLEASE, F_WRLCK)              => 0
A: fcntl(fd, F_SETOWN, -B.pid)                 => 0
A: fcntl(fd, F_GETOWN_EX)                      => {"type": F_OWNER_PGRP}
D: open("/f", O_RDONLY|O_NONBLOCK)             => EWOULDBLOCK
B: sigwait(SIGIO)                              => {"si_signo": SIGIO, "si_code": SI_KERNEL}
C: sigwait(SIGIO)                              => {"si_signo": SIGIO, "si_code": SI_KERNEL}
A: signals()                                   => []
"""),
    Case("dead_owner_is_told_nothing", "the owner died while a fork child keeps the "
         "leased file: nobody is told and the breaker waits out lease_break_time",
         "signals", """
set lease_break_time = 1
A: fd = open("/f", O_RDONLY|O_CREAT, 0o644)    => 3
A: fcntl(fd, F_SETLEASE, F_WRLCK)              => 0
A: fork() as C
C: signal(SIGIO, "record")                     => 0
!kill A
B: open("/f", O_RDWR) &
B: join                                        => 3 after 1s
C: signals()                                   => []
C: fcntl(fd, F_GETLEASE)                       => F_UNLCK
"""),
    # --- found by review: each first confirmed on the host kernel -------------------
    Case('unlink_while_sleeping', 'breaker sleeping in open; holder unlinks the path, then downgrades', 'breaking', """
A: signal(SIGIO, "record")                     => 0
A: fd = open("/f", O_RDONLY|O_CREAT, 0o644)    => 3
A: fcntl(fd, F_SETLEASE, F_WRLCK)              => 0
B: r = open("/f", O_RDONLY) &
A: sigwait(SIGIO)                              => *
A: unlink("/f")                                => 0
A: fcntl(fd, F_SETLEASE, F_RDLCK)              => 0
B: join                                        => 3
"""),
    Case('creat_while_sleeping', 'breaker sleeping in open(O_CREAT); holder renames the file away', 'breaking', """
A: signal(SIGIO, "record")                     => 0
A: fd = open("/f", O_RDONLY|O_CREAT, 0o644)    => 3
A: fcntl(fd, F_SETLEASE, F_WRLCK)              => 0
B: r = open("/f", O_RDWR|O_CREAT, 0o644) &
A: sigwait(SIGIO)                              => *
A: rename("/f", "/g")                          => 0
A: fcntl(fd, F_SETLEASE, F_UNLCK)              => 0
B: join                                        => 3
B: listdir("/")                                => ["g"]
"""),
    Case('sleeping_writer_counts', 'a writer sleeping in open counts in i_writecount', 'breaking', """
A: signal(SIGIO, "record")                     => 0
A: fd = open("/f", O_RDONLY|O_CREAT, 0o644)    => 3
A: fcntl(fd, F_SETLEASE, F_RDLCK)              => 0
B: w = open("/f", O_WRONLY) &
A: sigwait(SIGIO)                              => *
A: fcntl(fd, F_SETLEASE, F_RDLCK)              => EAGAIN
A: fcntl(fd, F_SETLEASE, F_WRLCK)              => EAGAIN
A: fcntl(fd, F_SETLEASE, F_UNLCK)              => 0
B: join                                        => 3
"""),
    Case('sleeping_reader_counts', 'a reader sleeping in open counts in i_readcount', 'breaking', """
A: signal(SIGIO, "record")                     => 0
A: fd = open("/f", O_RDONLY|O_CREAT, 0o644)    => 3
A: fcntl(fd, F_SETLEASE, F_WRLCK)              => 0
B: r = open("/f", O_RDONLY) &
A: sigwait(SIGIO)                              => *
A: fcntl(fd, F_SETLEASE, F_WRLCK)              => EAGAIN
A: fcntl(fd, F_SETLEASE, F_RDLCK)              => 0
B: join                                        => 3
"""),
    Case('stale_downgrade_time', 'fl_downgrade_time survives a completed downgrade: '
         'the lease taken again for writing is downgraded at the old deadline, with no '
         'new break', 'time', """
set lease_break_time = 1
A: signal(SIGIO, "record")                     => 0
A: fd = open("/f", O_RDONLY|O_CREAT, 0o644)    => 3
A: fcntl(fd, F_SETLEASE, F_WRLCK)              => 0
B: open("/f", O_RDONLY|O_NONBLOCK)             => EWOULDBLOCK
A: sigwait(SIGIO)                              => *
A: fcntl(fd, F_SETLEASE, F_RDLCK)              => 0
A: fcntl(fd, F_SETLEASE, F_WRLCK)              => 0
# what A sees before the old deadline depends on how fast the lines above ran: unchecked
# the old deadline (1 s after B's open) passes
A: pause(1.6)                                  => 0
A: fcntl(fd, F_GETLEASE)                       => F_RDLCK
"""),
    Case('bg_own_open_eintr', 'own open in the background: SIGIO with a handler interrupts it', 'breaking', """
A: signal(SIGIO, "record")                     => 0
A: fd = open("/f", O_RDONLY|O_CREAT, 0o644)    => 3
A: fcntl(fd, F_SETLEASE, F_WRLCK)              => 0
A: open("/f", O_RDWR) &
A: join                                        => EINTR
"""),
    Case('getown_dead', 'F_GETOWN after the owner died', 'signals', """
B: signal(SIGIO, "record")                     => 0
A: fd = open("/f", O_RDONLY|O_CREAT, 0o644)    => 3
A: fcntl(fd, F_SETOWN, B.pid)                  => 0
!kill B
A: fcntl(fd, F_GETOWN)                         => 0
A: fcntl(fd, F_GETOWN_EX)                      => {"type": F_OWNER_PID, "pid": 0}
"""),
    Case('setfl_cannot_change_o_async', 'F_SETFL can neither clear nor set O_ASYNC on a regular file (it has no ->fasync): the lease keeps it until it is released', 'signals', """
A: fd = open("/f", O_RDONLY|O_CREAT, 0o644)    => 3
A: fcntl(fd, F_SETLEASE, F_WRLCK)              => 0
A: fcntl(fd, F_SETFL, 0)                       => 0
A: fcntl(fd, F_GETFL)                          => O_RDONLY|O_ASYNC|O_LARGEFILE
A: fcntl(fd, F_SETLEASE, F_UNLCK)              => 0
A: fcntl(fd, F_SETFL, O_ASYNC)                 => 0
A: fcntl(fd, F_GETFL)                          => O_RDONLY|O_LARGEFILE
"""),
    Case('two_sigio', 'two notices to an unblocked handler, the second after the handler '
         'took the first, are two signals', 'signals', """
A: signal(SIGIO, "record")                     => 0
A: f = open("/f", O_RDONLY|O_CREAT, 0o644)     => 3
A: g = open("/g", O_RDONLY|O_CREAT, 0o644)     => 4
A: fcntl(f, F_SETLEASE, F_WRLCK)               => 0
A: fcntl(g, F_SETLEASE, F_WRLCK)               => 0
B: open("/f", O_RDONLY|O_NONBLOCK)             => EWOULDBLOCK
A: sigwait(SIGIO)                              => {"si_signo": SIGIO, "si_code": SI_KERNEL}
B: open("/g", O_RDONLY|O_NONBLOCK)             => EWOULDBLOCK
A: sigwait(SIGIO)                              => {"si_signo": SIGIO, "si_code": SI_KERNEL}
A: signals()                                   => []
"""),
    Case('accmode3', 'an accmode-3 open breaks as a writer but does not count', 'acquiring', """
A: signal(SIGIO, "record")                     => 0
A: fd = open("/f", O_RDONLY|O_CREAT, 0o644)    => 3
A: fcntl(fd, F_SETLEASE, F_RDLCK)              => 0
B: open("/f", 3|O_NONBLOCK)                    => EWOULDBLOCK
A: sigwait(SIGIO)                              => *
A: fcntl(fd, F_SETLEASE, F_UNLCK)              => 0
B: x = open("/f", 3)                           => 3
A: fcntl(fd, F_SETLEASE, F_WRLCK)              => 0
"""),
    Case('ftruncate_own_lease', 'ftruncate through the leased description does not break the lease', 'breaking', """
A: signal(SIGIO, "record")                     => 0
A: fd = open("/f", O_RDWR|O_CREAT, 0o644)      => 3
A: write(fd, "hello")                          => 5
A: fcntl(fd, F_SETLEASE, F_WRLCK)              => 0
A: ftruncate(fd, 0) &
A: join                                        => 0
A: signals()                                   => []
A: fcntl(fd, F_GETLEASE)                       => F_WRLCK
"""),
    Case('truncate_counts', 'truncate(2) sleeping in break_lease holds write access', 'breaking', """
A: signal(SIGIO, "record")                     => 0
A: fd = open("/f", O_RDONLY|O_CREAT, 0o644)    => 3
A: fcntl(fd, F_SETLEASE, F_RDLCK)              => 0
B: truncate("/f", 0) &
A: sigwait(SIGIO)                              => *
A: fcntl(fd, F_SETLEASE, F_RDLCK)              => EAGAIN
A: fcntl(fd, F_SETLEASE, F_UNLCK)              => 0
B: join                                        => 0
"""),
    Case('foreign_sigio_merge', "a foreign SIGIO merged with a break notice leaves the daemon's pending state stuck", 'signals', """
A: signal(SIGIO, "record")                     => 0
A: f = open("/f", O_RDONLY|O_CREAT, 0o644)     => 3
A: g = open("/g", O_RDONLY|O_CREAT, 0o644)     => 4
A: fcntl(f, F_SETLEASE, F_WRLCK)               => 0
A: fcntl(g, F_SETLEASE, F_WRLCK)               => 0
A: sigblock(SIGIO)                             => 0
C: kill(A.pid, SIGIO)                          => 0
B: open("/f", O_RDONLY|O_NONBLOCK)             => EWOULDBLOCK
A: sigunblock(SIGIO)                           => 0
A: signals()                                   => [{"si_signo": SIGIO, "si_code": SI_USER}]
B: open("/g", O_RDONLY|O_NONBLOCK)             => EWOULDBLOCK
A: sigwait(SIGIO, 3)                           => {"si_signo": SIGIO, "si_code": SI_KERNEL}
"""),
    Case('ignore_flushes', 'SIG_IGN discards a pending SIGIO; later notices are delivered', 'signals', """
A: signal(SIGIO, "record")                     => 0
A: f = open("/f", O_RDONLY|O_CREAT, 0o644)     => 3
A: g = open("/g", O_RDONLY|O_CREAT, 0o644)     => 4
A: fcntl(f, F_SETLEASE, F_WRLCK)               => 0
A: fcntl(g, F_SETLEASE, F_WRLCK)               => 0
A: sigblock(SIGIO)                             => 0
B: open("/f", O_RDONLY|O_NONBLOCK)             => EWOULDBLOCK
A: signal(SIGIO, "ignore")                     => 0
A: signal(SIGIO, "record")                     => 0
A: sigunblock(SIGIO)                           => 0
A: signals()                                   => []
B: open("/g", O_RDONLY|O_NONBLOCK)             => EWOULDBLOCK
A: sigwait(SIGIO, 3)                           => {"si_signo": SIGIO, "si_code": SI_KERNEL}
"""),
    Case('sigio_perm', "sigio_perm: an unprivileged owner's notice does not reach a root process", 'signals', """
B: signal(SIGIO, "record")                     => 0
A: umask(0)                                    => *
A: mkdir("/d", 0o777)                          => 0
A: setuid(65534)                               => 0
A: fd = open("/d/f", O_RDONLY|O_CREAT, 0o644)  => 3
A: fcntl(fd, F_SETLEASE, F_WRLCK)              => 0
A: fcntl(fd, F_SETOWN, B.pid)                  => 0
C: open("/d/f", O_RDONLY|O_NONBLOCK)           => EWOULDBLOCK
# a notice would have been sent during C's open; C's own SIGIO after it is the first B
# takes only if there was none (had there been one, it is taken first or C's merges)
C: kill(B.pid, SIGIO)                          => 0
B: sigwait(SIGIO)                              => {"si_signo": SIGIO, "si_code": SI_USER}
B: signals()                                   => []
"""),
    # --- lifetime --------------------------------------------------------------------
    Case("close_of_last_descriptor_ends_lease", "closing one of two descriptors of the "
         "description keeps the lease; closing the last ends it", "lifetime", HOLDER + """
A: fcntl(fd, F_SETLEASE, F_WRLCK)              => 0
A: d = dup(fd)                                 => 4
A: close(fd)                                   => 0
B: locks()                                     => [{"state": "ACTIVE", "type": "WRITE", "path": "/f"}]
A: close(d)                                    => 0
B: locks()                                     => []
B: open("/f", O_RDWR)                          => 3
"""),
    Case("holder_exit_releases_breaker", "the holder killed while a breaker sleeps: the "
         "lease goes with the last reference and the breaker goes on", "lifetime",
         HOLDER + """
A: fcntl(fd, F_SETLEASE, F_WRLCK)              => 0
B: open("/f", O_RDWR) &
A: sigwait(SIGIO)                              => {"si_signo": SIGIO, "si_code": SI_KERNEL}
!kill A
B: join                                        => 3
B: locks()                                     => []
"""),
    Case("exec_closes_cloexec_lease", "exec with the leased descriptor close-on-exec: "
         "the lease ends with it", "lifetime", """
A: signal(SIGIO, "record")                     => 0
A: fd = open("/f", O_RDONLY|O_CREAT|O_CLOEXEC, 0o644) => 3
A: fcntl(fd, F_SETLEASE, F_WRLCK)              => 0
A: exec()
B: locks()                                     => []
B: open("/f", O_RDWR)                          => 3
"""),
    Case("exec_keeps_inheritable_lease", "S3: exec with the leased descriptor "
         "inheritable: the lease survives, the new image has no handler and dies of "
         "SIGIO at the next break", "lifetime", """
A: signal(SIGIO, "record")                     => 0
A: fd = open("/f", O_RDONLY|O_CREAT, 0o644)    => 3
A: fcntl(fd, F_SETLEASE, F_WRLCK)              => 0
A: exec()
A: fcntl(fd, F_GETLEASE)                       => F_WRLCK
B: open("/f", O_RDONLY) &
!wait A
B: join                                        => 3
B: locks()                                     => []
"""),
    Case("fork_child_closes_lease_stays", "S4: the child closes its copy: the lease "
         "stays and the notice goes to the parent", "lifetime", HOLDER + """
A: fcntl(fd, F_SETLEASE, F_WRLCK)              => 0
A: fork() as C
C: close(fd)                                   => 0
B: open("/f", O_RDONLY|O_NONBLOCK)             => EWOULDBLOCK
A: sigwait(SIGIO)                              => {"si_signo": SIGIO, "si_code": SI_KERNEL}
C: signals()                                   => []
A: fcntl(fd, F_SETLEASE, F_RDLCK)              => 0
"""),
    Case("fork_parent_closes_child_unlocks", "S4: the parent closes its copy, the child "
         "keeps the file: the notice still goes to the parent; the child may release "
         "the lease", "lifetime", HOLDER + """
A: fcntl(fd, F_SETLEASE, F_WRLCK)              => 0
A: fork() as C
A: close(fd)                                   => 0
B: open("/f", O_RDONLY|O_NONBLOCK)             => EWOULDBLOCK
A: sigwait(SIGIO)                              => {"si_signo": SIGIO, "si_code": SI_KERNEL}
C: signals()                                   => []
C: fcntl(fd, F_GETLEASE)                       => F_RDLCK
C: fcntl(fd, F_SETLEASE, F_UNLCK)              => 0
B: locks()                                     => []
"""),
    # --- permissions (issue 10) --------------------------------------------------------
    Case("permission_before_lease_break", "an open or truncate(2) the mode bits refuse is "
         "EACCES at once and breaks no lease (fs/namei.c may_open() and vfs_truncate()'s "
         "inode_permission() come before break_lease()); an allowed open does break it",
         "permissions", """
A: signal(SIGIO, "record")                     => 0
A: fd = open("/f", O_RDONLY|O_CREAT, 0o644)    => 3
A: fcntl(fd, F_SETLEASE, F_WRLCK)              => 0
B: setuid(65534)                               => 0
B: open("/f", O_RDWR)                          => EACCES
B: open("/f", O_WRONLY|O_NONBLOCK)             => EACCES
B: open("/f", O_RDONLY|O_TRUNC)                => EACCES
B: truncate("/f", 0)                           => EACCES
A: signals()                                   => []
A: locks()                                     => [{"state": "ACTIVE", "type": "WRITE", "path": "/f"}]
B: open("/f", O_RDONLY|O_NONBLOCK)             => EWOULDBLOCK
A: sigwait(SIGIO)                              => {"si_signo": SIGIO, "si_code": SI_KERNEL}
A: fcntl(fd, F_GETLEASE)                       => F_RDLCK
""", new="10"),
    Case("dac_mode_bits", "owner, group (supplementary groups included) and other bits, "
         "each class alone deciding; search permission on every directory of a path; "
         "write and search on the directory to create, unlink, rename; root's "
         "CAP_DAC_OVERRIDE but not to execute a file with no x bit; access(2); umask; "
         "an unprivileged setuid(0) is EPERM", "permissions", """
A: umask(0)                                    => *
A: mkdir("/d", 0o700)                          => 0
A: c = open("/d/f", O_RDWR|O_CREAT, 0o666)     => *
A: close(c)                                    => 0
A: c = open("/g", O_RDWR|O_CREAT, 0o640)       => *
A: close(c)                                    => 0
A: c = open("/k", O_RDWR|O_CREAT, 0o604)       => *
A: close(c)                                    => 0
A: c = open("/o", O_RDWR|O_CREAT, 0o044)       => *
A: close(c)                                    => 0
A: c = open("/z", O_RDWR|O_CREAT, 0o000)       => *
A: close(c)                                    => 0
A: chown("/g", -1, 100)                        => 0
A: chown("/k", -1, 100)                        => 0
A: chown("/o", 65534, -1)                      => 0
A: open("/z", O_RDWR)                          => 3
A: access("/z", R_OK|W_OK)                     => 0
A: access("/z", X_OK)                          => EACCES
A: access("/d", X_OK)                          => 0
A: umask(0o077)                                => 0
A: c = open("/u", O_RDWR|O_CREAT, 0o666)       => *
A: close(c)                                    => 0
A: stat("/u")                                  => {"st_mode": S_IFREG|0o600}
B: setgroups(100)                              => 0
B: setgid(65534)                               => 0
B: setuid(65534)                               => 0
B: setuid(0)                                   => EPERM
B: stat("/d/f")                                => EACCES
B: open("/d/f", O_RDONLY)                      => EACCES
B: access("/d", F_OK)                          => 0
B: access("/d", R_OK)                          => EACCES
B: listdir("/d")                               => EACCES
B: open("/g", O_RDONLY)                        => 3
B: open("/g", O_WRONLY)                        => EACCES
B: open("/k", O_RDONLY)                        => EACCES
B: open("/o", O_RDONLY)                        => EACCES
B: access("/o", R_OK)                          => EACCES
B: access("/z", F_OK)                          => 0
B: open("/z", O_RDONLY)                        => EACCES
B: open("/n", O_WRONLY|O_CREAT, 0o644)         => EACCES
B: open("/g", O_RDONLY|O_CREAT, 0o644)         => 4
B: unlink("/g")                                => EACCES
B: unlink("/nothing")                          => ENOENT
B: mkdir("/e", 0o755)                          => EACCES
B: mkdir("/d", 0o755)                          => EEXIST
B: rename("/g", "/g2")                         => EACCES
B: truncate("/g", 0)                           => EACCES
""", new="10"),
    Case("dac_attributes", "chmod/fchmod by the owner only (EPERM); chown/fchown: the "
         "owner may give its file one of its own groups, anything else needs CAP_CHOWN; "
         "chown clears set-user-ID and set-group-ID bits; the sticky bit keeps others "
         "from unlinking or renaming; a file chowned to a user lets it take a lease",
         "permissions", """
A: umask(0)                                    => *
A: mkdir("/t", 0o1777)                         => 0
A: c = open("/t/a", O_RDWR|O_CREAT, 0o666)     => *
A: close(c)                                    => 0
A: c = open("/f", O_RDONLY|O_CREAT, 0o644)     => *
A: close(c)                                    => 0
A: c = open("/s", O_RDONLY|O_CREAT, 0o6755)    => *
A: close(c)                                    => 0
B: setgroups(100)                              => 0
B: setgid(65534)                               => 0
B: setuid(65534)                               => 0
B: chmod("/f", 0o666)                          => EPERM
B: chown("/f", 65534, -1)                      => EPERM
B: fd = open("/t/b", O_RDWR|O_CREAT, 0o644)    => 3
B: fchmod(fd, 0o600)                           => 0
B: stat("/t/b")                                => {"st_mode": S_IFREG|0o600}
B: chmod("/t/b", 0o2644)                       => 0
B: stat("/t/b")                                => {"st_mode": S_IFREG|0o2644}
B: fchown(fd, -1, 100)                         => 0
B: fchown(fd, -1, 0)                           => EPERM
B: fchown(fd, 0, -1)                           => EPERM
B: fchown(fd, 65534, -1)                       => 0
B: chmod("/t/b", 0o2644)                       => 0
B: stat("/t/b")                                => {"st_mode": S_IFREG|0o2644}
B: fcntl(fd, F_SETLEASE, F_RDLCK)              => EAGAIN
B: r = open("/t/b", O_RDONLY)                  => 4
B: close(fd)                                   => 0
B: fcntl(r, F_SETLEASE, F_RDLCK)               => 0
B: fcntl(r, F_SETLEASE, F_UNLCK)               => 0
B: unlink("/t/a")                              => EPERM
B: rename("/t/a", "/t/c")                      => EPERM
A: chown("/s", 65534, -1)                      => 0
A: stat("/s")                                  => {"st_mode": S_IFREG|0o755}
A: chmod("/t/b", 0o4755)                       => 0
A: stat("/t/b")                                => {"st_mode": S_IFREG|0o4755}
B: unlink("/t/b")                              => 0
B: close(r)                                    => 0
A: unlink("/t/a")                              => 0
""", new="10"),
    # --- processes (issue 10) ----------------------------------------------------------
    Case("zombie_owner_until_reaped", "a fork child that exited is a zombie until its "
         "parent reaps it: F_SETOWN still accepts it and F_GETOWN still names it "
         "(pid_task() finds a zombie); waitpid gives its status (exit code or signal), "
         "after which F_GETOWN is 0 and a second waitpid ECHILD", "lifetime", """
A: fd = open("/f", O_RDONLY|O_CREAT, 0o644)    => 3
A: fork() as C
A: fork() as D
A: waitpid(C.pid, WNOHANG)                     => 0
A: fcntl(fd, F_SETOWN, C.pid)                  => 0
C: exit(3)
A: fcntl(fd, F_GETOWN)                         => *
A: fcntl(fd, F_GETOWN_EX)                      => {"type": F_OWNER_PID}
A: fcntl(fd, F_SETOWN, C.pid)                  => 0
A: waitpid(C.pid)                              => {"status": "WIFEXITED(s) && WEXITSTATUS(s) == 3"}
A: fcntl(fd, F_GETOWN)                         => 0
A: fcntl(fd, F_GETOWN_EX)                      => {"type": F_OWNER_PID, "pid": 0}
A: waitpid(C.pid)                              => ECHILD
A: fcntl(fd, F_SETOWN, D.pid)                  => 0
!kill D
A: fcntl(fd, F_GETOWN)                         => *
A: waitpid(D.pid)                              => {"status": "WIFSIGNALED(s) && WTERMSIG(s) == SIGKILL"}
A: fcntl(fd, F_GETOWN)                         => 0
""", new="10"),
    Case("escalated_break_holds_the_reader", "a writer escalating a break a reader "
         "started holds the reader too: the reader's sleep is bounded by fl_break_time "
         "alone (__break_lease), so it is let in when the lease is removed for the "
         "writer, lease_break_time after the writer came, not at its own downgrade "
         "deadline; the holder is told again", "time", """
set lease_break_time = 2
A: signal(SIGIO, "record")                     => 0
A: fd = open("/f", O_RDONLY|O_CREAT, 0o644)    => 3
A: fcntl(fd, F_SETLEASE, F_WRLCK)              => 0
B: r = open("/f", O_RDONLY) &
A: sigwait(SIGIO)                              => {"si_signo": SIGIO, "si_code": SI_KERNEL}
C: w = open("/f", O_WRONLY) &
A: sigwait(SIGIO)                              => {"si_signo": SIGIO, "si_code": SI_KERNEL}
B: join                                        => 3
B: locks()                                     => []
C: join                                        => 3
A: fcntl(fd, F_GETLEASE)                       => F_UNLCK
""", new="10"),
    # --- memory (issue 10) ------------------------------------------------------------
    Case("truncate_unmaps_private_copies", "a truncate unmaps the copies a MAP_PRIVATE "
         "mapping made on write past the new end, a fork child's inherited ones too "
         "(truncate_pagecache(): unmap_mapping_range() with even_cows): their next access "
         "is SIGBUS, pages before the end keep their copy", "lifetime", """
A: fd = open("/f", O_RDWR|O_CREAT, 0o644)      => 3
A: ftruncate(fd, 12288)                        => 0
A: p = mmap(12288, PROT_READ|PROT_WRITE, MAP_PRIVATE, fd, 0) => ok
A: store(p, "head")                            => 4
A: store(p + 4096, "private")                  => 7
A: fork() as C
C: load(p + 4096, 7)                           => b"private"
A: load(p + 8192, 4)                           => b"\\0\\0\\0\\0"
B: truncate("/f", 4096)                        => 0
A: load(p, 4)                                  => b"head"
C: load(p, 4)                                  => b"head"
C: load(p + 4096, 7)                           => killed SIGBUS
A: load(p + 4096, 7)                           => killed SIGBUS
""", new="10"),
    Case("sigpending_limit_falls_back_to_sigio", "getrlimit/setrlimit of "
         "RLIMIT_SIGPENDING and RLIMIT_NOFILE (an unprivileged raise of the hard limit is "
         "EPERM, soft above hard EINVAL); with the receiver's user at its pending-signal "
         "limit the F_SETSIG real-time notice cannot be queued and send_sigio_to_task() "
         "falls back to a plain SIGIO (SI_KERNEL); a lowered descriptor limit gives EMFILE",
         "signals", """
A: signal(SIGIO, "record")                     => 0
A: signal(SIGRTMIN+1, "record")                => 0
A: getrlimit(RLIMIT_NOFILE)                    => *
A: setrlimit(RLIMIT_SIGPENDING, 2, 2)          => 0
A: getrlimit(RLIMIT_SIGPENDING)                => [2, 2]
A: umask(0)                                    => *
A: mkdir("/d", 0o777)                          => 0
A: setuid(64023)                               => 0
A: setrlimit(RLIMIT_SIGPENDING, 2, 3)          => EPERM
A: setrlimit(RLIMIT_SIGPENDING, 3, 2)          => EINVAL
A: f = open("/d/f", O_RDONLY|O_CREAT, 0o644)   => 3
A: g = open("/d/g", O_RDONLY|O_CREAT, 0o644)   => 4
A: h = open("/d/h", O_RDONLY|O_CREAT, 0o644)   => 5
A: fcntl(f, F_SETSIG, SIGRTMIN+1)              => 0
A: fcntl(g, F_SETSIG, SIGRTMIN+1)              => 0
A: fcntl(h, F_SETSIG, SIGRTMIN+1)              => 0
A: fcntl(f, F_SETLEASE, F_WRLCK)               => 0
A: fcntl(g, F_SETLEASE, F_WRLCK)               => 0
A: fcntl(h, F_SETLEASE, F_WRLCK)               => 0
A: sigblock(SIGIO, SIGRTMIN+1)                 => 0
B: open("/d/f", O_RDONLY|O_NONBLOCK)           => EWOULDBLOCK
B: open("/d/g", O_RDONLY|O_NONBLOCK)           => EWOULDBLOCK
B: open("/d/h", O_RDONLY|O_NONBLOCK)           => EWOULDBLOCK
A: sigunblock(SIGIO, SIGRTMIN+1)               => 0
A: signals()                                   => [{"si_signo": SIGRTMIN+1, "si_fd": 3}, {"si_signo": SIGRTMIN+1, "si_fd": 4}, {"si_signo": SIGIO, "si_code": SI_KERNEL}]
A: setrlimit(RLIMIT_NOFILE, 6, 6)              => 0
A: open("/d/f", O_RDONLY)                      => EMFILE
""", new="10"),
    Case("setown_outside_the_emulation", "F_SETOWN and F_SETOWN_EX accept a process "
         "that exists on the machine but runs outside the scenario (PID 1; find_vpid() "
         "finds it) and F_GETOWN names it; a PID that names nobody is ESRCH (the "
         "emulator never signals such an owner: its event log says signal-outside)",
         "signals", """
A: fd = open("/f", O_RDONLY|O_CREAT, 0o644)    => 3
A: fcntl(fd, F_SETOWN, 1)                      => 0
A: fcntl(fd, F_GETOWN)                         => 1
A: fcntl(fd, F_GETOWN_EX)                      => {"type": F_OWNER_PID, "pid": 1}
A: fcntl(fd, F_SETOWN_EX, {"type": F_OWNER_TID, "pid": 1}) => 0
A: fcntl(fd, F_GETOWN_EX)                      => {"type": F_OWNER_TID, "pid": 1}
A: fcntl(fd, F_SETOWN, 4000000)                => ESRCH
A: fcntl(fd, F_GETOWN)                         => 1
""", new="10"),
    Case("proc_views_nest_waiters_and_show_fd_locks", "/proc/locks nests a breaker "
         "under the breaker it conflicts with (__locks_insert_block: three writers make a "
         "chain, one level deeper each); fdinfo shows the lock: line of every descriptor "
         "of the leased description, its state and type as the lease breaks; a lease on a "
         "file unlinked or renamed over stays listed, under the name it had (deleted)",
         "breaking", """
A: signal(SIGIO, "record")                     => 0
A: fd = open("/f", O_RDONLY|O_CREAT, 0o644)    => 3
A: fcntl(fd, F_SETLEASE, F_WRLCK)              => 0
A: d = dup(fd)                                 => 4
A: o = open("/f", O_PATH)                      => 5
A: fds()                                       => [{"fd": 0}, {"fd": 1}, {"fd": 2}, {"fd": 3, "locks": [{"kind": "LEASE", "state": "ACTIVE", "type": "WRITE"}]}, {"fd": 4, "locks": [{"state": "ACTIVE"}]}, {"fd": 5, "path": "/f"}]
B: open("/f", O_RDWR) &
A: sigwait(SIGIO)                              => {"si_signo": SIGIO, "si_code": SI_KERNEL}
C: open("/f", O_WRONLY) &
D: open("/f", O_WRONLY) &
A: locks()                                     => [{"state": "BREAKING", "depth": 0}, {"depth": 1}, {"depth": 2}, {"depth": 3}]
A: fds()                                       => [{"fd": 0}, {"fd": 1}, {"fd": 2}, {"fd": 3, "locks": [{"state": "BREAKING", "type": "UNLCK"}]}, {"fd": 4}, {"fd": 5}]
!locks
A: close(o)                                    => 0
A: fcntl(fd, F_SETLEASE, F_UNLCK)              => 0
B: join                                        => 3
C: join                                        => 3
D: join                                        => 3
A: fds()                                       => [{"fd": 0}, {"fd": 1}, {"fd": 2}, {"fd": 3, "path": "/f"}, {"fd": 4}]
B: close(3)                                    => 0
C: close(3)                                    => 0
D: close(3)                                    => 0
A: fcntl(fd, F_SETLEASE, F_RDLCK)              => 0
B: unlink("/f")                                => 0
A: locks()                                     => [{"state": "ACTIVE", "type": "READ", "path": "/f (deleted)"}]
A: g = open("/g", O_RDONLY|O_CREAT, 0o644)     => 5
A: fcntl(g, F_SETLEASE, F_WRLCK)               => 0
B: h = open("/h", O_WRONLY|O_CREAT, 0o644)     => 3
B: close(h)                                    => 0
B: rename("/h", "/g")                          => 0
A: locks()                                     => [{"state": "ACTIVE", "type": "READ", "path": "/f (deleted)"}, {"state": "ACTIVE", "type": "WRITE", "path": "/g (deleted)"}]
""", new="10"),
    # --- names and file types (issue 10) ----------------------------------------------
    Case("lease_through_other_names", "a lease is the inode's: taken through one name "
         "it is broken through a hard link and through a symbolic link; link, symlink "
         "(absolute, relative, dangling: O_CREAT creates the target), readlink (EINVAL "
         "on a file), O_NOFOLLOW (ELOOP), O_CREAT|O_EXCL on a link (EEXIST), link of a "
         "directory (EPERM), protected_hardlinks (EPERM for another user's file)",
         "breaking", """
A: signal(SIGIO, "record")                     => 0
A: mkdir("/d", 0o755)                          => 0
A: fd = open("/d/f", O_RDONLY|O_CREAT, 0o644)  => 3
A: link("/d/f", "/hard")                       => 0
A: symlink("/d/f", "/abs")                     => 0
A: symlink("d", "/rel")                        => 0
A: symlink("nowhere", "/dangling")             => 0
A: readlink("/abs")                            => "/d/f"
A: readlink("/rel")                            => "d"
A: readlink("/hard")                           => EINVAL
A: stat("/hard")                               => {"st_nlink": 2}
A: stat("/rel/f")                              => {"st_mode": S_IFREG|0o644}
A: fcntl(fd, F_SETLEASE, F_WRLCK)              => 0
B: open("/abs", O_RDONLY|O_NONBLOCK)           => EWOULDBLOCK
A: sigwait(SIGIO)                              => {"si_signo": SIGIO, "si_code": SI_KERNEL}
A: fcntl(fd, F_SETLEASE, F_UNLCK)              => 0
A: fcntl(fd, F_SETLEASE, F_RDLCK)              => 0
B: w = open("/hard", O_WRONLY) &
A: sigwait(SIGIO)                              => {"si_signo": SIGIO, "si_code": SI_KERNEL}
A: fcntl(fd, F_SETLEASE, F_UNLCK)              => 0
B: join                                        => 3
B: open("/abs", O_RDONLY|O_NOFOLLOW)           => ELOOP
B: open("/abs", O_RDONLY|O_CREAT|O_EXCL, 0o644) => EEXIST
B: open("/rel/f", O_RDONLY)                    => 4
B: link("/d/f", "/hard")                       => EEXIST
B: link("/d", "/d2")                           => EPERM
B: open("/dangling", O_WRONLY|O_CREAT, 0o600)  => 5
B: stat("/nowhere")                            => {"st_mode": S_IFREG|0o600}
B: unlink("/abs")                              => 0
B: stat("/d/f")                                => {"st_nlink": 2}
B: unlink("/hard")                             => 0
B: stat("/d/f")                                => {"st_nlink": 1}
B: setuid(65534)                               => 0
B: link("/d/f", "/d/x")                        => EPERM
""", new="10"),
    Case("no_lease_on_pipes_fifos_sockets", "a pipe, a FIFO and a socket are not "
         "regular files: F_SETLEASE on them is EINVAL (generic_setlease, after the owner "
         "check) and F_GETLEASE F_UNLCK; a pipe's data, EAGAIN, EOF, ESPIPE and a "
         "blocking read; a FIFO's ENXIO for a lone non-blocking writer, a blocking "
         "reader let in by the writer's open, EPIPE once the reader is gone", "acquiring",
         """
A: p = pipe()                                  => [3, 4]
A: fstat(3)                                    => {"st_mode": S_IFIFO|0o600, "st_size": 0}
A: fds()                                       => [{"fd": 0}, {"fd": 1}, {"fd": 2}, {"fd": 3, "path": "pipe:", "flags": O_RDONLY}, {"fd": 4, "path": "pipe:", "flags": O_WRONLY}]
A: fcntl(3, F_SETLEASE, F_RDLCK)               => EINVAL
A: fcntl(4, F_SETLEASE, F_WRLCK)               => EINVAL
A: fcntl(3, F_GETLEASE)                        => F_UNLCK
A: write(4, "hello")                           => 5
A: read(3, 10)                                 => b"hello"
A: lseek(3, 0, SEEK_SET)                       => ESPIPE
A: fork() as C
C: r = read(3, 5) &
A: write(4, "x")                               => 1
C: join                                        => b"x"
A: fcntl(3, F_SETFL, O_NONBLOCK)               => 0
A: read(3, 10)                                 => EAGAIN
A: close(4)                                    => 0
C: close(4)                                    => 0
A: read(3, 10)                                 => b""
A: mkfifo("/fifo", 0o644)                      => 0
A: stat("/fifo")                               => {"st_mode": S_IFIFO|0o644, "st_size": 0}
A: open("/fifo", O_WRONLY|O_NONBLOCK)          => ENXIO
B: r = open("/fifo", O_RDONLY) &
A: w = open("/fifo", O_WRONLY)                 => 4
B: join                                        => 3
B: fcntl(r, F_SETLEASE, F_RDLCK)               => EINVAL
A: fcntl(w, F_SETLEASE, F_WRLCK)               => EINVAL
A: write(w, "via fifo")                        => 8
B: read(r, 20)                                 => b"via fifo"
B: close(r)                                    => 0
A: write(w, "x")                               => EPIPE
A: s = socketpair()                            => [5, 6]
A: fstat(5)                                    => {"st_mode": S_IFSOCK|0o777}
A: fcntl(5, F_SETLEASE, F_RDLCK)               => EINVAL
A: fcntl(6, F_GETLEASE)                        => F_UNLCK
""", new="10"),
    Case("utime_permissions_break_no_lease", "utime(2) breaks no lease (a time change "
         "breaks only delegations); setting the times to now needs the owner, CAP_FOWNER "
         "or write permission (EACCES), setting given times the owner or CAP_FOWNER (EPERM "
         "even with write permission)", "permissions", """
A: signal(SIGIO, "record")                     => 0
A: umask(0)                                    => *
A: fd = open("/f", O_RDONLY|O_CREAT, 0o644)    => 3
A: w = open("/w", O_RDONLY|O_CREAT, 0o666)     => 4
A: fcntl(fd, F_SETLEASE, F_WRLCK)              => 0
A: fcntl(w, F_SETLEASE, F_WRLCK)               => 0
B: utime("/f")                                 => 0
B: utime("/f", (1000, 2000))                   => 0
B: setuid(65534)                               => 0
B: utime("/f")                                 => EACCES
B: utime("/f", (1000, 2000))                   => EPERM
B: utime("/w")                                 => 0
B: utime("/w", (1000, 2000))                   => EPERM
A: signals()                                   => []
A: locks()                                     => [{"state": "ACTIVE", "type": "WRITE", "path": "/f"}, {"state": "ACTIVE", "type": "WRITE", "path": "/w"}]
""", new="10"),
    Case("setxattr_breaks_no_lease", "setxattr/getxattr of user. attributes break no "
         "lease (an attribute change breaks only delegations): XATTR_CREATE of an existing "
         "name is EEXIST, XATTR_REPLACE or getxattr of a missing one ENODATA; reading "
         "needs read permission, writing write permission (EACCES)", "permissions", """
A: signal(SIGIO, "record")                     => 0
A: fd = open("/f", O_RDONLY|O_CREAT, 0o644)    => 3
A: fcntl(fd, F_SETLEASE, F_WRLCK)              => 0
B: setxattr("/f", "user.tag", "one")           => 0
B: getxattr("/f", "user.tag")                  => b"one"
B: setxattr("/f", "user.tag", "two", XATTR_CREATE) => EEXIST
B: setxattr("/f", "user.new", "x", XATTR_REPLACE)  => ENODATA
B: getxattr("/f", "user.none")                 => ENODATA
A: signals()                                   => []
A: fcntl(fd, F_GETLEASE)                       => F_WRLCK
B: setuid(65534)                               => 0
B: getxattr("/f", "user.tag")                  => b"one"
B: setxattr("/f", "user.tag", "three")         => EACCES
""", new="10"),
    Case("access_checks_the_real_ids", "access(2) checks with the real uid (a root "
         "real uid keeps its capabilities: access_override_creds), open and AT_EACCESS with "
         "the effective one; setresuid back to a saved uid 0 restores the capabilities, "
         "an unprivileged setresuid to 0 is EPERM; a bad mode or flag is EINVAL",
         "permissions", """
A: c = open("/secret", O_RDWR|O_CREAT, 0o600)  => 3
A: close(c)                                    => 0
A: setresuid(0, 65534, 0)                      => 0
A: open("/secret", O_RDONLY)                   => EACCES
A: access("/secret", R_OK)                     => 0
A: faccessat(AT_FDCWD, "/secret", R_OK, AT_EACCESS) => EACCES
A: faccessat(AT_FDCWD, "/secret", R_OK, 0x8)   => EINVAL
A: access("/secret", 8)                        => EINVAL
A: setresuid(-1, 0, -1)                        => 0
A: open("/secret", O_RDONLY)                   => 3
A: setresuid(65534, 65534, 65534)              => 0
A: access("/secret", R_OK)                     => EACCES
A: setresuid(-1, 0, -1)                        => EPERM
""", new="10"),
    Case("sigio_perm_real_and_effective", "sigio_perm(): a notice reaches the owner when "
         "the F_SETOWN caller's effective or real uid is the owner's real or saved uid (here "
         "only the setter's real uid matches)", "signals", """
B: signal(SIGIO, "record")                     => 0
B: setresuid(1000, 1000, 1000)                 => 0
A: umask(0)                                    => *
A: mkdir("/d", 0o777)                          => 0
A: setresuid(1000, 65534, 0)                   => 0
A: fd = open("/d/f", O_RDONLY|O_CREAT, 0o644)  => 3
A: fcntl(fd, F_SETLEASE, F_WRLCK)              => 0
A: fcntl(fd, F_SETOWN, B.pid)                  => 0
C: open("/d/f", O_RDONLY|O_NONBLOCK)           => EWOULDBLOCK
B: sigwait(SIGIO)                              => {"si_signo": SIGIO, "si_code": SI_KERNEL}
""", new="10"),
]


# --- the scenario language of issue 10, section 3: behaviours it can now state --------
CASES += [
    Case("holder_answers_break_in_sigio_handler", "a holder that answers the break in its "
         "SIGIO handler (as real programs do: release, munmap, deregister): the handler's "
         "F_UNLCK lets a writer in at once, its F_RDLCK lets a reader in with the lease "
         "kept; the breaker never waits lease_break_time", "signals", """
A: fd = open("/f", O_RDONLY|O_CREAT, 0o644)    => 3
A: on SIGIO: fcntl(fd, F_GETLEASE) => F_UNLCK; fcntl(fd, F_SETLEASE, F_UNLCK) => 0
A: fcntl(fd, F_SETLEASE, F_WRLCK)              => 0
B: w = open("/f", O_RDWR)                      => 3 within 5s
A: fcntl(fd, F_GETLEASE)                       => F_UNLCK
B: close(w)                                    => 0
A: on SIGIO: fcntl(fd, F_GETLEASE) => F_RDLCK; fcntl(fd, F_SETLEASE, F_RDLCK) => 0
A: fcntl(fd, F_SETLEASE, F_WRLCK)              => 0
C: r = open("/f", O_RDONLY) &
C: join                                        => 3 within 5s
A: fcntl(fd, F_GETLEASE)                       => F_RDLCK
A: locks()                                     => exactly [{"state": "ACTIVE", "type": "READ", "pid": A.pid, "path": "/f", "waiter": False, "depth": 0}]
""", new="10"),
    Case("sigtimedwait_takes_blocked_notice", "a holder that blocks the lease's signal "
         "takes the notice with sigtimedwait: no handler runs, the siginfo is the "
         "queued one (si_fd), and a second wait times out with EAGAIN", "signals", """
A: signal(SIGIO, "record")                     => 0
A: fd = open("/f", O_RDONLY|O_CREAT, 0o644)    => 3
A: fcntl(fd, F_SETSIG, SIGIO)                  => 0
A: fcntl(fd, F_SETLEASE, F_WRLCK)              => 0
A: sigblock(SIGIO)                             => 0
B: open("/f", O_RDONLY|O_NONBLOCK)             => EWOULDBLOCK
A: sigtimedwait(SIGIO, 5)                      => exactly {"si_signo": SIGIO, "si_code": POLL_MSG, "si_band": 0x441, "si_fd": fd}
A: sigtimedwait(SIGIO, 0.2)                    => EAGAIN within 2s
A: signals()                                   => []
A: fcntl(fd, F_GETLEASE)                       => F_RDLCK
""", new="10"),
    Case("running_executable_refuses_writers", "a file a process runs (execve of a "
         "program file) is denied writers while it runs: an open for writing or a "
         "truncate is ETXTBSY, F_WRLCK is EAGAIN, F_RDLCK is allowed; exec of a file "
         "open for writing is ETXTBSY; the process's death gives write access back",
         "acquiring", """
A: fd = open("/prog", O_WRONLY|O_CREAT, 0o755)  => 3
A: write(fd, ELF_PAUSE)                         => 129
B: exec("/prog")                                => ETXTBSY
A: close(fd)                                    => 0
A: n = open("/plain", O_WRONLY|O_CREAT, 0o644)  => 3
A: close(n)                                     => 0
B: exec("/plain")                               => EACCES
B: exec("/prog", "running")
A: open("/prog", O_WRONLY)                      => ETXTBSY
A: truncate("/prog", 0)                         => ETXTBSY
A: r = open("/prog", O_RDONLY)                  => 3
A: fcntl(r, F_SETLEASE, F_WRLCK)                => EAGAIN
A: fcntl(r, F_SETLEASE, F_RDLCK)                => 0
A: fcntl(r, F_SETLEASE, F_UNLCK)                => 0
!kill B
A: w = open("/prog", O_WRONLY)                  => 4
A: close(w)                                     => 0
A: fcntl(r, F_SETLEASE, F_WRLCK)                => 0
""", new="10"),
    Case("reflink_on_xfs", "on XFS (host_fs xfs: a fresh XFS with reflink on a loop "
         "device; skipped where mkfs.xfs or loop devices are missing) FICLONE shares the "
         "source's data, a later write to the clone leaves the source as it was, and a "
         "read lease on the source is not broken by the clone", "breaking", """
set host_fs = xfs
set flavour = xfs
A: signal(SIGIO, "record")                     => 0
A: f = open("/f", O_RDWR|O_CREAT, 0o644)       => 3
A: write(f, "hello")                           => 5
A: close(f)                                    => 0
A: r = open("/f", O_RDONLY)                    => 3
A: fcntl(r, F_SETLEASE, F_RDLCK)               => 0
B: g = open("/g", O_RDWR|O_CREAT, 0o644)       => 3
B: s = open("/f", O_RDONLY)                    => 4
B: clone(s, g)                                 => 0
B: pread(g, 5, 0)                              => b"hello"
B: pwrite(g, "J", 0)                           => 1
B: pread(s, 5, 0)                              => b"hello"
A: signals()                                   => []
A: fcntl(r, F_GETLEASE)                        => F_RDLCK
""", new="10"),
    Case("unprivileged_breaker_sleeps", "a breaker that gave up root (setuid) and may "
         "write the file breaks a root holder's lease and sleeps in the break like any "
         "other until the holder releases it", "breaking", """
A: umask(0)                                    => *
A: mkdir("/d", 0o777)                          => 0
B: umask(0)                                    => *
B: fd = open("/d/f", O_RDONLY|O_CREAT, 0o666)  => 3
B: signal(SIGIO, "record")                     => 0
B: fcntl(fd, F_SETLEASE, F_WRLCK)              => 0
A: setuid(65534)                               => 0
A: w = open("/d/f", O_RDWR) &
B: sigwait(SIGIO)                              => {"si_signo": SIGIO, "si_code": SI_KERNEL}
B: locks()                                     => [{"state": "BREAKING", "type": "UNLCK"}, {"state": "BREAKER", "type": "WRITE", "pid": A.pid}]
B: fcntl(fd, F_SETLEASE, F_UNLCK)              => 0
A: join                                        => 3
""", new="10"),
]


def render() -> str:
    """docs/conformance.md."""
    lines = [
        "# Lease and signal conformance",
        "",
        "Generated from `tests/lease_cases.py` (`python tests/lease_cases.py > "
        "docs/conformance.md`); `tests/test_leases.py` runs every case as a multi-process",
        "scenario on the host kernel and on the emulator, requires both to meet every",
        "expectation (written first for the host) and their transcripts to be identical,",
        "PIDs aside; a test keeps this page equal to the table.",
        "",
        f"{len(CASES)} behaviours; the \"new\" column names the issue whose work added a "
        "behaviour.",
        "",
        "| # | area | behaviour | test | host | emulator | new |",
        "|---|---|---|---|---|---|---|",
    ]
    for i, c in enumerate(CASES, 1):
        emu = f"diverges: {c.divergence}" if c.divergence else "pass"
        lines.append(f"| {i} | {c.area} | {c.behaviour} | "
                     f"`test_leases.py::test_lease_behaviour[{c.name}]` | pass | {emu} | "
                     f"{'issue ' + c.new if c.new else ''} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(render(), end="")
