"""Dual-target tests: the same multi-process scenario on the host kernel and the emulator.

Each scenario states its expectations (written first against the host kernel, which is
the oracle); the test runs it on both targets with real processes, requires every
expectation to hold on both, and requires the two transcripts to be identical (PIDs
aside).
"""

from __future__ import annotations

import pytest
from dual import same_on_both_targets

from kemu.agents.scenario.parse import parse

SCENARIOS: dict[str, str] = {
    "lowest_free_numbering": """
        A: a = open("/a", O_RDWR|O_CREAT, 0o644)   => 3
        A: b = open("/b", O_RDWR|O_CREAT, 0o644)   => 4
        A: c = open("/c", O_RDWR|O_CREAT, 0o644)   => 5
        A: close(b)                                 => 0
        A: open("/c", O_RDONLY)                     => 4
        A: close(a)                                 => 0
        A: dup(c)                                   => 3
        A: fcntl(c, F_DUPFD, 10)                    => 10
        A: fcntl(c, F_DUPFD, 10)                    => 11
        A: close(0)                                 => 0
        A: open("/a", O_RDONLY)                     => 0
        B: open("/a", O_RDONLY)                     => 3
    """,
    "dup_shares_offset_and_status_flags_not_cloexec": """
        A: fd = open("/f", O_RDWR|O_CREAT|O_CLOEXEC, 0o644)  => 3
        A: fcntl(fd, F_GETFD)                       => FD_CLOEXEC
        A: d = dup(fd)                              => 4
        A: fcntl(d, F_GETFD)                        => 0
        A: write(fd, "abcdef")                      => 6
        A: lseek(d, 0, SEEK_CUR)                    => 6
        A: lseek(d, 2, SEEK_SET)                    => 2
        A: read(fd, 2)                              => b"cd"
        A: fcntl(d, F_SETFL, O_APPEND|O_NONBLOCK)   => 0
        A: fcntl(fd, F_GETFL)                       => O_RDWR|O_APPEND|O_NONBLOCK|O_LARGEFILE
        A: fcntl(d, F_SETFD, FD_CLOEXEC)            => 0
        A: e = dup2(fd, 7)                          => 7
        A: fcntl(e, F_GETFD)                        => 0
        A: fcntl(fd, F_GETFD)                       => FD_CLOEXEC
        A: dup3(fd, 8, O_CLOEXEC)                   => 8
        A: fcntl(8, F_GETFD)                        => FD_CLOEXEC
        A: fds()
    """,
    "dup2_closes_target_and_edge_cases": """
        A: f = open("/f", O_RDWR|O_CREAT, 0o644)    => 3
        A: g = open("/g", O_RDWR|O_CREAT, 0o644)    => 4
        A: write(g, "gg")                           => 2
        A: dup2(f, g)                               => 4
        A: fstat(g)                                 => {"st_size": 0}
        A: dup2(f, f)                               => 3
        A: dup2(9, 9)                               => EBADF
        A: dup3(f, f, 0)                            => EINVAL
        A: dup3(f, 5, O_RDWR)                       => EINVAL
        A: dup2(f, -1)                              => EBADF
        A: dup2(f, 5000)                            => EBADF
        A: fcntl(f, F_DUPFD, -1)                    => EINVAL
        A: fcntl(f, F_DUPFD, 5000)                  => EINVAL
        A: dup(42)                                  => EBADF
        A: fds()
    """,
    "exec_with_and_without_cloexec": """
        A: keep = open("/k", O_RDWR|O_CREAT, 0o644)              => 3
        A: gone = open("/g", O_RDWR|O_CREAT|O_CLOEXEC, 0o644)    => 4
        A: late = open("/l", O_RDWR|O_CREAT, 0o644)              => 5
        A: fcntl(late, F_SETFD, FD_CLOEXEC)                      => 0
        A: write(keep, "xyz")                                    => 3
        A: exec()
        A: fcntl(keep, F_GETFD)                                  => 0
        A: lseek(keep, 0, SEEK_CUR)                              => 3
        A: fcntl(gone, F_GETFD)                                  => EBADF
        A: fcntl(late, F_GETFD)                                  => EBADF
        A: open("/g", O_RDONLY)                                  => 4
        A: fds()
    """,
    "fork_shares_offsets_and_table_snapshot": """
        A: fd = open("/f", O_RDWR|O_CREAT, 0o644)   => 3
        A: write(fd, "0123456789")                  => 10
        A: lseek(fd, 0, SEEK_SET)                   => 0
        A: fork() as C
        A: read(fd, 3)                              => b"012"
        C: read(fd, 3)                              => b"345"
        A: lseek(fd, 0, SEEK_CUR)                   => 6
        A: late = open("/late", O_RDWR|O_CREAT, 0o644)  => 4
        C: fcntl(4, F_GETFD)                        => EBADF
        C: close(fd)                                => 0
        A: read(fd, 2)                              => b"67"
        C: open("/f", O_RDONLY)                     => 3
        C: fds()
        A: fds()
    """,
    "fork_child_dups_do_not_show_in_parent": """
        A: fd = open("/f", O_RDWR|O_CREAT|O_CLOEXEC, 0o644)  => 3
        A: fork() as C
        C: fcntl(fd, F_GETFD)                       => FD_CLOEXEC
        C: dup2(fd, 9)                              => 9
        A: fcntl(9, F_GETFD)                        => EBADF
        C: fcntl(fd, F_SETFL, O_APPEND)             => 0
        A: fcntl(fd, F_GETFL)                       => O_RDWR|O_APPEND|O_LARGEFILE
        C: exec()
        C: fcntl(fd, F_GETFD)                       => EBADF
        C: fcntl(9, F_GETFD)                        => 0
        A: fcntl(fd, F_GETFD)                       => FD_CLOEXEC
    """,
    "passed_descriptor_outlives_senders_close": """
        A: fd = open("/f", O_RDWR|O_CREAT, 0o644)   => 3
        A: write(fd, "payload")                     => 7
        A: sendfd(B, fd)                            => 0
        A: close(fd)                                => 0
        A: unlink("/f")                             => 0
        B: x = open("/other", O_RDWR|O_CREAT, 0o644) => 3
        B: g = recvfd()                             => 4
        B: lseek(g, 0, SEEK_CUR)                    => 7
        B: pread(g, 100, 0)                         => b"payload"
        B: fstat(g)                                 => {"st_nlink": 0, "st_size": 7}
        B: fds()
    """,
    "passed_descriptor_outlives_senders_death": """
        A: fd = open("/f", O_RDWR|O_CREAT, 0o644)   => 3
        A: write(fd, "survives")                    => 8
        A: sendfd(B, fd, fd)                        => 0
        !kill A
        B: recvfd()                                 => [3, 4]
        B: pread(3, 100, 0)                         => b"survives"
        B: lseek(4, 0, SEEK_CUR)                    => 8
    """,
    "o_append_and_pwrite_with_o_append": """
        A: fd = open("/f", O_WRONLY|O_CREAT|O_APPEND, 0o644)  => 3
        A: write(fd, "abc")                         => 3
        A: lseek(fd, 0, SEEK_SET)                   => 0
        A: write(fd, "def")                         => 3
        A: pwrite(fd, "XY", 0)                      => 2
        A: lseek(fd, 0, SEEK_CUR)                   => 6
        B: r = open("/f", O_RDONLY)                 => 3
        B: read(r, 100)                             => b"abcdefXY"
        B: w = open("/f", O_WRONLY)                 => 4
        B: write(w, "__")                           => 2
        A: write(fd, "!")                           => 1
        B: pread(r, 100, 0)                         => b"__cdefXY!"
    """,
    "o_trunc_and_truncate": """
        A: fd = open("/f", O_RDWR|O_CREAT, 0o644)   => 3
        A: write(fd, "0123456789")                  => 10
        B: t = open("/f", O_WRONLY|O_TRUNC)         => 3
        A: fstat(fd)                                => {"st_size": 0}
        A: lseek(fd, 0, SEEK_CUR)                   => 10
        A: write(fd, "x")                           => 1
        A: fstat(fd)                                => {"st_size": 11}
        A: pread(fd, 11, 0)                         => b"\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x00x"
        B: ro = open("/f", O_RDONLY|O_TRUNC)        => 4
        A: fstat(fd)                                => {"st_size": 0}
        A: truncate("/f", 5)                        => 0
        A: pread(fd, 10, 0)                         => b"\\x00\\x00\\x00\\x00\\x00"
        A: ftruncate(fd, 2)                         => 0
        A: fstat(fd)                                => {"st_size": 2}
        B: ftruncate(ro, 0)                         => EINVAL
        A: ftruncate(fd, -1)                        => EINVAL
        A: truncate("/f", -1)                       => EINVAL
        A: truncate("/nope", 0)                     => ENOENT
    """,
    "errnos_of_bad_calls": """
        A: open("/nope", O_RDONLY)                  => ENOENT
        A: open("/nodir/f", O_RDWR|O_CREAT, 0o644)  => ENOENT
        A: fd = open("/f", O_RDWR|O_CREAT|O_EXCL, 0o644)  => 3
        A: open("/f", O_RDWR|O_CREAT|O_EXCL, 0o644) => EEXIST
        A: mkdir("/d", 0o755)                       => 0
        A: mkdir("/d", 0o755)                       => EEXIST
        A: open("/d", O_RDWR)                       => EISDIR
        A: open("/d", O_WRONLY|O_CREAT, 0o644)      => EISDIR
        A: dd = open("/d", O_RDONLY)                => 4
        A: read(dd, 10)                             => EISDIR
        A: open("/f/x", O_RDONLY)                   => ENOTDIR
        A: open("/f", O_RDONLY|O_DIRECTORY)         => ENOTDIR
        A: open("/d/", O_RDONLY|O_CREAT, 0o644)     => EISDIR
        A: open("/f/", O_RDONLY)                    => ENOTDIR
        A: unlink("/d")                             => EISDIR
        A: close(99)                                => EBADF
        A: read(99, 1)                              => EBADF
        A: lseek(fd, -1, SEEK_SET)                  => EINVAL
        A: lseek(fd, 0, 17)                         => EINVAL
        A: fcntl(fd, 12345)                         => EINVAL
        A: ro = open("/f", O_RDONLY)                => 5
        A: write(ro, "x")                           => EBADF
        A: wo = open("/f", O_WRONLY)                => 6
        A: read(wo, 1)                              => EBADF
        A: pread(fd, 1, -1)                         => EINVAL
        A: n = open("/f", 3)                        => 7
        A: read(n, 1)                               => EBADF
        A: write(n, "x")                            => EBADF
        A: rmdir("/f")                              => ENOTDIR
    """,
    "namespace_rename_unlink_rmdir": """
        A: mkdir("/d", 0o755)                       => 0
        A: fd = open("/d/f", O_RDWR|O_CREAT, 0o644) => 3
        A: write(fd, "data")                        => 4
        A: rmdir("/d")                              => ENOTEMPTY
        A: rename("/d/f", "/g")                     => 0
        A: listdir("/")                             => ["d", "g"]
        A: open("/d/f", O_RDONLY)                   => ENOENT
        B: h = open("/h", O_RDWR|O_CREAT, 0o644)    => 3
        B: write(h, "old")                          => 3
        A: rename("/g", "/h")                       => 0
        B: pread(h, 10, 0)                          => b"old"
        B: fstat(h)                                 => {"st_nlink": 0}
        B: n = open("/h", O_RDONLY)                 => 4
        B: read(n, 10)                              => b"data"
        A: rename("/d", "/h")                       => ENOTDIR
        A: rename("/h", "/d")                       => EISDIR
        A: rename("/d", "/d/sub")                   => EINVAL
        A: rename("/nope", "/x")                    => ENOENT
        A: rmdir("/d")                              => 0
        A: rmdir("/d")                              => ENOENT
        A: unlink("/h")                             => 0
        B: pread(h, 10, 0)                          => b"old"
    """,
    "open_flag_edge_cases": """
        A: open("/d", O_RDONLY|O_CREAT|O_DIRECTORY, 0o644)  => EINVAL
        A: fd = open("/f", O_RDWR|O_CREAT|O_NONBLOCK, 0o600) => 3
        A: fcntl(fd, F_GETFL)                       => O_RDWR|O_NONBLOCK|O_LARGEFILE
        A: fcntl(fd, F_SETFL, O_RDONLY)             => 0
        A: fcntl(fd, F_GETFL)                       => O_RDWR|O_LARGEFILE
        A: fcntl(fd, F_SETFL, O_APPEND|O_CREAT|O_TRUNC)  => 0
        A: fcntl(fd, F_GETFL)                       => O_RDWR|O_APPEND|O_LARGEFILE
        A: fstat(fd)                                => {"st_mode": S_IFREG|0o600}
        A: umask(0o077)                             => 0o022
        A: g = open("/g", O_RDWR|O_CREAT, 0o666)    => 4
        A: fstat(g)                                 => {"st_mode": S_IFREG|0o600}
        A: p = open("/f", O_PATH)                   => 5
        A: read(p, 1)                               => EBADF
        A: fstat(p)                                 => {"st_size": 0}
        A: fcntl(p, F_GETFL)                        => O_PATH
        A: fcntl(p, F_SETFL, O_APPEND)              => EBADF
        A: dup(p)                                   => 6
    """,
    "seek_data_and_holes": """
        A: fd = open("/f", O_RDWR|O_CREAT, 0o644)   => 3
        A: pwrite(fd, "end", 10000)                 => 3
        A: lseek(fd, 0, SEEK_END)                   => 10003
        A: lseek(fd, 5, SEEK_END)                   => 10008
        A: lseek(fd, -20000, SEEK_END)              => EINVAL
        A: lseek(fd, 20000, SEEK_DATA)              => ENXIO
        A: pread(fd, 4, 9998)                       => b"\\x00\\x00en"
    """,
}


@pytest.mark.host
@pytest.mark.timeout(120)
@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_same_behaviour_on_host_and_emulator(name: str) -> None:
    same_on_both_targets(parse(SCENARIOS[name], name))
