from setuptools import Extension, setup

setup(ext_modules=[Extension("agents._sigrec", ["agents/_sigrec.c"])])
