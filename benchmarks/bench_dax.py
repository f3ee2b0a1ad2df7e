#!/usr/bin/env python3
"""The DAX data path: CPU stores through a mapping, and an RDMA WRITE, against memcpy.

One run measures, against a plain ``memoryview`` slice copy into the same
shared-memory segment (the pmem device, attached here by name from the welcome's
``pmem["name"]`` and unregistered from the resource tracker at once):

* **Stores, 64 MiB** through a ``MAP_SHARED`` read/write mapping of a pmem file
  pre-sized with ``ftruncate``: ``EmuSystem.store`` of the whole 64 MiB at once
  (``whole``) and as 64 stores of 1 MiB (``chunks``).  The baseline copies the same
  bytes, the same way (one slice assignment, or 64 of 1 MiB), into **the blocks the
  file uses** (the script checks that they form one span of the device in page order,
  so both leave the same bytes in the same places).

  - **first-touch**: the first pass over a freshly truncated file faults every page in
    (one ``mm_fault`` call to the daemon per 2 MiB window, a PMD fault that allocates
    and zeroes its 512 blocks and hands all 512 translations back).  Baseline: the same copy into a freshly created 64 MiB shared-memory
    segment (the host kernel's own first-touch page faults).  Informational.
  - **steady**: later passes, every translation cached in the agent's TLB.  **Judged.**

* **RDMA WRITE, 1 MiB**: a second process (the remote peer, its own ``EmuSystem``)
  posts an ``IBV_WR_RDMA_WRITE`` on a queue pair (``ibv_post_send``: a work request in
  the shared ring and a doorbell, no call) whose local side is an SGE naming 1 MiB of
  its own registered memory (anonymous, pinned, filled once), and waits for the
  completion (``ibv_poll_cq``); the daemon, as the card, copies device to device.  The rkey is that of an MR this process
  registered with ``ibv_reg_mr`` over a DAX mapping of a 1 MiB pmem file with
  ``IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_WRITE`` (a long-term pin; the daemon runs
  policy ``legacy``, which allows it).  Also, for information, the same WRITE through
  an MR with ``IBV_ACCESS_ON_DEMAND`` added (translated at access time), a 4 KiB
  WRITE carried in the call (the fixed cost of a call), the same SGE WRITE as a call
  (``pinned-call``), the 1 MiB carried in the call itself (``pinned-inline``), a 1 MiB
  WRITE with rkey 0,
  which names no MR (the call and its bytes travel, nothing is written: the transport
  alone), and, timed in this process, a bare pyzmq + msgpack round trip carrying the
  same 1 MiB to an echo process (the floor of any design that puts the bytes in the
  call).  Baseline, timed in the peer: the same 1 MiB ``memoryview`` copy into the MR's
  blocks.  A probe first checks that each rkey's WRITE lands in the file.

Store passes are interleaved one by one; RDMA calls run in blocks of ``RDMA_REPS`` per
configuration within a round (a 1 MiB call just before leaves every cache cold for
the next, which is not what the configuration costs).  The order rotates each round, so
a drift of the machine hits all configurations alike.  Ratios are **baseline time / emulated time**
at p50 (1.0 = as fast as memcpy).

Targets: stores (steady, whole and chunks) >= 0.8; RDMA WRITE (pinned) >= 0.5.

``--profile`` instead runs the store path under cProfile in this process and the daemon
under ``python -m cProfile -o ... -m kemu.kernel_daemon`` (and the peer under cProfile),
prints the top entries and keeps the ``.prof`` files in /tmp/kemu-dax-prof-*.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from multiprocessing import resource_tracker, shared_memory
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)

from _common import (  # noqa: E402
    child_env,
    loadavg,
    percentile,
    ratio,
    result_line,
    run_directory,
    summary,
    table,
)

from kemu.agents.launcher.daemon_process import DaemonProcess, start_daemon  # noqa: E402
from kemu.agents.lib.api import EmuSystem  # noqa: E402

MIB = 1 << 20
SIZE = 64 * MIB  # the store benchmark's file and mapping
CHUNK = 1 * MIB  # store size of the "chunks" mode
RDMA_SIZE = 1 * MIB
SMALL = 4096  # the small RDMA WRITE (fixed cost)
BLOCK_SIZE = 4096
BLOCKS = 20480  # 80 MiB: 16384 for the store file, 256 for the RDMA file, room
TARGET_STORE = 0.8  # baseline / DAX, steady state, at p50
TARGET_RDMA = 0.5  # baseline / RDMA WRITE (pinned), at p50

FIRST_TOUCH_REPS = 3  # per mode (whole, chunks); each takes ~2-3 s
ROUNDS = 15  # interleaved rounds
STORE_REPS = 3  # 64 MiB passes per store configuration per round
RDMA_REPS = 20  # calls per RDMA configuration per round
RDMA_WARMUP = 5

PROT_RW = 0x1 | 0x2
MAP_SHARED = 0x01
ACCESS_PINNED = 0x1 | 0x2  # IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_WRITE
ACCESS_ODP = ACCESS_PINNED | 0x40  # + IBV_ACCESS_ON_DEMAND
WC_SUCCESS = "IBV_WC_SUCCESS"

#: the remote peer: its own Connection; times rdma_write and the baseline copy itself
PEER = r"""
import json, sys, time
from multiprocessing import resource_tracker, shared_memory

