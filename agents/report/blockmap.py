"""The pmem device as a grid of blocks, coloured by owning file, at chosen points of a run.

The block ledger is replayed from the event log (``block-alloc``, ``block-free``,
``cow``, ``reflink``); pins from ``reg_mr`` (released by ``dereg_mr`` and
``mr-revoked``) and ``dio-start`` (released by ``dio-done``); foreign writes from
``foreign-write``.  A panel shows the device:

- each block owned by a file in that file's colour (its path hashed into the palette: one
  file has one colour in every run, so maps of one scenario compare side by side),
  with its number;
- a pinned block hatched with a thick black outline (its pins in the tooltip); a block
  freed while still pinned, white with a red dashed outline: the hazard;
- a *busy* block (``block-busy``: its file let go of it while a device pins it, so it is
  held off the free list until the last pin goes, as ``busy-extent`` does), grey-blue
  with a solid blue outline: freed but held, harmless;
- a block a foreign write landed in, crossed in red.

Points (``points``): by default one panel after every scenario line that changed the
device (an allocation, a free, a pin, an unpin, a foreign write), captioned with the
line, and one at the end of the run; a panel where a pinned block changed owner or was
freed, or a foreign write landed, has a red caption.  ``points`` may instead list merged
``seq`` numbers to show the device right after each of them.

Only the rows of the grid up to the highest block the run used are drawn.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from typing import Any

from kemu.agents.report import svg
from kemu.agents.report.model import Run
from kemu.agents.report.svg import RED, esc, fit

CELL = 28
COLS = 32
#: a busy block: freed by its file, held for a device (not the hazard's red)
BUSY = "#d6e2f0"
#: anonymous memory (no file)
ANON = "#bbbbbb"
BUSY_EDGE = "#2f5f9a"


@dataclass
class Device:
    """The ledger and the pins at one moment."""

    owner: dict[int, int] = field(default_factory=dict)
    shared: set[int] = field(default_factory=set)
    #: pin key -> (blocks, who)
    pins: dict[Any, tuple[list[int], str]] = field(default_factory=dict)
    #: block -> the foreign writes that landed in it
    foreign: dict[int, list[str]] = field(default_factory=dict)
    #: inode -> its name at this moment
    names: dict[int, str] = field(default_factory=dict)
    #: blocks freed by their file but held for a device (busy extents)
    busy: set[int] = field(default_factory=set)

    def name(self, run: Run, ino: int | None) -> str:
        """A file's name at this moment."""
        if ino is not None and ino in self.names:
            return self.names[ino]
        return run.file_name(ino)

    def pinned(self) -> dict[int, list[str]]:
        """Block -> who pins it."""
        out: dict[int, list[str]] = {}
        for blocks, who in self.pins.values():
            for b in blocks:
                out.setdefault(b, []).append(who)
        return out

    def copy(self) -> Device:
        """A snapshot."""
        return Device(dict(self.owner), set(self.shared), dict(self.pins),
                      {b: list(v) for b, v in self.foreign.items()}, dict(self.names),
                      set(self.busy))


@dataclass
class Panel:
    """The device at one point."""

    caption: str
    device: Device
    seq: int
    #: why the panel deserves attention (empty: nothing alarming)
    alarms: list[str] = field(default_factory=list)


