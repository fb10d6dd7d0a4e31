"""Build the optional C extension ``transports._mmsg`` (recvmmsg/sendmmsg; Linux only).

Everything else about the distribution is in pyproject.toml. ``optional=True``: without a C
compiler the install goes on without it and the UDP transport reads with ``recvfrom``.
"""

import sys

from setuptools import Extension, setup

ext_modules = []
if sys.platform == "linux":
    ext_modules.append(Extension("transports._mmsg", ["transports/_mmsg.c"], optional=True))

setup(ext_modules=ext_modules)
