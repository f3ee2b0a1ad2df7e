"""What the pictures need to know about a run, read from its merged event log.

:func:`build` walks the records once: the run's settings, its processes (actor name and
PID, how they started and ended), the names of the files, the scenario lines, and the
pairing of calls with their returns.  The renderers read this and the records
themselves; nothing here comes from anywhere but the log.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from kemu.agents.scenario import strace
from kemu.agents.scenario.transcript import format_line

#: calls the agent library makes to the kernel daemon for itself, not for the scenario:
#: registration (``bind``), the signal bookkeeping (``rt_sigaction`` tells the daemon a
#: disposition the agent set for real, ``sigdelivered`` that a handler ran), page faults
#: (``mm_fault``: a fault is no system call; its ``fault`` event is drawn), and the two
#: halves of fork and exec (the ``fork`` arrow and the line stand for them)
INTERNAL_CALLS = frozenset({"bind", "rt_sigaction", "sigdelivered", "mm_fault", "fork_prepare",
                            "fork_done", "exec_prepare"})


def internal_call(name: Any, line_source: str = "") -> bool:
    """True for a call the agent made for itself while running the scenario line whose
    source is ``line_source``: one of :data:`INTERNAL_CALLS`, or a ``getpid`` that is
    not the line's own call (a background call's synchronisation, ``file_pins()``'s
    default PID)."""
    if name in INTERNAL_CALLS:
        return True
    return name == "getpid" and not line_source.startswith("getpid(")


@dataclass
class Proc:
    """One process of the run: a lane of the sequence diagram."""

    pid: int
    name: str
    #: "spawn" or "fork"
    how: str = "spawn"
    parent: int | None = None
    #: merged seq of its first event, of its exit
    start: int = 0
    end: int | None = None
    #: how it died when it died during the run ("SIGKILL", "SIGIO", "exited with 0")
    death: str | None = None

    @property
    def label(self) -> str:
        """``A 1234``: the lane's name."""
        return f"{self.name} {self.pid}"

    @property
    def killed(self) -> bool:
        """True when a signal killed it during the run."""
        return bool(self.death and self.death.startswith("SIG"))


@dataclass
class Line:
    """One scenario line as the launcher ran it."""

    lineno: int
    actor: str
    source: str
    #: merged seq of the launcher's record that started it
    seq: int
    kind: str = "call"
    ok: bool | None = None
    expected: str | None = None
    #: the transcript lines it printed
    text: list[str] = field(default_factory=list)


@dataclass
class Run:
    """A run as its event log tells it."""

    records: list[dict[str, Any]]
    scenario: str = "?"
    title: str = ""
    target: str = "emulator"
    policy: str = "?"
    show_pids: bool = True
    nblocks: int = 0
    block_size: int = 4096
    kernel_pid: int | None = None
    launcher_pid: int | None = None
    #: processes by PID, in lane order
    procs: dict[int, Proc] = field(default_factory=dict)
    #: inode number -> path (its last name; "(deleted)" once unlinked)
    files: dict[int, str] = field(default_factory=dict)
    lines: list[Line] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    #: (pid, request id) -> the call record, and -> its return record
    calls: dict[tuple[int, int], dict[str, Any]] = field(default_factory=dict)
    rets: dict[tuple[int, int], dict[str, Any]] = field(default_factory=dict)
    #: launcher faults injected, in order
    faults: list[dict[str, Any]] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        """True when the run met every expectation."""
        return not self.failures

    @property
    def emulator(self) -> bool:
        """True when the kernel was the emulator (there are kernel records)."""
        return self.kernel_pid is not None

    def file_name(self, ino: Any) -> str:
        """A file's name for a picture (``ino 7`` when the log never named it)."""
        if ino is None:
            return "?"
        if ino == 0:
            return "anonymous memory"
        return self.files.get(int(ino), f"ino {ino}")

    def proc_name(self, pid: Any) -> str:
        """``A 1234`` for an actor's PID, ``kernel``, or the number."""
        if isinstance(pid, int) and pid in self.procs:
            return self.procs[pid].label
        if pid == self.kernel_pid:
            return "kernel"
        return f"pid {pid}"


