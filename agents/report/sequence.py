"""The sequence diagram of a run, as a self-contained SVG.

One lane per process (``A 1234``), then the kernel, the RDMA card and the pmem device
(a "launcher" lane on the left when the run injected faults).  Time runs down in event
order, not to scale: every drawn event gets a row, and a call answered at once shares
its row with the reply.  The left margin holds the scenario line each band of rows
belongs to (red when its expectation failed) and the time it started.

What is drawn, and the ``data-ev`` of its ``<g>`` (``data-seq`` lists the merged log's
``seq`` of the events it stands for):

- ``call`` / ``ret``: a call arrow to the kernel labelled strace-style with the result,
  and the dashed reply (``ret`` on its own row when other events came in between);
- ``park``: a blocked call, a bar on the caller's lane from the moment it slept to its
  reply; ``fault``: a page fault, a mark on the faulting call;
- ``signal`` (``signal-ignored``, ``signal-merged``): kernel to process, labelled with
  the signal, ``si_fd`` and ``si_code``; ``shootdown``: a TLB shoot-down;
- ``pass`` / ``message``: an ``SCM_RIGHTS`` descriptor pass or a plain message, from the
  sender's ``sendmsg`` to the receiver's ``recvmsg`` (slanted: it was in flight);
- ``fork``, ``exit`` (a red cross and "killed by ..." for a process killed during the
  run), ``injected`` (a fault the launcher injected: ``!kill``, ``!stop``, ...);
- lease events (``lease-added``, ``lease-break``, ``layout-break``, ...): notes on the
  kernel lane; ``reg_mr`` (the pins), ``dereg_mr``, ``mr-revoked``, ``rdma-write``,
  ``rdma-read``, ``dio-start``, ``dio-done``: arrows to the card and the device;
  ``block-alloc``, ``block-free``, ``cow``, ``reflink``: notes on the pmem lane;
- ``foreign-write``: a thick red arrow into the device, a red mark and a red band across
  the whole diagram;
- ``user``: a line the actor answered without the kernel (``signals()``), or, on the
  host target, the line's call as the launcher saw it (with, from the transcript's
  records, the signals the actor took and ``exit_group``, an ``exit_group`` group);
- ``internal``: an empty group for each of the agent's own calls to the daemon
  (:func:`kemu.agents.report.model.internal_call`: registration, signal bookkeeping,
  page-fault service, a background call's ``getpid``), which are not the scenario's and
  are not drawn.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from typing import Any

from kemu.agents.report import svg
from kemu.agents.report.model import Line, Run, internal_call
from kemu.agents.report.svg import RED, esc, fit, width
from kemu.agents.scenario import strace
from kemu.protocol import linux

GUTTER = 340
LANE_GAP = 150
KERNEL_GAP = 300
DEVICE_GAP = 175
TOP = 96
HEADER_Y = 56

COLOURS = {
    "call": "#333", "ret": "#888", "signal": "#7b3fb5", "quiet": "#aaa", "pass": "#2a9d3a",
    "message": "#22808a", "shootdown": "#d97706", "card": "#1f5fbf", "foreign": RED,
    "injected": RED, "fork": "#333",
}

#: kernel events folded into what is drawn around them (or only in the log)
QUIET = {"boot", "shutdown", "restart", "wake", "mmap", "munmap", "ucontext-released", "exec",
         "register", "pass", "receive", "create", "unlink", "rename"}


def _dash(dashed: bool) -> str:
    return ' stroke-dasharray="5 3"' if dashed else ""


class _Diagram:
    """Builds the SVG while reading the records once."""

    def __init__(self, run: Run) -> None:
        self.run = run
        self.bands: list[str] = []
        self.under: list[str] = []
        self.body: list[str] = []
        self.y = float(TOP)
        # lanes
        self.x: dict[Any, float] = {}
        x = 40.0 + GUTTER
        if any(f.get("fault") != "wait" for f in run.faults):
            self.x["launcher"] = x
            x += 120
        self.colour: dict[int, str] = {}
        for i, proc in enumerate(run.procs.values()):
            self.x[proc.pid] = x
            self.colour[proc.pid] = svg.colour(i)
            x += LANE_GAP
        x += KERNEL_GAP - LANE_GAP if run.procs else 0
        self.x["kernel"] = x
        if run.emulator:
            self.x["card"] = x + DEVICE_GAP
            self.x["pmem"] = x + 2 * DEVICE_GAP
        self.width = max(self.x.values()) + 230
        self.lane_start: dict[Any, float] = {}
        self.lane_end: dict[Any, float] = {}
        for proc in run.procs.values():
            if proc.how == "fork" and proc.parent in run.procs:
                self.lane_start[proc.pid] = -1.0  # from its fork row
        self.by_name = {p.name: p.pid for p in run.procs.values()}
        self.lines = {ln.seq: ln for ln in run.lines}
        # state while reading
        self.held: dict[str, Any] | None = None
        self.held_faults: list[dict[str, Any]] = []
        self.block_note: dict[str, Any] | None = None
        self.bars: dict[tuple[int, int], tuple[float, dict[str, Any]]] = {}
        self.call_y: dict[tuple[int, int], float] = {}
        self.passes: dict[int, dict[str, Any]] = {}
        self.receives: dict[int, dict[str, Any]] = {}
        self.queues: dict[str, deque[dict[str, Any]]] = {}
        self.band: Line | None = None
        self.band_y = self.y
        self.band_rows = 0
        self.band_kernel = False
        self.band_lines: list[dict[str, Any]] = []
        self.band_no = 0
        self.exit_row: tuple[float, set[int]] | None = None
        #: processes whose end is drawn
        self.ended: set[int] = set()
        #: (pid, request id) of the agent's own calls (not drawn)
        self.internal: set[tuple[int, int]] = set()
        self.counts: dict[str, int] = {}
        #: file names as they are at the point being drawn
        self.names: dict[int, str] = {}
        self.t_of = {int(r.get("seq", 0)): r.get("t") for r in run.records}

    # --- drawing primitives --------------------------------------------------------------

    def _row(self, h: float) -> float:
        y = self.y
        self.y += h
        self.band_rows += 1
        self.exit_row = None
        return y

    def _group(self, ev: str, seqs: list[int], title: str, inner: str,
               cls: str = "", extra: str = "") -> None:
        self.counts[ev] = self.counts.get(ev, 0) + 1
        seq_attr = " ".join(str(s) for s in seqs)
        self.body.append(f'<g class="sq-ev {cls}" data-ev="{esc(ev)}" data-seq="{seq_attr}"'
                         f'{extra}><title>{esc(title)}</title>{inner}</g>')

    @staticmethod
    def _arrow(x1: float, y1: float, x2: float, y2: float, colour: str, dashed: bool = False,
               thick: float = 1.3) -> str:
        name = _marker_name(colour)
        return (f'<line class="sq-arrow" x1="{x1:.1f}" y1="{y1:.1f}" x2="{x2:.1f}" y2="{y2:.1f}"'
                f' stroke="{colour}" stroke-width="{thick}"{_dash(dashed)}'
                f' marker-end="url(#sq-ah-{name})"/>')

    @staticmethod
    def _label(x: float, y: float, text: str, colour: str = "#222", anchor: str = "start",
               bold: bool = False) -> str:
        weight = ' font-weight="bold"' if bold else ""
        return (f'<text class="halo" x="{x:.1f}" y="{y:.1f}" fill="{colour}"'
                f' text-anchor="{anchor}"{weight}>{esc(text)}</text>')

    def _span_label(self, x1: float, x2: float, y: float, text: str, colour: str = "#222",
                    bold: bool = False) -> str:
        lo, hi = min(x1, x2), max(x1, x2)
        return self._label(lo + 6, y, fit(text, hi - lo - 10), colour, bold=bold)

    def _note(self, lane: Any, text: str, ev: str, seqs: list[int], title: str = "",
              colour: str = "#444", fill: str = "#fffbe6", lines: list[str] | None = None
              ) -> None:
        rows = lines or [text]
        h = 8 + 13 * len(rows)
        y = self._row(h + 6)
        w = min(max(width(r) for r in rows) + 12, 330)
        x = self.x[lane]
        left = x - w + 40 if lane == "pmem" else x - w / 2 if lane in ("kernel", "card") else x - 4
        inner = [f'<rect x="{left:.1f}" y="{y + 2:.1f}" width="{w:.1f}" height="{h:.1f}" rx="4"'
                 f' fill="{fill}" stroke="{colour}" stroke-width="0.8"/>']
        for i, r in enumerate(rows):
            inner.append(f'<text x="{left + 6:.1f}" y="{y + 14 + 13 * i:.1f}" fill="{colour}">'
                         f'{esc(fit(r, w - 10))}</text>')
        self._group(ev, seqs, title or "\n".join(rows), "".join(inner), "sq-note")

    # --- bands (scenario lines) -----------------------------------------------------------

    def _start_band(self, line: Line) -> None:
        self._end_band()
        self.band = line
        self.band_y = self.y
        self.band_rows = 0
        self.band_kernel = False
        self.band_lines = []

    def _end_band(self) -> None:
        self._flush()
        line = self.band
        if line is None:
            return
        if not self.band_kernel or not self.run.emulator:
            self._user_rows(line)
        if self.band_rows == 0:
            self._row(20)
        y0, y1 = self.band_y, self.y
        bad = line.ok is False
        fill = "#fde8e8" if bad else ("#f4f6f9" if self.band_no % 2 else "#ffffff")
        self.band_no += 1
        self.bands.append(f'<rect class="sq-band" x="0" y="{y0:.1f}" width="{self.width:.1f}"'
                          f' height="{y1 - y0:.1f}" fill="{fill}"/>')
        t = self.t_of.get(line.seq)
        src = line.source if line.kind in ("fault", "locks", "finish", "start") \
            else f"{line.actor}: {line.source}"
        tip = "\n".join([f"line {line.lineno}: {src}", *line.text])
        if bad:
            tip += f"\nMISMATCH: expected {line.expected}"
        colour = RED if bad else "#222"
        mark = "\N{BALLOT X} " if bad else ""
        ty = y0 + 14
        parts = [f'<text class="small" x="8" y="{ty:.1f}">'
                 f'{"" if t is None else f"{float(t) * 1000:.1f} ms"}</text>',
                 f'<text x="62" y="{ty:.1f}" fill="#888">{f"L{line.lineno}" if line.lineno else ""}'
                 "</text>",
                 f'<text x="98" y="{ty:.1f}" fill="{colour}">{esc(fit(mark + src, GUTTER - 98))}'
                 "</text>"]
        if bad:
            parts.append(f'<text x="98" y="{ty + 13:.1f}" fill="{RED}">'
                         f'{esc(fit(f"expected {line.expected}", GUTTER - 98))}</text>')
        self.body.append(f'<g class="sq-line" data-line="{line.lineno}"'
                         f' data-ok="{"no" if bad else "yes"}"><title>{esc(tip)}</title>'
                         + "".join(parts) + "</g>")
        self.band = None

    def _user_rows(self, line: Line) -> None:
        """Lines the kernel log does not show: answered in user space, or the host's."""
        for rec in self.band_lines:
            kind = rec.get("kind")
            pid = rec.get("pid")
            if not isinstance(pid, int) or pid not in self.x \
                    or kind not in ("call", "unfinished", "resumed", "signal", "exited",
                                    "waited"):
                continue
            seqs = [int(rec["seq"])]
            if kind in ("resumed", "signal", "exited", "waited") and self.run.emulator:
                continue  # the kernel's reply, signal, exit are drawn where they happened
            if kind == "signal":
                self._ev_signal({**dict(rec.get("siginfo") or {}), "pid": pid,
                                 "seq": rec["seq"]})
                continue
            if kind in ("exited", "waited"):
                self._exit_mark(rec, pid, str(rec.get("status")))
                continue
            if kind == "call" and str(rec.get("call")).startswith("exit_group("):
                if not self.run.emulator:  # the emulator draws it with the kernel's exit
                    self._exit_call(pid, f"{rec['call']} = {rec['result']}", seqs)
                continue
            if kind == "call":
                text = f"{rec['call']} = {rec['result']}"
            elif kind == "unfinished":
                text = f"{rec['call']} <unfinished ...>"
            else:
                text = f"<... {rec['call']} resumed> = {rec['result']}"
            x = self.x[pid]
            if self.run.emulator:
                y = self._row(24)
                w = min(width(text) + 12, 2.2 * LANE_GAP)
                inner = (f'<rect x="{x - 4:.1f}" y="{y + 3:.1f}" width="{w:.1f}" height="17"'
                         f' rx="8" fill="#eef3fb" stroke="{self.colour[pid]}"/>'
                         f'<text x="{x + 4:.1f}" y="{y + 15:.1f}">{esc(fit(text, w - 10))}</text>')
                self._group("user", seqs, f"{line.actor} (in user space): {text}", inner)
                continue
            kx = self.x["kernel"]
            y = self._row(30)
            inner = self._span_label(x, kx, y + 10, text)
            if kind != "resumed":
                inner += self._arrow(x, y + 15, kx, y + 15, COLOURS["call"])
            if kind != "unfinished":
                inner += self._arrow(kx, y + 23, x, y + 23, COLOURS["ret"], dashed=True)
            key = (pid, -1)
            if kind == "unfinished":
                self.bars[key] = (y + 15, rec)
            elif kind == "resumed" and key in self.bars:
                self._end_bar(key, y + 23, [int(rec["seq"])])
            self._group("user", seqs, text, inner)

    # --- reading -----------------------------------------------------------------------

    def feed(self, rec: dict[str, Any]) -> None:
        """Draw what ``rec`` shows."""
        ev = rec.get("ev")
        if rec.get("src") == "launcher":
            self._launcher(rec, str(ev))
            return
        pid = rec.get("pid")
        if ev in QUIET:
            self._quiet(rec, str(ev))
            return
        if ev in ("call", "ret", "park", "interrupted", "fault", "signal", "signal-ignored",
                  "signal-merged", "shootdown") and pid not in self.run.procs:
            return  # the launcher's own calls (wait_exit, proc_locks ...)
        handler = getattr(self, "_ev_" + str(ev).replace("-", "_"), None)
        if ev == "call" and internal_call(rec.get("call"), self.band.source
                                          if self.band is not None else ""):
            self.internal.add(self._key(rec))
            self._hidden(rec)
            return
        if ev in ("ret", "park", "interrupted") and self._key(rec) in self.internal:
            if ev == "ret":
                self.internal.discard(self._key(rec))
            self._hidden(rec)
            return
        if ev == "call":
            self._flush()
            self.held, self.held_faults = rec, []
            return
        if ev == "fault" and self.held is not None and self.held.get("pid") == pid:
            self.held_faults.append(rec)
            return
        if ev in ("block-alloc", "block-free", "cow", "reflink"):
            self._block(rec, str(ev))
            return
        if ev == "ret" and self.held is not None and self._key(self.held) == self._key(rec):
            self._callret(self.held, rec)
            self.held = None
            return
        if ev == "park":
            self._park(rec)
            return
        self._flush()
        if handler is not None:
            handler(rec)
        else:
            self._note("kernel", f"{ev}", str(ev), [int(rec["seq"])],
                       title=_describe(rec))

    def _hidden(self, rec: dict[str, Any]) -> None:
        """An event of the agent's own bookkeeping: in the document (``data-ev="internal"``,
        so every event of the log is accounted for), drawn nowhere."""
        self.counts["internal"] = self.counts.get("internal", 0) + 1
        self.body.append(f'<g class="sq-ev" data-ev="internal" data-seq="{rec["seq"]}"'
                         f' data-call="{esc(rec.get("call", ""))}"></g>')

    def _launcher(self, rec: dict[str, Any], ev: str) -> None:
        if ev in ("launch", "call", "step", "fault", "finish"):
            line = self.lines.get(int(rec["seq"]))
            if line is not None:
                self._start_band(line)
            if ev == "fault":
                self._injected(rec)
        elif ev == "line":
            self.band_lines.append(rec)
            if rec.get("kind") == "text" and rec.get("text") == "---" \
                    and self.band is not None and self.band.kind == "locks":
                texts = [str(r.get("text")) for r in self.band_lines
                         if r.get("kind") == "text" and not str(r.get("text")).startswith("---")]
                texts = ["/proc/locks:", *(texts or ["(no leases)"])]
                self._note("kernel", "/proc/locks", "locks",
                           [int(r["seq"]) for r in self.band_lines], lines=texts,
                           fill="#f3f3f3")
                self.band_kernel = True
        elif ev == "actor" and rec.get("how") == "fork" and not self.run.emulator:
            proc = self.run.procs.get(int(rec.get("pid", 0)))
            if proc is not None:
                self._fork(rec, proc.parent)  # the host kernel has no register event
        elif ev == "death" and not self.run.emulator:
            pid = rec.get("pid")
            if isinstance(pid, int) and pid in self.x:
                self._exit_mark(rec, pid, str(rec.get("status")))
        elif ev == "end":
            self._end_band()

    def _quiet(self, rec: dict[str, Any], ev: str) -> None:
        pid = rec.get("pid")
        if ev in ("create", "rename", "unlink") and rec.get("ino") is not None:
            path = rec.get("path") if ev != "rename" else rec.get("new")
            self.names[int(rec["ino"])] = f"{path} (deleted)" if ev == "unlink" else str(path)
        if ev == "pass" and pid in self.run.procs:
            self.passes[int(pid)] = rec
        elif ev == "receive" and pid in self.run.procs:
            self.receives[int(pid)] = rec
        elif ev == "register" and rec.get("kind") == "fork" and pid in self.run.procs:
            self._flush()
            self._fork(rec)

    @staticmethod
    def _key(rec: dict[str, Any]) -> tuple[int, int]:
        return int(rec.get("pid", 0)), int(rec.get("id", 0))

    def _flush(self) -> None:
        if self.held is not None:
            held, self.held = self.held, None
            self._call_alone(held)
        if self.block_note is not None:
            note, self.block_note = self.block_note, None
            self._draw_block_note(note)

    # --- calls -------------------------------------------------------------------------

    def _call_text(self, call: dict[str, Any]) -> str:
        name = str(call.get("call"))
        args = [_opaque(a) for a in call.get("args") or []]
        try:
            if name == "mm_fault" and len(args) >= 3:
                return f"page fault: vma {args[0]} page {args[1]} ({'write' if args[2] else 'read'})"
            if name == "sendmsg" and len(args) >= 3:
                fds = f", SCM_RIGHTS {args[2]}" if args[2] else ""
                return f'sendmsg("{args[0]}", {len(str(args[1]))} bytes{fds})'
            if name == "rt_sigaction" and args:
                return strace.call(name, [strace.Bare(strace.signal_name(int(args[0]))),
                                          *args[1:]])
            return strace.call(name, args)
        except (TypeError, ValueError, IndexError):
            return f"{name}(...)"

    def _ret_text(self, call: dict[str, Any] | None, ret: dict[str, Any]) -> str:
        if "errno" in ret and ret["errno"] is not None:
            return f"-1 {ret['errno']}"
        result = ret.get("result")
        name = call.get("call") if call else None
        if name == "mm_fault" and isinstance(result, int):
            return "zero page" if result < 0 else f"block #{result}"
        if name == "recvmsg" and isinstance(result, dict):
            fds = f", fds {result.get('fds')}" if result.get("fds") else ""
            return (f"from {self.run.proc_name(result.get('sender'))}, "
                    f"{len(str(result.get('data', '')))} bytes{fds}")
        if name == "mmap" and isinstance(result, dict) and "addr" in result:
            return hex(int(result["addr"]))
        return strace.value(_opaque(result))

    def _fault_marks(self, pid: int, y: float) -> str:
        out = []
        for i, f in enumerate(self.held_faults):
            x = self.x[pid] - 10 - 9 * i
            bad = str(f.get("result")).startswith("SIG")
            out.append(f'<g class="sq-ev" data-ev="fault" data-seq="{f["seq"]}"><title>'
                       f'{esc(_describe(f))}</title><path d="M{x:.1f},{y - 6:.1f} l-3,6 h4 l-3,6"'
                       f' fill="none" stroke="{RED if bad else "#b8860b"}" stroke-width="1.4"/>'
                       "</g>")
            self.counts["fault"] = self.counts.get("fault", 0) + 1
        self.held_faults = []
        return "".join(out)

    def _callret(self, call: dict[str, Any], ret: dict[str, Any]) -> None:
        pid = int(call["pid"])
        x, kx = self.x[pid], self.x["kernel"]
        y = self._row(30)
        text = self._call_text(call)
        res = self._ret_text(call, ret)
        err = "errno" in ret and ret["errno"] is not None
        label = f"{text} = {res}"
        inner = (self._span_label(x, kx, y + 10, label, RED if err else "#222")
                 + self._arrow(x, y + 15, kx, y + 15, COLOURS["call"])
                 + self._arrow(kx, y + 23, x, y + 23, COLOURS["ret"], dashed=True))
        inner += self._fault_marks(pid, y + 19)
        self._group("call", [int(call["seq"])], f"{self.run.proc_name(pid)}: {label}",
                    inner, extra=f' data-pid="{pid}"')
        self.counts["ret"] = self.counts.get("ret", 0) + 1
        self.body.append(f'<g class="sq-ev" data-ev="ret" data-seq="{ret["seq"]}"></g>')
        self.band_kernel = self.band_kernel or self._in_band(pid)
        self._after_ret(call, ret, y + 23)

    def _call_alone(self, call: dict[str, Any]) -> None:
        pid = int(call["pid"])
        x, kx = self.x[pid], self.x["kernel"]
        y = self._row(24)
        text = self._call_text(call)
        inner = (self._span_label(x, kx, y + 10, text)
                 + self._arrow(x, y + 16, kx, y + 16, COLOURS["call"]))
        inner += self._fault_marks(pid, y + 16)
        self._group("call", [int(call["seq"])], f"{self.run.proc_name(pid)}: {text}", inner,
                    extra=f' data-pid="{pid}"')
        self.call_y[self._key(call)] = y + 16
        self.band_kernel = self.band_kernel or self._in_band(pid)

    def _ev_ret(self, ret: dict[str, Any]) -> None:
        pid = int(ret["pid"])
        call = self.run.calls.get(self._key(ret))
        x, kx = self.x[pid], self.x["kernel"]
        y = self._row(24)
        res = self._ret_text(call, ret)
        name = call.get("call") if call else "?"
        err = "errno" in ret and ret["errno"] is not None
        label = f"<... {name} resumed> = {res}"
        inner = (self._span_label(x, kx, y + 10, label, RED if err else "#222")
                 + self._arrow(kx, y + 16, x, y + 16, COLOURS["ret"], dashed=True))
        self._group("ret", [int(ret["seq"])], f"{self.run.proc_name(pid)}: {label}", inner)
        self.band_kernel = self.band_kernel or self._in_band(pid)
        if call is not None:
            self._after_ret(call, ret, y + 16)

    def _in_band(self, pid: int) -> bool:
        return self.band is not None and self.by_name.get(self.band.actor) == pid

    def _after_ret(self, call: dict[str, Any], ret: dict[str, Any], y: float) -> None:
        key = self._key(ret)
        if key in self.bars:
            self._end_bar(key, y, [int(ret["seq"])])
        name = call.get("call")
        ok = "errno" not in ret or ret["errno"] is None
        pid = int(ret["pid"])
        if name == "sendmsg" and ok:
            args = list(call.get("args") or [])
            dest = str(args[0]) if args else "?"
            self.queues.setdefault(dest, deque()).append(
                {"y": y, "pid": pid, "pass": self.passes.pop(pid, None), "ret": ret,
                 "call": call})
        elif name == "recvmsg" and ok and isinstance(ret.get("result"), dict):
            args = list(call.get("args") or [])
            queue = self.queues.get(str(args[0]) if args else "?")
            if queue:
                self._message(queue.popleft(), pid, y, ret, self.receives.pop(pid, None))

    def _park(self, rec: dict[str, Any]) -> None:
        key = self._key(rec)
        if self.held is not None and self._key(self.held) == key:
            held, self.held = self.held, None
            self._call_alone(held)
        else:
            self._flush()
        if key in self.bars:
            return  # asleep again after a restart: one bar from the first sleep
        y = self.call_y.get(key, self.y)
        self.bars[key] = (y, rec)

    def _end_bar(self, key: tuple[int, int], y: float, seqs: list[int]) -> None:
        y0, park = self.bars.pop(key)
        pid = key[0]
        x = self.x[pid]
        t0 = park.get("t")
        end = self.t_of.get(seqs[-1]) if seqs else None
        how_long = f" for {1000 * (float(end) - float(t0)):.1f} ms" if t0 is not None \
            and end is not None else ""
        title = f"{self.run.proc_name(pid)}: {park.get('call')} blocked{how_long}"
        self.counts["park"] = self.counts.get("park", 0) + 1
        self.under.append(
            f'<g class="sq-ev sq-bar" data-ev="park" data-seq="{park.get("seq")} '
            f'{" ".join(map(str, seqs))}"><title>{esc(title)}</title>'
            f'<rect x="{x - 5:.1f}" y="{y0:.1f}" width="10" height="{max(4.0, y - y0):.1f}"'
            f' fill="{self.colour.get(pid, "#999")}" fill-opacity="0.45"'
            f' stroke="{self.colour.get(pid, "#999")}"/></g>')

    def _ev_fault(self, rec: dict[str, Any]) -> None:
        pid = int(rec["pid"])
        y = self._row(20)
        x = self.x[pid]
        bad = str(rec.get("result")).startswith("SIG")
        block = rec.get("block")
        text = (f"page fault: vma {rec.get('vma')} page {rec.get('page')} "
                f"({'write' if rec.get('write') else 'read'}) -> "
                + (f"block #{block}" if block is not None else str(rec.get("result"))))
        colour = RED if bad else "#8a6d00"
        inner = (f'<path d="M{x - 2:.1f},{y + 3:.1f} l-4,7 h6 l-4,7" fill="none"'
                 f' stroke="{colour}" stroke-width="1.5"/>'
                 + self._label(x + 8, y + 14, text, colour))
        self._group("fault", [int(rec["seq"])], f"{self.run.proc_name(pid)}: {text}", inner)

    def _ev_interrupted(self, rec: dict[str, Any]) -> None:
        key = self._key(rec)
        if key in self.bars:
            self._end_bar(key, self.y, [int(rec["seq"])])

    # --- processes ---------------------------------------------------------------------

    def _fork(self, rec: dict[str, Any], ppid: Any = None) -> None:
        pid = int(rec["pid"])
        ppid = rec.get("ppid") if ppid is None else ppid
        if ppid not in self.x or pid not in self.x:
            return
        y = self._row(24)
        x1, x2 = self.x[ppid], self.x[pid]
        inner = (self._span_label(x1, x2, y + 10, f"fork() = {pid}")
                 + self._arrow(x1, y + 16, x2, y + 16, COLOURS["fork"]))
        self._group("fork", [int(rec["seq"])], f"{self.run.proc_name(ppid)} forks "
                    f"{self.run.proc_name(pid)}", inner)
        self.lane_start[pid] = y + 16
        self.band_kernel = self.band_kernel or self._in_band(int(ppid))

    def _ev_exit(self, rec: dict[str, Any]) -> None:
        pid = rec.get("pid")
        if pid not in self.run.procs:
            return
        for key in [k for k in self.bars if k[0] == pid]:
            self._end_bar(key, self.y, [int(rec["seq"])])
        proc = self.run.procs[int(pid)]
        self._exit_mark(rec, int(pid), proc.death if proc.killed else proc.death
                        or "exited with 0")

    def _exit_call(self, pid: int, text: str, seqs: list[int]) -> None:
        """``exit_group(0) = ?``: a call that does not return (no reply arrow)."""
        x, kx = self.x[pid], self.x["kernel"]
        y = self._row(24)
        inner = (self._span_label(x, kx, y + 10, text)
                 + self._arrow(x, y + 16, kx, y + 16, COLOURS["call"]))
        self._group("exit_group", seqs, f"{self.run.proc_name(pid)}: {text}", inner,
                    extra=f' data-pid="{pid}"')

    def _exit_mark(self, rec: dict[str, Any], pid: int, killed: str | None) -> None:
        if pid in self.ended:
            return  # the launcher and the kernel may both tell of one end
        self.ended.add(pid)
        if self.exit_row is not None and pid not in self.exit_row[1]:
            y, used = self.exit_row
        else:
            self._flush()
            y = self._row(26)
            used = set()
        used.add(pid)
        x = self.x[pid]
        if killed and killed.startswith("SIG"):
            inner = (f'<path class="sq-killed" d="M{x - 7:.1f},{y + 6:.1f} l14,14 m0,-14 l-14,14"'
                     f' stroke="{RED}" stroke-width="3"/>'
                     + self._label(x + 11, y + 17, f"killed by {killed}", RED, bold=True))
            title = f"{self.run.proc_name(pid)} killed by {killed}"
        else:
            how = str(killed or "exited with 0")
            inner = (f'<line x1="{x - 8:.1f}" y1="{y + 13:.1f}" x2="{x + 8:.1f}" y2="{y + 13:.1f}"'
                     f' stroke="#555" stroke-width="3"/>'
                     + self._label(x + 11, y + 17, how, "#777"))
            title = f"{self.run.proc_name(pid)} exits"
        self._group("exit", [int(rec["seq"])], title, inner, "sq-killed-g" if killed else "",
                    extra=f' data-pid="{pid}"')
        self.lane_end[pid] = y + 13
        self.exit_row = (y, used)

    def _injected(self, rec: dict[str, Any]) -> None:
        pid = rec.get("pid")
        fault = str(rec.get("fault"))
        if fault == "wait" or pid not in self.x or "launcher" not in self.x:
            return
        y = self._row(24)
        x1, x2 = self.x["launcher"], self.x[pid]
        sig = rec.get("signal") or fault
        inner = (self._span_label(x1, x2, y + 10, f"!{fault}: {sig}", RED, bold=True)
                 + self._arrow(x1, y + 16, x2, y + 16, COLOURS["injected"], thick=1.8))
        self._group("injected", [int(rec["seq"])],
                    f"the launcher injects {sig} into {self.run.proc_name(pid)}", inner)

    # --- signals, shoot-downs, messages ------------------------------------------------

    def _ev_signal(self, rec: dict[str, Any], quiet: str = "") -> None:
        pid = int(rec["pid"])
        x, kx = self.x[pid], self.x["kernel"]
        y = self._row(24)
        text = _siginfo(rec) + (f" ({quiet})" if quiet else "")
        colour = COLOURS["quiet"] if quiet else COLOURS["signal"]
        inner = (self._span_label(x, kx, y + 10, text, "#888" if quiet else colour,
                                  bold=not quiet)
                 + self._arrow(kx, y + 16, x, y + 16, colour, dashed=bool(quiet),
                               thick=1.3 if quiet else 1.8))
        ev = "signal" if not quiet else f"signal-{quiet}"
        self._group(ev, [int(rec["seq"])], f"{self.run.proc_name(pid)} <- {text}", inner)

    def _ev_signal_ignored(self, rec: dict[str, Any]) -> None:
        self._ev_signal(rec, "ignored")

    def _ev_signal_merged(self, rec: dict[str, Any]) -> None:
        self._ev_signal(rec, "merged")

    def _ev_shootdown(self, rec: dict[str, Any]) -> None:
        pid = int(rec["pid"])
        x, kx = self.x[pid], self.x["kernel"]
        y = self._row(24)
        text = f"TLB shoot-down: vma {rec.get('vma')} pages {rec.get('pages')}"
        inner = (self._span_label(x, kx, y + 10, text, COLOURS["shootdown"])
                 + self._arrow(kx, y + 16, x, y + 16, COLOURS["shootdown"]))
        self._group("shootdown", [int(rec["seq"])], f"{self.run.proc_name(pid)}: {text}", inner)

    def _message(self, msg: dict[str, Any], pid: int, y: float, ret: dict[str, Any],
                 received: dict[str, Any] | None) -> None:
        x1, x2 = self.x[msg["pid"]], self.x[pid]
        passed = msg.get("pass")
        seqs = [int(msg["ret"]["seq"]), int(ret["seq"])]
        if passed is not None:
            seqs.insert(0, int(passed["seq"]))
        if received is not None:
            seqs.append(int(received["seq"]))
        self._draw_message(x1, msg["y"], x2, y, passed, received, seqs,
                           f"{self.run.proc_name(msg['pid'])} -> {self.run.proc_name(pid)}")

    def _draw_message(self, x1: float, y1: float, x2: float, y2: float,
                      passed: dict[str, Any] | None, received: dict[str, Any] | None,
                      seqs: list[int], who: str, lost: bool = False) -> None:
        if passed is not None:
            sent = ",".join(str(f) for f in passed.get("fds") or [])
            text = f"fd {sent}"
            if received is not None:
                text += " -> " + ",".join(str(f) for f in received.get("fds") or [])
            ev, colour = "pass", COLOURS["pass"]
            tip = f"SCM_RIGHTS: {text}"
        else:
            text, ev, colour = "msg", "message", COLOURS["message"]
            tip = "a message (no descriptors)"
        if lost:
            text += " (never received)"
            tip += " (never received)"
        mx, my = (x1 + x2) / 2, (y1 + y2) / 2
        inner = (self._arrow(x1, y1, x2, y2, colour, dashed=passed is None or lost, thick=1.6)
                 + f'<text class="halo" x="{mx:.1f}" y="{my - 4:.1f}" fill="{colour}"'
                 f' text-anchor="middle" font-weight="bold">{esc(text)}</text>')
        self._group(ev, seqs, f"{who}: {tip}", inner)

    # --- leases ------------------------------------------------------------------------

    def _lease_note(self, rec: dict[str, Any], text: str, colour: str = "#7a5b00") -> None:
        self._note("kernel", text, str(rec["ev"]), [int(rec["seq"])], title=_describe(rec),
                   colour=colour)

    def _ev_lease_added(self, rec: dict[str, Any]) -> None:
        excl = " exclusive" if rec.get("exclusive") else ""
        self._lease_note(rec, f"lease {rec.get('type')}{excl} on "
                              f"{self._fname(rec.get('ino'))} for "
                              f"{self.run.proc_name(rec.get('pid'))}")

    def _ev_lease_changed(self, rec: dict[str, Any]) -> None:
        self._lease_note(rec, f"lease on {self._fname(rec.get('ino'))} -> "
                              f"{rec.get('type')}")

    def _ev_lease_break(self, rec: dict[str, Any]) -> None:
        self._lease_note(rec, f"break lease on {self._fname(rec.get('ino'))} "
                              f"(by {self.run.proc_name(rec.get('by'))}) -> {rec.get('to')}",
                         "#b35900")

    def _ev_lease_removed(self, rec: dict[str, Any]) -> None:
        self._lease_note(rec, f"lease on {self._fname(rec.get('ino'))} removed "
                              f"({rec.get('why')})")

    def _ev_layout_break(self, rec: dict[str, Any]) -> None:
        self._lease_note(rec, f"break layout lease on {self._fname(rec.get('ino'))} "
                              f"({rec.get('kind')} by {self.run.proc_name(rec.get('by'))})",
                         "#b35900")

    def _ev_layout_refused(self, rec: dict[str, Any]) -> None:
        self._lease_note(rec, f"{rec.get('kind')} of {self._fname(rec.get('ino'))} "
                              f"refused: {rec.get('errno')}", RED)

    def _ev_layout_busy(self, rec: dict[str, Any]) -> None:
        self._lease_note(rec, f"{rec.get('kind')} of {self._fname(rec.get('ino'))} "
                              f"waits: blocks {rec.get('blocks')} pinned")

    def _ev_bug(self, rec: dict[str, Any]) -> None:
        self._note("kernel", "BUG in the kernel daemon", "bug", [int(rec["seq"])],
                   title=str(rec.get("detail")), colour=RED, fill="#fde8e8")

    def _ev_protocol_error(self, rec: dict[str, Any]) -> None:
        self._note("kernel", f"protocol error: {rec.get('reason')}", "protocol-error",
                   [int(rec["seq"])], title=_describe(rec), colour=RED, fill="#fde8e8")

    # --- the card and the device -------------------------------------------------------

    def _card(self, rec: dict[str, Any], text: str, colour: str = COLOURS["card"],
              dashed: bool = False, to_pmem: bool = False, from_pmem: bool = False) -> None:
        if "card" not in self.x:
            return
        kx, cx, px = self.x["kernel"], self.x["card"], self.x["pmem"]
        y = self._row(24)
        inner = self._span_label(kx, cx, y + 10, text, colour)
        if from_pmem:
            inner += (self._arrow(px, y + 16, cx, y + 16, colour, dashed)
                      + self._arrow(cx, y + 16, kx, y + 16, colour, dashed))
        else:
            inner += self._arrow(kx, y + 16, cx, y + 16, colour, dashed)
            if to_pmem:
                inner += self._arrow(cx, y + 16, px, y + 16, colour, dashed)
        self._group(str(rec["ev"]), [int(rec["seq"])], _describe(rec, self.run), inner)

    def _ev_reg_mr(self, rec: dict[str, Any]) -> None:
        blocks = rec.get("blocks") or []
        if rec.get("odp"):
            text = f"MR {rec.get('mr')}: on demand, no pin"
        else:
            text = f"pin {_blocks(blocks)} (MR {rec.get('mr')})"
        self._card(rec, text)

    def _ev_dereg_mr(self, rec: dict[str, Any]) -> None:
        self._card(rec, f"unpin MR {rec.get('mr')}", "#777", dashed=True)

    def _ev_mr_revoked(self, rec: dict[str, Any]) -> None:
        self._card(rec, f"revoke MR {rec.get('mr')}", RED)

    def _ev_mr_lease_break(self, rec: dict[str, Any]) -> None:
        self._card(rec, f"lease break -> MR {rec.get('mr')}", "#b35900")

    def _ev_ucontext_aborted(self, rec: dict[str, Any]) -> None:
        self._card(rec, f"abort context {rec.get('ctx')}", RED)

    def _ev_create_qp(self, rec: dict[str, Any]) -> None:
        self._card(rec, f"create QP {rec.get('qpn')}", "#777")

    def _ev_destroy_qp(self, rec: dict[str, Any]) -> None:
        self._card(rec, f"destroy QP {rec.get('qpn')}", "#777", dashed=True)

    def _ev_qp_error(self, rec: dict[str, Any]) -> None:
        self._card(rec, f"QP {rec.get('qpn')}: {rec.get('why')}", RED)

    def _ev_rdma_write(self, rec: dict[str, Any]) -> None:
        ok = rec.get("status") == "IBV_WC_SUCCESS"
        self._card(rec, f"RDMA WRITE {rec.get('length')} B" + ("" if ok else
                   f": {rec.get('status')}"), COLOURS["card"] if ok else RED, to_pmem=ok)

    def _ev_rdma_read(self, rec: dict[str, Any]) -> None:
        ok = rec.get("status") == "IBV_WC_SUCCESS"
        self._card(rec, f"RDMA READ {rec.get('length')} B" + ("" if ok else
                   f": {rec.get('status')}"), COLOURS["card"] if ok else RED, from_pmem=ok)

    def _ev_dio_start(self, rec: dict[str, Any]) -> None:
        self._card(rec, f"direct I/O: pin {_blocks(rec.get('blocks') or [])}")

    def _ev_dio_done(self, rec: dict[str, Any]) -> None:
        self._card(rec, f"DMA {rec.get('length')} B, unpin", to_pmem=True)

    def _ev_foreign_write(self, rec: dict[str, Any]) -> None:
        if "card" not in self.x:
            return
        cx, px = self.x["card"], self.x["pmem"]
        y = self._row(34)
        self.under.append(f'<rect class="sq-foreign-band" x="0" y="{y:.1f}"'
                          f' width="{self.width:.1f}" height="34" fill="{RED}"'
                          ' fill-opacity="0.13"/>')
        into = rec.get("into")
        text = (f"FOREIGN WRITE ({rec.get('via')}): {rec.get('file')}+{rec.get('offset')} "
                f"lands in {into}" + (f"+{rec.get('into_offset')}"
                                      if rec.get("into_offset") is not None else "")
                + f", block #{rec.get('block')}")
        inner = (self._arrow(cx, y + 20, px - 9, y + 20, RED, thick=3)
                 + f'<circle cx="{px:.1f}" cy="{y + 20:.1f}" r="8" fill="{RED}"/>'
                 f'<text x="{px:.1f}" y="{y + 24:.1f}" fill="#fff" text-anchor="middle"'
                 ' font-weight="bold">!</text>'
                 + self._label(px - 14, y + 11, text, RED, anchor="end", bold=True))
        self._group("foreign-write", [int(rec["seq"])], text + f" (writer "
                    f"{self.run.proc_name(rec.get('writer'))})", inner, "sq-foreign")

    def _block(self, rec: dict[str, Any], ev: str) -> None:
        if self.held is not None:
            held, self.held = self.held, None
            self._call_alone(held)
        ino = rec.get("ino") if ev != "reflink" else rec.get("dst")
        note = self.block_note
        if note is not None and note["ev"] == ev and note["ino"] == ino and ev != "reflink":
            note["blocks"].append(rec.get("block", rec.get("new")))
            note["seqs"].append(int(rec["seq"]))
            return
        self._flush()
        if ev == "reflink":
            blocks = list(rec.get("blocks") or [])
        else:
            blocks = [rec.get("block", rec.get("new"))]
        self.block_note = {"ev": ev, "ino": ino, "blocks": blocks, "seqs": [int(rec["seq"])],
                           "rec": rec}

    def _fname(self, ino: Any) -> str:
        if isinstance(ino, int) and ino in self.names:
            return self.names[ino]
        return self.run.file_name(ino)

    def _draw_block_note(self, note: dict[str, Any]) -> None:
        if "pmem" not in self.x:
            return
        ev, name = note["ev"], self._fname(note["ino"])
        blocks = _blocks(note["blocks"])
        text = {"block-alloc": f"alloc {blocks} -> {name}",
                "block-free": f"free {blocks} (was {name})",
                "cow": f"copy on write -> {blocks} ({name})",
                "reflink": f"share {blocks} with {name}"}[ev]
        colour = "#555" if ev != "block-free" else "#8a5a00"
        self._note("pmem", text, ev, note["seqs"], colour=colour, fill="#f2f7f2"
                   if ev != "block-free" else "#fbf3e6")

    # --- output ------------------------------------------------------------------------

    def close(self) -> None:
        """Finish what is open: the last band, blocked calls, messages never received."""
        self._end_band()
        self._flush()
        for key in list(self.bars):
            self._end_bar(key, self.y, [])
        for dest, queue in self.queues.items():
            for msg in queue:
                pid = self.by_name.get(dest)
                passed = msg.get("pass")
                if passed is not None and passed.get("dest") in self.x:
                    pid = passed.get("dest")
                if pid is None or pid not in self.x:
                    continue
                seqs = [int(msg["ret"]["seq"])] + ([int(passed["seq"])] if passed else [])
                self._draw_message(self.x[msg["pid"]], msg["y"], self.x[pid], msg["y"] + 8,
                                   passed, None, seqs,
                                   f"{self.run.proc_name(msg['pid'])} -> {dest}", lost=True)
        self.y += 10

    def svg(self) -> str:
        """The document."""
        run = self.run
        bottom = self.y
        height = bottom + 40 + 56
        lanes: list[str] = []
        heads: list[str] = []

        def lane(key: Any, label: str, colour: str, y0: float, y1: float, dashed: bool) -> None:
            x = self.x[key]
            lanes.append(f'<g class="sq-lane" data-lane="{esc(label)}"><line x1="{x:.1f}"'
                         f' y1="{y0:.1f}" x2="{x:.1f}" y2="{y1:.1f}" stroke="{colour}"'
                         f' stroke-width="{1.2 if dashed else 2}"{_dash(dashed)}/></g>')
            w = max(width(label) + 16, 60)
            for hy in (HEADER_Y, bottom + 8):
                heads.append(f'<g class="sq-head"><rect x="{x - w / 2:.1f}" y="{hy:.1f}"'
                             f' width="{w:.1f}" height="24" rx="4" fill="{colour}"/>'
                             f'<text x="{x:.1f}" y="{hy + 16:.1f}" fill="#fff"'
                             f' text-anchor="middle" font-weight="bold">{esc(label)}</text></g>')

        for proc in run.procs.values():
            start = self.lane_start.get(proc.pid, HEADER_Y + 24)
            if start < 0:
                start = HEADER_Y + 24
            end = self.lane_end.get(proc.pid, bottom + 8)
            lane(proc.pid, proc.label, self.colour[proc.pid], start, end, True)
        lane("kernel", "kernel" if run.emulator else "host kernel", "#333", HEADER_Y + 24,
             bottom + 8, False)
        if "card" in self.x:
            lane("card", "RDMA card", COLOURS["card"], HEADER_Y + 24, bottom + 8, False)
            lane("pmem", "pmem device", "#2f6f3e", HEADER_Y + 24, bottom + 8, False)
        if "launcher" in self.x:
            lane("launcher", "launcher", RED, HEADER_Y + 24, bottom + 8, True)
        verdict = "PASS" if run.passed else f"FAIL ({len(run.failures)})"
        head = (f'<text class="title" x="10" y="22">{esc(run.scenario)} \N{EM DASH} policy '
                f'{esc(run.policy)} \N{EM DASH} {esc(run.target)} \N{EM DASH} '
                f'<tspan fill="{"#2a7d2a" if run.passed else RED}">{verdict}</tspan></text>'
                f'<text class="sub" x="10" y="40">{esc(fit(run.title, self.width - 20))}</text>'
                f'<text class="small" x="8" y="{HEADER_Y + 16}">time</text>'
                f'<text class="small" x="62" y="{HEADER_Y + 16}">line</text>'
                f'<text class="small" x="98" y="{HEADER_Y + 16}">scenario line</text>')
        legend = _legend(10, bottom + 50)
        return (f'<svg xmlns="http://www.w3.org/2000/svg" class="sq-diagram"'
                f' width="{self.width:.0f}" height="{height:.0f}"'
                f' viewBox="0 0 {self.width:.0f} {height:.0f}"'
                f' data-scenario="{esc(run.scenario)}" data-policy="{esc(run.policy)}"'
                f' data-lanes="{len(self.x)}">'
                f"<style>{svg.STYLE}</style><defs>{_markers()}</defs>"
                f'<rect width="100%" height="100%" fill="#fff"/>'
                + head + "".join(self.bands) + "".join(self.under) + "".join(lanes) + "".join(self.body)
                + "".join(heads) + legend + "</svg>\n")


