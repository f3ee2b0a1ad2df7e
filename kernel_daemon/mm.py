"""DAX mappings: VMAs, page tables the agents cache, faults, and TLB shoot-downs.

A ``Mapping`` is a ``struct vm_area_struct`` of one process over a pmem file.  The agent
loads and stores straight into the pmem segment through translations (file page to
block) it caches; the daemon's page table (``Mapping.ptes``) records every translation it
handed out.  When the kernel takes pages away (truncate, hole punch, revocation), it
zaps them (``unmap_mapping_range``), pushes a shoot-down to each process that may cache
them and waits for every acknowledgement before it frees a block, as Linux waits for
TLB-flush IPIs; a dead process needs none.  So no store can land in a block after the
kernel freed it.  A fault on a page past the end of the file, or in an invalidated
mapping, gets a genuine SIGBUS.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from kemu.kernel_daemon import signals
from kemu.kernel_daemon.errors import KernelError, MustWait
from kemu.kernel_daemon.pmem import Owner
from kemu.kernel_daemon.task import File, Task
from kemu.kernel_daemon.vfs import Inode
from kemu.protocol import linux, shm

if TYPE_CHECKING:
    from kemu.kernel_daemon.kernel import Kernel

#: where a process's mappings start (a user-space address, as on x86-64)
MMAP_BASE = 0x7F0000000000
_shootdown_seq = itertools.count(1)
#: the page-table entry of a hole read through the zero page
ZERO_PAGE = -1
#: pages of a PMD (2 MiB of 4 KiB pages): the unit of a DAX huge fault
PMD_PAGES = 512
#: pages ``do_fault_around`` maps around a fault (``fault_around_bytes``, 64 KiB)
FAULT_AROUND_PAGES = 16


@dataclass(eq=False)
class SharedAnon:
    """The pages of a ``MAP_SHARED|MAP_ANONYMOUS`` mapping, shared by fork (a shmem
    object): the page table and how many mappings use it."""

    ptes: dict[int, int] = field(default_factory=dict)
    users: int = 1


@dataclass(eq=False)
class Mapping:
    """``struct vm_area_struct`` over a file (or anonymous memory when ``file`` is None)."""

    task: Task
    start: int
    length: int
    prot: int
    flags: int
    file: File | None
    #: file offset of the first page, in pages
    pgoff: int
    #: the mapping's id within its process (a fork child's copy keeps it)
    vid: int = 0
    #: page index in the mapping -> block (or ZERO_PAGE): what the agent may cache
    ptes: dict[int, int] = field(default_factory=dict)
    #: every later fault gets SIGBUS (a revoked MAP_DIRECT mapping)
    invalid: bool = False
    #: shared anonymous memory: the object the pages live in (``ptes`` is its table)
    shared_anon: SharedAnon | None = None
    #: private file pages whose copy-on-write a long-term pin broke: page -> own block
    cow: dict[int, int] = field(default_factory=dict)
    #: private file pages the process wrote, whose copy lives in the agent (``mm_cow``,
    #: the anon pages of a MAP_PRIVATE file mapping); a truncate unmaps them
    anon: set[int] = field(default_factory=set)
    task_page: int = 4096
    #: mmu interval notifiers (``mmu_interval_notifier_insert``): called with file pages
    #: ``[first, end)`` (``end`` None: to the end) before they lose their translations
    #: (:func:`zap`) and with ``(0, None)`` when the mapping goes; a device that caches
    #: translations of the mapping (an on-demand MR) drops them there.  Registered and
    #: removed by that device; a fork child's copy starts without any
    notifiers: list[Callable[[int, int | None], None]] = field(default_factory=list)

    @property
    def npages(self) -> int:
        """Pages the mapping spans."""
        return -(-self.length // self.task_page)

    @property
    def shared(self) -> bool:
        """MAP_SHARED or MAP_SHARED_VALIDATE."""
        return self.flags & linux.MAP_TYPE in (linux.MAP_SHARED, linux.MAP_SHARED_VALIDATE)


@dataclass(eq=False)
class VmaSnapshot:
    """One mapping as ``dup_mmap`` copies it at fork, holding its file."""

    parent: Mapping
    start: int
    length: int
    prot: int
    flags: int
    file: File | None
    pgoff: int
    vid: int
    invalid: bool
    #: private anonymous pages: the child's copies; shared anonymous: the shared table
    ptes: dict[int, int] = field(default_factory=dict)
    #: private file pages whose copy-on-write a pin broke: the child's copies
    cow: dict[int, int] = field(default_factory=dict)
    #: private file pages with a copy in the agent (the child's memory has them too)
    anon: set[int] = field(default_factory=set)
    shared_anon: SharedAnon | None = None


@dataclass(eq=False)
class MMSnapshot:
    """A process's address space at the moment of a fork (``dup_mmap``)."""

    vmas: list[VmaSnapshot]
    mmap_next: int
    next_vid: int


