"""RDMA: uverbs contexts, protection domains, memory regions, and the card.

Names follow rdma-core (``ibv_open_device``, ``ibv_alloc_pd``, ``ibv_reg_mr``, lkey,
rkey, ``IBV_ACCESS_*``, ``IBV_WC_*``).  A context lives in an open file of the uverbs
character device, so it is passed and inherited with that file and released with its
last reference.  Registering a memory region over a DAX mapping takes a long-term pin
(``FOLL_LONGTERM``): the blocks behind the range are resolved at registration time and
the card keeps using them, whatever the file's block map says later.  That is the whole
hazard: every device write is checked against the block ledger, and a write into a block
that now belongs to another file, or to nobody, is recorded as a **foreign write**.  With
``IBV_ACCESS_ON_DEMAND`` nothing is pinned and the card translates at access time: it
caches what it translated as extents (runs of consecutive blocks, ``ib_umem_odp``),
filled by a device fault on first access and dropped by the same zaps that shoot the
CPU's translations down (an mmu interval notifier on each mapping of the region).
"""

from __future__ import annotations

import bisect
import errno
import itertools
import secrets
from array import array
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from kemu.kernel_daemon import mm
from kemu.kernel_daemon.errors import KernelError
from kemu.kernel_daemon.pmem import Owner
from kemu.kernel_daemon.task import File, Task
from kemu.kernel_daemon.vfs import Inode
from kemu.protocol import linux

if TYPE_CHECKING:
    from kemu.kernel_daemon.kernel import Kernel
    from kemu.kernel_daemon.locks import Lease
    from kemu.kernel_daemon.qp import QP

KNOWN_ACCESS = (linux.IBV_ACCESS_LOCAL_WRITE | linux.IBV_ACCESS_REMOTE_WRITE | linux.IBV_ACCESS_REMOTE_READ
                | linux.IBV_ACCESS_REMOTE_ATOMIC | linux.IBV_ACCESS_ON_DEMAND)

#: work-completion statuses as the card reports them (``kemu.protocol.linux.WcStatus`` names)
WC_SUCCESS: str = linux.WcStatus.IBV_WC_SUCCESS.name
WC_REM_ACCESS_ERR = linux.WcStatus.IBV_WC_REM_ACCESS_ERR.name
WC_REM_INV_REQ_ERR = linux.WcStatus.IBV_WC_REM_INV_REQ_ERR.name
WC_LOC_PROT_ERR = linux.WcStatus.IBV_WC_LOC_PROT_ERR.name
WC_LOC_QP_OP_ERR = linux.WcStatus.IBV_WC_LOC_QP_OP_ERR.name
#: largest message a work request may move (IB's 2 GiB)
MAX_TRANSFER = 1 << 31

_ctx_ids = itertools.count(1)


@dataclass(eq=False)
class Pin:
    """One page of a long-term pinned region: the block and who owned it when pinned."""

    block: int
    owner: Owner


@dataclass(eq=False)
class OdpExtent:
    """A run of translations an on-demand MR cached (``ib_umem_odp``'s ``pfn_list`` for
    pages a device fault mapped): MR pages ``[first, first + n)`` -> blocks ``[block,
    block + n)`` through ``mapping`` (file pages from ``fpage``).  Set by a device fault
    (:func:`_odp_fault`), dropped by the mapping's notifier (:func:`_odp_invalidate`);
    ``gen`` is the blocks' free counts when cached: a run one of whose blocks was freed
    since is never used (:func:`_odp_lookup` drops it)."""

    first: int
    n: int
    block: int
    mapping: mm.Mapping
    fpage: int
    gen: array[int]


