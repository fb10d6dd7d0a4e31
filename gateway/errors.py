"""Error types: each says whose fault it is and carries what is needed to fix the cause."""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "GatewayError",
    "LocalProtocolError",
    "ProtocolError",
    "RemoteProtocolError",
    "TransportError",
]


class GatewayError(Exception):
    """Base of every error this package raises on purpose."""


class ProtocolError(GatewayError):
    """An MQTT-SN rule was broken; never raised directly, use a subclass.

    ``return_code`` is the MQTT-SN return code to answer with, when an answer is possible.
    """

    def __init__(self, msg: str, *, return_code: int = 0x03) -> None:
        if type(self) is ProtocolError:
            raise TypeError("raise LocalProtocolError or RemoteProtocolError, not ProtocolError")
        super().__init__(msg)
        self.return_code = return_code


class LocalProtocolError(ProtocolError):
    """We (or our caller) tried to build or send something illegal."""


class RemoteProtocolError(ProtocolError):
    """The peer sent something illegal; the message says which type, field and what was expected."""


class ConfigError(GatewayError):
    """The configuration is invalid; ``key`` is the dotted path of the offending item."""

    def __init__(self, key: str, reason: str) -> None:
        super().__init__(f"{key}: {reason}" if key else reason)
        self.key = key
        self.reason = reason


class TransportError(GatewayError):
    """A link (socket, serial port, radio, broker connection) failed; raised ``from`` the cause."""
