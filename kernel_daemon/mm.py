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
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from kernel_daemon import signals
from kernel_daemon.errors import KernelError, MustWait
from kernel_daemon.kernel import Kernel
from kernel_daemon.pmem import Owner
from kernel_daemon.task import File, Task
from kernel_daemon.vfs import Inode
from protocol import linux

#: where a process's mappings start (a user-space address, as on x86-64)
MMAP_BASE = 0x7F0000000000
_shootdown_seq = itertools.count(1)
#: the page-table entry of a hole read through the zero page
ZERO_PAGE = -1


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
    #: state policies attach (MAP_DIRECT lease)
    ext: dict[str, Any] = field(default_factory=dict)

    @property
    def npages(self) -> int:
        """Pages the mapping spans."""
        return -(-self.length // self.task_page)

    task_page: int = 4096

    @property
    def shared(self) -> bool:
        """MAP_SHARED or MAP_SHARED_VALIDATE."""
        return self.flags & linux.MAP_TYPE in (linux.MAP_SHARED, linux.MAP_SHARED_VALIDATE)


def vmas(task: Task) -> dict[int, Mapping]:
    """The task's mappings by id."""
    table: dict[int, Mapping] = task.ext.setdefault("vmas", {})
    return table


def inode_vmas(inode: Inode) -> list[Mapping]:
    """Every mapping of the inode (``mapping->i_mmap``)."""
    lst: list[Mapping] = inode.ext.setdefault("vmas", [])
    return lst


def next_address(task: Task, length: int, page: int) -> int:
    """A free address range for a new mapping (with a guard page after it)."""
    addr: int = task.ext.get("mmap_next", MMAP_BASE)
    task.ext["mmap_next"] = addr + (-(-length // page) + 1) * page
    return addr


def add_mapping(k: Kernel, task: Task, mapping: Mapping) -> None:
    """Insert a mapping; it holds a reference on its file (a mapped file stays open)."""
    mapping.task_page = k.pmem.block_size
    if not mapping.vid:
        mapping.vid = task.ext["next_vid"] = task.ext.get("next_vid", 0) + 1
    vmas(task)[mapping.vid] = mapping
    if mapping.file is not None:
        k.fget(mapping.file)
        inode_vmas(mapping.file.inode).append(mapping)
    k.log.emit("mmap", pid=task.pid, vma=mapping.vid, addr=mapping.start, length=mapping.length,
               ino=mapping.file.inode.ino if mapping.file else None, prot=mapping.prot,
               flags=mapping.flags)


def remove_mapping(k: Kernel, mapping: Mapping, why: str) -> None:
    """Tear a mapping down; the process unmaps it itself (or is gone), so no shoot-down."""
    table = vmas(mapping.task)
    if table.pop(mapping.vid, None) is None:
        return
    for hook in k.ext.get("munmap_hooks", ()):
        hook(mapping)
    users: list[int] | None = mapping.ext.get("anon_users")
    if users is not None and users[0] > 1:  # shared anonymous memory a fork child shares
        users[0] -= 1
        mapping.ptes = {}
    elif mapping.file is None:
        for block in mapping.ptes.values():
            if block >= 0:
                release_block(k, block)
    mapping.ptes.clear()
    for block in mapping.ext.pop("cow", {}).values():
        release_block(k, block)
    k.log.emit("munmap", pid=mapping.task.pid, vma=mapping.vid, why=why)
    if mapping.file is not None:
        lst = inode_vmas(mapping.file.inode)
        if mapping in lst:
            lst.remove(mapping)
        k.fput(mapping.file)


def release_block(k: Kernel, block: int) -> None:
    """A process lets go of its anonymous page: freed now, or, while a device holds a
    long-term pin on it, when the last pin goes (the pin holds a page reference)."""
    if k.ext.get("longterm_pins", {}).get(block):
        k.ext.setdefault("free_when_unpinned", set()).add(block)
    else:
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
    cow: dict[int, int] = mapping.ext.setdefault("cow", {})
    block = fault(k, task, mapping, index, write=False, user=False)
    if index in cow:
        return cow[index]
    new = k.pmem.alloc(Owner(0, mapping.vid << 20 | index))
    if block >= 0:
        k.pmem.view(new)[:] = k.pmem.view(block)
    cow[index] = mapping.ptes[index] = new
    broken.append((index, new))
    return new


def snapshot_mappings(k: Kernel, parent: Task) -> dict[str, Any]:
    """At fork (``dup_mmap``), while the parent stands in fork: its mappings as they are
    now, each holding its file; shared anonymous memory gains a user (the child), and
    every private anonymous page, and every private file page whose copy-on-write a pin
    broke, is copied for the child (Linux copies pinned pages at fork too)."""
    entries: list[dict[str, Any]] = []
    for m in vmas(parent).values():
        entry: dict[str, Any] = {"m": m, "start": m.start, "length": m.length, "prot": m.prot,
                                 "flags": m.flags, "file": m.file, "pgoff": m.pgoff,
                                 "vid": m.vid, "invalid": m.invalid}
        if m.file is not None:
            k.fget(m.file)
        if m.file is None and m.shared:
            users: list[int] = m.ext.setdefault("anon_users", [1])
            users[0] += 1
            entry["ptes"], entry["users"] = m.ptes, users
        else:
            pages = m.ptes if m.file is None else m.ext.get("cow", {})
            copies: dict[int, int] = {}
            for index, block in pages.items():
                if block < 0:
                    continue
                new = k.pmem.alloc(Owner(0, m.vid << 20 | index))
                k.pmem.view(new)[:] = k.pmem.view(block)
                copies[index] = new
            entry["ptes" if m.file is None else "cow"] = copies
        entries.append(entry)
    return {"vmas": entries, "mmap_next": parent.ext.get("mmap_next", MMAP_BASE),
            "next_vid": parent.ext.get("next_vid", 0)}


def drop_snapshot(k: Kernel, snapshot: dict[str, Any]) -> None:
    """A fork nobody claimed: its references and copies go back."""
    for entry in snapshot.pop("vmas", []):
        if entry["file"] is not None:
            k.fput(entry["file"])
        users = entry.get("users")
        if users is not None:
            users[0] -= 1
            if users[0] == 0:  # the parent unmapped it meanwhile: the last user goes
                for block in entry["ptes"].values():
                    if block >= 0:
                        release_block(k, block)
            continue
        for block in {**entry.get("ptes", {}), **entry.get("cow", {})}.values():
            k.pmem.free(block)


def drop_all(k: Kernel, task: Task, why: str) -> None:
    """exit and exec: every mapping of the task goes."""
    for mapping in list(vmas(task).values()):
        remove_mapping(k, mapping, why)
    pending: dict[int, Any] = k.ext.setdefault("shootdowns", {})
    for seq, entry in list(pending.items()):
        if entry[0] is task:
            _acked(k, seq)


def sigbus(k: Kernel, task: Task, addr: int) -> None:
    """A genuine SIGBUS for a bad access at ``addr`` (BUS_ADRERR)."""
    signals.send_signal(k, task, {"si_signo": linux.SIGBUS, "si_code": 2, "si_band": 0,
                                  "si_fd": 0, "si_addr": addr})


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
            signals.send_signal(k, task, {"si_signo": linux.SIGSEGV, "si_code": 2,
                                          "si_band": 0, "si_fd": 0, "si_addr": addr})
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
    _wait_invalidate(k, task, inode, fpage)
    if mapping.invalid or fpage * page >= inode.size:
        k.log.emit("fault", pid=task.pid, vma=mapping.vid, page=index, ino=inode.ino,
                   write=write, block=None, result="SIGBUS" if user else "EFAULT")
        if user:
            sigbus(k, task, addr)
        raise KernelError(errno.EFAULT)
    cow: dict[int, int] | None = mapping.ext.get("cow")
    if cow and index in cow:  # a private page whose copy-on-write a pin broke
        mapping.ptes[index] = cow[index]
        return cow[index]
    for hook in k.ext.get("fault_hooks", ()):
        hook(task, mapping, fpage, write)
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
    pending: dict[int, Any] = k.ext.setdefault("shootdowns", {})
    for mapping in inode_vmas(inode):
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
        pending[seq] = (task, inode)
        k.io.event(task, {"event": "shootdown", "sd": seq, "vma": mapping.vid, "pages": hit})
        k.log.emit("shootdown", pid=task.pid, vma=mapping.vid, pages=hit, sd=seq)
    return any(entry[1] is inode for entry in pending.values())


def unmap_zero_page(k: Kernel, owner: Owner) -> None:
    """A hole got a block: mappings that read it through the zero page must fault again
    (``dax_insert_entry`` unmaps the zero page).  Readers that still see zeros for an
    instant are a race Linux has too, so nobody waits for these shoot-downs."""
    inode = k.fs.inodes.get(owner.ino)
    if inode is None:
        return
    for mapping in inode_vmas(inode):
        index = owner.pgoff - mapping.pgoff
        if mapping.ptes.get(index) != ZERO_PAGE:
            continue
        del mapping.ptes[index]
        task = mapping.task
        if k.tasks.get(task.pid) is task:
            k.io.event(task, {"event": "shootdown", "sd": 0, "vma": mapping.vid, "pages": [index]})


def wait_for_shootdowns(k: Kernel, inode: Inode) -> None:
    """Sleep until every shoot-down of ``inode`` is acknowledged (or its process died)."""
    pending: dict[int, Any] = k.ext.setdefault("shootdowns", {})
    if not any(entry[1] is inode for entry in pending.values()):
        return
    sleepers: list[Callable[[], None]] = inode.ext.setdefault("tlb_sleepers", [])

    def register(wake: Callable[[], None]) -> Callable[[], None]:
        sleepers.append(wake)
        return lambda: sleepers.remove(wake) if wake in sleepers else None

    raise MustWait(register)


def _acked(k: Kernel, seq: int) -> None:
    pending: dict[int, Any] = k.ext.setdefault("shootdowns", {})
    entry = pending.pop(seq, None)
    if entry is None:
        return
    inode = entry[1]
    if not any(e[1] is inode for e in pending.values()):
        sleepers, inode.ext["tlb_sleepers"] = inode.ext.get("tlb_sleepers", []), []
        for wake in sleepers:
            wake()


def shootdown_ack(k: Kernel, task: Task, body: dict[str, Any]) -> None:
    """NOTIFY ``tlb-ack``: the agent dropped the translations of shoot-down ``sd``."""
    seq = body.get("sd")
    pending: dict[int, Any] = k.ext.setdefault("shootdowns", {})
    if isinstance(seq, int) and seq in pending and pending[seq][0] is task:
        _acked(k, seq)


def invalidate_lock(k: Kernel, task: Task, inode: Inode, first: int, end: int | None) -> None:
    """``filemap_invalidate_lock``: while ``task`` changes pages ``[first, end)``, faults
    in that range wait, so they cannot bring back what is being taken away (without it
    a process storing in a loop re-faults the pages after each shoot-down and the change
    never ends).  Released by :func:`invalidate_unlock` or the holder's exit."""
    held: dict[int, tuple[Task, int, int | None]] = inode.ext.setdefault("inval", {})
    held[task.pid] = (task, first, end)
    task.ext.setdefault("inval_inodes", set()).add(inode.ino)


def invalidate_unlock(k: Kernel, task: Task, inode: Inode) -> None:
    """The change is done: faults waiting on the range go on."""
    held = inode.ext.get("inval", {})
    if held.pop(task.pid, None) is None:
        return
    task.ext.get("inval_inodes", set()).discard(inode.ino)
    sleepers, inode.ext["inval_sleepers"] = inode.ext.get("inval_sleepers", []), []
    for wake in sleepers:
        wake()


def release_invalidate_locks(k: Kernel, task: Task) -> None:
    """At exit (or when the call holding them ends): drop the task's invalidate locks."""
    for ino in list(task.ext.get("inval_inodes", ())):
        inode = k.fs.inodes.get(ino)
        if inode is not None:
            invalidate_unlock(k, task, inode)
    task.ext.pop("inval_inodes", None)


def _wait_invalidate(k: Kernel, task: Task, inode: Inode, fpage: int) -> None:
    """Sleep while another task's layout change covers file page ``fpage``."""
    busy = any(owner is not task and fpage >= first and (end is None or fpage < end)
               for owner, first, end in inode.ext.get("inval", {}).values())
    if not busy:
        return
    sleepers: list[Callable[[], None]] = inode.ext.setdefault("inval_sleepers", [])

    def register(wake: Callable[[], None]) -> Callable[[], None]:
        sleepers.append(wake)
        return lambda: sleepers.remove(wake) if wake in sleepers else None

    raise MustWait(register)


def unmap_and_wait(k: Kernel, inode: Inode, first: int, end: int | None,
                   task: Task | None = None) -> None:
    """Zap pages ``[first, end)`` of the inode, then sleep until the shoot-downs are done;
    with ``task``, faults in the range wait meanwhile (the caller unlocks when done)."""
    if task is not None:
        invalidate_lock(k, task, inode, first, end)
    zap(k, inode, first, end)
    wait_for_shootdowns(k, inode)