run_dir, pmem_name, base, size, small, daemon_pid = (
    sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]),
    int(sys.argv[6]))
keys = json.loads(sys.argv[7])
profile = sys.argv[8] if len(sys.argv) > 8 else ""
from kemu.agents.lib.api import EmuSystem
peer_sys = EmuSystem(run_dir, name="rdma-peer")
conn = peer_sys.conn
shm = shared_memory.SharedMemory(name=pmem_name)
resource_tracker.unregister(shm._name, "shared_memory")
buf = shm.buf
data = bytes(range(256)) * (size // 256)
view = memoryview(data)
little = data[:small]

def cpu(pid):
    total = 0
    try:
        import os
        for tid in os.listdir(f"/proc/{pid}/task"):
            try:
                with open(f"/proc/{pid}/task/{tid}/schedstat") as fh:
                    total += int(fh.read().split()[0])
            except (OSError, ValueError, IndexError):
                pass
    except OSError:
        pass
    return total

def write(rkey, payload, want="IBV_WC_SUCCESS", offset=0):
    status = conn.call("rdma_write", rkey, offset, payload)
    if status != want:
        raise RuntimeError(f"rdma_write: {status}")

def copy():
    buf[base : base + size] = view

# the peer's own registered memory (anonymous, pinned): the source of a verbs WRITE
src = peer_sys.mmap(size, 0x3, 0x21, -1, 0)  # MAP_SHARED | MAP_ANONYMOUS
peer_sys.store(src, data)
pctx = conn.call("ibv_open_device")
local = conn.call("ibv_reg_mr", pctx, src, size, 0x1)  # IBV_ACCESS_LOCAL_WRITE
sge = {"lkey": local["lkey"], "addr": src, "length": size}
qp = peer_sys.ibv_create_qp(pctx)

def post(rkey, payload, want="IBV_WC_SUCCESS", offset=0):
    peer_sys.ibv_post_send(qp, 0, rkey, offset, payload)  # IBV_WR_RDMA_WRITE
    status = peer_sys.ibv_poll_cq(qp, 10)["status"]
    if status != want:
        raise RuntimeError(f"ibv_post_send: {status}")

configs = {
    "rdma/pinned": lambda: post(keys["pinned"], sge),
    "rdma/odp": lambda: post(keys["odp"], sge),
    "rdma/pinned-call": lambda: write(keys["pinned"], sge),
    "rdma/pinned-inline": lambda: write(keys["pinned"], data),
    "rdma/pinned-4KiB": lambda: write(keys["pinned"], little),
    # rkey 0 is never handed out: the call and its 1 MiB travel, nothing is written
    "rdma/no-mr-1MiB": lambda: write(0, data, "IBV_WC_REM_ACCESS_ERR"),
    "copy/1MiB": copy,
}
names = list(configs)
if profile:
    import cProfile
    prof = cProfile.Profile()
    prof.enable()
sys.stdout.write("ready\n")
sys.stdout.flush()
clock = time.perf_counter_ns
for line in sys.stdin:
    cmd = json.loads(line)
    if cmd["op"] == "quit":
        break
    if cmd["op"] == "probe":  # distinct bytes through each rkey, for the caller to check
        write(keys["pinned"], b"\xa5" * small, offset=0)
        write(keys["odp"], b"\x5a" * small, offset=small)
        write(keys["pinned"], dict(sge, length=small), offset=2 * small)
        post(keys["pinned"], dict(sge, addr=src + small, length=small), offset=3 * small)
        sys.stdout.write("{}\n")
        sys.stdout.flush()
        continue
    for name in names:
        for _ in range(cmd["warm"]):
            configs[name]()
    shift = cmd["round"] % len(names)
    order = names[shift:] + names[:shift]
    out = {name: [] for name in names}
    srv = {name: 0 for name in names}
    # each configuration's calls back to back within a round (a 4 ms call carrying
    # 1 MiB just before would leave every cache cold for the next one), the order
    # rotating from round to round so that drift hits all alike
    # the daemon's CPU time is read around the block, not around each call: reading
    # /proc between two calls would put ~50 us of idle time between them
    for name in order:
        fn = configs[name]
        c0 = cpu(daemon_pid)
        for _ in range(cmd["n"]):
            t0 = clock()
            fn()
            out[name].append(clock() - t0)
        srv[name] += cpu(daemon_pid) - c0
    sys.stdout.write(json.dumps({"samples": out, "daemon_cpu_ns": srv}) + "\n")
    sys.stdout.flush()
if profile:
    prof.disable()
    prof.dump_stats(profile)
del buf, view
shm.close()
peer_sys.conn.close()
"""


#: the floor of carrying 1 MiB in a call: a bare pyzmq + msgpack DEALER -> ROUTER round
#: trip over ipc:// (no MAC, no daemon), as in bench_syscall.py
BARE_SERVER = r"""
import sys, zmq, msgpack
ctx = zmq.Context()
s = ctx.socket(zmq.ROUTER)
s.setsockopt(zmq.LINGER, 0)
s.bind(sys.argv[1])
sys.stdout.write("ready\n"); sys.stdout.flush()
while True:
    route, frame = s.recv_multipart()
    req = msgpack.unpackb(frame, raw=False)
    if req.get("call") == "exit":
        break
    s.send_multipart([route, msgpack.packb({"id": req["id"], "ok": "IBV_WC_SUCCESS"})])
s.close(0)
ctx.term()
"""


class BareClient:
    """This process's side of the bare round trip carrying the same 1 MiB."""

    def __init__(self, run_dir: str) -> None:
        import zmq

        endpoint = f"ipc://{os.path.join(run_dir, 'bare.ipc')}"
        self.proc = subprocess.Popen([sys.executable, "-c", BARE_SERVER, endpoint],
                                     stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     env=child_env())
        assert self.proc.stdout is not None
        if self.proc.stdout.readline().strip() != b"ready":
            self.stop()
            raise RuntimeError("bare ROUTER server did not start")
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 500)
        self.sock.connect(endpoint)
        self.data = bytes(range(256)) * (RDMA_SIZE // 256)
        self.i = 0

    def write(self) -> None:
        import msgpack

        self.i += 1
        self.sock.send(msgpack.packb({"id": self.i, "call": "rdma_write",
                                      "args": [1, 0, self.data]}, use_bin_type=True))
        assert msgpack.unpackb(self.sock.recv(), raw=False)["id"] == self.i

    def stop(self) -> None:
        import msgpack

        if getattr(self, "sock", None) is not None:
            self.sock.send(msgpack.packb({"id": 0, "call": "exit"}, use_bin_type=True))
            self.sock.close()
            self.ctx.term()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def file_blocks(system: EmuSystem, addr: int) -> list[int]:
    """The blocks behind the mapping at ``addr`` in page order, as this process's TLB
    caches them (pages not faulted in are left out)."""
    mmu = system._mm()
    vma = next(v for v in mmu.vmas.values() if v.start == addr)
    tlb = vma.tlb  # extents: pages [start, end) -> blocks [block, ...)
    return [block + i for start, end, block in zip(tlb.starts, tlb.ends, tlb.blocks, strict=True)
            for i in range(end - start)]


def in_order_span(blocks: list[int], nbytes: int) -> int | None:
    """Byte offset of the device span the blocks form **in page order** (page i in block
    b0 + i), so that one slice copy puts every byte where the DAX store puts it; None if
    they do not."""
    if len(blocks) * BLOCK_SIZE != nbytes or blocks[0] < 0:
        return None
    if blocks != list(range(blocks[0], blocks[0] + len(blocks))):
        return None
    return blocks[0] * BLOCK_SIZE


def setup_rdma(system: EmuSystem) -> tuple[int, int, dict[str, int]]:
    """A 1 MiB pmem file, mapped and faulted in, registered pinned and on-demand.

    Returns the mapping's address, the byte offset of its blocks in the device (one span
    in page order, checked) and the two rkeys."""
    rfd = system.open("/rdma", os.O_CREAT | os.O_RDWR, 0o644)
    system.ftruncate(rfd, RDMA_SIZE)
    raddr = system.mmap(RDMA_SIZE, PROT_RW, MAP_SHARED, rfd, 0)
    system.store(raddr, bytes(RDMA_SIZE))
    rbase = in_order_span(file_blocks(system, raddr), RDMA_SIZE)
    if rbase is None:
        raise RuntimeError("the RDMA file's blocks are not one span in page order")
    ctx = system.call("ibv_open_device")
    mr_pinned = system.call("ibv_reg_mr", ctx, raddr, RDMA_SIZE, ACCESS_PINNED)
    mr_odp = system.call("ibv_reg_mr", ctx, raddr, RDMA_SIZE, ACCESS_ODP)
    return raddr, rbase, {"pinned": mr_pinned["rkey"], "odp": mr_odp["rkey"]}


def start_peer(run_dir: str, pmem_name: str, rbase: int, daemon_pid: int,
               keys: dict[str, int], profile: str = "") -> subprocess.Popen[str]:
    """The remote peer process, once it is registered and ready."""
    argv = [sys.executable, "-c", PEER, run_dir, pmem_name, str(rbase), str(RDMA_SIZE),
            str(SMALL), str(daemon_pid), json.dumps(keys), profile]
    peer = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                            env=child_env())
    assert peer.stdout is not None
    if peer.stdout.readline().strip() != "ready":
        stop_peer(peer)
        raise RuntimeError("the RDMA peer did not start")
    return peer


