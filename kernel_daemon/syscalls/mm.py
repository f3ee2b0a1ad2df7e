"""Memory-mapping calls: mmap, munmap, the page fault path and shoot-down acks.

``mmap`` follows mm/mmap.c ``do_mmap`` and the DAX file checks of ``xfs_file_mmap``;
flags are validated as Linux does (``MAP_SHARED_VALIDATE`` refuses unknown flags with
EOPNOTSUPP, plain ``MAP_SHARED`` ignores them).  Policies add ``MAP_DIRECT``.
"""

from __future__ import annotations

import errno
from typing import Any

from kernel_daemon import mm
from kernel_daemon.errors import KernelError
from kernel_daemon.kernel import Kernel
from kernel_daemon.syscalls.table import syscall
from kernel_daemon.task import Task
from protocol import linux

#: flags MAP_SHARED_VALIDATE accepts (LEGACY_MAP_MASK plus MAP_SYNC); policies extend it
KNOWN_MAP_FLAGS = (linux.MAP_TYPE | linux.MAP_FIXED | linux.MAP_ANONYMOUS | linux.MAP_POPULATE
                   | 0x0100 | 0x0800 | 0x1000 | 0x2000 | 0x4000 | 0x10000 | 0x20000 | 0x40000
                   | linux.MAP_SYNC)


@syscall("mmap", linux="mm/mmap.c do_mmap()", support="partial",
         note="files of the pmem filesystem (DAX) and MAP_ANONYMOUS; no MAP_FIXED placement")