@dataclass(eq=False)
class Shootdown:
    """A TLB shoot-down pushed to a process and not yet known to be done: the process
    may be inside a store under the translations it drops (its ``in_store`` word says
    the generation ``old``).  Done when it acknowledges or, without an answer, when its
    word shows it outside that store (:func:`_poll_windows`)."""

    task: Task
    inode: Inode
    #: the process's TLB generation before this shoot-down (0: no word, ack only)
    old: int = 0


#: the TLB word of a process: u64 generation at 0 (the daemon bumps it on every
#: shoot-down), u64 ``in_store`` at 8 (the agent: the generation it stores under, 0
#: outside a store); ``agents/lib/mm.py`` checks it around every access
GEN_AT = 0
IN_STORE_AT = 8
#: how long after a bump the daemon reads ``in_store`` for the first time: a store
#: the agent began under the old generation is visible by then (x86 TSO lets a store
#: sit in a store buffer for nanoseconds; there is no fence to be had from Python)
WINDOW_GRACE = 0.001


@dataclass(eq=False)
class TlbWord:
    """The shared word through which the daemon invalidates a process's TLB without
    waiting for it (as a shoot-down IPI needs nothing from the target): a memfd the
    process took by descriptor (``attach-mm``), mapped in both."""

    seg: shm.Segment
    fd: int

    def gen(self) -> int:
        return int.from_bytes(self.seg.buf[GEN_AT : GEN_AT + 8], "little")

    def bump(self) -> int:
        """A new generation; returns the old one."""
        old = self.gen()
        self.seg.buf[GEN_AT : GEN_AT + 8] = (old + 1).to_bytes(8, "little")
        return old

    def in_store(self) -> int:
        return int.from_bytes(self.seg.buf[IN_STORE_AT : IN_STORE_AT + 8], "little")

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self.fd)
        self.seg.close()


def tlb_word(k: Kernel, task: Task) -> int:
    """The descriptor of ``task``'s TLB word (made on first use), to pass to it."""
    word = k.tlb_words.get(task.pid)
    if word is None:
        seg, fd = shm.anonymous(f"kemu-tlb-{task.pid}", 4096)
        seg.buf[GEN_AT : GEN_AT + 8] = (1).to_bytes(8, "little")
        word = k.tlb_words[task.pid] = TlbWord(seg, fd)
    return word.fd


def vmas(task: Task) -> dict[int, Mapping]:
    """The task's mappings by id."""
    return task.mm.vmas


