"""``python -m kemu``: the ``kemu`` command."""

from __future__ import annotations

import sys

from kemu.agents.launcher.cli import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
