"""What a simulated node raises when it cannot do what it was asked."""

from __future__ import annotations

from gateway.errors import GatewayError
from gateway.protocol.constants import ReturnCode

__all__ = [
    "BatteryEmpty",
    "ConnectRefused",
    "GatewayLostError",
    "RequestRejected",
    "RequestTimeout",
    "SimNodeError",
]


class SimNodeError(GatewayError):
    """A simulated node could not do what it was asked."""


class ConnectRefused(SimNodeError):
    """CONNACK carried a non-zero return code."""

    def __init__(self, client_id: str, return_code: ReturnCode) -> None:
        super().__init__(f"{client_id}: CONNECT refused by the gateway: {return_code.name}")
        self.return_code = return_code


class RequestRejected(SimNodeError):
    """REGACK, PUBACK or SUBACK carried a non-zero return code."""

    def __init__(self, what: str, return_code: ReturnCode) -> None:
        super().__init__(f"{what} rejected by the gateway: {return_code.name}")
        self.what = what
        self.return_code = return_code


class GatewayLostError(SimNodeError):
    """The gateway stopped answering (N_RETRY retransmissions) or disconnected us."""


class RequestTimeout(SimNodeError, TimeoutError):
    """No answer within the node's timeout."""


class BatteryEmpty(SimNodeError):
    """The node's battery is empty: it does nothing any more."""
