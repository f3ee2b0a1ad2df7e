"""The launcher's command line (``launch.py``)."""

from __future__ import annotations

import argparse
import os
import sys

from kemu.agents.launcher import designs
from kemu.agents.launcher.runner import Outcome, run_scenario
from kemu.agents.scenario import transcript
from kemu.agents.scenario.parse import ScenarioError, load

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
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
    except (OSError, ScenarioError) as exc:
        print(f"launch.py: {exc}", file=sys.stderr)
        return 2
    targets = ["host", "emulator"] if args.target == "both" else [args.target]
    if "emulator" in targets:
        try:
            designs.resolve(args.policy)  # refused before any process starts
        except designs.DesignError as exc:
            print(f"launch.py: {exc}", file=sys.stderr)
            return 2
    outcomes = []
    for target in targets:
        outcomes.append(run_scenario(scenario, target, args.policy, out=sys.stdout,
                                     show_pids=not args.no_pids or len(targets) == 1))
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
    return 1 if failed else 0


def main(argv: list[str]) -> int:
    """Entry point of launch.py."""
    p = argparse.ArgumentParser(prog="launch.py", description="Run multi-process scenarios "
                                "against the kernel emulator or the host kernel.")
    sub = p.add_subparsers(dest="cmd")
    r = sub.add_parser("run", help="run one scenario file")
    r.add_argument("file")
    r.add_argument("--target", choices=("emulator", "host", "both"), default="emulator")
    r.add_argument("--policy", default="upstream",
                   help="the kernel design: a built-in name or PATH.py[:Class] of a Policy "
                        "subclass (docs/designs.md)")
    r.add_argument("--no-pids", action="store_true", help="name actors without their PIDs")
    mx = sub.add_parser("matrix", help="every thread scenario under every policy, as a table")
    mx.add_argument("--jobs", type=int, default=4, help="runs at once")
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
    if args.cmd == "run":
        if args.target == "both":
            args.no_pids = True
        return cmd_run(args)
    p.print_help()
    return 2
