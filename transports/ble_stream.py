"""PURE link framing for MQTT-SN over a BLE GATT byte stream (chunking and reassembly).

Link format (for firmware authors)
==================================

GATT service (the defaults are the Nordic UART Service; all three UUIDs are configurable):

* service ``6E400001-B5A3-F393-E0A9-E50E24DCCA9E``, advertised by the node (complete or incomplete
  list of 128-bit service UUIDs in the advertising data, so a gateway can scan for it);
* RX characteristic ``6E400002-B5A3-F393-E0A9-E50E24DCCA9E``, *gateway -> node*: the gateway writes
  to it, without response when the characteristic has the Write Without Response property,
  otherwise with response;
* TX characteristic ``6E400003-B5A3-F393-E0A9-E50E24DCCA9E``, *node -> gateway*: the node sends
  notifications on it once the gateway has enabled them in its CCCD.

The node is the peripheral (it advertises, connectable); the gateway is the central.

Byte stream. In each direction the characteristic values form one byte stream made of whole
MQTT-SN frames, back to back, each exactly as MQTT-SN 1.2 section 5.2.1 encodes it: a length
header that counts the whole frame, either one byte (``0x02..0xFF``) or ``0x01`` followed by a
two-byte big-endian length (``0x0004..0xFFFF``). A frame is split into chunks of at most
(negotiated ATT MTU - 3) bytes, one chunk per write or notification; a frame larger than one chunk
simply continues in the next write or notification. The receiver reassembles by the length header.
The gateway asks for a large ATT MTU (BlueZ: 517); a node that keeps the default 23 gets 20-byte
chunks.

Rules:

1. A sender starts every frame at the start of a write or notification (it never packs the head of
   a frame behind the tail of another). Receivers nevertheless accept several whole frames in one
   write or notification.
2. A frame never straddles two connections. Both sides reset their reassembly buffer on every
   (re)connect, and a node must start each connection at a frame boundary: it sends nothing until
   the gateway has enabled TX notifications, and never continues a frame begun on an earlier
   connection. A side that fails to send a whole frame drops the connection.
3. A header that cannot be valid (first byte ``0x00``, a length below the smallest frame, i.e. 2
   in the one-byte form or 4 in the three-byte form, or a length above the receiver's maximum
   frame size, 1024 bytes by default on the gateway) makes the receiver drop everything it has
   buffered (a counted WARNING) and resynchronise at the start of the next write or
   notification (rule 1).
4. The gateway keeps each node's BLE address as its transport address; several nodes may be
   connected at once. Frames from one node are delivered in the order they were sent.

Nothing here imports asyncio, bleak or a clock: the transport (``transports/ble.py``) and the
simulated node radio (``firmware_sim/radios/ble_node.py``) drive it.
"""

from __future__ import annotations

import logging
from typing import Final

__all__ = [
    "ATT_DEFAULT_MTU",
    "ATT_HEADER_SIZE",
    "DEFAULT_MAX_FRAME_SIZE",
    "NUS_RX_UUID",
    "NUS_SERVICE_UUID",
    "NUS_TX_UUID",
    "StreamReassembler",
    "chunk_size_for_mtu",
    "split_frame",
]

_LOGGER = logging.getLogger(__name__)

NUS_SERVICE_UUID: Final = "6e400001-b5a3-f393-e0a9-e50e24dcca9e"
NUS_RX_UUID: Final = "6e400002-b5a3-f393-e0a9-e50e24dcca9e"  # gateway -> node (write)
NUS_TX_UUID: Final = "6e400003-b5a3-f393-e0a9-e50e24dcca9e"  # node -> gateway (notify)

ATT_DEFAULT_MTU: Final = 23  # Core spec Vol 3 Part F 3.2.8: the MTU before any exchange
ATT_HEADER_SIZE: Final = 3  # opcode + attribute handle in a Write Command / Notification
DEFAULT_MAX_FRAME_SIZE: Final = 1024
MAX_MQTTSN_FRAME: Final = 0xFFFF  # MQTT-SN 1.2 5.2.1: the three-byte form counts up to 65535