@dataclass(eq=False)
class MR:
    """``struct ib_mr``: a registered range of the registering process's memory."""

    handle: int
    ctx: UContext
    pd: int
    addr: int
    length: int
    access: int
    lkey: int
    rkey: int
    task: Task
    #: per page, for a long-term pin; empty for on-demand paging
    pins: list[Pin] = field(default_factory=list)
    #: the mappings the range lies in (on-demand paging translates through them)
    mappings: list[mm.Mapping] = field(default_factory=list)
    #: data files whose blocks back the region (each holds a file reference)
    files: list[File] = field(default_factory=list)
    #: runs of consecutive pinned blocks: (first page index, first block, pages, the
    #: blocks' free counts when pinned); the card copies a run whose blocks were never
    #: freed since with one slice, and checks every page of any other run
    extents: list[tuple[int, int, int, array[int]]] = field(default_factory=list)
    #: on-demand paging: the cached translations, sorted by first page; and the
    #: notifiers this region put on its mappings (``mmu_interval_notifier``)
    odp_extents: list[OdpExtent] = field(default_factory=list)
    odp_notifiers: list[tuple[mm.Mapping, Callable[[int, int | None], None]]] = field(
        default_factory=list)
    #: False once revoked (fenced): later accesses complete with an error
    valid: bool = True
    #: layout leases that live as long as this region (the designs that tie a pin to a
    #: lease put them here; :meth:`Policy.dereg_mr` lets go of them)
    leases: list[Lease] = field(default_factory=list)
    #: the registering process's exec count when it registered: the address space the
    #: region was taken from (``ib_umem->owning_mm``) is gone once it differs
    execs: int = 0
    #: a process other than the registering one has reached it by its rkey (a peer's
    #: RDMA READ or WRITE), for the event log
    peer: bool = False

    @property
    def odp(self) -> bool:
        """On-demand paging: nothing pinned."""
        return bool(self.access & linux.IBV_ACCESS_ON_DEMAND)

    @property
    def pin(self) -> str:
        """What the region holds: ``"odp"`` (nothing pinned: on-demand paging),
        ``"fsdax"`` (a long-term pin of file pages, the case ``vma_is_fsdax()`` guards
        in ``check_vma_flags()``) or ``"anon"`` (a long-term pin of anonymous memory)."""
        if self.odp:
            return "odp"
        return "fsdax" if self.files else "anon"

    @property
    def owner(self) -> str:
        """What became of the address space the region was registered from
        (``ib_umem->owning_mm``, which ``ib_umem_get()`` grabs): ``"live"``, ``"exec"``
        (the process exec'd: ``exec_mmap()`` dropped it) or ``"exit"`` (the process is
        gone).  A long-term pin outlives both while the context's file is held, by
        another process's descriptor or by the exec'd image's."""
        if self.task.exit_state is not None:
            return "exit"
        return "exec" if self.task.execs != self.execs else "live"


@dataclass(eq=False)
class UContext:
    """``struct ib_ucontext``, the ``private_data`` of a uverbs file."""

    cid: int = field(default_factory=lambda: next(_ctx_ids))
    pds: set[int] = field(default_factory=set)
    mrs: dict[int, MR] = field(default_factory=dict)
    events: deque[dict[str, Any]] = field(default_factory=deque)
    next_handle: int = 1
    file: File | None = None
    dead: bool = False
    #: set when the kernel aborted the context (``IBV_EVENT_DEVICE_FATAL``): every MR
    #: is invalid and new registrations fail with EIO, as on a disassociated device
    aborted: bool = False
    #: the queue pairs created on the context
    qps: list[QP] = field(default_factory=list)


@dataclass(eq=False)
class RdmaDevice:
    """The one RDMA card and its character device: what ``ib_device`` and the uverbs
    driver keep across contexts."""

    #: the character device /dev/infiniband/uverbs0, made at the first open
    uverbs_inode: Inode | None = None
    #: every registered region by rkey (remote access) and by lkey (local SGEs)
    rkeys: dict[int, MR] = field(default_factory=dict)
    lkeys: dict[int, MR] = field(default_factory=dict)
    #: every queue pair by number
    qps: dict[int, QP] = field(default_factory=dict)

    def pin_owner(self, block: int) -> tuple[str, bool] | None:
        """What became of the address spaces of the regions that pin ``block`` long
        term (:attr:`MR.owner`), the furthest gone first (``"exit"``, ``"exec"``,
        ``"live"``), and whether a process other than its registrar has reached one of
        them by its rkey (:attr:`MR.peer`); None when no region pins it.  Asked only
        when a pinned block is freed (for the event log), so a walk over the regions is
        cheap enough."""
        mrs = [mr for mr in self.lkeys.values()
               if mr.pins and any(p.block == block for p in mr.pins)]
        found = {mr.owner for mr in mrs}
        owner = next((o for o in ("exit", "exec", "live") if o in found), None)
        return None if owner is None else (owner, any(mr.peer for mr in mrs))


#: foreign writes a kernel keeps for ``foreign_writes()`` (the rest are counted)
FOREIGN_MAX = 256


@dataclass(frozen=True)
class ForeignWrite:
    """A device write that landed in a block no longer owned by the file page it was
    aimed at: the corruption the threads fear."""

    via: str
    writer: int | None
    block: int
    file: str | None
    offset: int | None
    into: str | None
    into_offset: int | None
    mr: int | None

    def asdict(self) -> dict[str, Any]:
        """The record as ``foreign_writes()`` and the event log carry it."""
        return asdict(self)


def _rkeys(k: Kernel) -> dict[int, MR]:
    return k.rdma.rkeys