def run_peer_round(peer: subprocess.Popen[str], rnd: int, n: int, warm: int,
                   op: str = "round") -> dict[str, Any]:
    """One interleaved round in the peer: ``n`` timed calls of each configuration."""
    assert peer.stdin is not None and peer.stdout is not None
    peer.stdin.write(json.dumps({"op": op, "round": rnd, "n": n, "warm": warm}) + "\n")
    peer.stdin.flush()
    line = peer.stdout.readline()
    if not line:
        raise RuntimeError("the RDMA peer died")
    return dict(json.loads(line))


def stop_peer(peer: subprocess.Popen[str]) -> None:
    """Tell the peer to quit and reap it (SIGKILL by PID if it hangs)."""
    if peer.stdin is not None and peer.poll() is None:
        try:
            peer.stdin.write(json.dumps({"op": "quit"}) + "\n")
            peer.stdin.close()
        except (BrokenPipeError, OSError):
            pass
    try:
        peer.wait(20)
    except subprocess.TimeoutExpired:
        peer.kill()
        peer.wait()


def stores(system: EmuSystem, addr: int, data: bytes, chunks: list[bytes] | None) -> None:
    if chunks is None:
        system.store(addr, data)
    else:
        for i, c in enumerate(chunks):
            system.store(addr + i * CHUNK, c)


