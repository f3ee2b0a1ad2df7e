"""``python -m kemu.kernel_daemon``: run the kernel daemon of one run directory."""

from __future__ import annotations

import argparse
import faulthandler
import json
import logging
import os
import signal
import sys
from dataclasses import fields

from kemu.kernel_daemon.boot import PolicyLoadError, describe, load_policy, promises_of
from kemu.kernel_daemon.eventlog import convert
from kemu.kernel_daemon.syscalls.table import render_markdown
from kemu.protocol.config import STACKS_FILE, DaemonConfig


def _private(path: str, flags: int) -> int:
    """Open ``path`` 0600, as every file of a run folder."""
    return os.open(path, flags, 0o600)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The daemon's command line: one option per :class:`DaemonConfig` field, with its
    default and help text from there."""
    p = argparse.ArgumentParser(prog="python -m kemu.kernel_daemon", description=__doc__)
    for f in fields(DaemonConfig):
        flag = f.metadata.get("flag")
        if flag is None:
            continue
        kind = {"int": int, "float": float}.get(str(f.type), str)
        p.add_argument(flag, dest=f.name, type=kind, default=f.default,
                       help=f"{f.metadata['help']} (default: {f.default})")
    p.add_argument("--ready-fd", type=int, help="write 'ready PID PMEM' to this fd once serving")
    p.add_argument("--convert-log", metavar="PATH",
                   help="convert the event log of a killed daemon to JSON lines and exit")
    p.add_argument("--syscall-table", action="store_true",
                   help="print the system-call support table (docs/syscalls.md) and exit")
    p.add_argument("--describe", action="store_true",
                   help="print the designs and flavours this daemon has, as JSON, and exit")
    p.add_argument("--check-policy", metavar="SPEC",
                   help="load the design SPEC (a name or PATH.py[:Class]), print its name "
                        "and promises as JSON and exit; 2 with the file and line when it "
                        "cannot be loaded")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Entry point."""
    args = parse_args(argv)
    if args.convert_log:
        print(convert(args.convert_log), "events")
        return 0
    if args.syscall_table:
        sys.stdout.write(render_markdown() + "\n")
        return 0
    if args.describe:
        print(json.dumps(describe()))
        return 0
    if args.check_policy:
        try:
            cls = load_policy(args.check_policy)
            print(json.dumps({"name": cls.name, "promises": promises_of(cls)}))
        except PolicyLoadError as exc:
            print(f"kernel_daemon: {exc}", file=sys.stderr)
            return 2
        return 0
    if not args.run_dir:
        print("--run-dir is required", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.WARNING, format="kernel_daemon: %(message)s")
    config = DaemonConfig(**{f.name: getattr(args, f.name) for f in fields(DaemonConfig)})
    try:
        config.validate()
        load_policy(config.policy)
    except (ValueError, PolicyLoadError) as exc:
        print(f"kernel_daemon: {exc}", file=sys.stderr)
        return 2
    from kemu.kernel_daemon.daemon import Daemon  # ZeroMQ only for a daemon that serves

    # SIGUSR2 writes every thread's stack to the run folder: what the launcher asks for
    # from a daemon that does not stop when told, before it kills it
    stacks = open(os.path.join(args.run_dir, STACKS_FILE), "w", opener=_private)  # noqa: SIM115
    faulthandler.register(signal.SIGUSR2, file=stacks, all_threads=True)

    Daemon(config).serve(args.ready_fd)
    return 0


if __name__ == "__main__":
    sys.exit(main())
