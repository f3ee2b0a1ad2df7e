"""The grammar ``find`` draws its programs from: the scenario language's calls, with
typed resources that flow between lines and actors.

As in syzkaller's descriptions, a call is only drawn where its inputs exist: a
descriptor comes from ``open``, ``dup`` or ``recvfd`` and feeds ``fcntl``, ``mmap``,
``ftruncate``, ``fallocate``, ``pwrite``, ``dio_read``, ``clone`` and ``sendfd``; a
mapping comes from ``mmap`` and feeds ``ibv_reg_mr``, ``store``, ``dio_read``; a uverbs
context comes from ``ibv_open_device`` (or ``recvfd`` of one) and feeds ``ibv_reg_mr``
and ``sendfd``; a memory region's keys feed ``send``, and a received one the peer's
``rdma_write``; actors fork, exec, exit and are killed.  Nothing in the grammar knows
which sequences are dangerous: a call's chance depends only on its kind (a fixed
weight, :meth:`_Decoder.options`) and on whether the actor has its inputs already.

A program is drawn by Hypothesis as a list of *genes*, each a tuple of small integers,
and decoded here, deterministically, into scenario lines (:func:`decode`): the first
integer picks the actor, the second the call among those the actor can make at that
point (in a fixed order), the others its arguments.  Hypothesis shrinks the list (it
deletes genes, that is lines) and the integers (towards the first choices), and the
decoder keeps every shrunk program well typed.

Two things make the rare multi-process sequences less rare, neither of which knows
what is dangerous:

* *Swarm testing* (Groce, Zhang, Eide, Chen and Regehr, "Swarm Testing", ISSTA 2012):
  each program first draws a mask that leaves out about half of the kinds of call, so
  that a program is long on a few kinds instead of thin on all of them.  A left-out
  call can still be made as the producer of what another call needs.  The mask shrinks
  towards 0, every call enabled.
* *Resources from a peer*: what a call needs and the actor lacks (a region's keys, a
  descriptor, a uverbs context) is, about one time in two, made by another actor and
  passed (``send``/``recv``, ``sendfd``/``recvfd``) instead of made on the spot, as
  processes get their resources in the programs the thread argued about.
"""

from __future__ import annotations

import hashlib
import random
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import ClassVar, TypeVar

from hypothesis import strategies as st

#: the files programs use (few, so that freed blocks go to another file of the program)
PATHS = ("/f", "/g")
SIZES = (4096, 8192, 16384, 0)
OFFSETS = (0, 4096)
#: the actors started by the launcher, and the names fork children get
TOP = ("A", "B", "R")
CHILDREN = ("D", "E")
#: at most this many lines are drawn (joins of background calls come on top)
MAX_STEPS = 24
#: a gene: this many integers, each in [0, GENE_MAX]
GENE_LEN = 6
GENE_MAX = 1 << 12
#: how much more likely a call is when the actor has its inputs already
USE_WEIGHT = 3
#: the swarm mask: one bit per kind of call (:data:`SWARM`); a set bit leaves it out
MASK_MAX = (1 << 20) - 1
#: the kinds of call a swarm mask may leave out, bit 0 first (the others: always in)
SWARM = ("rdma_write", "rdma_read", "reg_mr", "send", "sendfd", "post_send", "dio_read",
         "mmap", "ftruncate", "pwrite", "fcntl", "fallocate", "pread", "dup", "clone",
         "store", "munmap", "dereg_mr", "truncate", "process")
#: the settings every generated program runs with: a line waiting for what a dead actor
#: never sends gives up after 1 s, breaks and direct I/O are short, the device small
HEADER = ("set step_timeout = 1.0", "set lease_break_time = 0.3", "set dio_time = 0.3",
          "set blocks = 64")

OPEN_FLAGS = ("O_RDWR|O_CREAT", "O_RDWR|O_CREAT", "O_RDWR|O_CREAT|O_TRUNC", "O_RDWR",
              "O_RDONLY|O_CREAT", "O_WRONLY|O_CREAT")
LEASES = ("F_WRLCK", "F_RDLCK", "F_UNLCK", "F_LAYOUT", "F_LAYOUT|F_EXCLUSIVE")
MAP_FLAGS = ("MAP_SHARED", "MAP_SHARED_VALIDATE|MAP_DIRECT", "MAP_PRIVATE")
ACCESS = ("IBV_ACCESS_LOCAL_WRITE|IBV_ACCESS_REMOTE_WRITE",
          "IBV_ACCESS_LOCAL_WRITE|IBV_ACCESS_REMOTE_WRITE|IBV_ACCESS_ON_DEMAND",
          "IBV_ACCESS_LOCAL_WRITE")
