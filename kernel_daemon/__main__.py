"""``python -m kernel_daemon``: run the kernel daemon of one run directory."""

from __future__ import annotations

import argparse
import logging
import sys

from kernel_daemon.daemon import Daemon
from kernel_daemon.eventlog import convert
from kernel_daemon.kernel import Config
from kernel_daemon.policy import POLICIES
from kernel_daemon.syscalls.table import render_markdown


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The daemon's command line."""
    p = argparse.ArgumentParser(prog="python -m kernel_daemon", description=__doc__)
    p.add_argument("--run-dir", help="directory for the sockets and the event log")
    p.add_argument("--blocks", type=int, default=1024, help="pmem device size in blocks")
    p.add_argument("--block-size", type=int, default=4096, help="pmem block size in bytes")
    p.add_argument("--lease-break-time", type=float, default=45.0,
                   help="seconds a lease holder gets before a break is forced "
                        "(/proc/sys/fs/lease-break-time)")
    p.add_argument("--policy", choices=sorted(POLICIES), default="upstream")
    p.add_argument("--dio-time", type=float, default=0.5,
                   help="seconds a direct-I/O transfer keeps its buffer pinned")
    p.add_argument("--flavour", choices=("xfs", "ext4"), default="xfs")
    p.add_argument("--pmem-name", help="shared-memory name of the device (default: random)")
    p.add_argument("--event-log", help="write the JSON-lines event log here")
    p.add_argument("--fork-claim-timeout", type=float, default=10.0,
                   help="seconds a fork snapshot waits for its child after the parent died")
    p.add_argument("--ready-fd", type=int, help="write 'ready PID PMEM' to this fd once serving")
    p.add_argument("--convert-log", metavar="PATH",
                   help="convert the event log of a killed daemon to JSON lines and exit")
    p.add_argument("--syscall-table", action="store_true",
                   help="print the system-call support table (docs/syscalls.md) and exit")
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
    if not args.run_dir:
        print("--run-dir is required", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.WARNING, format="kernel_daemon: %(message)s")
    config = Config(
        run_dir=args.run_dir, nblocks=args.blocks, block_size=args.block_size,
        lease_break_time=args.lease_break_time, policy=args.policy, flavour=args.flavour,
        pmem_name=args.pmem_name, event_log=args.event_log,
        fork_claim_timeout=args.fork_claim_timeout, dio_time=args.dio_time,
    )
    Daemon(config).serve(args.ready_fd)
    return 0


if __name__ == "__main__":
    sys.exit(main())