def sys_mmap(k: Kernel, t: Task, length: int, prot: int, flags: int, fd: int,
             offset: int = 0) -> dict[str, int]:
    """mmap(2): returns the address and the mapping's id (the agent's page-table key)."""
    page = k.pmem.block_size
    if length <= 0 or offset < 0 or offset % page:
        raise KernelError(errno.EINVAL)
    kind = flags & linux.MAP_TYPE
    if kind not in (linux.MAP_SHARED, linux.MAP_PRIVATE, linux.MAP_SHARED_VALIDATE):
        raise KernelError(errno.EINVAL)
    known = KNOWN_MAP_FLAGS | k.ext.get("extra_map_flags", 0)
    if kind == linux.MAP_SHARED_VALIDATE and flags & ~known:
        raise KernelError(errno.EOPNOTSUPP)
    if kind != linux.MAP_SHARED_VALIDATE:
        flags &= known & ~linux.MAP_SYNC  # MAP_SYNC and unknown flags are ignored here
    file = None
    if not flags & linux.MAP_ANONYMOUS:
        file = k.file_of(t, fd)
        if file.flags & linux.O_PATH:
            raise KernelError(errno.EBADF)
        if not file.inode.is_reg:
            raise KernelError(errno.ENODEV)
        if not file.readable:
            raise KernelError(errno.EACCES)
        if kind != linux.MAP_PRIVATE and prot & linux.PROT_WRITE and not file.writable:
            raise KernelError(errno.EACCES)
    elif kind == linux.MAP_SHARED_VALIDATE and flags & linux.MAP_SYNC:
        raise KernelError(errno.EOPNOTSUPP)  # MAP_SYNC needs a DAX file
    mapping = mm.Mapping(task=t, start=0, length=length, prot=prot, flags=flags, file=file,
                         pgoff=offset // page)
    for hook in k.ext.get("mmap_hooks", ()):
        hook(t, mapping, fd)  # policies: MAP_DIRECT checks and its lease
    mapping.start = mm.next_address(t, length, page)
    mm.add_mapping(k, t, mapping)
    return {"addr": mapping.start, "vma": mapping.vid}


@syscall("munmap", linux="mm/mmap.c do_munmap()", support="partial",
         note="whole mappings only (the agent unmaps its cached translations first)")
def sys_munmap(k: Kernel, t: Task, addr: int, length: int) -> int:
    """munmap(2) of a whole mapping starting at ``addr``; a range that maps nothing is 0."""
    page = k.pmem.block_size
    if addr % page or length <= 0:
        raise KernelError(errno.EINVAL)
    for mapping in list(mm.vmas(t).values()):
        if mapping.start >= addr and mapping.start + mapping.length <= addr + length:
            mm.remove_mapping(k, mapping, "munmap")
    return 0


@syscall("mm_fault", linux="mm/memory.c handle_mm_fault() dax_iomap_fault()",
         support="emulator", note="the agent's page fault: the block behind a page of a mapping")
def sys_mm_fault(k: Kernel, t: Task, vma: int, index: int, write: int) -> int:
    """Fault page ``index`` of mapping ``vma`` in; EFAULT (with SIGBUS or SIGSEGV sent)
    when there is nothing to map."""
    mapping = mm.vmas(t).get(vma)
    if mapping is None or not 0 <= index < mapping.npages:
        raise KernelError(errno.EFAULT)
    return mm.fault(k, t, mapping, index, bool(write))


@syscall("proc_maps", linux="fs/proc/task_mmu.c show_map()", support="emulator",
         note="/proc/<pid>/maps of a process: address, length, protection, file, pages mapped")
def sys_proc_maps(k: Kernel, t: Task, pid: int) -> list[dict[str, Any]]:
    """The mappings of ``pid``."""
    task = k.task_of(pid)
    return [{"addr": m.start, "length": m.length, "perms": _perms(m),
             "path": k.fs.path_of(m.file.inode) if m.file else None, "mapped": len(m.ptes),
             "invalid": m.invalid}
            for m in sorted(mm.vmas(task).values(), key=lambda m: m.start)]


def _perms(m: mm.Mapping) -> str:
    """``rw-s`` as /proc/<pid>/maps shows it."""
    return ("r" if m.prot & linux.PROT_READ else "-") + ("w" if m.prot & linux.PROT_WRITE
            else "-") + ("x" if m.prot & linux.PROT_EXEC else "-") + ("s" if m.shared else "p")


def install(k: Kernel) -> None:
    """Wire mappings into exit, exec, fork and the truncate path."""
    k.exit_hooks.append(lambda task: mm.drop_all(k, task, "exit"))
    k.exit_hooks.append(lambda task: mm.release_invalidate_locks(k, task))
    k.exec_hooks.append(lambda task: mm.drop_all(k, task, "exec"))
    k.fork_hooks.append(lambda parent, child: _fork(k, parent, child))
    k.fork_prepare_hooks.append(
        lambda parent, pending: pending.ext.__setitem__("mm", mm.snapshot_mappings(k, parent)))
    k.fork_drop_hooks.append(lambda pending: mm.drop_snapshot(k, pending.ext.get("mm", {})))
    k.notify_handlers["tlb-ack"] = lambda task, body: mm.shootdown_ack(k, task, body)
    k.block_alloc_hooks.append(lambda owner: mm.unmap_zero_page(k, owner))


def _fork(k: Kernel, parent: Task | None, child: Task) -> None:
    """``dup_mmap``: the child gets the parent's mappings as they were at the fork (the
    snapshot :func:`mm.snapshot_mappings` took at ``fork_prepare``), even if the parent
    changed them, or died, before the child registered.

    File pages are faulted in again by the child; shared anonymous memory is shared
    (one page table, counted users); private anonymous pages, and private file pages
    whose copy-on-write a pin broke, are the snapshot's copies.
    """
    snapshot: dict[str, Any] = child.ext.get("fork_snapshot", {}).get("mm", {})
    for entry in snapshot.pop("vmas", []):
        copy = mm.Mapping(task=child, start=entry["start"], length=entry["length"],
                          prot=entry["prot"], flags=entry["flags"], file=entry["file"],
                          pgoff=entry["pgoff"], vid=entry["vid"], invalid=entry["invalid"])
        if "users" in entry:
            copy.ptes = entry["ptes"]
            copy.ext["anon_users"] = entry["users"]
        elif entry["file"] is None:
            copy.ptes = entry["ptes"]
        elif entry.get("cow"):
            copy.ext["cow"] = entry["cow"]
        mm.add_mapping(k, child, copy)
        if entry["file"] is not None:
            k.fput(entry["file"])  # add_mapping took the mapping's own reference
        for hook in k.ext.get("vma_copy_hooks", ()):
            hook(entry["m"], copy)
    child.ext["mmap_next"] = snapshot.get("mmap_next", mm.MMAP_BASE)
    child.ext["next_vid"] = snapshot.get("next_vid", 0)
