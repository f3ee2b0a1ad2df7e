from setuptools import Extension, setup

setup(ext_modules=[Extension("kemu.agents.lib._sigrec", ["agents/lib/_sigrec.c"])])
