"""Memory-mapping calls: mmap, munmap, the page fault path and shoot-down acks.

``mmap`` follows mm/mmap.c ``do_mmap`` and the DAX file checks of ``xfs_file_mmap``;
flags are validated as Linux does (``MAP_SHARED_VALIDATE`` refuses unknown flags with
EOPNOTSUPP, plain ``MAP_SHARED`` ignores them).  Policies add ``MAP_DIRECT``.
"""

from __future__ import annotations

import errno
from typing import Any

from kemu.kernel_daemon import mm
from kemu.kernel_daemon.errors import KernelError
from kemu.kernel_daemon.kernel import Kernel
from kemu.kernel_daemon.syscalls.table import syscall
from kemu.kernel_daemon.task import Task
from kemu.protocol import linux

#: flags MAP_SHARED_VALIDATE accepts (LEGACY_MAP_MASK plus MAP_SYNC); designs extend it
KNOWN_MAP_FLAGS = linux.LEGACY_MAP_MASK | linux.MAP_TYPE | linux.MAP_SYNC


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
    known = KNOWN_MAP_FLAGS | k.policy.map_flags
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
    k.policy.mmap(k, t, mapping, fd)  # designs: MAP_DIRECT checks and its lease
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
         support="emulator", note="the agent's page fault: the block behind a page of a mapping"
         " (around: the runs a 2 MiB PMD fault or fault-around maps)")
def sys_mm_fault(k: Kernel, t: Task, vma: int, index: int, write: int,
                 around: int = 0) -> int | list[list[int]]:
    """Fault page ``index`` of mapping ``vma`` in; EFAULT (with SIGBUS or SIGSEGV sent)
    when there is nothing to map.

    Without ``around``: the page's block (ZERO_PAGE, -1, for the zero page).  With it:
    every translation the fault mapped, as ``[first page, first block, pages]`` runs
    (block -1: zero pages), the faulting page's run first (``dax_iomap_pmd_fault``,
    else ``do_fault_around``; see :func:`kemu.kernel_daemon.mm.fault_run`).
    """
    mapping = mm.vmas(t).get(vma)
    if mapping is None or not 0 <= index < mapping.npages:
        raise KernelError(errno.EFAULT)
    if around:
        return [list(run) for run in mm.fault_run(k, t, mapping, index, bool(write))]
    return mm.fault(k, t, mapping, index, bool(write))


@syscall("mm_cow", linux="mm/memory.c do_cow_fault() wp_page_copy()", support="emulator",
         note="the agent copied page index of a MAP_PRIVATE file mapping for a store: the "
              "kernel knows the copy exists, so a truncate unmaps it (even_cows)")
def sys_mm_cow(k: Kernel, t: Task, vma: int, index: int) -> int:
    """Record that page ``index`` of private file mapping ``vma`` has an anonymous
    copy in the process (EFAULT for no such page, EINVAL for a shared or anonymous
    mapping)."""
    mapping = mm.vmas(t).get(vma)
    if mapping is None or not 0 <= index < mapping.npages:
        raise KernelError(errno.EFAULT)
    if mapping.shared or mapping.file is None:
        raise KernelError(errno.EINVAL)
    mapping.anon.add(index)
    return 0


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
