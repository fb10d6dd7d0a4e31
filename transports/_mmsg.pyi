"""recvmmsg/sendmmsg for the UDP transport (Linux); the C source is transports/_mmsg.c."""

MAX_COUNT: int
MAX_BUFSIZE: int

def recv_batch(fd: int, count: int, bufsize: int, /) -> list[tuple[bytes, bytes]]:
    """Up to ``count`` (datagram, raw sockaddr) pairs from one non-blocking recvmmsg."""

def send_batch(
    fd: int, items: list[tuple[bytes, bytes]] | tuple[tuple[bytes, bytes], ...], /
) -> int:
    """Send (datagram, raw sockaddr) pairs with one non-blocking sendmmsg; how many went."""
