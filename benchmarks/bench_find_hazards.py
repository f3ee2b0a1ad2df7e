#!/usr/bin/env python3
"""How long ``kemu find`` takes to find a design's hazard from a fresh corpus, over seeds.

For each seed, a campaign under one design (``--design``, default ``legacy``) runs until
the first foreign write of the chosen pin kind (``--kind longterm``: RDMA through a
memory region, the S5 and S6 hazards; ``shortterm``: direct I/O, S5b), or until
``--max-programs``.  It prints, per seed, the programs and seconds it took and the size
of the shrunk reproducer (``--shrink``), then the median and the worst.  ``--unguided``
draws every program afresh (no corpus mutation): the baseline of the guided search,
measured in the same way, is the ratio printed with ``--compare``.

``--shape s6`` counts only a foreign write whose program shared the region's uverbs
context with another process (the registrar passed it, ``sendfd`` or ``fork``, or had
received it, ``recvfd``) before the process that registered it died (``exit`` or
``!kill``), and only if the write needs that death (the program run again without it
breaks nothing): the S6 thread scenario, rather than the shorter ways a design may have
to the same hazard (under ``map-direct-sealed``, ``munmap`` or ``exec`` of the mapping
with the region still registered: the seal goes with the mapping).

    python benchmarks/bench_find_hazards.py --design legacy --seeds 0 1 2 3 4
    python benchmarks/bench_find_hazards.py --design map-direct-sealed --max-programs 4000
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)

from _common import loadavg, result_line, table  # noqa: E402

from kemu.agents.launcher import zygote  # noqa: E402
from kemu.agents.launcher.find import engine, grammar  # noqa: E402


def passed_then_died(text: str) -> bool:
    """Was a registering process's uverbs context shared with another process (the
    registrar passed it on, ``sendfd`` or ``fork``, or had received it, ``recvfd``)
    before that process ended (``exit``, ``!kill``)?  Either way the context, and the
    pins with it, outlive the process that mapped the file."""
    lines = [ln for ln in text.splitlines() if ln and not ln.startswith(("#", "set "))]
    for i, ln in enumerate(lines):
        m = re.match(r"^(\w+): mr\d+ = ibv_reg_mr\((ctx\d+),", ln)
        if not m:
            continue
        actor, ctx = m.groups()
        rest = lines[i + 1:]
        died = next((j for j, x in enumerate(rest)
                     if x in (f"!kill {actor}", f"{actor}: exit(0)")), None)
        if died is None:
            continue
        if f"{actor}: {ctx} = recvfd()" in lines[:i]:
            return True
        gave = next((j for j, x in enumerate(rest) if x.startswith(f"{actor}: fork()")
                     or (x.startswith(f"{actor}: sendfd(") and x.endswith(f", {ctx})"))),
                    None)
        if gave is not None and gave < died:
            return True
    return False


def death_needed(f: engine.Found) -> bool:
    """Does the foreign write of ``f`` need the registrar's death: run again with every
    registering process's ``exit`` and ``!kill`` taken out, does it break nothing?  A
    program that passed its context, then wrote into a block the ``munmap`` or ``exec``
    way freed and only then ended its registrar has the S6 lines, not the S6 hazard."""
    lines = f.text.splitlines()
    regs = {m.group(1) for ln in lines if (m := re.match(r"^(\w+): mr\d+ = ibv_reg_mr\(", ln))}
    cut = [ln for ln in lines if not any(ln in (f"!kill {a}", f"{a}: exit(0)") for a in regs)]
    _, violations, _ = engine.run_program("\n".join(cut) + "\n", f.spec, "s6-check")
    return not engine.breaks(violations, f)


def one(design: str, seed: int, kind: str, shape: str, limit: int, guided: bool,
        shrink: bool, out: str | None = None) -> dict[str, object]:
    """One seed's campaign until the hazard: programs, seconds, reproducer size."""
    hit: list[tuple[engine.Found, int, float]] = []

    def on_found(f: engine.Found, programs: int, seconds: float) -> None:
        if f.design == design and f.kind == kind and (
                shape != "s6" or (passed_then_died(f.text) and death_needed(f))):
            hit.append((f, programs, seconds))

    camp = engine.campaign([design], seed, programs=limit, minimize=False, progress=None,
                           guided=guided, on_found=on_found, until=lambda _: bool(hit))
    if not hit:
        return {"seed": seed, "programs": None, "seconds": None, "lines": None,
                "ran": camp.programs, "wall": round(camp.wall, 1)}
    f, programs, seconds = min(hit, key=lambda h: (h[0].chunk, h[0].index))
    lines: int | None = None
    if out is not None:
        os.makedirs(out, exist_ok=True)
        with open(os.path.join(out, f"found-s{seed}-{design}.scn"), "w", encoding="utf-8") as fh:
            fh.write(f.text)
    if shrink:
        with tempfile.TemporaryDirectory(prefix="kemu-bench-find-") as tmp:
            # what the chunk drew before f broke nothing; a mutant is shrunk on its genes
            chunk = engine.Chunk(f.chunk, [], [], [], 0.0)
            rep = engine.write_one(f, seed, chunk, out or tmp, engine.CHUNK,
                                   grammar.MAX_STEPS)
            lines = rep.lines
    return {"seed": seed, "programs": programs, "seconds": round(seconds, 1),
            "lines": lines, "ran": camp.programs, "wall": round(camp.wall, 1),
            "mutated": f.mutated}


