"""The transcript, computed from the launcher's ``line`` records.

Every line the launcher prints is first a record of the run's event log
(``{"ev": "line", "kind": ..., ...}``); :func:`format_line` turns one record into its
transcript text.  The runner uses it to print the transcript live and, after the run,
to write ``transcript.txt`` from the merged event log, so the two cannot disagree.

Kinds and their fields:

========== ====================================== =============================================
kind       fields                                 text
========== ====================================== =============================================
header     scenario, title, target, policy        ``=== S05.scn -- title [target=... policy=...] ===``
call       actor, pid, call, result               ``[A 12] open("/f", O_RDWR) = 3``
unfinished actor, pid, call                       ``[B 13] truncate("/f", 0) <unfinished ...>``
resumed    actor, pid, call, result               ``[B 13] <... truncate resumed> = 0``
dead       actor, source                          ``[A 0] open(...) <actor dead>``
mismatch   expected                               ``    ^^^ MISMATCH: expected 0``
unjudged   design                                 ``    ??? unjudged: no expectation for mine``
trace      text                                   the text, indented by four spaces
text       text                                   the text (``!locks`` output)
signal     actor, pid, siginfo                    ``[A 12] --- SIGIO {si_signo=SIGIO, si_code=POLL_MSG, si_band=1089, si_fd=3} ---``
exited     actor, pid, status                     ``[A 12] +++ exited with 0 +++``, ``[A 12] +++ killed by SIGIO +++``
waited     actor, pid, status                     as ``exited`` (``!wait A``, a death noticed between lines)
unexpected actor, line                            ``    ^^^ UNEXPECTED DEATH of A (during or after line 7)``
asleep     actor, pid, call                       ``[B 13] <... open asleep>``
sent       actor, pid, signal                     ``--- SIGUSR1 sent to A (pid 12) ---``
lost       actor, pid, calls                      ``[A 12] <... truncate resumed> = ?``
fault      actor, pid, fault                      ``[A 12] +++ killed by SIGKILL +++``, ``[A 12] --- stopped by SIGSTOP ---``
aborted    reason                                 ``!!! run aborted: ...``
verdict    failures, unjudged                     ``=== PASS ===``, ``=== PASS (2 unjudged) ===``
                                                  or ``=== FAIL (2) ===``
========== ====================================== =============================================

The lines of an actor's own life are strace's (``strace -f``): a signal delivered to
it (its handler ran) ``--- SIGIO {...} ---`` before the line during which it was taken,
its exit ``exit_group(0) = ?`` and ``+++ exited with 0 +++``, a death by a signal
``+++ killed by SIGKILL +++``.

With ``show_pids`` false, labels and names leave the PIDs out (``[A]``, ``A``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from kemu.agents.scenario import strace

#: an address of a mapping as the transcript shows it (hex, above 4 GiB: the host's are
#: randomised by ASLR, the emulator's fixed)
ADDRESS = re.compile(r"\b0x[0-9a-f]{9,}\b")
#: a mmap line: its length and the address it returned
_MMAP = re.compile(r"\bmmap\((\d+), .*\) = (0x[0-9a-f]+)$")


def label(actor: str, pid: int, show_pids: bool) -> str:
    """``[A 1234]`` (or ``[A]``): the transcript's name for a process."""
    return f"[{actor} {pid}]" if show_pids else f"[{actor}]"


def who(actor: str, pid: int, show_pids: bool) -> str:
    """``A (pid 1234)`` (or ``A``): a process named in a fault line."""
    return f"{actor} (pid {pid})" if show_pids else actor


def status_text(status: str) -> str:
    """``killed by SIGIO`` for a signal's name, else the status (``exited with 0``)."""
    return "killed by " + status if status.startswith("SIG") else status


