from setuptools import Extension, setup

setup(ext_modules=[Extension("agents.lib._sigrec", ["agents/lib/_sigrec.c"])])
