"""The event log in the Chrome trace-event format (``trace.json``), for Perfetto
(https://ui.perfetto.dev, "Open trace file") and ``chrome://tracing``.

- one trace process per actor (``A 1234``, its real PID), one for the kernel, the RDMA
  card and the launcher;
- every system call of the scenario a complete event (``"ph": "X"``) on its process,
  from its entry to its reply, with its arguments and result; a call that slept has a
  nested ``blocked`` slice from the moment it parked.  The agent's own calls
  (registration, signal bookkeeping, fault service:
  :func:`kemu.agents.report.model.internal_call`) are left out, as in the diagram;
- each scenario line a slice on the launcher's track;
- signals, shoot-downs, faults, exits, lease events and injected faults instant events
  (``"ph": "i"``); a foreign write a global instant (``"s": "g"``), so it shows on
  every track;
- descriptor passes and messages flow arrows (``"ph": "s"``/``"f"``) from the sender's
  ``sendmsg`` to the receiver's ``recvmsg``; signals flow from the kernel;
- the number of blocks in use a counter (``"ph": "C"``).

Timestamps are microseconds since the launch.
"""

from __future__ import annotations

import json
from collections import deque
from typing import Any

from kemu.agents.report.model import Run, internal_call
from kemu.agents.scenario import strace

#: trace PIDs of the tracks that are not processes (above any real pid_max)
KERNEL_PID = 10_000_001
CARD_PID = 10_000_002
LAUNCHER_PID = 10_000_003

_INSTANTS = {"shootdown", "fault", "exec", "lease-added", "lease-changed", "lease-break",
             "lease-removed", "layout-break", "layout-refused", "layout-busy", "mmap",
             "munmap", "cow", "reflink", "signal-ignored", "signal-merged", "interrupted",
             "create", "unlink", "rename", "bug", "protocol-error"}
_CARD = {"reg_mr", "dereg_mr", "mr-revoked", "mr-lease-break", "rdma-write", "rdma-read",
         "dio-start", "dio-done", "ucontext-released"}


def _us(t: Any) -> float:
    return round(float(t or 0.0) * 1e6, 3)


def _args(rec: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in rec.items() if k not in ("ev", "t", "src")}


