"""The wire protocol and the Linux vocabulary shared by the kernel daemon and the agents.

This is the only package both ``kernel_daemon`` and ``agents`` import.
"""

from kemu.protocol import linux
from kemu.protocol.errors import ProtocolError, VersionMismatch, os_error
from kemu.protocol.wire import PROTOCOL_VERSION

__all__ = ["PROTOCOL_VERSION", "ProtocolError", "VersionMismatch", "linux", "os_error"]
