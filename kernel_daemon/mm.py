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

import errno
import itertools
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from kernel_daemon import signals
from kernel_daemon.errors import KernelError
from kernel_daemon.pmem import Owner
from kernel_daemon.task import File, Task
from kernel_daemon.vfs import Inode
from protocol import linux

if TYPE_CHECKING:
    from kernel_daemon.kernel import Kernel

#: where a process's mappings start (a user-space address, as on x86-64)
MMAP_BASE = 0x7F0000000000
_shootdown_seq = itertools.count(1)
#: the page-table entry of a hole read through the zero page
ZERO_PAGE = -1


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
    task_page: int = 4096

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
    shared_anon: SharedAnon | None = None


@dataclass(eq=False)
class MMSnapshot:
    """A process's address space at the moment of a fork (``dup_mmap``)."""

    vmas: list[VmaSnapshot]
    mmap_next: int
    next_vid: int


@dataclass(eq=False)
class Shootdown:
    """A TLB shoot-down pushed to a process and not yet acknowledged."""

    task: Task
    inode: Inode


def vmas(task: Task) -> dict[int, Mapping]:
    """The task's mappings by id."""
    return task.mm.vmas


def inode_vmas(inode: Inode) -> list[Mapping]:
    """Every mapping of the inode (``mapping->i_mmap``)."""
    return inode.i_mmap


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
    k.policy.munmap(k, mapping)
    shared = mapping.shared_anon
    if shared is not None and shared.users > 1:  # shared anonymous memory a fork child shares
        shared.users -= 1
        mapping.ptes = {}
    elif mapping.file is None:
        for block in mapping.ptes.values():
            if block >= 0:
                release_block(k, block)
    mapping.ptes.clear()
    for block in mapping.cow.values():
        release_block(k, block)
    mapping.cow = {}
    k.log.emit("munmap", pid=mapping.task.pid, vma=mapping.vid, why=why)
    if mapping.file is not None:
        lst = mapping.file.inode.i_mmap
        if mapping in lst:
            lst.remove(mapping)
        k.fput(mapping.file)


def release_block(k: Kernel, block: int) -> None:
    """A process lets go of its anonymous page: freed now, or, while a device holds a
    long-term pin on it, when the last pin goes (the pin holds a page reference; the
    kernel's :meth:`~kernel_daemon.kernel.Kernel.hold_block` keeps it busy)."""
    k.pmem.free(block)


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
                            invalid=m.invalid)
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
                        release_block(k, block)
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
                       shared_anon=entry.shared_anon)
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


def sigbus(k: Kernel, task: Task, addr: int) -> None:
    """A genuine SIGBUS for a bad access at ``addr`` (BUS_ADRERR)."""
    signals.send_signal(k, task, signals.Siginfo(linux.SIGBUS, linux.BUS_ADRERR, si_addr=addr))


def fault(k: Kernel, task: Task, mapping: Mapping, index: int, write: bool,
          user: bool = True) -> int:
    """``handle_mm_fault`` on a DAX file: the page's block, allocating a hole on a write.

    A fault for the kernel (``user=False``: get_user_pages for a pin or a transfer)
    fails with EFAULT and sends no signal, as ``__get_user_pages`` does.
    Past the end of the file, or in an invalidated mapping, the process gets SIGBUS
    and the call fails with EFAULT.  A read of a hole maps the zero page.
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
        k.pmem.free(block)
        inode.blocks[fpage] = block = new
    mapping.ptes[index] = block
    k.log.emit("fault", pid=task.pid, vma=mapping.vid, page=index, ino=inode.ino, write=write,
               block=block, result="mapped")
    return block


def _may_store(mapping: Mapping) -> bool:
    """Can the process store through this mapping's translations (shared, writable)?"""
    return mapping.shared and bool(mapping.prot & linux.PROT_WRITE)


def zap(k: Kernel, inode: Inode, first: int, end: int | None) -> bool:
    """``unmap_mapping_range``: take file pages ``[first, end)`` out of every mapping.

    Each process that may cache them gets a shoot-down; returns True while any
    acknowledgement is outstanding for this inode (the caller must wait, see
    :func:`wait_for_shootdowns`).
    """
    pending = k.shootdowns
    for mapping in inode.i_mmap:
        hit = [i for i in mapping.ptes
               if mapping.pgoff + i >= first and (end is None or mapping.pgoff + i < end)]
        if not hit:
            continue
        for i in hit:
            del mapping.ptes[i]
        task = mapping.task
        if k.tasks.get(task.pid) is not task:
            continue
        seq = next(_shootdown_seq)
        pending[seq] = Shootdown(task, inode)
        k.io.event(task, {"event": "shootdown", "sd": seq, "vma": mapping.vid, "pages": hit})
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


def shootdown_ack(k: Kernel, task: Task, body: dict[str, object]) -> None:
    """NOTIFY ``tlb-ack``: the agent dropped the translations of shoot-down ``sd``."""
    seq = body.get("sd")
    if isinstance(seq, int) and seq in k.shootdowns and k.shootdowns[seq].task is task:
        _acked(k, seq)


def unmap_and_wait(k: Kernel, inode: Inode, first: int, end: int | None) -> None:
    """Zap pages ``[first, end)`` of the inode, then sleep until the shoot-downs are
    done.  The caller holds the inode's invalidate lock over the range, so faults in
    it wait meanwhile."""
    zap(k, inode, first, end)
    wait_for_shootdowns(k, inode)