FALLOC = ("0", "FALLOC_FL_KEEP_SIZE", "FALLOC_FL_PUNCH_HOLE|FALLOC_FL_KEEP_SIZE",
          "FALLOC_FL_ZERO_RANGE")
SIGIO_ACTIONS = ('"record"', '"ignore"', '"default"')
#: calls that may be started in the background (``&``): they may sleep in the kernel
BACKGROUND = frozenset({"open", "truncate", "ftruncate", "dio_read", "fallocate"})


@dataclass(frozen=True)
class Fd:
    """A descriptor variable: of an open file (``path``) or of a uverbs context."""

    var: str
    path: str = ""

    @property
    def is_ctx(self) -> bool:
        """Is it a uverbs context (``ibv_open_device``, or one received)?"""
        return not self.path


@dataclass(frozen=True)
class Map:
    """A mapping variable: ``length`` bytes of ``fd`` (``None``: anonymous)."""

    var: str
    length: int
    fd: Fd | None


@dataclass(frozen=True)
class Mr:
    """A memory region the actor registered itself: on ``ctx``, over ``map``."""

    var: str
    ctx: Fd
    map: Map


@dataclass(frozen=True)
class Key:
    """Keys of a memory region (``var.rkey``): an own region, or one received; with the
    region's length (a remote access is drawn inside it, as a peer that was told the
    region's size makes it)."""

    var: str
    length: int = 4096


@dataclass(frozen=True)
class Msg:
    """A message in an actor's mailbox: a value (a region's keys) or a descriptor."""

    key: Key | None = None
    fd: Fd | None = None


@dataclass
class Qp:
    """A queue pair variable and how many work requests it has outstanding."""

    var: str
    ctx: Fd
    posted: int = 0


@dataclass
class Actor:
    """What one actor has at a point of the program (its typed resources)."""

    name: str
    alive: bool = True
    #: a background call (``&``) not yet joined: the actor can only be joined
    pending: bool = False
    fds: list[Fd] = field(default_factory=list)
    maps: list[Map] = field(default_factory=list)
    mrs: list[Mr] = field(default_factory=list)
    keys: list[Key] = field(default_factory=list)
    qps: list[Qp] = field(default_factory=list)
    inbox: deque[Msg] = field(default_factory=deque)

    def files(self) -> list[Fd]:
        """Descriptors of open files."""
        return [f for f in self.fds if not f.is_ctx]

    def ctxs(self) -> list[Fd]:
        """Descriptors of uverbs contexts."""
        return [f for f in self.fds if f.is_ctx]

    def copy(self, name: str) -> Actor:
        """A fork child's view: the same descriptors, mappings, regions and variables;
        an empty mailbox; no queue pair of its own."""
        return Actor(name, fds=list(self.fds), maps=list(self.maps), mrs=list(self.mrs),
                     keys=list(self.keys))


@dataclass(frozen=True)
class Program:
    """A generated scenario: its lines (without the settings) and its text, and the
    genes and swarm mask it was decoded from (not part of its identity)."""

    lines: tuple[str, ...]
    genes: tuple[tuple[int, ...], ...] = field(default=(), compare=False)
    mask: int = field(default=0, compare=False)

    @property
    def text(self) -> str:
        """The scenario file: the settings, then the lines."""
        return "\n".join([*HEADER, *self.lines]) + "\n"

    def __len__(self) -> int:
        return len(self.lines)


Gene = tuple[int, ...]
T = TypeVar("T")


def sub_gene(g: Gene, need: str) -> Gene:
    """The gene the producer of ``need`` draws its arguments from, when a call's input
    is made for it (:meth:`_Decoder.ensure`): a function of the call's gene, but not the
    call's gene itself.  With one gene for both, the same integer picked the call's
    argument and its producer's, in lockstep: ``mmap``'s flags and ``ibv_reg_mr``'s
    access are both ``g[4] % 3``, so a mapping made for a region was ``MAP_DIRECT``
    exactly when the region was ``IBV_ACCESS_ON_DEMAND``.  Measured over 20,000 drawn
    programs: of the regions registered on a ``MAP_DIRECT`` mapping, 78 in 100 were
    on-demand and 11 pinned for remote writes (now a third each)."""
    h = hashlib.blake2b(repr((g, need)).encode(), digest_size=2 * GENE_LEN).digest()
    return tuple(int.from_bytes(h[2 * i:2 * i + 2], "big") % (GENE_MAX + 1)
                 for i in range(GENE_LEN))


def _newest(seq: Sequence[T], g: int) -> T:
    """The item ``g`` picks, counting from the newest: small genes (what Hypothesis
    draws most and shrinks towards) pick what the program made last."""
    return seq[-1 - g % len(seq)]