def replay(run: Run, points: list[int] | None = None) -> tuple[list[Panel], int]:
    """The panels, and the highest block number the run used."""
    dev = Device()
    panels: list[Panel] = []
    changed = False
    alarms: list[str] = []
    band = "(start)"
    high = -1
    wanted = set(points or [])
    lines = {ln.seq: ln for ln in run.lines}

    def snap(caption: str, seq: int) -> None:
        nonlocal changed, alarms
        panels.append(Panel(caption, dev.copy(), seq, alarms))
        changed, alarms = False, []

    for rec in run.records:
        ev, seq = rec.get("ev"), int(rec.get("seq", 0))
        if rec.get("src") == "launcher":
            if ev in ("launch", "call", "step", "fault", "finish") and seq in lines:
                if changed and points is None:
                    snap(f"after {band}", seq)
                line = lines[seq]
                band = (f"line {line.lineno}: {line.actor}: {line.source}"
                        if line.kind not in ("fault", "locks", "finish", "start") else
                        (f"line {line.lineno}: {line.source}" if line.lineno else line.source))
            continue
        if ev in ("create", "rename", "unlink") and rec.get("ino") is not None:
            path = rec.get("path") if ev != "rename" else rec.get("new")
            dev.names[int(rec["ino"])] = f"{path} (deleted)" if ev == "unlink" else str(path)
            continue
        pinned = dev.pinned()
        if ev == "block-alloc":
            b = int(rec["block"])
            high = max(high, b)
            if b in pinned:
                alarms.append(f"block #{b} pinned ({', '.join(pinned[b])}) now belongs to "
                              f"{dev.name(run, rec.get('ino'))}")
            dev.owner[b] = int(rec.get("ino") or 0)
            dev.shared.discard(b)
            changed = True
        elif ev == "block-free":
            b = int(rec["block"])
            high = max(high, b)
            if b in pinned and b not in dev.busy:  # a busy block goes with its last pin
                alarms.append(f"block #{b} freed while pinned ({', '.join(pinned[b])})")
            dev.owner.pop(b, None)
            dev.shared.discard(b)
            dev.busy.discard(b)
            changed = True
        elif ev == "block-busy":
            b = int(rec["block"])
            high = max(high, b)
            dev.owner.pop(b, None)
            dev.shared.discard(b)
            dev.busy.add(b)
            changed = True
        elif ev == "block-reown":  # a sharer let go of a reflinked block: another owns it
            dev.owner[int(rec["block"])] = int(rec.get("ino") or 0)
            changed = True
        elif ev == "reflink":
            dev.shared.update(int(b) for b in rec.get("blocks") or [])
            changed = True
        elif ev == "reg_mr" and not rec.get("odp") and rec.get("blocks"):
            blocks = [int(b) for b in rec["blocks"]]
            dev.pins[(rec.get("ctx"), rec.get("mr"))] = (
                blocks, f"MR {rec.get('mr')} of {run.proc_name(rec.get('pid'))}")
            changed = True
        elif ev in ("dereg_mr", "mr-revoked"):
            if dev.pins.pop((rec.get("ctx"), rec.get("mr")), None) is not None:
                changed = True
        elif ev == "dio-start":
            dev.pins[("dio", rec.get("pid"))] = (
                [int(b) for b in rec.get("blocks") or []],
                f"direct I/O of {run.proc_name(rec.get('pid'))}")
            changed = True
        elif ev == "dio-done":
            if dev.pins.pop(("dio", rec.get("pid")), None) is not None:
                changed = True
        elif ev == "foreign-write":
            b = int(rec.get("block", -1))
            high = max(high, b)
            what = (f"{rec.get('via')} by {run.proc_name(rec.get('writer'))}: "
                    f"{rec.get('file')}+{rec.get('offset')} -> {rec.get('into')}")
            dev.foreign.setdefault(b, []).append(what)
            alarms.append(f"foreign write into block #{b} ({rec.get('into')})")
            changed = True
        if seq in wanted:
            snap(f"after event {seq} ({ev})", seq)
    if points is None:
        panels.append(Panel("end of the run", dev.copy(),
                            int(run.records[-1]["seq"]) if run.records else 0, alarms))
    return panels, high


