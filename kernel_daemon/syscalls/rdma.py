"""RDMA verbs and direct I/O system calls.

The verbs follow rdma-core's names; the remote side (``rdma_write``/``rdma_read``) is a
request to the card, executed by the daemon, answered with a work-completion status.
``dio_read`` is a direct-I/O read whose buffer is a mapping: its pages are pinned for the
transfer (``FOLL_PIN``, short-term), the device writes into them when the transfer ends
(after ``dio_time`` seconds), and the write is checked against the ledger.
"""

from __future__ import annotations

import errno
from typing import Any

from kemu.kernel_daemon import mm, qp, rdma
from kemu.kernel_daemon.errors import KernelError
from kemu.kernel_daemon.kernel import Kernel
from kemu.kernel_daemon.pmem import Owner
from kemu.kernel_daemon.sync import WaitQueue
from kemu.kernel_daemon.syscalls.table import syscall
from kemu.kernel_daemon.task import File, Task
from kemu.protocol.wire import MAX_IO


@syscall("ibv_open_device", linux="drivers/infiniband/core/uverbs_main.c ib_uverbs_open()",
         support="emulator", note="a uverbs context in a new descriptor (passable, inheritable)")
def sys_ibv_open_device(k: Kernel, t: Task) -> int:
    """Open the RDMA device: a context in a new descriptor."""
    return rdma.open_device(k, t)


@syscall("ibv_alloc_pd", linux="drivers/infiniband/core/uverbs_cmd.c ib_uverbs_alloc_pd()",
         support="emulator", note="a protection domain of the context behind ctx")
def sys_ibv_alloc_pd(k: Kernel, t: Task, ctx: int) -> int:
    """Allocate a protection domain."""
    return rdma.alloc_pd(rdma.context_of(k, t, ctx))


@syscall("ibv_reg_mr", linux="drivers/infiniband/core/uverbs_cmd.c ib_uverbs_reg_mr()",
         support="emulator",
         note="register [addr, addr+length) of the caller's mappings; pd 0 allocates one")
def sys_ibv_reg_mr(k: Kernel, t: Task, ctx: int, addr: int, length: int, access: int,
                   pd: int = 0) -> dict[str, int]:
    """Register a memory region: ``{handle, lkey, rkey}``."""
    context = rdma.context_of(k, t, ctx)
    if pd == 0:
        pd = rdma.alloc_pd(context)
    mr = rdma.reg_mr(k, t, context, pd, addr, length, access)
    return {"handle": mr.handle, "lkey": mr.lkey, "rkey": mr.rkey}


@syscall("ibv_dereg_mr", linux="drivers/infiniband/core/uverbs_cmd.c ib_uverbs_dereg_mr()",
         support="emulator", note="deregister an MR of the context behind ctx")
def sys_ibv_dereg_mr(k: Kernel, t: Task, ctx: int, handle: int) -> int:
    """Deregister a memory region."""
    mr = rdma.context_of(k, t, ctx).mrs.get(handle)
    if mr is None:
        raise KernelError(errno.EINVAL)
    rdma.dereg_mr(k, mr)
    return 0


@syscall("ibv_get_async_event", linux="drivers/infiniband/core/uverbs_main.c "
         "ib_uverbs_async_event_read()", support="emulator",
         note="the next asynchronous event of the context, EAGAIN when none")
def sys_ibv_get_async_event(k: Kernel, t: Task, ctx: int) -> dict[str, Any]:
    """The oldest queued asynchronous event."""
    context = rdma.context_of(k, t, ctx)
    if not context.events:
        raise KernelError(errno.EAGAIN)
    return context.events.popleft()


@syscall("rdma_write", linux="(the card: an RDMA WRITE arriving with an rkey)",
         support="emulator",
         note="the remote peer writes bytes, or an SGE {lkey, addr, length} of its own "
              "registered memory, through an rkey; a completion status")
def sys_rdma_write(k: Kernel, t: Task, rkey: int, offset: int,
                   data: bytes | dict[str, int]) -> str:
    """Execute an RDMA WRITE into the region ``rkey`` names.

    ``data`` is the payload itself, or a scatter-gather element naming the caller's own
    registered memory (``ibv_post_send`` with ``IBV_WR_RDMA_WRITE``): then the bytes go
    from device to device in the daemon, without travelling in the call.
    """
    return rdma.rdma_write(k, t, rkey, offset, data)


@syscall("rdma_read", linux="(the card: an RDMA READ arriving with an rkey)",
         support="emulator",
         note="the remote peer reads through an rkey: {status, data}; or into an SGE "
              "{lkey, addr, length} of its own memory (LOCAL_WRITE): {status, length}")
def sys_rdma_read(k: Kernel, t: Task, rkey: int, offset: int,
                  length: int | dict[str, int]) -> dict[str, Any]:
    """Execute an RDMA READ from the region ``rkey`` names.

    With a length, the bytes come back in the reply.  With a scatter-gather element of
    the caller's own registered memory (``IBV_WR_RDMA_READ``'s sink, which needs
    ``IBV_ACCESS_LOCAL_WRITE``), the card writes them there: a device write, checked
    against the ledger like any other.
    """
    return rdma.rdma_read(k, t, rkey, offset, length)


@syscall("dio_read", linux="fs/iomap/direct-io.c iomap_dio_rw() + mm/gup.c FOLL_PIN",
         support="emulator",
         note="O_DIRECT read of fd into a mapped buffer; pinned for dio_time, then DMA")
