"""The C extension of the agent library (the rest of the build is in pyproject.toml)."""

from setuptools import Extension, setup

setup(ext_modules=[Extension("kemu.agents.lib._sigrec", ["agents/lib/_sigrec.c"])])