def format_line(rec: dict[str, Any], show_pids: bool = True) -> str:
    """The transcript text of one ``line`` record (see the module's table)."""
    kind = rec.get("kind")
    actor, pid = str(rec.get("actor", "?")), int(rec.get("pid", 0) or 0)
    if kind == "header":
        title = f" -- {rec['title']}" if rec.get("title") else ""
        return (f"=== {rec['scenario']}{title} "
                f"[target={rec['target']} policy={rec['policy']}] ===")
    if kind == "call":
        return f"{label(actor, pid, show_pids)} {rec['call']} = {rec['result']}"
    if kind == "unfinished":
        return f"{label(actor, pid, show_pids)} {rec['call']} <unfinished ...>"
    if kind == "resumed":
        return f"{label(actor, pid, show_pids)} <... {rec['call']} resumed> = {rec['result']}"
    if kind == "dead":
        return f"{label(actor, 0, show_pids)} {rec['source']} <actor dead>"
    if kind == "mismatch":
        return f"    ^^^ MISMATCH: expected {rec['expected']}"
    if kind == "unjudged":
        return f"    ??? unjudged: the scenario has no expectation for {rec['design']}"
    if kind == "trace":
        return "    " + str(rec["text"]).replace("\n", "\n    ")
    if kind == "text":
        return str(rec["text"])
    if kind in ("waited", "exited"):
        return f"{label(actor, pid, show_pids)} +++ {status_text(str(rec['status']))} +++"
    if kind == "unexpected":
        return (f"    ^^^ UNEXPECTED DEATH of {rec['actor']} "
                f"(during or after line {rec['line']})")
    if kind == "asleep":
        return f"{label(actor, pid, show_pids)} <... {rec['call']} asleep>"
    if kind == "signal":
        # PIDs come as actor names (``<A>``): shown bare, as the live line showed them
        siginfo: dict[str, Any] = {k: strace.Bare(v) if isinstance(v, str) else v
                                   for k, v in dict(rec.get("siginfo") or {}).items()}
        signo = siginfo.get("si_signo")
        name = strace.signal_name(signo) if isinstance(signo, int) else str(signo)
        return f"{label(actor, pid, show_pids)} --- {name} {strace.value(siginfo)} ---"
    if kind == "sent":
        return f"--- {rec['signal']} sent to {who(actor, pid, show_pids)} ---"
    if kind == "lost":
        return "\n".join(f"{label(actor, pid, show_pids)} <... {call} resumed> = ?"
                         for call in str(rec["calls"]).split(", "))
    if kind == "fault":
        fault, lane = str(rec["fault"]), label(actor, pid, show_pids)
        if fault == "kill":
            return f"{lane} +++ killed by SIGKILL +++"
        if fault == "stop":
            return f"{lane} --- stopped by SIGSTOP ---"
        if fault == "cont":
            return f"{lane} --- SIGCONT {{si_signo=SIGCONT, si_code=SI_USER}} ---"
        if fault.startswith("delay"):
            return f"{lane} --- stopped by SIGSTOP --- (!{fault}, then SIGCONT)"
        return f"{lane} +++ {fault} +++"
    if kind == "aborted":
        return f"!!! run aborted: {rec['reason']}"
    if kind == "verdict":
        n = int(rec.get("failures", 0))
        unjudged = int(rec.get("unjudged", 0) or 0)
        if n:
            return f"=== FAIL ({n}) ==="
        return f"=== PASS ({unjudged} unjudged) ===" if unjudged else "=== PASS ==="
    raise ValueError(f"unknown transcript line kind {kind!r}")


def transcript(records: Iterable[dict[str, Any]], show_pids: bool | None = None) -> list[str]:
    """The transcript of a run from its event log (launcher or merged).

    ``show_pids`` defaults to the run's own setting, from its ``launch`` record.
    """
    lines: list[str] = []
    for rec in records:
        ev = rec.get("ev")
        if ev == "launch" and show_pids is None:
            show_pids = bool(rec.get("show_pids", True))
        elif ev == "line" and rec.get("src", "launcher") == "launcher":
            lines.append(format_line(rec, True if show_pids is None else show_pids))
    return lines


def comparable(lines: Iterable[str]) -> list[str]:
    """A transcript as two runs of one scenario can be compared (``--target both``, the
    dual-target tests): without its header and verdict lines, and with what differs
    between any two runs normalised.  PIDs are already actor names (a run with
    ``show_pids`` false); each mapping's address becomes ``ADDR1``, ``ADDR2``... in the
    order the mappings appear, an address inside a mapping ``ADDR1+0x1000``, any other
    address a name of its own in order of first appearance.  A difference left is a real
    difference."""
    maps: list[tuple[int, int, str]] = []  # base, length, name; the latest first
    loose: dict[int, str] = {}
    count = 0

    def name_of(addr: int) -> str:
        nonlocal count
        for base, length, name in maps:
            if base <= addr < base + length:
                return name if addr == base else f"{name}+{addr - base:#x}"
        if addr not in loose:
            count += 1
            loose[addr] = f"ADDR{count}"
        return loose[addr]

    out: list[str] = []
    for line in lines:
        if line.startswith("==="):
            continue
        m = _MMAP.search(line)
        if m:
            count += 1
            maps.insert(0, (int(m.group(2), 16), int(m.group(1)), f"ADDR{count}"))
        out.append(ADDRESS.sub(lambda a: name_of(int(a.group(0), 16)), line))
    return out
