"""DAX mappings on the emulator: the data path, refusals, lifetime, and the shoot-down
invariant (no store lands in a block after the kernel freed it), with real processes."""

from __future__ import annotations

import os
import select
import subprocess
import sys

import pytest

from kemu.agents.launcher.daemon_process import DaemonProcess
from kemu.agents.launcher.runner import run_scenario
from kemu.agents.lib.api import EmuSystem
from kemu.agents.scenario.parse import parse

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SCENARIOS = {
    "shared_mapping_data_path": """
A: signal(SIGBUS, "record")                     => 0
A: fd = open("/f", O_RDWR|O_CREAT, 0o644)       => 3
A: ftruncate(fd, 8192)                          => 0
A: p = mmap(8192, PROT_READ|PROT_WRITE, MAP_SHARED, fd, 0)
A: store(p + 10, "hello")                       => 5
A: pread(fd, 5, 10)                             => b"hello"
A: pwrite(fd, "world", 20)                      => 5
A: load(p + 20, 5)                              => b"world"
A: load(p + 4096, 4)                            => b"\\x00\\x00\\x00\\x00"
A: fork() as C
C: load(p + 10, 5)                              => b"hello"
C: store(p + 4096, "child")                     => 5
A: load(p + 4096, 5)                            => b"child"
B: truncate("/f", 100)                          => 0
A: load(p + 4096, 1)                            => EFAULT
A: signals()                                    => [{"si_signo": SIGBUS, "si_code": 2}]
A: load(p + 10, 5)                              => b"hello"
B: stat("/f")                                   => {"st_size": 100}
""",
    "private_mapping_copies_on_write": """
A: fd = open("/f", O_RDWR|O_CREAT, 0o644)       => 3
A: pwrite(fd, "original", 0)                    => 8
A: p = mmap(4096, PROT_READ|PROT_WRITE, MAP_PRIVATE, fd, 0)
A: store(p, "PRIVATE!")                         => 8
A: load(p, 8)                                   => b"PRIVATE!"
A: pread(fd, 8, 0)                              => b"original"
""",
    "mmap_refusals": """
A: ro = open("/f", O_RDONLY|O_CREAT, 0o644)     => 3
A: mmap(4096, PROT_READ|PROT_WRITE, MAP_SHARED, ro, 0)   => EACCES
A: mmap(4096, PROT_READ|PROT_WRITE, MAP_PRIVATE, ro, 0)  => ok
A: wo = open("/f", O_WRONLY)                    => 4
A: mmap(4096, PROT_READ, MAP_SHARED, wo, 0)     => EACCES
A: mkdir("/d", 0o755)                           => 0
A: d = open("/d", O_RDONLY)                     => 5
A: mmap(4096, PROT_READ, MAP_SHARED, d, 0)      => ENODEV
A: mmap(0, PROT_READ, MAP_SHARED, ro, 0)        => EINVAL
A: mmap(4096, PROT_READ, MAP_SHARED, ro, 100)   => EINVAL
A: mmap(4096, PROT_READ, 0, ro, 0)              => EINVAL
A: mmap(4096, PROT_READ, MAP_SHARED, 42, 0)     => EBADF
A: mmap(4096, PROT_READ, MAP_SHARED_VALIDATE|MAP_DIRECT, ro, 0) => EOPNOTSUPP
A: mmap(4096, PROT_READ, MAP_SHARED|MAP_DIRECT, ro, 0) => ok
A: mmap(4096, PROT_READ, MAP_SHARED_VALIDATE|MAP_SYNC, ro, 0) => ok
A: mmap(4096, PROT_READ, MAP_SHARED_VALIDATE|MAP_SYNC|MAP_ANONYMOUS, -1, 0) => EOPNOTSUPP
A: p = mmap(4096, PROT_READ, MAP_SHARED, ro, 0)
A: store(p, "x")                                => killed SIGSEGV
""",
    "mapping_keeps_file_open": """
A: fd = open("/f", O_RDWR|O_CREAT, 0o644)       => 3
A: pwrite(fd, "kept", 0)                        => 4
A: p = mmap(4096, PROT_READ|PROT_WRITE, MAP_SHARED, fd, 0)
A: close(fd)                                    => 0
A: unlink("/f")                                 => 0
A: load(p, 4)                                   => b"kept"
A: store(p, "KEPT")                             => 4
A: load(p, 4)                                   => b"KEPT"
A: maps()                                       => [{"path": "/#4 (deleted)", "perms": "rw-s"}]
A: munmap(p, 4096)                              => 0
A: maps()                                       => []
""",
    "exec_drops_mappings": """
A: fd = open("/f", O_RDWR|O_CREAT, 0o644)       => 3
A: ftruncate(fd, 4096)                          => 0
A: p = mmap(4096, PROT_READ|PROT_WRITE, MAP_SHARED, fd, 0)
A: store(p, "x")                                => 1
A: exec()
A: maps()                                       => []
A: load(p, 1)                                   => EFAULT
""",
}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_mapping_scenario(name: str) -> None:
    outcome = run_scenario(parse(SCENARIOS[name], name), "emulator", show_pids=False)
    assert outcome.passed, f"{outcome.failures}\n" + "\n".join(outcome.transcript)