def _marker_name(colour: str) -> str:
    return colour.lstrip("#")


def _markers() -> str:
    out = []
    for colour in sorted(set(COLOURS.values())):
        out.append(f'<marker id="sq-ah-{_marker_name(colour)}" viewBox="0 0 10 10" refX="10"'
                   ' refY="5" markerWidth="9" markerHeight="9" markerUnits="userSpaceOnUse"'
                   f' orient="auto"><path d="M0,0 L10,5 L0,10 z" fill="{colour}"/></marker>')
    return "".join(out)


def _legend(x: float, y: float) -> str:
    items = [("call", COLOURS["call"], False), ("reply", COLOURS["ret"], True),
             ("signal", COLOURS["signal"], False), ("fd pass", COLOURS["pass"], False),
             ("message", COLOURS["message"], True), ("shoot-down", COLOURS["shootdown"], False),
             ("card / pins", COLOURS["card"], False), ("foreign write", RED, False)]
    out = ['<g class="sq-legend">']
    for label, colour, dashed in items:
        out.append(f'<line x1="{x:.1f}" y1="{y:.1f}" x2="{x + 30:.1f}" y2="{y:.1f}"'
                   f' stroke="{colour}" stroke-width="1.6"{_dash(dashed)}'
                   f' marker-end="url(#sq-ah-{_marker_name(colour)})"/>'
                   f'<text x="{x + 36:.1f}" y="{y + 4:.1f}" fill="#444">{esc(label)}</text>')
        x += 50 + width(label)
    out.append(f'<rect x="{x:.1f}" y="{y - 8:.1f}" width="10" height="16" fill="#888"'
               f' fill-opacity="0.45" stroke="#888"/><text x="{x + 16:.1f}" y="{y + 4:.1f}"'
               ' fill="#444">blocked</text>')
    x += 90
    out.append(f'<path d="M{x:.1f},{y - 6:.1f} l12,12 m0,-12 l-12,12" stroke="{RED}"'
               f' stroke-width="3"/><text x="{x + 18:.1f}" y="{y + 4:.1f}" fill="#444">'
               "killed</text></g>")
    return "".join(out)


