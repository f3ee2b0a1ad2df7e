"""``kemu find``: generate multi-process programs, check the invariants, shrink what
breaks them (docs/find.md).  The grammar is :mod:`.grammar`, the campaign :mod:`.engine`."""

from kemu.agents.launcher.find.engine import Campaign, Found, Reproducer, campaign, main

__all__ = ["Campaign", "Found", "Reproducer", "campaign", "main"]
