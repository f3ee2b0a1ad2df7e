"""The agent's MMU for DAX mappings: loads and stores straight into the pmem segment.

The pmem device is a ``multiprocessing.shared_memory`` segment the agent attaches to
(and unregisters from Python's resource tracker, which would otherwise unlink the whole
device when this process exits).  Each mapping's translations (page -> block) are cached
here, as a TLB; a miss faults into the daemon.  A shoot-down from the daemon drops
translations and is acknowledged at once; the daemon frees no block before every
process that may cache it has acknowledged, so a store here can never land in a freed
block.  Shoot-downs are taken before every access and whenever the agent waits.
"""

from __future__ import annotations

import errno
from dataclasses import dataclass, field
from multiprocessing import resource_tracker, shared_memory
from typing import Any

from agents.runtime import Connection
from protocol import linux
from protocol.errors import os_error

ZERO_PAGE = -1


@dataclass
class Vma:
    """The agent's view of one mapping."""

    vid: int
    start: int
    length: int
    prot: int
    flags: int
    #: page index -> private copy (MAP_PRIVATE pages written by this process)
    private: dict[int, bytearray] = field(default_factory=dict)

    @property
    def shared(self) -> bool:
        """Stores reach the file."""
        return self.flags & linux.MAP_TYPE != linux.MAP_PRIVATE


class AgentMM:
    """Mappings, the TLB and the data path of one emulated process."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.page = int(conn.pmem["block_size"])
        shm = shared_memory.SharedMemory(name=str(conn.pmem["name"]))
        # the daemon owns the segment's lifetime, not this process's resource tracker
        resource_tracker.unregister(shm._name, "shared_memory")  # type: ignore[attr-defined]
        self.shm = shm
        assert shm.buf is not None
        self.buf: memoryview = shm.buf
        self.vmas: dict[int, Vma] = {}
        #: (vma id, page index) -> block or ZERO_PAGE
        self.tlb: dict[tuple[int, int], int] = {}
        conn.event_handlers["shootdown"] = self._shootdown

    # --- events -----------------------------------------------------------------------

    def _shootdown(self, body: dict[str, Any]) -> None:
        """Drop the translations the daemon zapped, then acknowledge (the IPI)."""
        vid = int(body.get("vma", 0))
        for index in body.get("pages", []):
            self.tlb.pop((vid, int(index)), None)
        self.conn.notify("tlb-ack", sd=body.get("sd"))

    def sync(self) -> None:
        """Take pending shoot-downs (and other events) now."""
        self.conn.pump(0)

    def after_fork(self, conn: Connection) -> None:
        """In a fork child: a new channel, and no translations until faulted again."""
        self.conn = conn
        self.tlb.clear()
        conn.event_handlers["shootdown"] = self._shootdown

    # --- mapping --------------------------------------------------------------------

    def mmap(self, length: int, prot: int, flags: int, fd: int, offset: int) -> int:
        """mmap(2); returns the address."""
        reply = self.conn.call("mmap", length, prot, flags, fd, offset)
        self.vmas[reply["vma"]] = Vma(reply["vma"], reply["addr"], length, prot, flags)
        return int(reply["addr"])

    def munmap(self, addr: int, length: int) -> None:
        """munmap(2) of whole mappings: translations dropped before the daemon is told."""
        for vid, vma in list(self.vmas.items()):
            if vma.start >= addr and vma.start + vma.length <= addr + length:
                del self.vmas[vid]
                for key in [k for k in self.tlb if k[0] == vid]:
                    del self.tlb[key]
        self.conn.call("munmap", addr, length)

    def drop_all(self) -> None:
        """exec: every mapping goes with the image."""
        self.vmas.clear()
        self.tlb.clear()

    def _find(self, addr: int) -> Vma:
        for vma in self.vmas.values():
            if vma.start <= addr < vma.start + vma.length:
                return vma
        raise os_error(errno.EFAULT)

    def _block(self, vma: Vma, index: int, write: bool) -> int:
        key = (vma.vid, index)
        block = self.tlb.get(key)
        if block is None or (write and block == ZERO_PAGE):
            block = int(self.conn.call("mm_fault", vma.vid, index, 1 if write else 0))
            self.tlb[key] = block
        return block

    # --- the data path ----------------------------------------------------------------

    def store(self, addr: int, data: bytes) -> int:
        """Store ``data`` at ``addr`` through the mapping (EFAULT after SIGBUS/SIGSEGV)."""
        self.sync()
        done = 0
        view = memoryview(data)
        while done < len(data):
            vma = self._find(addr + done)
            off = addr + done - vma.start
            index, inpage = divmod(off, self.page)
            n = min(self.page - inpage, len(data) - done, vma.length - off)
            if not vma.shared:
                self._private(vma, index)[inpage : inpage + n] = view[done : done + n]
            else:
                block = self._block(vma, index, write=True)
                start = block * self.page + inpage
                self.buf[start : start + n] = view[done : done + n]
            done += n
        return done

    def load(self, addr: int, count: int) -> bytes:
        """Load ``count`` bytes at ``addr`` through the mapping."""
        self.sync()
        out = bytearray()
        while len(out) < count:
            vma = self._find(addr + len(out))
            off = addr + len(out) - vma.start
            index, inpage = divmod(off, self.page)
            n = min(self.page - inpage, count - len(out), vma.length - off)
            if index in vma.private:
                out += vma.private[index][inpage : inpage + n]
                continue
            block = self._block(vma, index, write=False)
            if block == ZERO_PAGE:
                out += bytes(n)
            else:
                start = block * self.page + inpage
                out += self.buf[start : start + n]
        return bytes(out)

    def _private(self, vma: Vma, index: int) -> bytearray:
        """A MAP_PRIVATE page's copy, made on the first store (copy-on-write)."""
        page = vma.private.get(index)
        if page is None:
            block = self._block(vma, index, write=False)
            if block == ZERO_PAGE:
                page = bytearray(self.page)
            else:
                page = bytearray(self.buf[block * self.page : (block + 1) * self.page])
            vma.private[index] = page
            self.tlb.pop((vma.vid, index), None)
        return page

    def close(self) -> None:
        """Detach from the device."""
        self.buf.release()
        self.shm.close()
