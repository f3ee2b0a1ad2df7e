"""The launcher's command line: the ``kemu`` command (``python -m kemu``), which is also
``python launch.py`` in a checkout."""

from __future__ import annotations

import argparse
import os
import sys

from kemu.agents.launcher import designs, hostfs
from kemu.agents.launcher.runner import Outcome, run_scenario
from kemu.agents.scenario import transcript
from kemu.agents.scenario.calls import check_calls
from kemu.agents.scenario.parse import ScenarioError, load

DEFAULT_REPORT = "out"


def normalised(outcome: Outcome) -> list[str]:
    """The transcript as host and emulator runs compare: without its header and verdict
    lines, PIDs as actor names, mapping addresses as ``ADDR1``... (see
    :func:`kemu.agents.scenario.transcript.comparable`)."""
    return transcript.comparable(outcome.transcript)


def cmd_run(args: argparse.Namespace) -> int:
    """Run one scenario on the chosen targets; compare transcripts when both ran."""
    try:
        scenario = load(args.file)
        check_calls(scenario)
    except (OSError, ScenarioError) as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 2
    targets = ["host", "emulator"] if args.target == "both" else [args.target]
    if args.policy is None:  # the scenario's own `set policy`, else upstream
        args.policy = str(scenario.settings.get("policy", "upstream"))
    if "emulator" in targets:
        try:
            designs.resolve(args.policy)  # refused before any process starts
        except designs.DesignError as exc:
            print(f"{PROG}: {exc}", file=sys.stderr)
            return 2
    outcomes = []
    skipped = False
    for target in list(targets):
        why = hostfs.unavailable(str(scenario.settings.get("host_fs", "run"))) \
            if target == "host" else None
        if why:  # the filesystem the scenario asks for is not to be had here
            print(f"{PROG}: skipped on the host: {why}")
            targets.remove(target)
            skipped = True
            continue
        outcomes.append(run_scenario(scenario, target, args.policy, out=sys.stdout,
                                     show_pids=not args.no_pids))
        print()
    for o in outcomes:
        print(f"run folder ({o.target}): {o.run_dir}  (open {o.run_dir}/index.html)")
    failed = [o for o in outcomes if not o.passed]
    for o in failed:
        print(f"{o.scenario} on {o.target}: {len(o.failures)} failure(s); run dir {o.run_dir}")
        for f in o.failures:
            print(f"  {f}")
    if len(outcomes) == 2:
        a, b = (normalised(o) for o in outcomes)
        if a != b:
            print("transcripts differ between host and emulator:")
            import difflib

            for line in difflib.unified_diff(a, b, "host", "emulator", lineterm=""):
                print("  " + line)
            return 1
        print("host and emulator transcripts are identical (PIDs and addresses aside)")
    if failed:
        return 1
    if skipped:
        # a target asked for did not run: not a pass (kselftest's KSFT_SKIP)
        print(f"{PROG}: not every target ran: exit status {KSFT_SKIP} (skipped)")
        return KSFT_SKIP
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    """Write a run folder's pictures and page again from its event logs (a run whose
    launcher was killed, or one copied from elsewhere)."""
    from kemu.agents import report

    folder = os.path.abspath(args.folder)
    if not os.path.isfile(os.path.join(folder, "launcher.jsonl")):
        print(f"{PROG}: {folder} is not a run folder (no launcher.jsonl)", file=sys.stderr)
        return 2
    records = report.eventlog.merge(folder)
    report.write_run(folder, records)
    print(f"report: {os.path.join(folder, 'index.html')}")
    return 0


def cmd_clean(args: argparse.Namespace) -> int:
    """Remove finished run folders beyond the newest ``--keep`` (and a day-old
    unfinished one)."""
    from kemu.agents.launcher import runs

    try:
        base = runs.runs_dir()
    except runs.RunsDirError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 2
    removed = runs.prune(args.keep, base)
    n, size = runs.usage(base)
    print(f"{base}: removed {len(removed)} run folder(s); {n} left, {size / 1e6:.1f} MB")
    return 0