def render(run: Run, points: list[int] | None = None, max_panels: int = 24) -> str:
    """The block map of ``run`` as an SVG document."""
    panels, high = replay(run, points)
    if len(panels) > max_panels:  # keep the alarming ones and the end
        keep = [p for p in panels[:-1] if p.alarms][: max_panels - 1]
        rest = [p for p in panels[:-1] if not p.alarms]
        keep += rest[: max(0, max_panels - 1 - len(keep))]
        panels = [*sorted(keep, key=lambda p: p.seq), panels[-1]]
    nblocks = run.nblocks
    cols = min(COLS, max(nblocks, 1))
    rows = max(1, -(-(high + 1) // cols)) if nblocks else 0
    grid_w = cols * CELL
    names: dict[int, str] = {}
    for p in panels:
        for ino in p.device.owner.values():
            names[ino] = p.device.name(run, ino)
    files = file_colours(names)
    width = max(grid_w + 40, 760)
    out: list[str] = []
    y = 26.0
    title = (f"{run.scenario} \N{EM DASH} {run.policy}: pmem device, {nblocks} blocks of "
             f"{run.block_size} B")
    out.append(f'<text class="title" x="10" y="20">{esc(fit(title, width - 20))}</text>')
    if not run.emulator:
        out.append(f'<text x="10" y="{y + 20}">No pmem device: the run was on the host kernel.'
                   "</text>")
        return _doc(width, y + 40, "".join(out), 0)
    # legend: the files by name, then the marks; an item that would cross the right
    # edge starts a new row, so no two labels overlap
    y += 14
    x = 10.0
    items: list[tuple[str, str, str]] = [
        (names[ino], f'<rect x="{{x:.1f}}" y="{{y:.1f}}" width="14" height="14" fill="{colour}"/>',
         f' class="bm-legend" data-file="{esc(names[ino])}" data-colour="{colour}"')
        for ino, colour in sorted(files.items(), key=lambda kv: names[kv[0]])]
    items += [
        ("pinned", '<rect x="{x:.1f}" y="{y:.1f}" width="14" height="14" fill="url(#bm-hatch)"'
         ' stroke="#000" stroke-width="2.5"/>', ""),
        ("freed while pinned", '<rect x="{x:.1f}" y="{y:.1f}" width="14" height="14"'
         f' fill="url(#bm-hatch)" stroke="{RED}" stroke-width="2" stroke-dasharray="3 2"/>', ""),
        ("busy (freed, held)", f'<rect x="{{x:.1f}}" y="{{y:.1f}}" width="14" height="14"'
         f' fill="{BUSY}" stroke="{BUSY_EDGE}" stroke-width="2"/>', ""),
        ("foreign write", '<path d="M{x:.1f},{y:.1f} l14,14 m0,-14 l-14,14"'
         f' stroke="{RED}" stroke-width="2.5"/>', ""),
    ]
    for label, mark, attrs in items:
        room = 19 + svg.width(label) + 24
        if x > 10 and x + room > width - 10:
            x, y = 10.0, y + 20
        out.append(f"<g{attrs or ' class=' + chr(34) + 'bm-key' + chr(34)}>"
                   + mark.format(x=x, y=y)
                   + f'<text x="{x + 19:.1f}" y="{y + 11:.1f}">{esc(label)}</text></g>')
        x += room
    y += 30
    shown = rows * cols
    if shown < nblocks:
        out.append(f'<text class="small" x="10" y="{y:.1f}">blocks 0-{shown - 1} of {nblocks}'
                   " shown; the run never used the others</text>")
        y += 14
    for i, p in enumerate(panels):
        y = _panel(out, run, p, i, y, cols, rows, files)
    return _doc(width, y + 10, "".join(out), len(panels))


def _base_name(name: str) -> str:
    return name.removesuffix(" (deleted)")


def file_colour(path: str) -> str:
    """A file's own colour: its path hashed into the palette (the same in every run,
    whatever other files the run has and in whichever order they appeared)."""
    return svg.PALETTE[zlib.crc32(_base_name(path).encode()) % len(svg.PALETTE)]


def file_colours(names: dict[int, str]) -> dict[int, str]:
    """Inode -> colour for the files of one map: each its :func:`file_colour`; where two
    files' paths hash to one colour, the later path (in sorted order) takes the next
    palette colour nobody has, so every file of a map is told apart."""
    out: dict[int, str] = {}
    taken: set[str] = set()
    for ino in sorted(names, key=lambda i: (_base_name(names[i]), i)):
        if not ino:
            out[ino] = ANON
            continue
        i = svg.PALETTE.index(file_colour(names[ino]))
        for step in range(len(svg.PALETTE)):
            colour = svg.PALETTE[(i + step) % len(svg.PALETTE)]
            if colour not in taken:
                break
        taken.add(colour)
        out[ino] = colour
    return out


def _panel(out: list[str], run: Run, p: Panel, i: int, y: float, cols: int, rows: int,
           files: dict[int, str]) -> float:
    colour = RED if p.alarms else "#222"
    room = max(cols * CELL + 30, 740)  # the map's width less its margins
    caption = ("\N{WARNING SIGN} " if p.alarms else "") + p.caption
    out.append(f'<g class="bm-panel" data-panel="{i}" data-seq="{p.seq}"'
               f' data-alarm="{"yes" if p.alarms else "no"}">')
    out.append(f'<text x="10" y="{y + 14:.1f}" fill="{colour}" font-weight="bold">'
               f'<title>{esc(p.caption)}</title>{esc(fit(caption, room))}</text>')
    y += 20
    for a in p.alarms[:4]:
        out.append(f'<text x="22" y="{y + 11:.1f}" fill="{RED}">{esc(fit(a, room - 12))}'
                   "</text>")
        y += 14
    y += 4
    x0 = 10.0
    out.append(f'<rect x="{x0:.1f}" y="{y:.1f}" width="{cols * CELL}" height="{rows * CELL}"'
               ' fill="url(#bm-grid)" stroke="#ccc"/>')
    pinned = p.device.pinned()
    blocks = sorted(set(p.device.owner) | set(pinned) | set(p.device.foreign) | p.device.busy)
    for b in blocks:
        r, c = divmod(b, cols)
        if r >= rows:
            continue
        bx, by = x0 + c * CELL, y + r * CELL
        ino = p.device.owner.get(b)
        busy = b in p.device.busy
        tip = [f"block #{b}: " + (p.device.name(run, ino) if ino is not None else
                                  "busy: freed by its file, held for the device" if busy
                                  else "free")]
        if b in p.device.shared:
            tip.append("shared (reflink)")
        if b in pinned:
            tip.append("pinned by " + ", ".join(pinned[b]))
        tip += ["foreign write: " + w for w in p.device.foreign.get(b, [])]
        fill = files.get(ino, "#fff") if ino is not None else BUSY if busy else "#fff"
        attrs = (f' data-block="{b}" data-busy="{"yes" if busy else "no"}"'
                 f' data-file="{esc(p.device.name(run, ino) if ino is not None else "")}"'
                 f' data-pinned="{"yes" if b in pinned else "no"}"'
                 f' data-foreign="{"yes" if b in p.device.foreign else "no"}"')
        cell = [f'<g class="bm-block"{attrs}><title>{esc(chr(10).join(tip))}</title>'
                f'<rect x="{bx + 1:.1f}" y="{by + 1:.1f}" width="{CELL - 2}" height="{CELL - 2}"'
                f' fill="{fill}"/>']
        if busy:
            cell.append(f'<rect x="{bx + 2:.1f}" y="{by + 2:.1f}" width="{CELL - 4}"'
                        f' height="{CELL - 4}" fill="none" stroke="{BUSY_EDGE}"'
                        ' stroke-width="2"/>')
        elif b in pinned:
            dashed = ino is None
            cell.append(f'<rect x="{bx + 2:.1f}" y="{by + 2:.1f}" width="{CELL - 4}"'
                        f' height="{CELL - 4}" fill="url(#bm-hatch)"'
                        f' stroke="{RED if dashed else "#000"}" stroke-width="2.5"'
                        f'{" stroke-dasharray=" + chr(34) + "3 2" + chr(34) if dashed else ""}/>')
        cell.append(f'<text x="{bx + CELL / 2:.1f}" y="{by + CELL / 2 + 3.5:.1f}"'
                    ' text-anchor="middle" font-size="9" fill="#111" class="halo">'
                    f'{b}</text>')
        if b in p.device.shared:
            cell.append(f'<circle cx="{bx + CELL - 5:.1f}" cy="{by + 5:.1f}" r="2.5" fill="#000"/>')
        if b in p.device.foreign:
            cell.append(f'<path d="M{bx + 2:.1f},{by + 2:.1f} l{CELL - 4},{CELL - 4}'
                        f' m0,-{CELL - 4} l-{CELL - 4},{CELL - 4}" stroke="{RED}"'
                        ' stroke-width="2.5"/>')
        cell.append("</g>")
        out.append("".join(cell))
    out.append("</g>")
    return y + rows * CELL + 16


def _doc(width: float, height: float, body: str, panels: int) -> str:
    defs = (f'<pattern id="bm-grid" width="{CELL}" height="{CELL}" patternUnits="userSpaceOnUse">'
            f'<rect width="{CELL}" height="{CELL}" fill="#fafafa" stroke="#e2e2e2"/></pattern>'
            '<pattern id="bm-hatch" width="6" height="6" patternUnits="userSpaceOnUse"'
            ' patternTransform="rotate(45)"><rect width="6" height="6" fill="none"/>'
            '<line x1="0" y1="0" x2="0" y2="6" stroke="#000" stroke-width="2"'
            ' stroke-opacity="0.55"/></pattern>')
    return (f'<svg xmlns="http://www.w3.org/2000/svg" class="bm-map" width="{width:.0f}"'
            f' height="{height:.0f}" viewBox="0 0 {width:.0f} {height:.0f}"'
            f' data-panels="{panels}"><style>{svg.STYLE}</style><defs>{defs}</defs>'
            f'<rect width="100%" height="100%" fill="#fff"/>{body}</svg>\n')
