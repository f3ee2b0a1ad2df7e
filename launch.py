#!/usr/bin/env python3
"""The launcher's front door: ``python launch.py run FILE [--target emulator|host]``.

With no arguments it runs the bundled example scenario on both targets and compares
the transcripts.  The logic lives in ``kemu.agents.launcher``.
"""

from __future__ import annotations

import sys

from kemu.agents.launcher.cli import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