def copies(buf: memoryview, base: int, src: memoryview, chunked: bool) -> None:
    if not chunked:
        buf[base : base + SIZE] = src
    else:
        for off in range(0, SIZE, CHUNK):
            buf[base + off : base + off + CHUNK] = src[off : off + CHUNK]


def fresh_segment_copy(src: memoryview, chunked: bool) -> int:
    """Time a copy into a never-touched shared-memory segment of this process's own."""
    seg = shared_memory.SharedMemory(create=True, size=SIZE)
    try:
        assert seg.buf is not None
        b = seg.buf
        t0 = time.perf_counter_ns()
        copies(b, 0, src, chunked)
        dt = time.perf_counter_ns() - t0
        del b
    finally:
        seg.close()
        seg.unlink()
    return dt


def ms(samples_ns: list[int]) -> dict[str, Any]:
    """summary() in milliseconds (for 64 MiB passes)."""
    s = summary(samples_ns)
    return {"n": s["n"], "p50_ms": round(s["p50_us"] / 1e3, 3), "p99_ms": round(s["p99_us"] / 1e3, 3),
            "min_ms": round(s["min_us"] / 1e3, 3), "mean_ms": round(s["mean_us"] / 1e3, 3)}


def gbps(nbytes: int, ns: float) -> float:
    return round(nbytes / ns, 2) if ns else float("nan")  # bytes per ns = GB/s


