"""The agent's MMU for DAX mappings: loads and stores straight into the pmem segment.

The pmem device is a POSIX shared-memory segment (:mod:`kemu.protocol.shm`) the agent
attaches to; the daemon owns its lifetime.  Each mapping's translations (page -> block) are cached
here, as a TLB; a miss faults into the daemon.  A shoot-down from the daemon drops
translations and is acknowledged at once; but the daemon does not wait for that (a
process that is stopped never answers, and Linux's IPI needs nothing from its target).
It bumps the process's TLB generation in a shared word (:class:`TlbWord` in
``kernel_daemon/mm.py``), which every access checks before it uses a cached
translation: a new generation drops them all, so a process that resumes after a
shoot-down it slept through faults instead of storing.  A store marks the generation
it stores under (``in_store``) for the few microseconds of its copy, and the daemon
frees no block while a store that began under an older generation is in progress, so
a store here can never land in a freed block.  Shoot-downs are taken before every
access and whenever the agent waits.
"""

from __future__ import annotations

import bisect
import errno
from dataclasses import dataclass, field
from typing import Any

from kemu.agents.lib.runtime import Connection, take_fds
from kemu.protocol import linux, shm, wire
from kemu.protocol.errors import os_error

ZERO_PAGE = -1


@dataclass
class Vma:
    """The agent's view of one mapping."""

    vid: int
    start: int
    length: int
    prot: int
    flags: int
    #: page index -> private copy (pages of a MAP_PRIVATE file mapping written by this
    #: process; real fork copies them, as the kernel's copy-on-write would)
    private: dict[int, bytearray] = field(default_factory=dict)
    #: private file pages whose copy-on-write a long-term pin broke: they live in a
    #: device block of their own now (the kernel said which: the ``cow-pin`` event)
    cow: set[int] = field(default_factory=set)
    #: the cached translations of this mapping
    tlb: ExtentTLB = field(default_factory=lambda: ExtentTLB())

    @property
    def shared(self) -> bool:
        """Stores reach the file."""
        return self.flags & linux.MAP_TYPE != linux.MAP_PRIVATE

    def in_device(self, index: int) -> bool:
        """Page ``index`` lives in a device block (not in this process's memory):
        shared pages, anonymous pages (the kernel copies private ones at fork), and
        private pages a pin took over."""
        return (self.flags & linux.MAP_TYPE != linux.MAP_PRIVATE
                or bool(self.flags & linux.MAP_ANONYMOUS) or index in self.cow)


