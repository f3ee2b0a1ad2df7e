"""The scenario language and the scripted agent that speaks it.

The language: :mod:`.parse` (scenario files), :mod:`.expr` (the arguments' expressions),
:mod:`.transcript` and :mod:`.strace` (the transcript's formatting, which the report
reads too).  The agent: :mod:`.scripted` (``python -m kemu.agents.scenario.scripted``, one
process per actor), :mod:`.calls` (what a line may call) and :mod:`.link` (its link to
the launcher, whose other end the launcher holds).
"""