def _opaque(value: Any) -> Any:
    """Binary data (tokens, packed messages) as ``<N bytes>`` instead of mojibake."""
    if isinstance(value, str) and any(not " " <= c <= "~" for c in value):
        return strace.Bare(f"<{len(value)} bytes>")
    return value


def _blocks(blocks: list[Any]) -> str:
    shown = [f"#{b}" for b in blocks[:8]]
    return ",".join(shown) + (f",... ({len(blocks)})" if len(blocks) > 8 else "")


def _siginfo(rec: dict[str, Any]) -> str:
    signo = rec.get("si_signo")
    text = strace.signal_name(int(signo)) if isinstance(signo, int) else str(signo)
    if rec.get("si_fd"):
        text += f" si_fd={rec['si_fd']}"
    code = rec.get("si_code")
    if isinstance(code, int) and signo in (linux.SIGBUS, linux.SIGSEGV):
        text += f" si_addr={rec.get('si_addr', 0):#x}"
    elif isinstance(code, int):
        text += f" {strace.si_code_name(code)}"
    return text


def _describe(rec: dict[str, Any], run: Run | None = None) -> str:
    """An event as a line of text (tooltips)."""
    skip = {"seq", "src", "ev", "t", "kseq"}
    fields = ", ".join(f"{k}={v}" for k, v in rec.items() if k not in skip)
    return f"{rec.get('ev')}: {fields}  (t={rec.get('t')} s, seq {rec.get('seq')})"