def next_address(task: Task, length: int, page: int) -> int:
    """A free address range for a new mapping (with a guard page after it)."""
    addr = task.mm.mmap_next
    task.mm.mmap_next = addr + (-(-length // page) + 1) * page
    return addr


def add_mapping(k: Kernel, task: Task, mapping: Mapping) -> None:
    """Insert a mapping; it holds a reference on its file (a mapped file stays open)."""
    mapping.task_page = k.pmem.block_size
    if not mapping.vid:
        task.mm.next_vid += 1
        mapping.vid = task.mm.next_vid
    task.mm.vmas[mapping.vid] = mapping
    if mapping.file is not None:
        k.fget(mapping.file)
        mapping.file.inode.i_mmap.append(mapping)
    k.log.emit("mmap", pid=task.pid, vma=mapping.vid, addr=mapping.start, length=mapping.length,
               ino=mapping.file.inode.ino if mapping.file else None, prot=mapping.prot,
               flags=mapping.flags)


def remove_mapping(k: Kernel, mapping: Mapping, why: str) -> None:
    """Tear a mapping down; the process unmaps it itself (or is gone), so no shoot-down."""
    if mapping.task.mm.vmas.pop(mapping.vid, None) is None:
        return
    # for the event log: pages a device still pins go with the mapping
    # (``page_maybe_dma_pinned()``); not looked for when nothing is logged
    pinned = {"pinned": "longterm"} if k.log.enabled and k.pins.longterm and any(
        b in k.pins.longterm for b in (*mapping.ptes.values(), *mapping.cow.values())) else {}
    k.policy.munmap(k, mapping)
    for notify in list(mapping.notifiers):  # devices caching its translations drop them
        notify(0, None)
    mapping.notifiers.clear()
    shared = mapping.shared_anon
    if shared is not None and shared.users > 1:  # shared anonymous memory a fork child shares
        shared.users -= 1
        mapping.ptes = {}
    elif mapping.file is None:
        for block in mapping.ptes.values():
            if block >= 0:
                k.pmem.free(block)  # a pinned page stays busy (Kernel.hold_block)
    mapping.ptes.clear()
    for block in mapping.cow.values():
        k.pmem.free(block)  # a pinned page stays busy (Kernel.hold_block)
    mapping.cow = {}
    k.log.emit("munmap", pid=mapping.task.pid, vma=mapping.vid, why=why, **pinned)
    if mapping.file is not None:
        lst = mapping.file.inode.i_mmap
        if mapping in lst:
            lst.remove(mapping)
        k.fput(mapping.file)


def pin_page(k: Kernel, task: Task, mapping: Mapping, index: int,
             broken: list[tuple[int, int]]) -> int:
    """``pin_user_pages(FOLL_WRITE | FOLL_LONGTERM)`` of one page: its block.

    A page of a private file mapping gets a copy of its own first, as a write fault
    breaks copy-on-write, so the device never writes into the file; the copy is added
    to ``broken`` as (page index, block) for the process to be told.
    """
    if mapping.shared or mapping.file is None:
        return fault(k, task, mapping, index, write=True, user=False)
    if not mapping.prot & linux.PROT_WRITE:
        raise KernelError(errno.EFAULT)  # FOLL_WRITE on a read-only mapping
    block = fault(k, task, mapping, index, write=False, user=False)
    if index in mapping.cow:
        return mapping.cow[index]
    new = k.pmem.alloc(Owner(0, mapping.vid << 20 | index))
    if block >= 0:
        k.pmem.view(new)[:] = k.pmem.view(block)
    mapping.cow[index] = mapping.ptes[index] = new
    broken.append((index, new))
    return new


def snapshot_mappings(k: Kernel, parent: Task) -> MMSnapshot:
    """At fork (``dup_mmap``), while the parent stands in fork: its mappings as they are
    now, each holding its file; shared anonymous memory gains a user (the child), and
    every private anonymous page, and every private file page whose copy-on-write a pin
    broke, is copied for the child (Linux copies pinned pages at fork too)."""
    entries: list[VmaSnapshot] = []
    for m in parent.mm.vmas.values():
        entry = VmaSnapshot(parent=m, start=m.start, length=m.length, prot=m.prot,
                            flags=m.flags, file=m.file, pgoff=m.pgoff, vid=m.vid,
                            invalid=m.invalid, anon=set(m.anon))
        if m.file is not None:
            k.fget(m.file)
        if m.file is None and m.shared:
            if m.shared_anon is None:
                m.shared_anon = SharedAnon(ptes=m.ptes)
            m.shared_anon.users += 1
            entry.ptes, entry.shared_anon = m.ptes, m.shared_anon
        else:
            pages = m.ptes if m.file is None else m.cow
            copies: dict[int, int] = {}
            for index, block in pages.items():
                if block < 0:
                    continue
                new = k.pmem.alloc(Owner(0, m.vid << 20 | index))
                k.pmem.view(new)[:] = k.pmem.view(block)
                copies[index] = new
            if m.file is None:
                entry.ptes = copies
            else:
                entry.cow = copies
        entries.append(entry)
    return MMSnapshot(entries, parent.mm.mmap_next, parent.mm.next_vid)


def drop_snapshot(k: Kernel, snapshot: MMSnapshot | None) -> None:
    """A fork nobody claimed: its references and copies go back."""
    if snapshot is None:
        return
    entries, snapshot.vmas = snapshot.vmas, []
    for entry in entries:
        if entry.file is not None:
            k.fput(entry.file)
        shared = entry.shared_anon
        if shared is not None:
            shared.users -= 1
            if shared.users == 0:  # the parent unmapped it meanwhile: the last user goes
                for block in entry.ptes.values():
                    if block >= 0:
                        k.pmem.free(block)  # a pinned page stays busy (Kernel.hold_block)
            continue
        for block in {**entry.ptes, **entry.cow}.values():
            k.pmem.free(block)


def copy_snapshot(k: Kernel, child: Task, snapshot: MMSnapshot | None) -> None:
    """``dup_mmap`` completed in the child: it gets the parent's mappings as they were at
    the fork (the snapshot :func:`snapshot_mappings` took at ``fork_prepare``), even if
    the parent changed them, or died, before the child registered.

    File pages are faulted in again by the child; shared anonymous memory is shared
    (one page table, counted users); private anonymous pages, and private file pages
    whose copy-on-write a pin broke, are the snapshot's copies.  The design sees each
    copy (:meth:`Policy.vma_copy <kernel_daemon.policy.Policy.vma_copy>`).
    """
    if snapshot is None:
        return
    entries, snapshot.vmas = snapshot.vmas, []
    for entry in entries:
        copy = Mapping(task=child, start=entry.start, length=entry.length, prot=entry.prot,
                       flags=entry.flags, file=entry.file, pgoff=entry.pgoff, vid=entry.vid,
                       invalid=entry.invalid, ptes=entry.ptes, cow=entry.cow,
                       anon=entry.anon, shared_anon=entry.shared_anon)
        add_mapping(k, child, copy)
        if entry.file is not None:
            k.fput(entry.file)  # add_mapping took the mapping's own reference
        k.policy.vma_copy(k, entry.parent, copy)
    child.mm.mmap_next = snapshot.mmap_next
    child.mm.next_vid = snapshot.next_vid


def drop_all(k: Kernel, task: Task, why: str) -> None:
    """exit and exec: every mapping of the task goes."""
    for mapping in list(task.mm.vmas.values()):
        remove_mapping(k, mapping, why)
    for seq, entry in list(k.shootdowns.items()):
        if entry.task is task:
            _acked(k, seq)
    word = k.tlb_words.pop(task.pid, None)
    if word is not None:
        word.close()


def sigbus(k: Kernel, task: Task, addr: int) -> None:
    """A genuine SIGBUS for a bad access at ``addr`` (BUS_ADRERR)."""
    signals.send_signal(k, task, signals.Siginfo(linux.SIGBUS, linux.BUS_ADRERR, si_addr=addr))


def fault(k: Kernel, task: Task, mapping: Mapping, index: int, write: bool,
          user: bool = True, quiet: bool = False) -> int:
    """``handle_mm_fault`` on a DAX file: the page's block, allocating a hole on a write.

    A fault for the kernel (``user=False``: get_user_pages for a pin or a transfer)
    fails with EFAULT and sends no signal, as ``__get_user_pages`` does.
    Past the end of the file, or in an invalidated mapping, the process gets SIGBUS
    and the call fails with EFAULT.  A read of a hole maps the zero page.  ``quiet``:
    the page of a file mapping that was mapped is not logged (:func:`fault_run` logs
    the whole run it maps).
    """
    page = k.pmem.block_size
    addr = mapping.start + index * page
    allowed = mapping.prot & (linux.PROT_WRITE if write else linux.PROT_READ)
    if not allowed:
        k.log.emit("fault", pid=task.pid, vma=mapping.vid, page=index,
                   ino=mapping.file.inode.ino if mapping.file else None, write=write,
                   block=None, result="SIGSEGV" if user else "EFAULT")
        if user:
            signals.send_signal(k, task, signals.Siginfo(linux.SIGSEGV, linux.SEGV_ACCERR,
                                                         si_addr=addr))
        raise KernelError(errno.EFAULT)
    if mapping.file is None:  # anonymous memory: a zeroed block of its own
        block = mapping.ptes.get(index)
        if block is None:
            block = k.pmem.alloc(Owner(0, mapping.vid << 20 | index))
            mapping.ptes[index] = block
        k.log.emit("fault", pid=task.pid, vma=mapping.vid, page=index, ino=None, write=write,
                   block=block, result="anonymous")
        return block
    inode = mapping.file.inode
    fpage = mapping.pgoff + index
    inode.invalidate_lock.wait_for(task, fpage)
    if mapping.invalid or fpage * page >= inode.size:
        k.log.emit("fault", pid=task.pid, vma=mapping.vid, page=index, ino=inode.ino,
                   write=write, block=None, result="SIGBUS" if user else "EFAULT")
        if user:
            sigbus(k, task, addr)
        raise KernelError(errno.EFAULT)
    if index in mapping.cow:  # a private page whose copy-on-write a pin broke
        mapping.ptes[index] = mapping.cow[index]
        return mapping.cow[index]
    block = inode.blocks.get(fpage)
    if block is None:
        if not write:
            mapping.ptes[index] = ZERO_PAGE
            if not quiet:
                k.log.emit("fault", pid=task.pid, vma=mapping.vid, page=index, ino=inode.ino,
                           write=write, block=None, result="zero page")
            return ZERO_PAGE
        block = k.pmem.alloc(Owner(inode.ino, fpage))
        inode.blocks[fpage] = block
    elif k.pmem.refs[block] > 1 and (write or _may_store(mapping)):
        # a reflinked block: copy on write.  The agent's TLB has no write-protect bit (a
        # translation it caches serves its stores too), so a mapping that may store gets
        # its copy at the first fault, a read one included
        zap(k, inode, fpage, fpage + 1)
        wait_for_shootdowns(k, inode)
        new = k.pmem.alloc(Owner(inode.ino, fpage))
        k.pmem.view(new)[:] = k.pmem.view(block)
        # the file lets go of the shared block only once its page names the copy: the
        # ledger then passes the block to a sharer that still has it (Pmem.reown)
        inode.blocks[fpage] = new
        k.pmem.free(block)
        block = new
    mapping.ptes[index] = block
    if not quiet:
        k.log.emit("fault", pid=task.pid, vma=mapping.vid, page=index, ino=inode.ino,
                   write=write, block=block, result="mapped")
    return block


def fault_run(k: Kernel, task: Task, mapping: Mapping, index: int,
              write: bool) -> list[tuple[int, int, int]]:
    """A page fault that maps more than the faulting page: the runs handed out, each
    ``(first page index, first block or ZERO_PAGE, pages)``, the faulting page first.

    The faulting page goes through :func:`fault` (every check, signal and copy-on-write
    of a single fault).  Then, as ``dax_iomap_pmd_fault`` does, the window of
    ``PMD_PAGES`` pages (2 MiB) aligned in the file is mapped whole when it lies inside the mapping and below EOF and each of its pages
    can be mapped as the faulting one was: every page has a block (a write fault of a
    shared writable mapping into a window that is all hole allocates the whole window,
    as the PMD fault allocates a 2 MiB extent; a read of an all-hole window maps the zero
    page over it).  Otherwise, as ``do_fault_around`` does, the 64 KiB-aligned window of
    ``FAULT_AROUND_PAGES`` pages maps those pages whose blocks exist already.  A page is
    never handed out here if a single fault of it would do something first: a page under
    another process's invalidate lock (it would wait), a reflinked block a mapping that
    may store would copy, a private page whose copy-on-write a pin broke, a page past
    EOF.  Every page handed out is in ``mapping.ptes``, so :func:`zap` shoots it down.

    Linux also wants the virtual address of the same colour (``mmap`` of a DAX file
    places it so, ``thp_get_unmapped_area``); here mappings are not placed on 2 MiB and
    a translation is per page anyway, so only the file offset is aligned.  Nor is the
    first block aligned: the device has no huge pages, a run needs only be consecutive.
    """
    file = mapping.file
    if file is None or index in mapping.cow:
        return [(index, fault(k, task, mapping, index, write), 1)]
    inode = file.inode
    delta = mapping.pgoff  # file page = delta + index
    hole = delta + index not in inode.blocks
    block = fault(k, task, mapping, index, write, quiet=True)
    eof = -(-inode.size // k.pmem.block_size)  # first file page wholly past EOF
    pages: dict[int, int] | None = None
    first = index - (delta + index) % PMD_PAGES  # the window is aligned in the file
    if first >= 0 and first + PMD_PAGES <= mapping.npages and delta + first + PMD_PAGES <= eof:
        pages = _pmd(k, task, mapping, first, index, block, write, hole)
    size = "pmd"
    if pages is None:
        size = "pte"
        lo = index - index % FAULT_AROUND_PAGES
        hi = min(lo + FAULT_AROUND_PAGES, mapping.npages, eof - delta)  # inside, below EOF
        pages = {index: block}
        if block != ZERO_PAGE:
            for i in range(max(lo, -delta), hi):
                if i != index and i not in mapping.cow:
                    b = inode.blocks.get(delta + i)
                    if b is not None and _mappable(k, task, mapping, delta + i, b, write):
                        pages[i] = b
    mapping.ptes.update(pages)
    runs = _as_runs(pages, index)
    k.log.emit("fault", pid=task.pid, vma=mapping.vid, page=index, ino=inode.ino, write=write,
               block=None if block == ZERO_PAGE else block,
               result="zero page" if block == ZERO_PAGE else "mapped", size=size,
               pages=len(pages), runs=[list(r) for r in runs])
    return runs


def _pmd(k: Kernel, task: Task, mapping: Mapping, first: int, index: int, block: int,
         write: bool, hole: bool) -> dict[int, int] | None:
    """The pages of the PMD window ``[first, first + PMD_PAGES)``, or None to fall back
    to a PTE fault (``dax_iomap_pmd_fault`` falls back when the extent is not one
    allocated or one unwritten range)."""
    assert mapping.file is not None
    inode = mapping.file.inode
    delta = mapping.pgoff
    blocks = inode.blocks
    rng = range(first, first + PMD_PAGES)
    if any(i in mapping.cow for i in rng) or any(_changing(inode, task, delta + i) for i in rng):
        return None
    pages: dict[int, int] = {}
    if block == ZERO_PAGE:  # a read of a hole: the zero page over an all-hole window
        if any(delta + i in blocks for i in rng):
            return None
        return dict.fromkeys(rng, ZERO_PAGE)
    if hole and all(delta + i not in blocks for i in rng if i != index):
        # a write into an all-hole window: allocate the window's blocks (in page
        # order: the LIFO allocator then gives a run back as the run it was)
        if not _may_store(mapping) or k.pmem.free_blocks < PMD_PAGES - 1:
            return None
        for i in rng:  # this mapping's zero pages there are replaced by the reply
            if mapping.ptes.get(i) == ZERO_PAGE:
                del mapping.ptes[i]
        for i in rng:
            if i == index:
                pages[i] = block
                continue
            new = k.pmem.alloc(Owner(inode.ino, delta + i))
            blocks[delta + i] = pages[i] = new
        return pages
    for i in rng:
        got = blocks.get(delta + i)
        if got is None or (i != index and not _mappable(k, task, mapping, delta + i, got,
                                                          write)):
            return None
        pages[i] = got
    return pages


def _mappable(k: Kernel, task: Task, mapping: Mapping, fpage: int, block: int,
              write: bool) -> bool:
    """May a fault hand out ``fpage -> block`` without a fault of its own (no
    copy-on-write of a reflinked block due, no change of the page in progress)?"""
    if k.pmem.refs[block] > 1 and (write or _may_store(mapping)):
        return False
    assert mapping.file is not None
    return not _changing(mapping.file.inode, task, fpage)


def _changing(inode: Inode, task: Task, fpage: int) -> bool:
    """Does another process hold the invalidate lock over ``fpage`` (a fault of it
    would sleep)?  The sleep is only asked for, never taken."""
    if not len(inode.invalidate_lock):
        return False
    try:
        inode.invalidate_lock.wait_for(task, fpage)
    except MustWait:
        return True
    return False


def _as_runs(pages: dict[int, int], index: int) -> list[tuple[int, int, int]]:
    """``pages`` (index -> block) as runs of consecutive pages and blocks (zero-page
    runs: consecutive pages), the run holding ``index`` first."""
    runs: list[tuple[int, int, int]] = []
    for i in sorted(pages):
        b = pages[i]
        if runs:
            p, first, n = runs[-1]
            if p + n == i and (first + n == b if first >= 0 else b == first):
                runs[-1] = (p, first, n + 1)
                continue
        runs.append((i, b, 1))
    at = next(j for j, (p, _, n) in enumerate(runs) if p <= index < p + n)
    return [runs[at], *runs[:at], *runs[at + 1:]]


def _may_store(mapping: Mapping) -> bool:
    """Can the process store through this mapping's translations (shared, writable)?"""
    return mapping.shared and bool(mapping.prot & linux.PROT_WRITE)


def zap(k: Kernel, inode: Inode, first: int, end: int | None, even_cows: bool = False) -> bool:
    """``unmap_mapping_range``: take file pages ``[first, end)`` out of every mapping.

    With ``even_cows`` (a truncate: ``truncate_pagecache``) the copies a MAP_PRIVATE
    mapping made on write go too (``zap_details.even_cows``): the agent drops its
    private copies in the range, so the next access faults (SIGBUS past the end).

    Each process that may cache them gets a shoot-down, and each device that caches
    translations of a mapping (an on-demand MR, through ``Mapping.notifiers``) drops
    them at once, as the mmu notifiers' ``invalidate_range_start`` runs before the
    pages go; returns True while any acknowledgement is outstanding for this inode (the caller must wait, see
    :func:`wait_for_shootdowns`).
    """
    pending = k.shootdowns
    for mapping in inode.i_mmap:
        for notify in list(mapping.notifiers):  # ODP MRs: mmu_interval_notifier invalidate
            notify(first, end)
        hit = [i for i in mapping.ptes
               if mapping.pgoff + i >= first and (end is None or mapping.pgoff + i < end)]
        cows: list[int] = []
        if even_cows and mapping.anon:
            cows = sorted(i for i in mapping.anon if mapping.pgoff + i >= first
                          and (end is None or mapping.pgoff + i < end))
            mapping.anon.difference_update(cows)
        if not hit and not cows:
            continue
        for i in hit:
            del mapping.ptes[i]
        task = mapping.task
        if k.tasks.get(task.pid) is not task:
            continue
        seq = next(_shootdown_seq)
        word = k.tlb_words.get(task.pid)
        old = word.bump() if word is not None else 0
        pending[seq] = Shootdown(task, inode, old)
        if word is not None and not k.window_poll_armed:
            k.window_poll_armed = True
            k.add_timer(WINDOW_GRACE, lambda: _poll_windows(k))
        body: dict[str, object] = {"event": "shootdown", "sd": seq, "vma": mapping.vid,
                                   "pages": hit}
        if cows:
            body["cows"] = cows
        k.io.event(task, body)
        k.log.emit("shootdown", pid=task.pid, vma=mapping.vid, pages=hit, sd=seq)
    return any(entry.inode is inode for entry in pending.values())


def unmap_zero_page(k: Kernel, owner: Owner) -> None:
    """A hole got a block: mappings that read it through the zero page must fault again
    (``dax_insert_entry`` unmaps the zero page).  Readers that still see zeros for an
    instant are a race Linux has too, so nobody waits for these shoot-downs."""
    inode = k.fs.inodes.get(owner.ino)
    if inode is None:
        return
    for mapping in inode.i_mmap:
        index = owner.pgoff - mapping.pgoff
        if mapping.ptes.get(index) != ZERO_PAGE:
            continue
        del mapping.ptes[index]
        task = mapping.task
        if k.tasks.get(task.pid) is task:
            k.io.event(task, {"event": "shootdown", "sd": 0, "vma": mapping.vid, "pages": [index]})


def wait_for_shootdowns(k: Kernel, inode: Inode) -> None:
    """Sleep until every shoot-down of ``inode`` is acknowledged (or its process died)."""
    if any(entry.inode is inode for entry in k.shootdowns.values()):
        inode.shootdown_wait.sleep()


def _acked(k: Kernel, seq: int) -> None:
    entry = k.shootdowns.pop(seq, None)
    if entry is None:
        return
    inode = entry.inode
    if not any(e.inode is inode for e in k.shootdowns.values()):
        inode.shootdown_wait.wake_all()


def _in_window(k: Kernel, entry: Shootdown) -> bool:
    """Is the process of ``entry`` inside a store it began before the shoot-down?"""
    word = k.tlb_words.get(entry.task.pid)
    if word is None or entry.old == 0:
        return False
    mark = word.in_store()
    return mark != 0 and mark <= entry.old  # translations from before this zap


def _poll_windows(k: Kernel) -> None:
    """Timer: end every shoot-down whose process has a TLB word and is not inside a
    store under the generation it invalidated.  A process that does not run (stopped,
    or busy elsewhere) is not waited for: when it runs again its next access sees the
    new generation and faults (x86's IPI needs nothing from the target either,
    arch/x86/mm/tlb.c flush_tlb_mm_range()).  Re-armed while any shoot-down waits."""
    k.window_poll_armed = False
    for seq, entry in list(k.shootdowns.items()):
        if entry.old != 0 and not _in_window(k, entry):
            _acked(k, seq)
    if any(entry.old != 0 for entry in k.shootdowns.values()):
        k.window_poll_armed = True
        k.add_timer(WINDOW_GRACE, lambda: _poll_windows(k))


def shootdown_ack(k: Kernel, task: Task, body: dict[str, object]) -> None:
    """NOTIFY ``tlb-ack``: the agent dropped the translations of shoot-down ``sd`` (a
    signal handler may send it from inside a store: then the window decides)."""
    seq = body.get("sd")
    if isinstance(seq, int) and seq in k.shootdowns and k.shootdowns[seq].task is task \
            and not _in_window(k, k.shootdowns[seq]):
        _acked(k, seq)


def unmap_and_wait(k: Kernel, inode: Inode, first: int, end: int | None,
                   even_cows: bool = False) -> None:
    """Zap pages ``[first, end)`` of the inode (private copies too with
    ``even_cows``), then sleep until the shoot-downs are done.  The caller holds the
    inode's invalidate lock over the range, so faults in it wait meanwhile."""
    zap(k, inode, first, end, even_cows)
    wait_for_shootdowns(k, inode)
