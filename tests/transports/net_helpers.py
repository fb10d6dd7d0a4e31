"""Small helpers for the socket tests of the transports."""

from __future__ import annotations

import socket

__all__ = ["have_ipv6_loopback"]


def have_ipv6_loopback() -> bool:
    """True when ::1 can be bound here."""
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True