_LONG_FORM: Final = 0x01  # MQTT-SN 1.2 5.2.1: 0x01 means "the next two bytes are the length"
_MIN_SHORT: Final = 2  # length byte + MsgType
_MIN_LONG: Final = 4  # 0x01 + two length bytes + MsgType
_LOUD_RESYNCS: Final = 3  # WARNING for the first few resyncs of a stream, then every 100th


def chunk_size_for_mtu(mtu: int) -> int:
    """The payload of one write or notification for an ATT MTU (never below the 23-byte MTU's)."""
    return max(mtu, ATT_DEFAULT_MTU) - ATT_HEADER_SIZE


def split_frame(frame: bytes, chunk_size: int) -> list[bytes]:
    """Split one frame into the chunks a sender writes or notifies, in order."""
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    view = bytes(frame)
    return [view[i : i + chunk_size] for i in range(0, len(view), chunk_size)] or [b""]


class StreamReassembler:
    """Rebuilds whole MQTT-SN frames from the chunks of one connection's byte stream.

    Make a new one (or call :meth:`reset`) on every connection. ``feed`` returns the frames
    completed by a chunk, in order; an impossible length header drops the buffer (resync).
    """

    __slots__ = ("_buffer", "frames", "max_frame_size", "peer", "resyncs")

    def __init__(self, max_frame_size: int = DEFAULT_MAX_FRAME_SIZE, *, peer: str = "?") -> None:
        if not _MIN_SHORT <= max_frame_size <= MAX_MQTTSN_FRAME:
            raise ValueError(f"max_frame_size must be in 2..65535, got {max_frame_size}")
        self.max_frame_size = max_frame_size
        self.peer = peer  # only for log lines
        self.frames = 0
        self.resyncs = 0
        self._buffer = bytearray()

    def __repr__(self) -> str:
        return (
            f"<StreamReassembler peer={self.peer} buffered={len(self._buffer)} "
            f"frames={self.frames} resyncs={self.resyncs}>"
        )

    @property
    def buffered(self) -> int:
        """Bytes held of a frame not yet complete."""
        return len(self._buffer)

    def reset(self) -> None:
        """Forget any partial frame (a new connection starts at a frame boundary)."""
        self._buffer.clear()

    def feed(self, chunk: bytes) -> list[bytes]:
        """Add one written or notified chunk; return the frames it completes."""
        self._buffer += chunk
        out: list[bytes] = []
        while self._buffer:
            length = self._frame_length()
            if length is not None and length < 0:
                self._resync()
                break
            if length is None or len(self._buffer) < length:
                break
            out.append(bytes(self._buffer[:length]))
            del self._buffer[:length]
        self.frames += len(out)
        return out

    def _frame_length(self) -> int | None:
        """Length of the frame at the head of the buffer; None = need more bytes; -1 = invalid."""
        buf = self._buffer
        if buf[0] != _LONG_FORM:
            length, minimum = buf[0], _MIN_SHORT
        elif len(buf) < 3:
            return None
        else:
            length, minimum = int.from_bytes(buf[1:3], "big"), _MIN_LONG
        if length < minimum or length > self.max_frame_size:
            return -1
        return length

    def _resync(self) -> None:
        self.resyncs += 1
        level = (
            logging.WARNING
            if self.resyncs <= _LOUD_RESYNCS or self.resyncs % 100 == 0
            else logging.DEBUG
        )
        _LOGGER.log(
            level,
            "BLE stream from %s: invalid MQTT-SN length header %s (max frame %d); "
            "dropped %d buffered bytes to resynchronise (resync #%d)",
            self.peer,
            bytes(self._buffer[:8]).hex(),
            self.max_frame_size,
            len(self._buffer),
            self.resyncs,
        )
        self._buffer.clear()