STORER = """
import os, sys
sys.path.insert(0, {root!r})
from kemu.agents.lib.api import EmuSystem
s = EmuSystem({run!r}, "storer")
s.signal(7, "record")
fd = s.open("/f", os.O_RDWR)
p = s.mmap({pages} * 4096, 3, 1, fd, 0)
print("ready", flush=True)
n = 0
while not os.path.exists({stop!r}):
    for page in range({pages}):
        try:
            s.store(p + page * 4096, b"A" * 4096)
            n += 1
        except OSError:
            pass  # SIGBUS: the page is past the end of the file now
print("stores", n, "sigbus", len(s.signals()), flush=True)
"""


@pytest.mark.timeout(120)
@pytest.mark.parametrize("change", ["punch", "truncate"])
def test_no_store_lands_in_a_freed_block(daemon: DaemonProcess, change: str) -> None:
    """A process stores into every page of its mapping in a loop while another punches
    every page out of the file and a second file takes every freed block at once (the
    allocator hands the last freed block out first).  If one store landed in a block
    after it was freed, the other file would hold an 'A'.

    Two ways to take the pages away: hole punching (the storer faults new blocks in) and
    shrinking truncates (every fault past the end is a SIGBUS the storer records).
    Faults in a range being changed wait for the change (the invalidate lock); without
    that, the storer re-faulted the pages after each shoot-down and the change never
    ended."""
    pages = 4
    stop = os.path.join(daemon.run_dir, "stop")
    sysm = EmuSystem(daemon.run_dir, "truncater")
    try:
        fd = sysm.open("/f", os.O_RDWR | os.O_CREAT, 0o644)
        sysm.ftruncate(fd, pages * 4096)
        g = sysm.open("/g", os.O_RDWR | os.O_CREAT, 0o644)
        code = STORER.format(root=ROOT, run=daemon.run_dir, pages=pages, stop=stop)
        env = dict(os.environ, PYTHONPATH=ROOT)
        storer = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                                  env=env, text=True)
        assert storer.stdout is not None
        ready, _, _ = select.select([storer.stdout], [], [], 30)
        assert ready and storer.stdout.readline().startswith("ready")
        offset = 0
        punch = 0x02 | 0x01  # FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE
        for _ in range(60):
            # every page zapped, shot down (waiting for the storer's ack) and freed; the
            # storer faults new blocks into the holes, or gets SIGBUS past the end
            if change == "punch":
                sysm.call("fallocate", fd, punch, 0, pages * 4096)
            else:
                sysm.ftruncate(fd, 0)
            for _ in range(pages):           # the freed blocks go to /g at once
                assert sysm.pwrite(g, b"G" * 4096, offset) == 4096
                offset += 4096
            if change == "truncate":
                sysm.ftruncate(fd, pages * 4096)  # holes again
        open(stop, "w").close()
        out, _ = storer.communicate(timeout=30)
        assert storer.returncode == 0, out
        assert "stores" in out
        data = sysm.pread(g, offset, 0)
        assert len(data) == offset
        assert data.count(b"A") == 0, "a store landed in a block the kernel had freed"
        assert data == b"G" * offset
    finally:
        sysm.conn.close()
