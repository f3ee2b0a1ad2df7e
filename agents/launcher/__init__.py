"""The launcher: runs scenarios as real processes and checks their outcome.

:mod:`.runner` drives one scenario on one target under one policy, :mod:`.matrix` every
thread scenario under every policy, :mod:`.daemon_process` starts and stops a kernel
daemon, :mod:`.cli` is the command line behind ``launch.py``.
"""