PROG = "kemu"
#: the exit status of a run a target asked for could not have (the kernel selftests'
#: ``KSFT_SKIP``, tools/testing/selftests/kselftest.h): neither a pass nor a failure
KSFT_SKIP = 4


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``kemu`` command and of launch.py."""
    if argv is None:
        argv = sys.argv[1:]
    p = argparse.ArgumentParser(prog=PROG, description="Run multi-process scenarios "
                                "against the kernel emulator or the host kernel.  With no "
                                "arguments: matrix --report out.")
    sub = p.add_subparsers(dest="cmd")
    r = sub.add_parser("run", help="run one scenario file")
    r.add_argument("file")
    r.add_argument("--target", choices=("emulator", "host", "both"), default="emulator")
    r.add_argument("--policy", default=None,
                   help="the kernel design: a built-in name or PATH.py[:Class] of a Policy "
                        "subclass (docs/designs.md); default: the scenario's "
                        "'set policy', else upstream")
    r.add_argument("--no-pids", action="store_true", help="name actors without their PIDs")
    mx = sub.add_parser("matrix", help="every thread scenario under every policy, as a table")
    mx.add_argument("--jobs", type=int,
                    help="runs at once (default: three per core, at most 8)")
    mx.add_argument("--only", nargs="*", help="scenario files starting with these names")
    mx.add_argument("--policies", nargs="*", help="only these built-in designs (default: all)")
    mx.add_argument("--policy", action="append", metavar="PATH.py[:Class]", dest="extra",
                    help="also run a design from this file, in a column of its own "
                         "(repeatable; docs/designs.md)")
    mx.add_argument("--report", metavar="DIR", help="write an HTML report into DIR: a table "
                    "linking every run's sequence diagram, transcript and block map")
    ex = sub.add_parser("explore", help="a scenario under every design with a fault at every "
                        "step; the invariants checked after every run (docs/invariants.md)")
    ex.add_argument("file")
    ex.add_argument("--designs", nargs="*", metavar="DESIGN",
                    help="designs to explore: names or PATH.py[:Class] (default: every "
                         "built-in design)")
    ex.add_argument("--faults", default="kill",
                    help="comma-separated fault kinds: kill (each actor after each line), "
                         "stop (until its next line), delay (0.3 s), kernel (the daemon); "
                         "default: kill")
    ex.add_argument("--victims", nargs="*", metavar="ACTOR",
                    help="only these actors are faulted (default: all)")
    ex.add_argument("--jobs", type=int, help="runs at once (default: three per core, at most 8)")
    ex.add_argument("--report", metavar="DIR", help="write the exploration's page into DIR")
    ex.add_argument("--out", metavar="DIR", help="write reproducers into DIR")
    ex.add_argument("--target", choices=("emulator", "host"), default="emulator",
                    help="host: the host kernel is the one design (runs one at a time)")
    ex.add_argument("--no-minimize", action="store_true",
                    help="do not cut violations down to reproducers")
    fd = sub.add_parser("find", help="generate random multi-process programs, check the "
                        "invariants after every run, shrink what breaks them to a "
                        "reproducer (docs/find.md)")
    fd.add_argument("--designs", nargs="*", metavar="DESIGN",
                    help="designs to run every program under: names or PATH.py[:Class] "
                         "(default: every built-in design)")
    fd.add_argument("--seed", type=int, default=0, help="the campaign's seed (default 0): "
                    "the same seed draws the same programs and finds the same reproducers")
    fd.add_argument("--programs", type=int, metavar="N", help="stop after N programs")
    fd.add_argument("--budget", metavar="TIME", help="stop drawing after TIME (90, 90s, "
                    "10m, 2h); default, without --programs: 160 programs")
    fd.add_argument("--jobs", type=int, help="programs at once (default: three per core, "
                    "at most 8; with --scheduler: two per worker thread)")
    fd.add_argument("--corpus", metavar="DIR", help="a corpus of interesting programs, "
                    "run first and kept between campaigns (at most 200)")
    fd.add_argument("--out", metavar="DIR", help="write every reproducer (and its run "
                    "folder) into DIR")
    fd.add_argument("--scheduler", metavar="ADDRESS", help="run the programs on the workers "
                    "of a Dask distributed scheduler (tcp://HOST:PORT; needs "
                    "kemu[distributed])")
    fd.add_argument("--start-chunk", type=int, default=0, metavar="I",
                    help="the first chunk of 16 programs to draw (go on where a campaign "
                         "of the same seed stopped; a reproducer's title names its chunk)")
    fd.add_argument("--max-steps", type=int, default=24, metavar="N",
                    help="lines a program draws at most (default 24)")
    fd.add_argument("--promised-only", action="store_true",
                    help="check foreign writes only where the design promises none, as "
                         "explore does (default: under every design)")
    fd.add_argument("--no-minimize", action="store_true",
                    help="do not shrink violations to reproducers")
    rp = sub.add_parser("report", help="write a run folder's pictures and page again from "
                        "its event logs")
    rp.add_argument("folder", help="a run folder (its path is printed after every run)")
    cl = sub.add_parser("clean", help="remove old run folders (they live under $KEMU_RUNS, "
                        "default /tmp/kemu-UID)")
    cl.add_argument("--keep", type=int, default=0, metavar="N",
                    help="keep the newest N finished runs (default 0)")
    if not argv:  # the main job: the threads' scenarios under every design, as a report
        argv = ["matrix", "--report", DEFAULT_REPORT]
    args = p.parse_args(argv)
    if args.cmd == "matrix":
        from kemu.agents.launcher import matrix

        return matrix.main(jobs=args.jobs, only=args.only, report=args.report,
                           policies=args.policies, extra=args.extra)
    if args.cmd == "explore":
        from kemu.agents.launcher import explore

        kinds = [k.strip() for k in args.faults.split(",") if k.strip()]
        return explore.main(args.file, args.designs, kinds, args.victims, args.jobs,
                            args.report, args.out, not args.no_minimize, target=args.target)
    if args.cmd == "find":
        from kemu.agents.launcher import find

        return find.main(args.designs, args.seed, args.programs, args.budget, args.jobs,
                         args.corpus, args.out, args.scheduler, args.promised_only,
                         not args.no_minimize, args.max_steps, args.start_chunk)
    if args.cmd == "report":
        return cmd_report(args)
    if args.cmd == "clean":
        return cmd_clean(args)
    if args.cmd == "run":
        if args.target == "both":
            args.no_pids = True
        return cmd_run(args)
    p.print_help()
    return 2