class ExtentTLB:
    """Translations of one mapping as extents: pages ``[start, end)`` -> blocks
    ``[block, block + end - start)``, kept sorted by start so that a store of many pages
    finds its runs with ``bisect`` and copies each run with one slice.  Pages read
    through the zero page are kept apart (they have no block)."""

    def __init__(self) -> None:
        self.starts: list[int] = []
        self.ends: list[int] = []
        self.blocks: list[int] = []
        self.zero: set[int] = set()

    def lookup(self, page: int) -> tuple[int, int] | None:
        """(block of ``page``, pages left in its extent), or None."""
        i = bisect.bisect_right(self.starts, page) - 1
        if i >= 0 and page < self.ends[i]:
            return self.blocks[i] + page - self.starts[i], self.ends[i] - page
        return None

    def insert(self, page: int, block: int) -> None:
        """Record ``page -> block``, merging with the extent before or after it."""
        self.zero.discard(page)
        if block == ZERO_PAGE:
            self.zero.add(page)
            return
        i = bisect.bisect_right(self.starts, page) - 1
        if i >= 0 and self.ends[i] == page and self.blocks[i] + page - self.starts[i] == block:
            self.ends[i] += 1
            j = i + 1
            if j < len(self.starts) and self.starts[j] == page + 1 \
                    and self.blocks[j] == block + 1:  # joins the next extent too
                self.ends[i] = self.ends[j]
                del self.starts[j], self.ends[j], self.blocks[j]
            return
        j = i + 1
        if j < len(self.starts) and self.starts[j] == page + 1 and self.blocks[j] == block + 1:
            self.starts[j] = page
            self.blocks[j] = block
            return
        self.starts.insert(j, page)
        self.ends.insert(j, page + 1)
        self.blocks.insert(j, block)

    def insert_run(self, page: int, block: int, count: int) -> None:
        """Record pages ``[page, page + count)`` -> blocks ``[block, block + count)`` (or
        the zero page for all of them), replacing what was cached there and merging
        with the extents on either side: one fault reply's run in one step."""
        end = page + count
        if self.zero:
            self.zero.difference_update(range(page, end))
        if block == ZERO_PAGE:
            self.zero.update(range(page, end))
        starts, ends, blocks = self.starts, self.ends, self.blocks
        lo = bisect.bisect_right(starts, page) - 1
        if lo < 0 or ends[lo] <= page:
            lo += 1  # the first extent that overlaps [page, end) or lies after it
        hi = lo
        while hi < len(starts) and starts[hi] < end:
            hi += 1
        keep: list[tuple[int, int, int]] = []  # what is left of overlapped extents
        if lo < hi:
            if starts[lo] < page:
                keep.append((starts[lo], page, blocks[lo]))
            if ends[hi - 1] > end:
                keep.append((end, ends[hi - 1], blocks[hi - 1] + end - starts[hi - 1]))
            del starts[lo:hi], ends[lo:hi], blocks[lo:hi]
        if block != ZERO_PAGE:
            keep.append((page, end, block))
        keep.sort()
        for j, (s, e, b) in enumerate(keep):
            starts.insert(lo + j, s)
            ends.insert(lo + j, e)
            blocks.insert(lo + j, b)
        # merge across the edges of what was just put in
        for i in (lo + len(keep), lo):
            if 0 < i < len(starts) and ends[i - 1] == starts[i] \
                    and blocks[i - 1] + starts[i] - starts[i - 1] == blocks[i]:
                ends[i - 1] = ends[i]
                del starts[i], ends[i], blocks[i]

    def drop(self, page: int) -> None:
        """Forget ``page`` (a shoot-down), splitting its extent."""
        self.zero.discard(page)
        i = bisect.bisect_right(self.starts, page) - 1
        if i < 0 or page >= self.ends[i]:
            return
        start, end, block = self.starts[i], self.ends[i], self.blocks[i]
        del self.starts[i], self.ends[i], self.blocks[i]
        if page + 1 < end:
            self.starts.insert(i, page + 1)
            self.ends.insert(i, end)
            self.blocks.insert(i, block + page + 1 - start)
        if start < page:
            self.starts.insert(i, start)
            self.ends.insert(i, page)
            self.blocks.insert(i, block)

    def clear(self) -> None:
        """Forget everything."""
        self.starts.clear()
        self.ends.clear()
        self.blocks.clear()
        self.zero.clear()


