"""The agent library: what an agent program imports.

:mod:`kemu.agents.lib.api` (``System``, ``EmuSystem``, ``HostSystem``, ``make_system``) is the
system-call API on either target; :mod:`.runtime` the emulator's control channel,
:mod:`.mm` its DAX data path, :mod:`.verbs` the queue pairs, :mod:`.sigrec` real
signals with their siginfo (C extension ``kemu.agents.lib._sigrec``), :mod:`.peer` the
actors' mailboxes.  Nothing here knows scenarios, the launcher or the report.

Nothing is imported here on purpose: a program that needs only :mod:`.runtime` (the
spawn benchmark) does not pay for the rest.
"""