def start_profiled_daemon(run_dir: str, prof_path: str) -> tuple[subprocess.Popen[bytes], str]:
    """``python -m cProfile -o PROF -m kemu.kernel_daemon ...`` (policy legacy), once it serves;
    returns the process (its PID is the daemon's) and the pmem name."""
    import select

    r, w = os.pipe()
    argv = [sys.executable, "-m", "cProfile", "-o", prof_path, "-m", "kemu.kernel_daemon",
            "--run-dir", run_dir, "--policy", "legacy", "--blocks", str(BLOCKS),
            "--block-size", str(BLOCK_SIZE), "--ready-fd", str(w)]
    proc = subprocess.Popen(argv, pass_fds=(w,), env=child_env(), stdin=subprocess.DEVNULL)
    os.close(w)
    line = b""
    try:
        while not line.endswith(b"\n"):
            ready, _, _ = select.select([r], [], [], 30)
            chunk = os.read(r, 256) if ready else b""
            if not chunk:
                proc.kill()
                proc.wait()
                raise RuntimeError("the profiled daemon did not become ready")
            line += chunk
    finally:
        os.close(r)
    return proc, line.decode().split()[2]


def stop_profiled_daemon(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM: the daemon leaves its loop, cProfile writes its file."""
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def profile(out_dir: str) -> int:
    """``--profile``: where the time goes, for the store path and for rdma_write."""
    import cProfile
    import pstats

    def show(path: str, title: str, n: int = 14) -> None:
        print(f"=== {title}: {path}")
        stats = pstats.Stats(path)
        stats.sort_stats("tottime").print_stats(n)

    steady = os.path.join(out_dir, "agent-store-steady.prof")
    first = os.path.join(out_dir, "agent-store-first-touch.prof")
    d_store = os.path.join(out_dir, "daemon-store.prof")
    d_rdma = os.path.join(out_dir, "daemon-rdma.prof")
    p_rdma = os.path.join(out_dir, "peer-rdma.prof")
    data = os.urandom(SIZE)
    with run_directory() as run_dir:
        proc, _ = start_profiled_daemon(run_dir, d_store)
        try:
            system = EmuSystem(run_dir, name="dax-profile")
            fd = system.open("/dax", os.O_CREAT | os.O_RDWR, 0o644)
            system.ftruncate(fd, SIZE)
            addr = system.mmap(SIZE, PROT_RW, MAP_SHARED, fd, 0)
            pr = cProfile.Profile()
            pr.runcall(system.store, addr, data)
            pr.dump_stats(first)
            pr = cProfile.Profile()
            for _ in range(10):
                pr.runcall(system.store, addr, data)
            pr.dump_stats(steady)
            system.conn.close()
        finally:
            stop_profiled_daemon(proc)
    with run_directory() as run_dir:
        proc, pmem = start_profiled_daemon(run_dir, d_rdma)
        peer = None
        try:
            system = EmuSystem(run_dir, name="dax-profile")
            _, rbase, keys = setup_rdma(system)
            peer = start_peer(run_dir, pmem, rbase, proc.pid, keys, p_rdma)
            for rnd in range(5):
                run_peer_round(peer, rnd, 20, 1 if rnd else RDMA_WARMUP)
        finally:
            if peer is not None:
                stop_peer(peer)
            stop_profiled_daemon(proc)
    show(first, "agent, first-touch 64 MiB store (1 pass)")
    show(steady, "agent, steady 64 MiB store (10 passes)")
    show(d_store, "daemon during the stores (first touch: one mm_fault per 2 MiB)")
    show(p_rdma, "peer, 5 rounds x 20 of each RDMA configuration")
    show(d_rdma, "daemon during the RDMA WRITEs", 22)
    print(f"profiles kept in {out_dir}")
    return 0


def main() -> int:
    started = time.monotonic()
    load0 = loadavg()
    daemon: DaemonProcess | None = None
    peer: subprocess.Popen[str] | None = None
    bare: BareClient | None = None
    shm: shared_memory.SharedMemory | None = None
    buf: memoryview | None = None
    notes: list[str] = []
    ft: dict[str, list[int]] = {k: [] for k in ("dax/whole", "dax/chunks",
                                                 "fresh-segment/whole", "fresh-segment/chunks")}
    st_names = ["dax/whole", "copy/whole", "dax/chunks", "copy/chunks"]
    st: dict[str, list[int]] = {k: [] for k in st_names}
    st_paired: dict[str, list[float]] = {"whole": [], "chunks": []}
    rd_names = ["rdma/pinned", "rdma/odp", "rdma/pinned-call", "rdma/pinned-inline",
                "rdma/pinned-4KiB", "rdma/no-mr-1MiB", "copy/1MiB"]
    bare_samples: list[int] = []
    rd: dict[str, list[int]] = {k: [] for k in rd_names}
    rd_cpu: dict[str, int] = {k: 0 for k in rd_names}
    rd_paired: dict[str, list[float]] = {"rdma/pinned": [], "rdma/odp": []}
    checks: dict[str, Any] = {}
    with run_directory() as run_dir:
        try:
            daemon = start_daemon(run_dir, blocks=BLOCKS, block_size=BLOCK_SIZE,
                                  policy="legacy")
            system = EmuSystem(run_dir, name="dax-bench")
            shm = shared_memory.SharedMemory(name=str(system.conn.pmem["name"]))
            # the daemon owns the device; without this our exit would unlink it
            resource_tracker.unregister(shm._name, "shared_memory")  # type: ignore[attr-defined]
            assert shm.buf is not None
            buf = shm.buf

            data = os.urandom(SIZE)
            src = memoryview(data)
            chunks = [data[off : off + CHUNK] for off in range(0, SIZE, CHUNK)]

            fd = system.open("/dax", os.O_CREAT | os.O_RDWR, 0o644)
            system.ftruncate(fd, SIZE)
            addr = system.mmap(SIZE, PROT_RW, MAP_SHARED, fd, 0)

            # -- first touch: every page faulted in; a fresh file each time ---------------
            for rep in range(FIRST_TOUCH_REPS):
                for mode in ("whole", "chunks") if rep % 2 == 0 else ("chunks", "whole"):
                    if file_blocks(system, addr):
                        system.ftruncate(fd, 0)  # frees every block (after the shoot-down)
                        system.ftruncate(fd, SIZE)
                        if file_blocks(system, addr):
                            notes.append("TLB not emptied by the truncate")
                    t0 = time.perf_counter_ns()
                    stores(system, addr, data, chunks if mode == "chunks" else None)
                    ft[f"dax/{mode}"].append(time.perf_counter_ns() - t0)
                    ft[f"fresh-segment/{mode}"].append(fresh_segment_copy(src, mode == "chunks"))

            blocks = file_blocks(system, addr)
            base = in_order_span(blocks, SIZE)
            if base is None:
                # The LIFO allocator hands a re-faulted file its blocks in the reverse
                # order after an odd number of truncates; once more puts them in order.
                system.ftruncate(fd, 0)
                system.ftruncate(fd, SIZE)
                stores(system, addr, data, None)
                blocks = file_blocks(system, addr)
                base = in_order_span(blocks, SIZE)
            if base is None:
                # fall back to the top of the device, which no file owns here
                base = (BLOCKS - SIZE // BLOCK_SIZE) * BLOCK_SIZE
                if max(blocks) * BLOCK_SIZE >= base:
                    raise RuntimeError("no free span for the baseline")
                checks["store_baseline_target"] = "free blocks at the top of the device"
            else:
                checks["store_baseline_target"] = "the file's own blocks, in page order"
            checks["store_file_blocks"] = [blocks[0], blocks[-1], len(blocks)]

            # -- RDMA: a 1 MiB file, mapped, registered twice; the peer process ---------
            raddr, rbase, keys = setup_rdma(system)
            peer = start_peer(run_dir, str(system.conn.pmem["name"]), rbase, daemon.pid, keys)

            # each rkey reaches the file's pages (before anything else writes there)
            run_peer_round(peer, 0, 0, 0, op="probe")
            checks["rdma_data_ok"] = (
                system.load(raddr, SMALL) == b"\xa5" * SMALL
                and system.load(raddr + SMALL, SMALL) == b"\x5a" * SMALL
                and system.load(raddr + 2 * SMALL, SMALL) == bytes(range(256)) * (SMALL // 256)
                and system.load(raddr + 3 * SMALL, SMALL) == bytes(range(256)) * (SMALL // 256))
            bare = BareClient(run_dir)

            def peer_round(rnd: int, n: int, warm: int, record: bool = True) -> dict[str, Any]:
                assert peer is not None and bare is not None
                for _ in range(warm):
                    bare.write()
                for _ in range(n):
                    t0 = time.perf_counter_ns()
                    bare.write()
                    if record:
                        bare_samples.append(time.perf_counter_ns() - t0)
                return run_peer_round(peer, rnd, n, warm)

            # -- warm-up: this process's PTEs of the device, the peer's calls -------------
            for chunked in (False, True):
                copies(buf, base, src, chunked)
                stores(system, addr, data, chunks if chunked else None)
            peer_round(0, 2, RDMA_WARMUP, record=False)

            # -- interleaved rounds -------------------------------------------------------
            store_fns: dict[str, Callable[[], None]] = {
                "dax/whole": lambda: stores(system, addr, data, None),
                "copy/whole": lambda: copies(buf, base, src, False),
                "dax/chunks": lambda: stores(system, addr, data, chunks),
                "copy/chunks": lambda: copies(buf, base, src, True),
            }
            for rnd in range(ROUNDS):
                order = st_names[rnd % 4:] + st_names[: rnd % 4]
                this: dict[str, list[int]] = {k: [] for k in st_names}
                for _ in range(STORE_REPS):
                    for name in order:
                        t0 = time.perf_counter_ns()
                        store_fns[name]()
                        this[name].append(time.perf_counter_ns() - t0)
                for name in st_names:
                    st[name] += this[name]
                for mode in ("whole", "chunks"):
                    st_paired[mode].append(percentile(this[f"copy/{mode}"], 50)
                                           / percentile(this[f"dax/{mode}"], 50))
                got = peer_round(rnd, RDMA_REPS, 1)
                for name in rd_names:
                    rd[name] += got["samples"][name]
                    rd_cpu[name] += got["daemon_cpu_ns"][name]
                for name in rd_paired:
                    rd_paired[name].append(percentile(got["samples"]["copy/1MiB"], 50)
                                           / percentile(got["samples"][name], 50))

            # -- the data landed where it should -----------------------------------------
            checks["store_data_ok"] = all(
                system.load(addr + off, 64) == data[off : off + 64]
                for off in (0, SIZE // 2 + 4000, SIZE - 64))
            checks["foreign_writes"] = len(system.call("foreign_writes"))
        finally:
            if peer is not None:
                stop_peer(peer)
            if bare is not None:
                bare.stop()
            if buf is not None:
                buf.release()
            if shm is not None:
                shm.close()
            if daemon is not None:
                daemon.stop()

    # -- report ---------------------------------------------------------------------------
    print("bench_dax: the DAX data path against a memoryview copy into the same device")
    print(f"daemon: policy legacy, {BLOCKS} blocks of {BLOCK_SIZE} B; "
          f"baseline target: {checks['store_baseline_target']}")
    print()
    ft_stats = {k: ms(v) for k, v in ft.items()}
    rows = []
    for k, s in ft_stats.items():
        rows.append([k, s["n"], s["p50_ms"], s["p99_ms"], s["min_ms"],
                     gbps(SIZE, s["p50_ms"] * 1e6)])
    print("first touch, 64 MiB per pass (milliseconds; fresh-segment = copy into a new")
    print("shared-memory segment, the host kernel's own first-touch faults)")
    print(table(["config", "n", "p50", "p99 (=max)", "min", "GB/s p50"], rows))
    ft_ratio = {m: ratio(ft_stats[f"fresh-segment/{m}"]["p50_ms"], ft_stats[f"dax/{m}"]["p50_ms"])
                for m in ("whole", "chunks")}
    print(f"fresh-segment / dax at p50: whole {ft_ratio['whole']}, chunks {ft_ratio['chunks']} "
          "(informational)")
    print()

    st_stats = {k: ms(v) for k, v in st.items()}
    ratios: dict[str, float] = {}
    paired: dict[str, float] = {}
    rows = []
    for k in st_names:
        s = st_stats[k]
        mode = k.split("/")[1]
        r50 = ratio(st_stats[f"copy/{mode}"]["p50_ms"], s["p50_ms"])
        r99 = ratio(st_stats[f"copy/{mode}"]["p99_ms"], s["p99_ms"])
        rp = round(percentile(st_paired[mode], 50), 3)
        if k.startswith("dax/"):
            ratios[f"store/{mode}"] = r50
            paired[f"store/{mode}"] = rp
        rows.append([k, s["n"], s["p50_ms"], s["p99_ms"], s["min_ms"], s["mean_ms"],
                     gbps(SIZE, s["p50_ms"] * 1e6), r50, r99, rp if k.startswith("dax/") else ""])
    print(f"steady state, 64 MiB per pass (milliseconds); {ROUNDS} rounds x {STORE_REPS} "
          "passes, interleaved")
    print(table(["config", "n", "p50", "p99", "min", "mean", "GB/s p50", "x p50", "x p99",
                 "x paired"], rows))
    print()

    rd["bare/zmq-1MiB"] = bare_samples
    rd_stats = {k: summary(v) for k, v in rd.items()}
    rows = []
    for k in [*rd_names, "bare/zmq-1MiB"]:
        s = rd_stats[k]
        small = k.endswith("-4KiB")
        nbytes = SMALL if small else RDMA_SIZE
        x50 = ratio(rd_stats["copy/1MiB"]["p50_us"], s["p50_us"])
        x99 = ratio(rd_stats["copy/1MiB"]["p99_us"], s["p99_us"])
        xp: float | str = ""
        if k in rd_paired:
            xp = paired[k] = round(percentile(rd_paired[k], 50), 3)
            ratios[k] = x50
        cpu_us: float | str = round(rd_cpu[k] / max(1, s["n"]) / 1e3, 1) if k in rd_cpu else ""
        rows.append([k, s["n"], s["p50_us"], s["p99_us"], s["min_us"], s["mean_us"],
                     gbps(nbytes, s["p50_us"] * 1e3), "" if small else x50,
                     "" if small else x99, xp, cpu_us])
    print(f"RDMA WRITE from the peer process (microseconds); {ROUNDS} rounds x {RDMA_REPS}, "
          "in blocks per round; cpu dmn = daemon CPU per call")
    print(table(["config", "n", "p50", "p99", "min", "mean", "GB/s p50", "x p50", "x p99",
                 "x paired", "cpu dmn"], rows))
    print("x = copy time / config time (higher is better, 1.0 = as fast as memcpy);")
    print("pinned, odp: ibv_post_send of a WRITE from the peer's own pinned memory on a")
    print("              queue pair (ring + doorbell, no call), ibv_poll_cq for completion;")
    print("pinned-call: the same SGE WRITE as a call on the control channel (rdma_write);")
    print("pinned-inline: the call itself carries the 1 MiB (informational);")
    print("no-mr-1MiB: rkey 0, the call carries 1 MiB but writes nothing (transport only);")
    print("bare/zmq-1MiB: pyzmq + msgpack round trip carrying 1 MiB, no daemon (timed here,")
    print("              one block per round): the floor of any call that carries the bytes")
    print()

    judged = {"store/whole": (ratios["store/whole"], TARGET_STORE),
              "store/chunks": (ratios["store/chunks"], TARGET_STORE),
              "rdma/pinned": (ratios["rdma/pinned"], TARGET_RDMA)}
    missed = [f"{k} {v} < {t}" for k, (v, t) in judged.items() if not v >= t]
    for k, (v, t) in judged.items():
        print(f"{k:13s} {'target met' if v >= t else 'target missed'} ({v} vs >= {t})")
    print(f"{'rdma/odp':13s} {ratios['rdma/odp']} (informational, no target)")
    overall = "target met" if not missed else f"target missed ({'; '.join(missed)})"
    print(f"{'overall':13s} {overall}")
    print(f"checks: {json.dumps(checks)}" + (f"; notes: {notes}" if notes else ""))
    print(f"elapsed {time.monotonic() - started:.1f} s")
    print(result_line({
        "bench": "dax", "unit": "ms for 64 MiB passes, us for RDMA",
        "targets": {"store": TARGET_STORE, "rdma": TARGET_RDMA},
        "first_touch": ft_stats, "first_touch_ratio": ft_ratio,
        "steady": st_stats, "rdma": rd_stats,
        "rdma_daemon_cpu_us": {k: round(rd_cpu[k] / max(1, rd_stats[k]["n"]) / 1e3, 1)
                               for k in rd_names},
        "ratios": ratios,
        "paired_ratios": paired, "checks": checks, "notes": notes,
        "loadavg_start": load0, "loadavg_end": loadavg(),
        "target_met": not missed,
    }))
    return 0


if __name__ == "__main__":
    if "--profile" in sys.argv[1:]:
        import tempfile

        sys.exit(profile(tempfile.mkdtemp(prefix="kemu-dax-prof-", dir="/tmp")))
    sys.exit(main())