class AgentMM:
    """Mappings, the TLB and the data path of one emulated process."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.page = int(conn.pmem["block_size"])
        # the daemon owns the segment's lifetime
        self.shm = shm.Segment(str(conn.pmem["name"]))
        self.buf: memoryview = self.shm.buf
        self.vmas: dict[int, Vma] = {}
        #: recent shoot-downs: (arrival number, vma id, pages), to spot a fault result
        #: that a shoot-down overtook while this process was busy in a nested call
        self.zaps: list[tuple[int, int, frozenset[int]]] = []
        conn.event_handlers["shootdown"] = self._shootdown
        conn.event_handlers["cow-pin"] = self._cow_pin
        self._attach_word()

    def _attach_word(self) -> None:
        """Take this process's TLB word from the daemon (by descriptor); a fork child
        unmaps its parent's and takes one of its own."""
        (fd,) = take_fds(self.conn.run_dir, {"kind": wire.ATTACH_MM}, 1)
        self.word = shm.Segment(fd=fd)
        self.wbuf: memoryview = self.word.buf
        #: the TLB generation the cached translations belong to
        self.seen_gen = int.from_bytes(self.wbuf[0:8], "little")

    def _generation(self) -> int:
        """The TLB generation now; when the daemon has bumped it, every cached
        translation is dropped first (a shoot-down this process may not have read)."""
        gen = int.from_bytes(self.wbuf[0:8], "little")
        if gen != self.seen_gen:
            for vma in self.vmas.values():
                vma.tlb.clear()
            self.seen_gen = gen
        return gen

    # --- events -----------------------------------------------------------------------

    def _shootdown(self, body: dict[str, Any]) -> None:
        """Drop the translations the daemon zapped, then acknowledge (the IPI)."""
        vid = int(body.get("vma", 0))
        pages = frozenset(int(i) for i in body.get("pages", []))
        vma = self.vmas.get(vid)
        if vma is not None:
            for index in pages:
                vma.tlb.drop(index)
            for index in body.get("cows", []):  # a truncate: private copies go too
                vma.private.pop(int(index), None)
        self.zaps.append((self.conn.arrivals, vid, pages))
        del self.zaps[:-64]
        self.conn.notify("tlb-ack", sd=body.get("sd"))

    def _cow_pin(self, body: dict[str, Any]) -> None:
        """A pin broke copy-on-write of private pages: each now has a block of its own,
        which gets this process's copy (if it wrote one) and serves it from now on."""
        vma = self.vmas.get(int(body.get("vma", 0)))
        if vma is None:
            return
        page = self.page
        for index, block in body.get("pages", []):
            mine = vma.private.pop(index, None)
            if mine is not None:
                self.buf[block * page : (block + 1) * page] = mine
            vma.cow.add(index)
            vma.tlb.drop(index)
            vma.tlb.insert(index, block)

    def sync(self) -> None:
        """Take pending shoot-downs (and other events) now."""
        self.conn.pump(0)

    def after_fork(self, conn: Connection) -> None:
        """In a fork child: a new channel, a TLB word of its own (the parent's is not
        mapped here), and no translations until faulted again."""
        self.conn = conn
        for vma in self.vmas.values():
            vma.tlb.clear()
        conn.event_handlers["shootdown"] = self._shootdown
        conn.event_handlers["cow-pin"] = self._cow_pin
        self.wbuf.release()
        self.word.close()
        self._attach_word()

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
        self.conn.call("munmap", addr, length)

    def drop_all(self) -> None:
        """exec: every mapping goes with the image."""
        self.vmas.clear()

    def _find(self, addr: int) -> Vma:
        for vma in self.vmas.values():
            if vma.start <= addr < vma.start + vma.length:
                return vma
        raise os_error(errno.EFAULT)

    def _block(self, vma: Vma, index: int, write: bool) -> tuple[int, int]:
        """(block of page ``index``, pages left in its extent), faulting it in."""
        hit = vma.tlb.lookup(index)
        if hit is not None:
            return hit
        if index in vma.tlb.zero and not write:
            return ZERO_PAGE, 1
        while True:
            # a PMD fault or fault-around: the reply is every run the daemon mapped
            runs = [(int(p), int(b), int(n)) for p, b, n in
                    self.conn.call("mm_fault", vma.vid, index, 1 if write else 0, 1)]
            got = self.conn.reply_arrival
            # A shoot-down of these pages read after the reply (while a signal handler's
            # call was being answered) means a block may be freed already: fault again.
            if not any(n > got and vid == vma.vid
                       and any(p <= i < p + c for i in pages for p, _, c in runs)
                       for n, vid, pages in self.zaps):
                break
        for p, b, c in runs:
            vma.tlb.insert_run(p, b, c)
        p, b, c = runs[0]  # the faulting page's run
        if b == ZERO_PAGE:
            return ZERO_PAGE, 1
        return b + index - p, p + c - index

    # --- the data path ----------------------------------------------------------------

    def store(self, addr: int, data: bytes | memoryview) -> int:
        """Store ``data`` at ``addr`` through the mapping (EFAULT after SIGBUS/SIGSEGV).

        First every page is translated (faulting as needed), then, with the generation
        those translations belong to marked in ``in_store`` and checked once more,
        each run of pages whose blocks are consecutive is copied with one slice."""
        self.sync()
        view = memoryview(data).cast("B")
        word = self.wbuf
        while True:
            gen = self._generation()
            plan = self._plan_store(addr, view)
            word[8:16] = gen.to_bytes(8, "little")
            if int.from_bytes(word[0:8], "little") == gen:
                break
            word[8:16] = bytes(8)  # a shoot-down came meanwhile: translate again
        try:
            buf = self.buf
            for start, lo, hi in plan:
                buf[start : start + hi - lo] = view[lo:hi]
        finally:
            word[8:16] = bytes(8)
        return len(view)

    def _plan_store(self, addr: int, view: memoryview) -> list[tuple[int, int, int]]:
        """The device copies of a store, ``(device offset, lo, hi)`` of ``view``,
        faulting pages in; pages of this process's own memory (MAP_PRIVATE copies) are
        written here at once."""
        total = len(view)
        done = 0
        page = self.page
        plan: list[tuple[int, int, int]] = []
        while done < total:
            vma = self._find(addr + done)
            off = addr + done - vma.start
            index, inpage = divmod(off, page)
            limit = min(total - done, vma.length - off)
            if not vma.prot & linux.PROT_WRITE:
                # the TLB keeps no protection bits: a store to a read-only mapping goes
                # to the kernel, which answers SIGSEGV (and EFAULT), whatever is cached
                self.conn.call("mm_fault", vma.vid, index, 1)
            if not vma.in_device(index):
                n = min(page - inpage, limit)
                self._private(vma, index)[inpage : inpage + n] = view[done : done + n]
                done += n
                continue
            block, run = self._block(vma, index, write=True)
            n = min(run * page - inpage, limit)
            plan.append((block * page + inpage, done, done + n))
            done += n
        return plan

    def load(self, addr: int, count: int) -> bytes:
        """Load ``count`` bytes at ``addr`` through the mapping (read again if a
        shoot-down bumped the generation meanwhile: a block may have changed hands)."""
        self.sync()
        while True:
            gen = self._generation()
            out = self._load(addr, count)
            if int.from_bytes(self.wbuf[0:8], "little") == gen:
                return out

    def _load(self, addr: int, count: int) -> bytes:
        out = bytearray()
        page = self.page
        while len(out) < count:
            vma = self._find(addr + len(out))
            off = addr + len(out) - vma.start
            index, inpage = divmod(off, page)
            limit = min(count - len(out), vma.length - off)
            if index in vma.private:
                n = min(page - inpage, limit)
                out += vma.private[index][inpage : inpage + n]
                continue
            block, run = self._block(vma, index, write=False)
            n = min(run * page - inpage, limit)
            if block == ZERO_PAGE:
                out += bytes(n)
            else:
                start = block * page + inpage
                out += self.buf[start : start + n]
        return bytes(out)

    def _private(self, vma: Vma, index: int) -> bytearray:
        """A MAP_PRIVATE page's copy, made on the first store (copy-on-write)."""
        page = vma.private.get(index)
        if page is None:
            block, _ = self._block(vma, index, write=False)
            if block == ZERO_PAGE:
                page = bytearray(self.page)
            else:
                page = bytearray(self.buf[block * self.page : (block + 1) * self.page])
            if not vma.flags & linux.MAP_ANONYMOUS:
                self.conn.call("mm_cow", vma.vid, index)  # the kernel knows of the copy
            vma.private[index] = page
            vma.tlb.drop(index)
        return page

    def close(self) -> None:
        """Detach from the device."""
        self.buf.release()
        self.shm.close()
        self.wbuf.release()
        self.word.close()
