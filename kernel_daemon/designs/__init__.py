"""The built-in kernel designs, each in its own file written against
:mod:`kernel_daemon.policy` alone.

:data:`BUILTIN` names them; :func:`kernel_daemon.boot.load_policy` also loads a design
from a user's file by path.  ``docs/designs.md`` describes each one.
"""

from __future__ import annotations

from kernel_daemon.designs.busy_extent import BusyExtent
from kernel_daemon.designs.layout_lease import ExclusiveChecked, LayoutLeasePolicy
from kernel_daemon.designs.legacy import Legacy
from kernel_daemon.designs.map_direct import MapDirect, MapDirectSealed
from kernel_daemon.designs.mr_lease import MrLease
from kernel_daemon.designs.upstream import Upstream
from kernel_daemon.policy import Policy

#: every built-in design by name, in the order the matrix shows them
BUILTIN: dict[str, type[Policy]] = {cls.name: cls for cls in (
    Legacy, MapDirect, MapDirectSealed, LayoutLeasePolicy, ExclusiveChecked, MrLease,
    Upstream, BusyExtent,
)}

__all__ = ["BUILTIN"]
