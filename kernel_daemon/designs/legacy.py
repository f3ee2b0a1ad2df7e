"""``legacy``: before any fix.

Long-term pins of DAX memory are allowed and nobody is told; truncate and hole punch
free blocks the card still holds, and the next file to allocate gets them.  Every
method is the Linux default.
"""

from __future__ import annotations

from kemu.kernel_daemon.policy import Policy


class Legacy(Policy):
    """Linux as it was before the DAX pin fixes (4.14 and earlier)."""

    name = "legacy"
    source = "Linux before 'dax: fix dma vs truncate/hole-punch' (2017)"