def build(records: list[dict[str, Any]]) -> Run:
    """Read a merged event log."""
    run = Run(records)
    names: dict[int, tuple[str, str, int | None]] = {}
    current: Line | None = None
    for rec in records:
        ev, src, seq = rec.get("ev"), rec.get("src"), int(rec.get("seq", 0))
        if src == "launcher":
            if ev == "launch":
                run.lines.append(Line(0, "", "(start: the actors register)", seq, "start"))
                run.scenario = str(rec.get("scenario", "?"))
                run.title = str(rec.get("title") or "")
                run.target = str(rec.get("target", "emulator"))
                run.policy = str(rec.get("policy", "?"))
                run.show_pids = bool(rec.get("show_pids", True))
                run.launcher_pid = rec.get("pid")
            elif ev == "actor":
                pid = int(rec["pid"])
                if pid not in run.procs:
                    parent = next((p.pid for p in run.procs.values()
                                   if p.name == rec.get("parent")), None)
                    run.procs[pid] = Proc(pid, str(rec["name"]), str(rec.get("how", "spawn")),
                                          parent, seq)
                else:
                    run.procs[pid].name = str(rec["name"])
            elif ev in ("call", "step", "fault", "finish"):
                current = Line(int(rec.get("line", 0)), str(rec.get("actor", "")),
                               strace.octal_modes(str(rec.get("source") or _fault_source(rec))),
                               seq, str(rec.get("kind", ev)))
                run.lines.append(current)
                if ev == "fault":
                    run.faults.append(rec)
            elif ev == "verdict" and current is not None:
                current.ok = bool(rec.get("ok"))
                current.expected = rec.get("expected")
            elif ev == "death":
                pid = int(rec.get("pid", 0))
                if pid in run.procs:
                    run.procs[pid].death = str(rec.get("status"))
            elif ev == "end":
                run.failures = [str(f) for f in rec.get("failures", [])]
            elif ev == "line" and current is not None and rec.get("kind") not in (
                    "header", "verdict"):
                current.text.append(format_line(rec, run.show_pids))
            continue
        # kernel records
        if ev == "boot":
            run.kernel_pid = rec.get("pid")
            run.nblocks = int(rec.get("nblocks", 0))
            run.block_size = int(rec.get("block_size", 4096))
        elif ev == "register":
            pid = int(rec["pid"])
            names[pid] = (str(rec.get("name") or ""), str(rec.get("kind", "spawn")),
                          rec.get("ppid"))
            if rec.get("name") == "launcher" and run.launcher_pid is None:
                run.launcher_pid = pid
            if pid in run.procs:
                run.procs[pid].start = min(run.procs[pid].start, seq)
        elif ev == "call":
            run.calls[(int(rec["pid"]), int(rec["id"]))] = rec
        elif ev == "ret":
            run.rets[(int(rec["pid"]), int(rec["id"]))] = rec
        elif ev == "create" or ev == "rename":
            run.files[int(rec["ino"])] = str(rec.get("path") or rec.get("new"))
        elif ev == "unlink":
            run.files[int(rec["ino"])] = f"{rec.get('path')} (deleted)"
        elif ev == "exit":
            pid = int(rec["pid"])
            if pid in run.procs and run.procs[pid].end is None:
                run.procs[pid].end = seq
    # processes the launcher did not name (a fork child it was not told about)
    for pid, (name, kind, ppid) in names.items():
        if pid not in run.procs and pid != run.launcher_pid and name != "launcher":
            run.procs[pid] = Proc(pid, name or f"pid{pid}", kind, ppid,
                                  _first_seq(records, pid))
    for proc in run.procs.values():
        if proc.pid in names and proc.parent is None:
            proc.how = names[proc.pid][1] or proc.how
            ppid = names[proc.pid][2]
            proc.parent = ppid if isinstance(ppid, int) and ppid in run.procs else None
    return run


def _fault_source(rec: dict[str, Any]) -> str:
    if rec.get("ev") == "finish":
        return "(end of run: the actors exit)"
    if rec.get("ev") != "fault":
        return ""
    return f"!{rec.get('fault')} {rec.get('actor')}" + (
        f" {rec['signal']}" if rec.get("fault") == "signal" else "")


def _first_seq(records: list[dict[str, Any]], pid: int) -> int:
    for rec in records:
        if rec.get("src") == "kernel" and rec.get("pid") == pid:
            return int(rec["seq"])
    return 0