def display_order(records: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """The records in drawing order: a foreign write after the device write that made it
    (the kernel records the check first)."""
    held: list[dict[str, Any]] = []
    for rec in records:
        ev = rec.get("ev")
        if ev == "foreign-write" and rec.get("src") == "kernel":
            held.append(rec)
            continue
        if held and (ev in ("rdma-write", "dio-done") or ev == "ret"):
            if ev == "ret":
                yield from held
                held = []
                yield rec
                continue
            yield rec
            yield from held
            held = []
            continue
        yield rec
    yield from held


#: events drawn at most: a longer run's diagram stops there with a note, as a page with
#: tens of thousands of rows helps nobody (the transcript and trace.json have them all)
MAX_EVENTS = 5000


def render(run: Run, max_events: int = MAX_EVENTS) -> str:
    """The sequence diagram of ``run`` as an SVG document (the first ``max_events``
    events of a longer run, and a note saying how many more there were)."""
    d = _Diagram(run)
    records = list(display_order(run.records))
    for rec in records[:max_events]:
        d.feed(rec)
    if len(records) > max_events:
        d._note("kernel", f"... {len(records) - max_events} later events not drawn "
                "(see trace.json)", "truncated", [int(records[max_events].get("seq") or 0)],
                title=f"the diagram stops after {max_events} events; the transcript and the "
                      "Perfetto trace have the whole run", colour=RED, fill="#fde8e8")
    d.close()
    return d.svg()