def trace(run: Run) -> dict[str, Any]:
    """The trace-event document of ``run``."""
    events: list[dict[str, Any]] = []
    names = {KERNEL_PID: "kernel" if run.emulator else "host kernel", CARD_PID: "RDMA card",
             LAUNCHER_PID: "launcher"}
    for proc in run.procs.values():
        names[proc.pid] = proc.label
    for sort, (track, name) in enumerate(names.items()):
        events.append({"ph": "M", "name": "process_name", "pid": track, "tid": track,
                       "args": {"name": name}})
        events.append({"ph": "M", "name": "process_sort_index", "pid": track, "tid": track,
                       "args": {"sort_index": sort}})
        events.append({"ph": "M", "name": "thread_name", "pid": track, "tid": track,
                       "args": {"name": name}})
    parks: dict[tuple[int, int], dict[str, Any]] = {}
    queues: dict[str, deque[tuple[int, str]]] = {}
    passes: dict[int, dict[str, Any]] = {}
    flow: int = 0
    used = 0
    line_start: dict[str, Any] | None = None
    #: each actor's scenario line being run, to tell the agent's own calls apart
    source: dict[int, str] = {}
    for rec in run.records:
        ev, t = rec.get("ev"), _us(rec.get("t"))
        pid = rec.get("pid")
        if rec.get("src") == "launcher":
            if ev in ("call", "step") and isinstance(pid, int):
                source[pid] = str(rec.get("source") or "")
            if ev in ("call", "step", "fault", "finish"):
                if line_start is not None:
                    events.append(_line_slice(line_start, t))
                line_start = rec
                if ev == "fault" and pid in run.procs:
                    events.append({"ph": "i", "s": "p", "name": f"!{rec.get('fault')}",
                                   "pid": pid, "tid": pid, "ts": t, "args": _args(rec)})
            elif ev == "death" and pid in run.procs:
                events.append({"ph": "i", "s": "p", "name": f"died: {rec.get('status')}",
                               "pid": pid, "tid": pid, "ts": t, "args": _args(rec)})
            elif ev == "end" and line_start is not None:
                events.append(_line_slice(line_start, t))
                line_start = None
            continue
        if ev == "ret" and pid in run.procs:
            key = (int(pid), int(rec.get("id", 0)))
            call = run.calls.get(key)
            if call is None:
                continue
            t0 = _us(call.get("t"))
            name = str(call.get("call"))
            if internal_call(name, source.get(int(pid), "")):
                parks.pop(key, None)  # the agent's own bookkeeping, as in the diagram
                continue
            result = {"errno": rec["errno"]} if rec.get("errno") is not None else \
                {"result": rec.get("result")}
            events.append({"ph": "X", "name": name, "cat": "syscall", "pid": pid, "tid": pid,
                           "ts": t0, "dur": max(0.001, round(t - t0, 3)),
                           "args": {"args": call.get("args"), **result,
                                    "seq": call.get("seq")}})
            if key in parks:
                p = parks.pop(key)
                events.append({"ph": "X", "name": "blocked", "cat": "sleep", "pid": pid,
                               "tid": pid, "ts": _us(p.get("t")),
                               "dur": max(0.001, round(t - _us(p.get("t")), 3)),
                               "args": {"call": name}})
            ok = rec.get("errno") is None
            args = list(call.get("args") or [])
            if name == "sendmsg" and ok and args:
                flow += 1
                kind = "SCM_RIGHTS" if passes.pop(int(pid), None) else "message"
                queues.setdefault(str(args[0]), deque()).append((flow, kind))
                events.append({"ph": "s", "id": flow, "cat": "message", "name": kind,
                               "pid": pid, "tid": pid, "ts": max(t0, t - 0.001)})
            elif name == "recvmsg" and ok and args and queues.get(str(args[0])):
                fid, kind = queues[str(args[0])].popleft()
                events.append({"ph": "f", "bp": "e", "id": fid, "cat": "message", "name": kind,
                               "pid": pid, "tid": pid, "ts": max(t0, t - 0.001)})
        elif ev == "park" and pid in run.procs:
            parks[(int(pid), int(rec.get("id", 0)))] = rec
        elif ev == "pass" and pid in run.procs:
            passes[int(pid)] = rec
        elif ev == "signal" and pid in run.procs:
            flow += 1
            name = f"signal {rec.get('si_signo')}"
            events.append({"ph": "i", "s": "t", "name": "signal", "pid": KERNEL_PID,
                           "tid": KERNEL_PID, "ts": t, "args": _args(rec)})
            events.append({"ph": "s", "id": flow, "cat": "signal", "name": name,
                           "pid": KERNEL_PID, "tid": KERNEL_PID, "ts": t})
            events.append({"ph": "i", "s": "t", "name": _signame(rec), "pid": pid, "tid": pid,
                           "ts": t, "args": _args(rec)})
            events.append({"ph": "f", "bp": "e", "id": flow, "cat": "signal", "name": name,
                           "pid": pid, "tid": pid, "ts": t})
        elif ev == "exit" and pid in run.procs:
            proc = run.procs[int(pid)]
            events.append({"ph": "i", "s": "p", "name": f"killed by {proc.death}"
                           if proc.killed else "exit", "pid": pid, "tid": pid, "ts": t,
                           "args": _args(rec)})
        elif ev == "foreign-write":
            events.append({"ph": "i", "s": "g", "name": "FOREIGN WRITE", "pid": CARD_PID,
                           "tid": CARD_PID, "ts": t, "args": _args(rec)})
        elif ev in _CARD:
            events.append({"ph": "i", "s": "t", "name": str(ev), "pid": CARD_PID,
                           "tid": CARD_PID, "ts": t, "args": _args(rec)})
        elif ev in ("block-alloc", "block-free"):
            used += 1 if ev == "block-alloc" else -1
            events.append({"ph": "C", "name": "pmem blocks in use", "pid": KERNEL_PID,
                           "tid": KERNEL_PID, "ts": t, "args": {"blocks": used}})
        elif ev in _INSTANTS:
            on = pid if pid in run.procs and ev in ("shootdown", "fault", "exec", "mmap",
                                                    "munmap", "signal-ignored",
                                                    "signal-merged", "interrupted") \
                else KERNEL_PID
            events.append({"ph": "i", "s": "t", "name": str(ev), "pid": on, "tid": on,
                           "ts": t, "args": _args(rec)})
    if line_start is not None:
        last = _us(run.records[-1].get("t")) if run.records else 0.0
        events.append(_line_slice(line_start, last))
    return {"traceEvents": events, "displayTimeUnit": "ms",
            "otherData": {"scenario": run.scenario, "policy": run.policy,
                          "target": run.target, "passed": run.passed}}


def _signame(rec: dict[str, Any]) -> str:
    signo = rec.get("si_signo")
    name = strace.signal_name(int(signo)) if isinstance(signo, int) else str(signo)
    return name + (f" si_fd={rec['si_fd']}" if rec.get("si_fd") else "")


def _line_slice(rec: dict[str, Any], end: float) -> dict[str, Any]:
    t0 = _us(rec.get("t"))
    if rec.get("ev") == "finish":
        name = "(end of run)"
    elif rec.get("ev") == "fault":
        name = f"!{rec.get('fault')} {rec.get('actor')}"
    else:
        name = f"L{rec.get('line')} {rec.get('actor')}: {rec.get('source')}"
    return {"ph": "X", "name": name, "cat": "scenario", "pid": LAUNCHER_PID,
            "tid": LAUNCHER_PID, "ts": t0, "dur": max(0.001, round(end - t0, 3)),
            "args": {"line": rec.get("line")}}


def dumps(run: Run) -> str:
    """``trace.json``'s text."""
    return json.dumps(trace(run), separators=(",", ":"), default=repr)
