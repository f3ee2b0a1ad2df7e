"""Everything that runs outside the kernel daemon, in four homes.

* :mod:`kemu.agents.lib`: the agent library, what an agent program imports to make system
  calls on either target (:class:`kemu.agents.lib.api.System`).
* :mod:`kemu.agents.scenario`: the scenario language (parser, expressions, the transcript's
  strace-like formatting) and the scripted agent that executes scenario lines.
* :mod:`kemu.agents.launcher`: starts the kernel daemon and the actors, drives a scenario,
  runs the matrix of scenarios and policies (``launch.py`` is its front door).
* :mod:`kemu.agents.report`: the pictures and pages of a run, computed from its event log
  alone.

``tests/test_layering.py`` keeps the imports between them one-way.
"""