def _lkeys(k: Kernel) -> dict[int, MR]:
    return k.rdma.lkeys


def _extents(k: Kernel, pins: list[Pin]) -> list[tuple[int, int, int, array[int]]]:
    """The runs of consecutive blocks in ``pins``, with their free counts now."""
    runs: list[tuple[int, int, int, array[int]]] = []
    i = 0
    while i < len(pins):
        j = i + 1
        while j < len(pins) and pins[j].block == pins[j - 1].block + 1:
            j += 1
        first = pins[i].block
        runs.append((i, first, j - i, k.pmem.gen[first : first + j - i]))
        i = j
    return runs


def context_of(k: Kernel, task: Task, fd: int) -> UContext:
    """The uverbs context behind descriptor ``fd`` (EBADF / EINVAL otherwise)."""
    ctx = k.file_of(task, fd).private_data
    if ctx is None or ctx.dead:
        raise KernelError(errno.EINVAL)
    return ctx


def open_device(k: Kernel, task: Task) -> int:
    """``ibv_open_device``: a new context in a new open file of /dev/infiniband/uverbs0."""
    inode = k.rdma.uverbs_inode
    if inode is None:
        inode = k.fs._new_inode(linux.S_IFCHR | 0o666, 0, 0)  # a character device
        k.rdma.uverbs_inode = inode
        k.fs.inodes[inode.ino] = inode
        inode.nlink = 1
    file = k.open_file(inode, linux.O_RDWR, "/dev/infiniband/uverbs0")
    ctx = UContext(file=file)
    file.private_data = ctx
    try:
        return k.fd_install(task, file, False)
    except KernelError:
        k.fput(file)
        raise


def alloc_pd(ctx: UContext) -> int:
    """``ibv_alloc_pd``."""
    handle = ctx.next_handle
    ctx.next_handle += 1
    ctx.pds.add(handle)
    return handle


def _new_key(k: Kernel) -> int:
    while True:
        key = secrets.randbits(32) or 1
        if key not in _rkeys(k) and key not in _lkeys(k):
            return key


def user_range(task: Task, addr: int, length: int, page: int) -> list[mm.Mapping]:
    """The mappings that cover ``[addr, addr + length)`` in address order, ``EFAULT``
    at the first gap.  The cost follows the process's mappings, never the length the
    caller chose (``mm/gup.c`` walks VMAs too; pages are listed only afterwards, by
    :func:`user_pages`, as the caller takes them)."""
    end = addr + length
    out: list[mm.Mapping] = []
    pos = addr - addr % page
    for m in sorted(mm.vmas(task).values(), key=lambda m: m.start):
        if pos >= end:
            break
        if m.start + m.length <= pos:
            continue
        if m.start > pos:
            break
        out.append(m)
        pos = m.start + m.length
    if pos < end:
        raise KernelError(errno.EFAULT)
    return out


def user_pages(mappings: list[mm.Mapping], addr: int, length: int,
               page: int) -> Iterator[tuple[mm.Mapping, int]]:
    """(mapping, page index) of each page of ``[addr, addr + length)``, lazily, over
    the mappings :func:`user_range` found: a caller that fails on a page stops the
    walk there."""
    end = addr + length
    pos = addr - addr % page
    for m in mappings:
        while pos < end and pos < m.start + m.length:
            yield m, (pos - m.start) // page
            pos += page