def sys_dio_read(k: Kernel, t: Task, fd: int, addr: int, length: int, offset: int) -> Any:
    """Read ``length`` bytes of ``fd`` at ``offset`` into memory at ``addr`` by DMA.

    As ``vfs_read()``: a buffer outside the caller's mappings is ``EFAULT``, a read
    moves at most one call's worth (MAX_IO, a short read) and stops at EOF; only the
    pages of what is transferred are faulted and pinned (``iomap_dio_rw()`` pins as it
    goes), so the cost follows the file and the mappings, not the length asked.  The
    pages are pinned for writing (``FOLL_WRITE``): a page of a private file mapping
    breaks copy-on-write first, as a write fault does, and the data lands in the
    process's copy, not in the file."""
    file = k.file_of(t, fd)
    if not file.readable or length <= 0 or offset < 0:
        raise KernelError(errno.EINVAL if file.readable else errno.EBADF)
    page = k.pmem.block_size
    mappings = rdma.user_range(t, addr, length, page)
    length = min(length, MAX_IO, max(0, file.inode.size - offset))
    targets: list[tuple[int, Owner | None]] = []
    # pin_user_pages(FOLL_WRITE): a page of a private file mapping gets its own copy
    # first (the read lands in the process's page, never in the file behind it)
    broken: dict[int, list[tuple[int, int]]] = {}
    try:
        for mapping, index in rdma.user_pages(mappings, addr, length, page):
            block = mm.pin_page(k, t, mapping, index, broken.setdefault(mapping.vid, []))
            targets.append((block, k.pmem.ledger[block]))
    finally:
        rdma.tell_cow(k, t, broken)
    data = k.fs.read(file.inode, offset, length)
    for block, _ in targets:
        k.pins.pin(block, longterm=False)
    k.log.emit("dio-start", pid=t.pid, blocks=[b for b, _ in targets], length=length)
    pinned = True

    def unpin() -> None:
        nonlocal pinned
        if pinned:
            pinned = False
            for block, _ in targets:
                k.pins.unpin(block, longterm=False)

    def transfer() -> None:
        for i, (block, owner) in enumerate(targets):
            lo = max(addr, addr - addr % page + i * page)
            hi = min(addr + length, addr - addr % page + (i + 1) * page)
            if hi <= lo:
                continue
            rdma.check_device_write(k, t, block, owner, "direct I/O")
            start = block * page + lo % page
            chunk = data[lo - addr : hi - addr]
            k.pmem.buf[start : start + len(chunk)] = chunk
        unpin()
        k.log.emit("dio-done", pid=t.pid, length=len(data), blocks=[b for b, _ in targets])
        done.wake_all()

    def abort() -> None:  # interrupted or dead before the DMA: it never lands
        timer.cancel()
        unpin()

    done: WaitQueue[None] = WaitQueue()
    timer = k.add_timer(float(k.config.dio_time), transfer)
    done.sleep(resume=lambda: len(data), abort=abort)


@syscall("foreign_writes", linux="(the emulator's ledger check)", support="emulator",
         note="the device writes that landed in a block owned by another file, or free "
              f"(the first {rdma.FOREIGN_MAX}; kernel_stats counts the rest)")
def sys_foreign_writes(k: Kernel, t: Task) -> list[dict[str, Any]]:
    """The foreign writes recorded so far: the first :data:`~kemu.kernel_daemon.rdma.
    FOREIGN_MAX` (``kernel_stats()["foreign_dropped"]`` counts the others)."""
    return [fw.asdict() for fw in k.foreign_writes]


@syscall("file_pins", linux="(RFC) /proc/<pid>/file_pins", support="emulator",
         note="the files whose blocks the memory regions reachable by pid pin")
def sys_file_pins(k: Kernel, t: Task, pid: int) -> list[dict[str, Any]]:
    """Per memory region of every context the process holds: files and pages pinned."""
    task = k.task_of(pid)
    seen: list[rdma.UContext] = []
    for _, entry in task.fds:
        ctx = entry.file.private_data
        if ctx is not None and ctx not in seen:
            seen.append(ctx)
    return [{"ctx": ctx.cid, "mr": mr.handle, "files": [k.fs.path_of(f.inode) for f in mr.files],
             "pages": len(mr.pins), "odp": mr.odp, "valid": mr.valid}
            for ctx in seen for mr in ctx.mrs.values()]


@syscall("ibv_create_qp", linux="drivers/infiniband/core/uverbs_cmd.c ib_uverbs_create_qp()",
         support="emulator",
         note="a queue pair of the context behind ctx: a shared ring, a doorbell pipe and a "
              "completion pipe, passed to the creator alone by descriptor; work requests "
              "posted there bypass the call channel")
def sys_ibv_create_qp(k: Kernel, t: Task, ctx: int) -> dict[str, Any]:
    """Create a queue pair: ``{qpn, slots}``; the creator takes its ring and pipes by
    descriptor (``attach-qp`` on the registration socket, ``kernel_daemon/qp.py``)."""
    return qp.create_qp(k, t, rdma.context_of(k, t, ctx))


@syscall("ibv_destroy_qp", linux="drivers/infiniband/core/uverbs_cmd.c ib_uverbs_destroy_qp()",
         support="emulator", note="destroy a queue pair this process created")
def sys_ibv_destroy_qp(k: Kernel, t: Task, ctx: int, qpn: int) -> int:
    """Destroy queue pair ``qpn`` of the context behind ``ctx``."""
    context = rdma.context_of(k, t, ctx)
    q = next((q for q in context.qps if q.qpn == qpn and q.task is t), None)
    if q is None:
        raise KernelError(errno.EINVAL)
    qp.destroy_qp(k, q, "ibv_destroy_qp")
    return 0


def release_file(k: Kernel, f: File) -> None:
    """The uverbs file's last reference releases its context (and its queue pairs)."""
    ctx = f.private_data
    if ctx is not None:
        qp.release_context(k, ctx)
    rdma.release_context(k, f)