class _Decoder:
    """Turns genes into lines, keeping every actor's resources."""

    def __init__(self, mask: int = 0) -> None:
        #: the kinds of call this program leaves out (swarm testing)
        self.off = frozenset(k for i, k in enumerate(SWARM) if mask >> i & 1)
        self.actors: dict[str, Actor] = {n: Actor(n) for n in TOP}
        #: actors that have had a line (only they may be named in an argument)
        self.seen: list[str] = []
        self.lines: list[str] = []
        self.counter = 0
        #: the size each file has as far as the lines so far say (a mapping beyond
        #: the end of its file faults, as Linux's do: ``mmap`` sizes the file first)
        self.sizes: dict[str, int] = {}
        #: drawing what a call needs: no background call (the call comes next)
        self.producing = False
        #: a peer is making what another actor borrows
        self.borrowing = False
        #: the paths the program has opened (what ``truncate`` and ``unlink`` name)
        self.opened: set[str] = set()

    def fresh(self, stem: str) -> str:
        self.counter += 1
        return f"{stem}{self.counter}"

    def emit(self, actor: Actor, text: str) -> None:
        if actor.name not in self.seen:
            self.seen.append(actor.name)
        self.lines.append(f"{actor.name}: {text}")

    def alive(self) -> list[Actor]:
        return [a for a in self.actors.values() if a.alive]

    def peers(self, actor: Actor) -> list[Actor]:
        """Actors ``actor`` may send to: alive, named before, not itself."""
        return [self.actors[n] for n in self.seen
                if n != actor.name and self.actors[n].alive]

    # --- the calls, in a fixed order; each says whether it applies -------------------

    def options(self, a: Actor) -> list[tuple[Callable[[Actor, Gene], None], int]]:
        """The calls ``a`` can make now, each with its weight, in a fixed order.  A call
        whose input the actor does not have yet is still a choice: its producer is
        drawn first (:meth:`ensure`), as syzkaller's generator creates the resource a
        call needs.  Only what an actor cannot make itself (a message to receive, a
        peer to send to, a started call to join) limits the choice."""
        if a.pending:
            return [(self.join, 1)]
        out: list[tuple[Callable[[Actor, Gene], None], int]] = []
        if a.inbox:
            out.append((self.recv, 4))
        out += [(self.rdma_write, 2), (self.rdma_read, 1), (self.reg_mr, 2)]
        if self.peers(a):
            out += [(self.send, 2), (self.sendfd, 2)]
        out += [(self.post_send, 1), (self.poll_cq, 1), (self.dio_read, 2), (self.mmap, 2),
                (self.ftruncate, 2), (self.pwrite, 2), (self.fcntl, 2), (self.fallocate, 1),
                (self.pread, 1), (self.dup, 1), (self.clone, 1), (self.store, 1),
                (self.munmap, 1), (self.dereg_mr, 1), (self.create_qp, 1), (self.close, 1),
                (self.open, 2), (self.truncate, 2), (self.open_device, 1),
                (self.unlink, 1), (self.signal, 1),
                # what happens to the process itself (fork, exec, exit, SIGKILL) is
                # what a pin or a passed context outlives: three times a plain call
                (self.process, 3)]
        kept = [(fn, w) for fn, w in out if fn.__name__ not in self.off] or out
        # a call that uses what the actor already has is three times as likely as one
        # that must make its inputs first (syzkaller's static priorities: calls that
        # consume the resources a program made)
        return [(fn, w * USE_WEIGHT if fn.__name__ in self.NEEDS and all(
            self.has(a, n) for n in self.NEEDS[fn.__name__]) else w) for fn, w in kept]

    #: what each call needs before it can be drawn, and so what is made for it first
    NEEDS: ClassVar[dict[str, tuple[str, ...]]] = {
        "rdma_write": ("key",), "rdma_read": ("key",), "reg_mr": ("map", "ctx"),
        "send": ("key",), "sendfd": ("fd",), "post_send": ("qp", "key", "mr"),
        "poll_cq": ("posted",), "dio_read": ("file", "map"), "mmap": ("file",),
        "ftruncate": ("file",), "pwrite": ("file",), "fcntl": ("file",),
        "fallocate": ("file",), "pread": ("file",), "dup": ("file",),
        "clone": ("file", "file2"), "store": ("map",), "munmap": ("map",),
        "dereg_mr": ("mr",), "create_qp": ("ctx",), "close": ("fd",),
    }

    def has(self, a: Actor, need: str) -> bool:
        return {"key": bool(a.keys), "map": bool(a.maps), "ctx": bool(a.ctxs()),
                "fd": bool(a.fds), "file": bool(a.files()), "file2": len(a.files()) > 1,
                "mr": bool(a.mrs), "qp": bool(a.qps),
                "posted": any(q.posted for q in a.qps)}[need]

    def consumes(self, a: Actor, fn: Callable[[Actor, Gene], None]) -> bool:
        """Does ``fn`` use something ``a`` (or the program) already made: its inputs
        (:data:`NEEDS`), a message in its mailbox (``recv``), a started call
        (``join``), the path of a file the program opened (``truncate``, ``unlink``),
        the process itself when it holds anything (``process``: its fork, exec, exit or
        SIGKILL is what the descriptors, mappings and regions it holds outlive, or do
        not)?"""
        name = fn.__name__
        if name in ("recv", "join"):
            return True  # offered only when there is a message, a started call
        if name == "process":
            return bool(a.fds or a.maps or a.mrs or a.keys or a.qps)
        if name in ("truncate", "unlink"):
            return bool(self.opened)
        return name in self.NEEDS and all(self.has(a, n) for n in self.NEEDS[name])

    def ensure(self, a: Actor, need: str, g: Gene) -> None:
        """Make what ``need`` names if ``a`` has none, with its own producer (which may
        need something first in turn)."""
        if self.has(a, need):
            return
        if need in self.BORROW and self.borrow(a, need, g):
            return
        make: dict[str, Callable[[Actor, Gene], None]] = {
            "key": self.reg_mr, "mr": self.reg_mr, "map": self.mmap, "ctx": self.open_device,
            "fd": self.open, "file": self.open, "file2": self.open, "qp": self.create_qp,
            "posted": self.post_send}
        was, self.producing = self.producing, True
        try:
            self.call(a, make[need], sub_gene(g, need))
        finally:
            self.producing = was

    #: what an actor may get from a peer instead of making it
    BORROW: ClassVar[frozenset[str]] = frozenset({"key", "ctx", "file", "fd"})

    def borrow(self, a: Actor, need: str, g: Gene) -> bool:
        """About one time in two (``g[1]``'s high bits), have a peer make what ``need``
        names (if it has none) and pass it to ``a``, which receives it: ``send`` and
        ``recv`` of a region's keys, ``sendfd`` and ``recvfd`` of a descriptor.  Not
        when ``a`` has messages waiting (it would receive those first) or no line yet
        (a peer cannot name it)."""
        if (g[1] >> 6) % 2 or a.inbox or a.name not in self.seen or self.borrowing:
            return False
        peers = [p for p in self.peers(a) if not p.pending]
        if not peers:
            return False
        p = _newest(peers, g[1] >> 7)
        self.borrowing = True  # the peer makes it itself: no borrowing in turn
        try:
            self.ensure(p, need, g)
        finally:
            self.borrowing = False
        if need == "key":
            self.send_to(p, _newest(p.keys, g[2]), a)
        else:
            fds = p.ctxs() if need == "ctx" else p.files() if need == "file" else p.fds
            self.sendfd_to(p, _newest(fds, g[2]), a)
        self.recv(a, g)
        return True

    def call(self, a: Actor, fn: Callable[[Actor, Gene], None], g: Gene) -> None:
        """``fn`` once what it needs exists."""
        for need in self.NEEDS.get(fn.__name__, ()):
            self.ensure(a, need, g)
        fn(a, g)

    def process(self, a: Actor, g: Gene) -> None:
        """What happens to the process itself: fork (while a child name is free), exec,
        exit, or a SIGKILL from the launcher."""
        calls = [self.exec, self.exit, self.kill]
        if any(c not in self.actors for c in CHILDREN):
            calls.insert(0, self.fork)
        _newest(calls, g[2])(a, g)

    @staticmethod
    def pick(seq: tuple[str, ...] | list[str], g: int) -> str:
        return seq[g % len(seq)]

    def bg(self, a: Actor, call: str, g: int) -> str:
        if call in BACKGROUND and g % 5 == 0 and not self.producing:
            a.pending = True
            return " &"
        return ""

    def join(self, a: Actor, g: Gene) -> None:
        a.pending = False
        self.emit(a, "join")

    def open(self, a: Actor, g: Gene) -> None:
        fd = Fd(self.fresh("fd"), self.pick(PATHS, g[2]))
        flags = self.pick(OPEN_FLAGS, g[3])
        self.emit(a, f'{fd.var} = open("{fd.path}", {flags}, 0o644)' + self.bg(a, "open", g[4]))
        a.fds.append(fd)
        self.opened.add(fd.path)

    def close(self, a: Actor, g: Gene) -> None:
        fd = _newest(a.fds, g[2])
        self.emit(a, f"close({fd.var})")
        a.fds.remove(fd)

    def dup(self, a: Actor, g: Gene) -> None:
        old = self.pick_file(a, g[2])
        fd = Fd(self.fresh("fd"), old.path)
        self.emit(a, f"{fd.var} = dup({old.var})")
        a.fds.append(fd)

    def pick_file(self, a: Actor, g: int) -> Fd:
        return _newest(a.files(), g)

    def truncate(self, a: Actor, g: Gene) -> None:
        path, size = self.path(a, g[2]), SIZES[g[3] % len(SIZES)]
        self.emit(a, f'truncate("{path}", {size})' + self.bg(a, "truncate", g[4]))
        self.sizes[path] = size

    def ftruncate(self, a: Actor, g: Gene) -> None:
        fd = self.pick_file(a, g[2])
        size = SIZES[g[3] % len(SIZES)]
        self.emit(a, f"ftruncate({fd.var}, {size})" + self.bg(a, "ftruncate", g[4]))
        self.sizes[fd.path] = size

    def unlink(self, a: Actor, g: Gene) -> None:
        self.emit(a, f'unlink("{self.path(a, g[2])}")')

    def path(self, a: Actor, g: int) -> str:
        """A file name: half the time that of a file the actor has open (newest first),
        else one the program has opened (a path a program has used is the one it names
        again, as syzkaller's file names come from those its program made), else any."""
        files = a.files()
        if files and g % 2 == 0:
            return _newest(files, g // 2).path
        return self.pick(sorted(self.opened) or PATHS, g // 2)

    def pwrite(self, a: Actor, g: Gene) -> None:
        fd = self.pick_file(a, g[2])
        n = (4, 4096, 8192)[g[3] % 3]
        self.emit(a, f'pwrite({fd.var}, "{a.name[0]}" * {n}, {OFFSETS[g[4] % 2]})')

    def pread(self, a: Actor, g: Gene) -> None:
        fd = self.pick_file(a, g[2])
        self.emit(a, f"pread({fd.var}, {(4, 4096)[g[3] % 2]}, {OFFSETS[g[4] % 2]})")

    def fallocate(self, a: Actor, g: Gene) -> None:
        fd = self.pick_file(a, g[2])
        self.emit(a, f"fallocate({fd.var}, {self.pick(FALLOC, g[3])}, {OFFSETS[g[4] % 2]}, "
                  f"{SIZES[g[5] % 3]})" + self.bg(a, "fallocate", g[5] // 3))

    def fcntl(self, a: Actor, g: Gene) -> None:
        fd = self.pick_file(a, g[2])
        if g[3] % 4 == 3:
            self.emit(a, f"fcntl({fd.var}, F_SETSIG, SIGIO)")
        else:
            self.emit(a, f"fcntl({fd.var}, F_SETLEASE, {self.pick(LEASES, g[4])})")

    def signal(self, a: Actor, g: Gene) -> None:
        self.emit(a, f"signal(SIGIO, {self.pick(SIGIO_ACTIONS, g[2])})")

    def clone(self, a: Actor, g: Gene) -> None:
        files = a.files()
        src, dst = _newest(files, g[2]), _newest(files, g[3])
        self.emit(a, f"clone({src.var}, {dst.var})")

    def mmap(self, a: Actor, g: Gene) -> None:
        if g[5] % 4 == 3:
            self.mmap_anon(a, g)
            return
        fd = self.pick_file(a, g[2])
        m = Map(self.fresh("p"), SIZES[g[3] % 3], fd)
        if self.sizes.get(fd.path, 0) < m.length and g[5] % 4 != 2:
            self.emit(a, f"ftruncate({fd.var}, {m.length})")
            self.sizes[fd.path] = m.length
        self.emit(a, f"{m.var} = mmap({m.length}, PROT_READ|PROT_WRITE, "
                  f"{self.pick(MAP_FLAGS, g[4])}, {fd.var}, 0)")
        a.maps.append(m)

    def mmap_anon(self, a: Actor, g: Gene) -> None:
        m = Map(self.fresh("p"), SIZES[g[3] % 3], None)
        self.emit(a, f"{m.var} = mmap({m.length}, PROT_READ|PROT_WRITE, "
                  "MAP_PRIVATE|MAP_ANONYMOUS, -1, 0)")
        a.maps.append(m)

    def munmap(self, a: Actor, g: Gene) -> None:
        m = _newest(a.maps, g[2])
        self.emit(a, f"munmap({m.var}, {m.length})")
        a.maps.remove(m)

    def store(self, a: Actor, g: Gene) -> None:
        m = _newest(a.maps, g[2])
        if g[3] % 2:
            self.emit(a, f"load({m.var}, 4)")
        else:
            self.emit(a, f'store({m.var}, "{a.name[0].lower()}")')

    def dio_read(self, a: Actor, g: Gene) -> None:
        fd = self.pick_file(a, g[2])
        m = _newest(a.maps, g[3])
        self.emit(a, f"dio_read({fd.var}, {m.var}, {m.length}, 0)"
                  + self.bg(a, "dio_read", g[4]))

    def open_device(self, a: Actor, g: Gene) -> None:
        ctx = Fd(self.fresh("ctx"))
        self.emit(a, f"{ctx.var} = ibv_open_device()")
        a.fds.append(ctx)

    def reg_mr(self, a: Actor, g: Gene) -> None:
        ctxs = a.ctxs()
        ctx, m = _newest(ctxs, g[2]), _newest(a.maps, g[3])
        mr = Mr(self.fresh("mr"), ctx, m)
        self.emit(a, f"{mr.var} = ibv_reg_mr({ctx.var}, {m.var}, {m.length}, "
                  f"{self.pick(ACCESS, g[4])})")
        a.mrs.append(mr)
        a.keys.append(Key(mr.var, m.length))

    def dereg_mr(self, a: Actor, g: Gene) -> None:
        mr = _newest(a.mrs, g[2])
        self.emit(a, f"ibv_dereg_mr({mr.ctx.var}, {mr.var})")
        a.mrs.remove(mr)

    def rdma_write(self, a: Actor, g: Gene) -> None:
        k = _newest(a.keys, g[2])
        self.emit(a, f'rdma_write({k.var}.rkey, {self.offset(k, g[3])}, "XXXX")')

    def rdma_read(self, a: Actor, g: Gene) -> None:
        k = _newest(a.keys, g[2])
        self.emit(a, f"rdma_read({k.var}.rkey, {self.offset(k, g[3])}, 4)")

    @staticmethod
    def offset(k: Key, g: int) -> int:
        """An offset inside the region ``k`` names."""
        inside = [o for o in OFFSETS if o < k.length] or [0]
        return inside[g % len(inside)]

    def send(self, a: Actor, g: Gene) -> None:
        keys = a.keys or [Key(m.var, m.map.length) for m in a.mrs]
        self.send_to(a, _newest(keys, g[2]), _newest(self.peers(a), g[3]))

    def send_to(self, a: Actor, k: Key, to: Actor) -> None:
        self.emit(a, f"send({to.name}, {k.var})")
        to.inbox.append(Msg(key=k))

    def sendfd(self, a: Actor, g: Gene) -> None:
        self.sendfd_to(a, _newest(a.fds, g[2]), _newest(self.peers(a), g[3]))

    def sendfd_to(self, a: Actor, fd: Fd, to: Actor) -> None:
        self.emit(a, f"sendfd({to.name}, {fd.var})")
        to.inbox.append(Msg(fd=fd))

    def recv(self, a: Actor, g: Gene) -> None:
        msg = a.inbox.popleft()
        if msg.key is not None:
            k = Key(self.fresh("m"), msg.key.length)
            self.emit(a, f"{k.var} = recv()")
            a.keys.append(k)
        else:
            assert msg.fd is not None
            fd = Fd(self.fresh("ctx" if msg.fd.is_ctx else "fd"), msg.fd.path)
            self.emit(a, f"{fd.var} = recvfd()")
            a.fds.append(fd)

    def create_qp(self, a: Actor, g: Gene) -> None:
        ctxs = a.ctxs()
        qp = Qp(self.fresh("qp"), _newest(ctxs, g[2]))
        self.emit(a, f"{qp.var} = ibv_create_qp({qp.ctx.var})")
        a.qps.append(qp)

    def post_send(self, a: Actor, g: Gene) -> None:
        qp = _newest(a.qps, g[2])
        k = _newest(a.keys, g[3])
        mr = _newest(a.mrs, g[4])
        op = ("IBV_WR_RDMA_WRITE", "IBV_WR_RDMA_READ")[g[5] % 2]
        self.emit(a, f"ibv_post_send({qp.var}, {op}, {k.var}.rkey, 0, "
                  f'{{"lkey": {mr.var}.lkey, "addr": {mr.map.var}, "length": 4}})')
        qp.posted += 1

    def poll_cq(self, a: Actor, g: Gene) -> None:
        qp = next(q for q in a.qps if q.posted)
        self.emit(a, f"ibv_poll_cq({qp.var})")
        qp.posted -= 1

    def fork(self, a: Actor, g: Gene) -> None:
        name = next(c for c in CHILDREN if c not in self.actors)
        self.emit(a, f"fork() as {name}")
        self.actors[name] = a.copy(name)
        self.seen.append(name)

    def exec(self, a: Actor, g: Gene) -> None:
        """A real execve: descriptors stay (none is close-on-exec), mappings and queue
        pairs go, as Linux's ``exec_mmap()`` drops the old mm."""
        self.emit(a, "exec()")
        a.maps, a.mrs, a.qps = [], [], []

    def exit(self, a: Actor, g: Gene) -> None:
        self.emit(a, "exit(0)")
        a.alive = False

    def kill(self, a: Actor, g: Gene) -> None:
        if a.name not in self.seen:  # an actor no line names does not exist
            self.emit(a, "getpid()")
        self.lines.append(f"!kill {a.name}")
        a.alive = False

    # --- the whole program ----------------------------------------------------------

    def step(self, g: Gene) -> None:
        actors = self.alive()
        if not actors:
            return
        # three lines in four go to the actor of the line before (a program's calls build
        # on each other's resources), the others to any actor alive: chosen by the gene's
        # bits above the two that decided (``g[0] // 2`` would be even whenever
        # ``g[0] % 4 == 0``, and with two or four actors alive the odd ones were never
        # chosen: after A's death, R only ever went on from a line of its own)
        last = self.actors.get(self.lines[-1].split(":")[0]) if self.lines else None
        if last is not None and last.alive and g[0] % 4 != 0:
            a = last
        else:
            a = actors[(g[0] // 4) % len(actors)]
        opts = self.options(a)
        r = g[1] % sum(w for _, w in opts)
        for fn, w in opts:
            if r < w:
                self.call(a, fn, g)
                return
            r -= w

    def finish(self) -> list[str]:
        """Join what is still in the background (an actor still alive)."""
        for a in self.actors.values():
            if a.alive and a.pending:
                self.join(a, ())
        return self.lines


def decode(genes: list[Gene], mask: int = 0) -> Program:
    """The program ``genes`` stand for, with the kinds of call ``mask`` leaves out (a
    pure function: the same genes and mask, the same program)."""
    d = _Decoder(mask)
    for g in genes:
        d.step(g)
    return Program(tuple(d.finish()), tuple(genes), mask)


def _choose(rng: random.Random, count: int, index: int, top: int = GENE_MAX) -> int:
    """A random ``x`` in [0, top] with ``x % count == index`` (``index < count``)."""
    return index + count * rng.randrange((top - index) // count + 1)


#: the kind of thing each need is (a descriptor is one, whatever the call wants of it)
_KIND = {"fd": "fd", "file": "fd", "file2": "fd", "key": "region", "mr": "region",
         "map": "map", "ctx": "ctx", "qp": "qp", "posted": "qp"}


def _kinds(call: str) -> set[str]:
    """What ``call`` uses, by kind (:func:`directed`)."""
    special = {"recv": "message", "join": "started call", "truncate": "path",
               "unlink": "path", "process": "process"}
    if call in special:
        return {special[call]}
    return {_KIND[n] for n in _Decoder.NEEDS[call]}


def directed(rng: random.Random, genes: Sequence[Gene], mask: int, at: int) -> Gene | None:
    """A gene that, inserted at ``at``, has an actor alive there use one of the resources
    the program made for it (syzkaller's insertion of a call over the resources of the
    program's prefix, its choice table's bias to calls that consume them): the prefix
    is decoded, an actor alive is chosen uniformly, then uniformly a kind of thing it
    holds (a descriptor, a mapping, a context, a region, a queue pair, a message, a
    started call, a path the program opened, its process), then uniformly one of the
    calls :meth:`_Decoder.consumes` allows it that use that kind, whatever its weight;
    its arguments are drawn at random.  Nothing here knows which call is dangerous.
    ``None`` when no actor is alive there or none can use anything."""
    d = _Decoder(mask)
    for g in genes[:at]:
        d.step(g)
    alive = d.alive()
    if not alive:
        return None
    i = rng.randrange(len(alive))
    opts = d.options(alive[i])
    uses = [k for k, (fn, _) in enumerate(opts) if d.consumes(alive[i], fn)]
    if not uses:
        return None
    # what to use first, uniformly (a descriptor, a mapping, a context, a region, ...),
    # then a call that uses it: an actor holding much is as likely to end its process
    # as to use its descriptor, though the descriptor has eight calls and the process one
    by_kind: dict[str, list[int]] = {}
    for k in uses:
        for kind in _kinds(opts[k][0].__name__):
            by_kind.setdefault(kind, []).append(k)
    k = rng.choice(by_kind[rng.choice(sorted(by_kind))])
    total = sum(w for _, w in opts)
    low = sum(w for _, w in opts[:k])
    # g[0] % 4 == 0 and g[0] // 4 picks actor i (_Decoder.step); g[1] falls in call k's
    # share of the weights (_Decoder.step); the arguments are free
    g0 = 4 * _choose(rng, len(alive), i, GENE_MAX // 4)
    g1 = _choose(rng, total, low + rng.randrange(opts[k][1]))
    return (g0, g1, *(rng.randint(0, GENE_MAX) for _ in range(GENE_LEN - 2)))


def mutate(rng: random.Random, parents: Sequence[tuple[int, Sequence[Gene]]],
           max_steps: int = MAX_STEPS, weights: Sequence[float] | None = None,
           chosen: list[int] | None = None) -> tuple[int, list[Gene]]:
    """A new program's (mask, genes) made from the corpus ``parents`` (each a mask and
    its genes), as syzkaller mutates its corpus: insert fresh genes (a call or more),
    more often towards the end, where the program's resources are; insert a call that
    uses what the program made there (:func:`directed`); splice the head of one parent
    onto the tail of another; redraw one integer of a gene; or delete a gene.  The
    parent is drawn by ``weights`` (the campaign gives more to programs that covered
    what few others did, as AFL's and Entropic's schedules do).  At most ``max_steps``
    genes: a program that an insertion makes longer loses genes elsewhere, not the
    inserted ones.  The decoder keeps the result well typed.  The parent's index is
    appended to ``chosen``, if given (the campaign counts each parent's mutants)."""
    # drawn by index: the same draw as of the parents themselves, the index known
    index = rng.choices(range(len(parents)), weights=weights)[0]
    if chosen is not None:
        chosen.append(index)
    mask, genes = parents[index]
    out = list(genes)

    def fresh() -> Gene:
        return tuple(rng.randint(0, GENE_MAX) for _ in range(GENE_LEN))

    def insert(at: int, new: list[Gene]) -> int:
        """Insert ``new`` at ``at``; where they end up."""
        out[at:at] = new
        while len(out) > max_steps:
            j = rng.choice([x for x in range(len(out)) if not at <= x < at + len(new)])
            del out[j]
            at -= j < at
        return at + len(new)

    for _ in range(1 + (rng.random() < 0.3)):
        op = rng.random()
        at = len(out) - int(rng.random() ** 2 * (len(out) + 1))
        if op < 0.15 or not out:
            insert(at, [fresh() for _ in range(rng.randint(1, min(3, max_steps)))])
        elif op < 0.6:  # one or two calls over what the program made by then
            for _ in range(rng.randint(1, min(2, max_steps))):
                made = directed(rng, out, mask, at)
                if made is None:
                    break
                at = insert(at, [made])
        elif op < 0.7:  # the same call again, later: after what came between
            i = rng.randrange(len(out))
            out.insert(rng.randint(i + 1, len(out)), out[i])
        elif op < 0.8 and len(parents) > 1:
            _, other = rng.choice(parents)
            out = out[:rng.randint(0, len(out))] + list(other)[rng.randint(0, len(other)):]
        elif op < 0.92:
            i, j = rng.randrange(len(out)), rng.randrange(GENE_LEN)
            g = list(out[i])
            g[j] = rng.randint(0, GENE_MAX)
            out[i] = tuple(g)
        else:
            del out[rng.randrange(len(out))]
    if rng.random() < 0.1:
        mask ^= 1 << rng.randrange(len(SWARM))
    return mask, (out or [fresh()])[:max_steps]


GENE = st.tuples(*[st.integers(0, GENE_MAX)] * GENE_LEN)


def _n_genes(n: int) -> st.SearchStrategy[list[Gene]]:
    """Exactly ``n`` genes.  A named function, not a lambda: Hypothesis describes a
    lambda by parsing its source with ``ast``, which is not safe on two threads at once
    in CPython 3.11 ("SystemError: AST constructor recursion depth mismatch", seen with
    two chunks on one Dask worker)."""
    return st.lists(GENE, min_size=n, max_size=n)


def genes(max_steps: int = MAX_STEPS) -> st.SearchStrategy[list[Gene]]:
    """Hypothesis's strategy for the genes of one program: the length first, uniformly
    (Hypothesis's lists average 6 items; the programs that matter are longer), then
    that many genes."""
    return st.integers(1, max_steps).flatmap(_n_genes)


def _decode_masked(drawn: tuple[int, list[Gene]]) -> Program:
    return decode(drawn[1], drawn[0])


def programs(max_steps: int = MAX_STEPS) -> st.SearchStrategy[Program]:
    """Hypothesis's strategy for one program of at most ``max_steps`` drawn lines: a
    swarm mask, then the genes."""
    return st.tuples(st.integers(0, MASK_MAX), genes(max_steps)).map(_decode_masked)