def reg_mr(k: Kernel, task: Task, ctx: UContext, pd: int, addr: int, length: int,
           access: int) -> MR:
    """``ibv_reg_mr`` over the caller's memory ``[addr, addr + length)``.

    The range must lie in the caller's mappings (EFAULT).  The policy decides whether a
    long-term pin of a DAX file range is allowed; a long-term pin faults every page in
    for writing and records its block and owner.
    """
    if length <= 0 or access & ~KNOWN_ACCESS:
        raise KernelError(errno.EINVAL)
    if access & (linux.IBV_ACCESS_REMOTE_WRITE | linux.IBV_ACCESS_REMOTE_ATOMIC) and \
            not access & linux.IBV_ACCESS_LOCAL_WRITE:
        raise KernelError(errno.EINVAL)  # as ib_check_mr_access
    if ctx.aborted:
        raise KernelError(errno.EIO)
    if pd not in ctx.pds:
        raise KernelError(errno.EINVAL)
    page = k.pmem.block_size
    # ib_umem_get(): a range that wraps is EINVAL, more than UINT_MAX pages too
    if addr < 0 or addr + length + page > 1 << 64 or -(-length // page) > (1 << 32) - 1:
        raise KernelError(errno.EINVAL)
    mappings = user_range(task, addr, length, page)
    mr = MR(handle=ctx.next_handle, ctx=ctx, pd=pd, addr=addr, length=length, access=access,
            lkey=_new_key(k), rkey=0, task=task, mappings=mappings, execs=task.execs)
    mr.rkey = mr.lkey if access & (linux.IBV_ACCESS_REMOTE_WRITE | linux.IBV_ACCESS_REMOTE_READ) else 0
    k.policy.reg_mr(k, task, mr)  # may refuse (EOPNOTSUPP, EPERM, ENXIO)
    if not mr.odp:
        broken: dict[int, list[tuple[int, int]]] = {}
        try:
            for mapping, index in user_pages(mappings, addr, length, page):
                block = mm.pin_page(k, task, mapping, index, broken.setdefault(mapping.vid, []))
                owner = k.pmem.ledger[block]
                assert owner is not None
                mr.pins.append(Pin(block, owner))
                k.pins.pin(block, longterm=True)
        except BaseException:  # a page could not be pinned (or must wait): nothing stays
            _unpin(k, mr)
            k.policy.dereg_mr(k, mr)
            for f in mr.files:
                k.fput(f)
            mr.files.clear()
            raise
        finally:  # the private copies broken so far
            tell_cow(k, task, broken)
        mr.extents = _extents(k, mr.pins)
    for mapping in mappings:
        if mapping.file is not None and mapping.file not in mr.files:
            mr.files.append(k.fget(mapping.file))
    if mr.odp:
        for mapping in mappings:
            if mapping.file is not None:
                notify = _odp_notifier(mr, mapping)
                mapping.notifiers.append(notify)
                mr.odp_notifiers.append((mapping, notify))
    ctx.next_handle += 1
    ctx.mrs[mr.handle] = mr
    if mr.rkey:
        _rkeys(k)[mr.rkey] = mr
    _lkeys(k)[mr.lkey] = mr
    k.log.emit("reg_mr", pid=task.pid, ctx=ctx.cid, mr=mr.handle, addr=addr, length=length,
               access=access, odp=mr.odp, pin=mr.pin, remote=bool(mr.rkey),
               blocks=[p.block for p in mr.pins],
               files=[k.fs.path_of(f.inode) for f in mr.files])
    return mr


def dereg_mr(k: Kernel, mr: MR, why: str = "ibv_dereg_mr") -> None:
    """``ibv_dereg_mr``: the pins go, the keys stop working, the files are let go."""
    if mr.ctx.mrs.pop(mr.handle, None) is None:
        return
    k.policy.dereg_mr(k, mr)
    _rkeys(k).pop(mr.rkey, None)
    _lkeys(k).pop(mr.lkey, None)
    blocks = [p.block for p in mr.pins]
    _unpin(k, mr)
    mr.valid = False
    # owner=exit: the region held the last reference to its registrar's dead address
    # space, which ib_umem_release() drops (mmdrop(umem->owning_mm))
    k.log.emit("dereg_mr", pid=mr.task.pid, ctx=mr.ctx.cid, mr=mr.handle, blocks=blocks, why=why,
               pin=mr.pin, owner=mr.owner)
    for f in mr.files:
        k.fput(f)
    mr.files.clear()


def _unpin(k: Kernel, mr: MR) -> None:
    """Release the region's long-term pins (a busy block goes with its last pin)."""
    for pin in mr.pins:
        k.pins.unpin(pin.block, longterm=True)
    mr.pins.clear()
    mr.extents = []
    for mapping, notify in mr.odp_notifiers:  # mmu_interval_notifier_remove
        if notify in mapping.notifiers:
            mapping.notifiers.remove(notify)
    mr.odp_notifiers.clear()
    mr.odp_extents.clear()


def revoke(k: Kernel, mr: MR, why: str) -> None:
    """Fence an MR: later accesses through it complete with an error; pins released."""
    if not mr.valid:
        return
    mr.valid = False
    blocks = [p.block for p in mr.pins]
    _unpin(k, mr)
    async_event(mr.ctx, {"event_type": "IBV_EVENT_MR_REVOKED", "mr": mr.handle, "why": why})
    k.log.emit("mr-revoked", pid=mr.task.pid, ctx=mr.ctx.cid, mr=mr.handle, blocks=blocks,
               why=why, pin=mr.pin, owner=mr.owner)


def abort_context(k: Kernel, ctx: UContext, why: str) -> None:
    """Abort a whole context: every MR in it is fenced, and its owner is told with a
    fatal asynchronous event (``IBV_EVENT_DEVICE_FATAL``)."""
    if ctx.aborted or ctx.dead:
        return
    ctx.aborted = True
    for mr in list(ctx.mrs.values()):
        revoke(k, mr, why)
    async_event(ctx, {"event_type": "IBV_EVENT_DEVICE_FATAL", "why": why})
    k.log.emit("ucontext-aborted", ctx=ctx.cid, why=why)


def async_event(ctx: UContext, event: dict[str, Any]) -> None:
    """Queue an asynchronous event on the context (``ibv_get_async_event``)."""
    ctx.events.append(event)


def release_context(k: Kernel, file: File) -> None:
    """Last reference to the uverbs file: every MR of the context goes."""
    ctx = file.private_data
    if ctx is None or ctx.dead:
        return
    ctx.dead = True
    for mr in list(ctx.mrs.values()):
        dereg_mr(k, mr, "last close of the uverbs context")
    k.log.emit("ucontext-released", ctx=ctx.cid)


# --- the card ------------------------------------------------------------------------

def device_access(k: Kernel, writer: Task, mr: MR, offset: int,
                  data: bytes | memoryview | None, length: int, via: str) -> tuple[str, bytes]:
    """Execute an RDMA WRITE (``data``) or READ (``length``) into the MR's range.

    Pinned pages go to the pinned block, whatever the file says now; on-demand pages
    go through the extents the card cached, or are translated through the registering
    mapping now (EOF: an error completion; see :func:`_access_odp`).
    Every written block is checked against the ledger.  A run of consecutive pinned
    blocks none of which was freed since the pin (one comparison of free counts) still
    belongs to the pinned pages, so it is copied with one slice, as a DMA engine would.
    """
    page = k.pmem.block_size
    size = len(data) if data is not None else length
    if offset < 0 or size < 0 or offset + size > mr.length:
        return WC_REM_ACCESS_ERR, b""
    lo = mr.addr % page + offset  # the range, as offsets from the MR's first page
    hi = lo + size
    if mr.odp:
        return _access_odp(k, writer, mr, lo, hi, data, via)
    buf = k.pmem.buf
    parts: list[bytes] = []
    for a, b, start in _runs(k, mr, lo, hi):
        chunk = None if data is None else data[a - lo : b - lo]
        if start is None:  # a block of the run was freed since the pin
            _, got = _access_pages(k, writer, mr, a, b, chunk, via)
            parts.append(got)
        elif chunk is not None:
            buf[start : start + b - a] = chunk
        else:
            parts.append(bytes(buf[start : start + b - a]))
    return WC_SUCCESS, b"".join(parts)


def _runs(k: Kernel, mr: MR, lo: int, hi: int) -> Iterator[tuple[int, int, int | None]]:
    """The pinned runs of ``[lo, hi)`` (offsets from the MR's first page), in order:
    ``(a, b, device offset of a)``, the offset None for a run one of whose blocks was
    freed since the pin (one C-level comparison of free counts per run)."""
    page = k.pmem.block_size
    for first, block, n, snapshot in mr.extents:
        a, b = max(lo, first * page), min(hi, (first + n) * page)
        if a < b:
            intact = k.pmem.gen[block : block + n] == snapshot
            yield a, b, block * page + a - first * page if intact else None


def _access_odp(k: Kernel, writer: Task, mr: MR, lo: int, hi: int,
                data: bytes | memoryview | None, via: str) -> tuple[str, bytes]:
    """:func:`device_access` of an on-demand MR over ``[lo, hi)`` (offsets from the MR's
    first page): each cached extent is copied with one slice; a page no extent holds
    takes a device fault (:func:`_odp_fault`, as ``ib_umem_odp_map_dma_and_lock`` after
    ``hmm_range_fault``), and a page that cannot be cached (a hole read, anonymous
    memory, a mapping gone) is translated and ledger-checked alone
    (:func:`_access_pages`)."""
    if hi > lo and k.tasks.get(mr.task.pid) is not mr.task:
        return WC_REM_ACCESS_ERR, b""  # nobody to translate through (as _odp_block)
    page = k.pmem.block_size
    buf = k.pmem.buf
    last = (hi - 1) // page + 1 if hi > lo else lo // page
    parts: list[bytes] = []
    pos = lo
    while pos < hi:
        index = pos // page
        ext = _odp_lookup(k, mr, index) or _odp_fault(k, writer, mr, index, last,
                                                      data is not None, via)
        if ext is None:  # one page the careful way (it may complete with an error)
            end = min(hi, (index + 1) * page)
            status, got = _access_pages(k, writer, mr, pos, end,
                                        None if data is None else data[pos - lo : end - lo],
                                        via)
            if status != WC_SUCCESS:
                return status, b""
            parts.append(got)
            pos = end
            continue
        end = min(hi, (ext.first + ext.n) * page)
        start = ext.block * page + pos - ext.first * page
        if data is not None:
            buf[start : start + end - pos] = data[pos - lo : end - lo]
        else:
            parts.append(bytes(buf[start : start + end - pos]))
        pos = end
    return WC_SUCCESS, b"".join(parts)


def _odp_lookup(k: Kernel, mr: MR, index: int) -> OdpExtent | None:
    """The cached extent holding MR page ``index``, if it may still be used: its
    mapping not invalidated and none of its blocks freed since it was cached (one
    C-level comparison of free counts); a stale one is dropped."""
    exts = mr.odp_extents
    i = bisect.bisect_right(exts, index, key=lambda e: e.first) - 1
    if i < 0 or index >= exts[i].first + exts[i].n:
        return None
    ext = exts[i]
    if ext.mapping.invalid or k.pmem.gen[ext.block : ext.block + ext.n] != ext.gen:
        del exts[i]
        return None
    return ext


def _odp_fault(k: Kernel, writer: Task, mr: MR, index: int, last: int, write: bool,
               via: str) -> OdpExtent | None:
    """A device page fault of an on-demand MR at page ``index``: translate pages
    ``[index, last)`` through the registering mapping now (a write allocates holes, as
    ``_odp_block`` does) while they stay in one live file mapping, below EOF, in
    consecutive blocks and uncached, and cache them as one extent.  Every block is
    checked against the ledger as it is mapped for a write.  None when page ``index``
    itself cannot be cached."""
    page = k.pmem.block_size
    base = mr.addr - mr.addr % page
    addr = base + index * page
    mapping = next((m for m in mr.mappings if m.start <= addr < m.start + m.length), None)
    if (mapping is None or mapping.file is None or mapping.invalid
            or mr.task.mm.vmas.get(mapping.vid) is not mapping):
        return None  # no notifier would reach a mapping that is gone: do not cache
    exts = mr.odp_extents
    at = bisect.bisect_right(exts, index, key=lambda e: e.first)
    if at < len(exts):
        last = min(last, exts[at].first)  # up to the next cached extent
    last = min(last, index + (mapping.start + mapping.length - addr) // page
               + (1 if (mapping.start + mapping.length - addr) % page else 0))
    first_block = -1
    n = 0
    while index + n < last:
        block = _odp_block(k, mr, addr + n * page, write)
        if block is None or block < 0 or (n and block != first_block + n):
            break
        if write:
            check_device_write(k, writer, block, k.pmem.ledger[block], via, mr)
        if not n:
            first_block = block
        n += 1
    if not n:
        return None
    ext = OdpExtent(first=index, n=n, block=first_block, mapping=mapping,
                    fpage=mapping.pgoff + (addr - mapping.start) // page,
                    gen=k.pmem.gen[first_block : first_block + n])
    exts.insert(at, ext)
    return ext


def _odp_notifier(mr: MR, mapping: mm.Mapping) -> Callable[[int, int | None], None]:
    """The mmu interval notifier an on-demand MR puts on one of its mappings
    (``ib_umem_notifier_invalidate_range_start``)."""

    def invalidate(first: int, end: int | None) -> None:
        _odp_invalidate(mr, mapping, first, end)

    return invalidate


def _odp_invalidate(mr: MR, mapping: mm.Mapping, first: int, end: int | None) -> None:
    """File pages ``[first, end)`` of ``mapping`` lose their translations: drop every
    cached extent over any of them (``ib_umem_odp_unmap_dma_pages``), before the kernel
    frees a block."""
    mr.odp_extents = [e for e in mr.odp_extents
                      if e.mapping is not mapping or e.fpage + e.n <= first
                      or (end is not None and e.fpage >= end)]


def _access_pages(k: Kernel, writer: Task, mr: MR, lo: int, hi: int,
                  data: bytes | memoryview | None, via: str) -> tuple[str, bytes]:
    """:func:`device_access` page by page over ``[lo, hi)`` (offsets from the MR's first
    page), checking every written block against the ledger."""
    page = k.pmem.block_size
    base = mr.addr - mr.addr % page
    out = bytearray()
    pos = lo
    while pos < hi:
        inpage = pos % page
        n = min(page - inpage, hi - pos)
        if mr.odp:
            block = _odp_block(k, mr, base + pos, data is not None)
            if block is None:
                return WC_REM_ACCESS_ERR, b""
            expected = k.pmem.ledger[block] if block >= 0 else None
        else:
            pin = mr.pins[pos // page]
            block, expected = pin.block, pin.owner
        if data is not None:
            check_device_write(k, writer, block, expected, via, mr)
            start = block * page + inpage
            k.pmem.buf[start : start + n] = data[pos - lo : pos - lo + n]
        elif block < 0:
            out += bytes(n)
        else:
            start = block * page + inpage
            out += k.pmem.buf[start : start + n]
        pos += n
    return WC_SUCCESS, bytes(out)


def local_mr(k: Kernel, task: Task, sge: Any, write: bool) -> MR | None:
    """The caller's own MR a scatter-gather element ``{"lkey", "addr", "length"}``
    names, if the caller holds its context, the range lies inside it and (``write``)
    it allows local writes; None means ``IBV_WC_LOC_PROT_ERR``.  EINVAL when ``sge``
    is not an SGE at all."""
    if not isinstance(sge, dict) or set(sge) != {"lkey", "addr", "length"} or not all(
            isinstance(v, int) and not isinstance(v, bool) for v in sge.values()):
        raise KernelError(errno.EINVAL, "an SGE is {lkey, addr, length}")
    mr = _lkeys(k).get(sge["lkey"])
    addr, length = sge["addr"], sge["length"]
    if (mr is None or not mr.valid or mr.ctx.file is None or not task.fds.fds_of(mr.ctx.file)
            or length < 0 or addr < mr.addr or addr + length > mr.addr + mr.length
            or (write and not mr.access & linux.IBV_ACCESS_LOCAL_WRITE)):
        return None
    return mr


def gather(k: Kernel, task: Task, sge: Any) -> tuple[str, bytes | memoryview]:
    """Read a scatter-gather element ``{"lkey", "addr", "length"}`` of the caller's own
    registered memory, as the card does for the source of an RDMA WRITE.

    The lkey must name a valid MR of a context the caller holds a descriptor of, and
    the range must lie inside it; else ``IBV_WC_LOC_PROT_ERR``.  A range inside one
    intact run of pinned blocks is returned as a view of the device (no copy).
    """
    mr = local_mr(k, task, sge, write=False)
    if mr is None:
        return WC_LOC_PROT_ERR, b""
    addr, length = sge["addr"], sge["length"]
    lo = addr - (mr.addr - mr.addr % k.pmem.block_size)
    views: list[memoryview] = []
    for a, b, start in _runs(k, mr, lo, lo + length):
        if start is None:
            break  # a block of the run changed hands: the careful way below
        views.append(k.pmem.buf[start : start + b - a])
    else:
        if len(views) == 1:
            return WC_SUCCESS, views[0]  # one run: no copy at all
        if sum(len(v) for v in views) == length:
            return WC_SUCCESS, b"".join(views)
    status, data = device_access(k, task, mr, addr - mr.addr, None, length, "local read")
    return (WC_LOC_PROT_ERR, b"") if status != WC_SUCCESS else (status, data)


def tell_cow(k: Kernel, task: Task, broken: dict[int, list[tuple[int, int]]]) -> None:
    """Tell ``task``'s agent of the private copies :func:`mm.pin_page` broke, per
    mapping (``cow-pin``): they move into their blocks in its TLB."""
    for vid, pages in broken.items():
        if pages:
            k.io.event(task, {"event": "cow-pin", "vma": vid, "pages": pages})


def rdma_write(k: Kernel, t: Task, rkey: int, offset: int, data: bytes | dict[str, int],
               via: str = "call") -> str:
    """The card executes an RDMA WRITE through ``rkey`` from ``data`` (bytes, or an SGE
    of the poster's own registered memory); the work-completion status."""
    if isinstance(data, dict):
        status, payload = gather(k, t, data)
        if status != WC_SUCCESS:
            k.log.emit("rdma-write", pid=t.pid, rkey=rkey, offset=offset,
                       length=data.get("length"), status=status, via=via)
            return status
    else:
        payload = data
    mr = _rkeys(k).get(rkey)
    status = WC_REM_ACCESS_ERR
    if mr is not None and t is not mr.task:
        mr.peer = True
    if mr is not None and mr.valid and mr.access & linux.IBV_ACCESS_REMOTE_WRITE:
        status, _ = device_access(k, t, mr, offset, payload, len(payload), "RDMA WRITE")
    if k.log.enabled:
        k.log.emit("rdma-write", pid=t.pid, rkey=rkey, offset=offset, length=len(payload),
                   status=status, via=via, mr=mr.handle if mr else None,
                   pin=mr.pin if mr else None, owner=mr.owner if mr else None,
                   blocks=touched(k, mr, offset, len(payload)) if status == WC_SUCCESS else [])
    return status


def rdma_read(k: Kernel, t: Task, rkey: int, offset: int, length: int | dict[str, int],
              via: str = "call") -> dict[str, Any]:
    """The card executes an RDMA READ through ``rkey``: the bytes, or (``length`` an SGE
    of the poster's memory with LOCAL_WRITE) a device write of them there."""
    sink = None
    if isinstance(length, dict):
        sink = local_mr(k, t, length, write=True)
        n = length["length"]
        if sink is None:
            k.log.emit("rdma-read", pid=t.pid, rkey=rkey, offset=offset, length=n,
                       status=WC_LOC_PROT_ERR, via=via)
            return {"status": WC_LOC_PROT_ERR, "length": 0}
    else:
        n = length
    mr = _rkeys(k).get(rkey)
    status, data = WC_REM_ACCESS_ERR, b""
    if mr is not None and t is not mr.task:
        mr.peer = True
    if mr is not None and mr.valid and mr.access & linux.IBV_ACCESS_REMOTE_READ:
        status, data = device_access(k, t, mr, offset, None, n, "RDMA READ")
    if sink is not None and status == WC_SUCCESS:
        assert isinstance(length, dict)
        status, _ = device_access(k, t, sink, length["addr"] - sink.addr, data, n, "RDMA READ")
    if k.log.enabled:
        k.log.emit("rdma-read", pid=t.pid, rkey=rkey, offset=offset, length=n, status=status,
                   via=via, mr=mr.handle if mr else None, pin=mr.pin if mr else None,
                   owner=mr.owner if mr else None,
                   blocks=touched(k, mr, offset, n) if status == WC_SUCCESS else [])
    if sink is not None:
        return {"status": status, "length": n if status == WC_SUCCESS else 0}
    return {"status": status, "data": data}


def touched(k: Kernel, mr: MR | None, offset: int, length: int) -> list[int]:
    """The blocks an access of ``[offset, offset + length)`` of a pinned MR went to (for
    the event log; on-demand regions translate per access, so their list is empty)."""
    if mr is None or mr.odp or length <= 0 or not mr.pins:
        return []
    page = k.pmem.block_size
    lo = mr.addr % page + offset
    return [p.block for p in mr.pins[lo // page : (lo + length - 1) // page + 1]]


def _odp_block(k: Kernel, mr: MR, addr: int, write: bool) -> int | None:
    """On-demand paging: translate now through the registering process's mapping."""
    page = k.pmem.block_size
    mapping = next((m for m in mr.mappings if m.start <= addr < m.start + m.length), None)
    if mapping is None or mapping.invalid or k.tasks.get(mr.task.pid) is not mr.task:
        return None
    index = (addr - mapping.start) // page
    if mapping.file is None:
        block = mapping.ptes.get(index)
        return block
    inode = mapping.file.inode
    fpage = mapping.pgoff + index
    if fpage * page >= inode.size:
        return None
    block = inode.blocks.get(fpage)
    if block is None:
        if not write:
            return -1
        block = k.pmem.alloc(Owner(inode.ino, fpage))
        inode.blocks[fpage] = block
    return block


def check_device_write(k: Kernel, writer: Task | None, block: int, expected: Owner | None,
                       via: str, mr: MR | None = None) -> None:
    """Check a device write against the ledger; record a foreign write if it lands in a
    block that no longer belongs to the file page it was aimed at."""
    now = k.pmem.ledger[block]
    if now == expected:
        return
    if block in k.pmem.busy:
        # a busy block: freed by its file, held for the device, owned by nobody and
        # never handed out; the write harms no one
        k.log.emit("busy-write", via=via, writer=writer.pid if writer else None, block=block,
                   file=_name(k, expected), mr=mr.handle if mr else None)
        return
    fw = ForeignWrite(
        via=via,
        writer=writer.pid if writer else None,
        block=block,
        file=_name(k, expected),
        offset=expected.pgoff * k.pmem.block_size if expected else None,
        into=_name(k, now) if now is not None else "(free block)",
        into_offset=now.pgoff * k.pmem.block_size if now is not None else None,
        mr=mr.handle if mr else None,
    )
    if len(k.foreign_writes) < FOREIGN_MAX:
        k.foreign_writes.append(fw)
    else:
        k.foreign_dropped += 1
    k.log.emit("foreign-write", **fw.asdict())


def _name(k: Kernel, owner: Owner | None) -> str | None:
    if owner is None:
        return None
    if owner.ino == 0:
        return "(anonymous memory)"
    inode = k.fs.inodes.get(owner.ino)
    return k.fs.path_of(inode) if inode is not None else f"#{owner.ino} (freed)"