def _summary(rows: list[dict[str, object]], key: str) -> tuple[object, object]:
    vals = [r[key] for r in rows]
    if any(v is None for v in vals):
        return "not found in all", max((v for v in vals if v is not None), default=None)
    nums = [float(v) for v in vals if isinstance(v, int | float)]
    return statistics.median(nums), max(nums)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--design", default="legacy")
    ap.add_argument("--kind", default="longterm", choices=["longterm", "shortterm"])
    ap.add_argument("--shape", default="any", choices=["any", "s6"])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--max-programs", type=int, default=3000)
    ap.add_argument("--unguided", action="store_true")
    ap.add_argument("--compare", action="store_true", help="guided and unguided both")
    ap.add_argument("--shrink", action="store_true", help="shrink what is found")
    ap.add_argument("--out", help="keep what is found (and its reproducer) in this directory")
    args = ap.parse_args()
    started, load0 = time.monotonic(), loadavg()
    modes = [True, False] if args.compare else [not args.unguided]
    medians: dict[str, object] = {}
    for guided in modes:
        name = "guided" if guided else "unguided"
        rows = []
        for s in args.seeds:
            rows.append(one(args.design, s, args.kind, args.shape, args.max_programs,
                            guided, args.shrink, args.out))
            print(f"  {name} seed {s}: {rows[-1]}", file=sys.stderr, flush=True)
        print(f"bench_find_hazards: {name}, {args.kind} foreign write under {args.design}"
              f"{' (S6 shape)' if args.shape == 's6' else ''}, at most "
              f"{args.max_programs} programs a seed")
        print(table(["seed", "programs to find", "seconds", "reproducer lines", "ran"],
                    [[r["seed"], r["programs"] or "-", r["seconds"] or "-",
                      r["lines"] or "-", r["ran"]] for r in rows]))
        pm, pw = _summary(rows, "programs")
        sm, sw = _summary(rows, "seconds")
        print(f"median {pm} programs / {sm} s; worst {pw} programs / {sw} s\n")
        medians[name] = pm
    if args.compare and all(isinstance(v, float) for v in medians.values()):
        g, u = float(str(medians["guided"])), float(str(medians["unguided"]))
        print(f"unguided/guided median programs: {u / g:.2f} (higher: guidance helps)")
    print(f"elapsed {time.monotonic() - started:.1f} s; load {load0} -> {loadavg()}")
    zygote.shutdown()
    print(result_line({"bench": "find_hazards", "design": args.design, "kind": args.kind,
                       "shape": args.shape, "medians": medians}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
