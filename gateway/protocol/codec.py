"""Bytes to MQTT-SN 1.2 messages and back: ``decode``, ``encode`` and stream ``frame_length``.

``decode`` raises only ``RemoteProtocolError`` (the peer sent something illegal); ``encode`` raises
only ``LocalProtocolError`` (we asked for something that cannot go on the wire). Section numbers
like [§5.4.12] point to the MQTT-SN 1.2 specification, P-numbers to the pitfalls in
``docs/mqtt-sn-1.2-reference.md`` §7.

This module is the codec's public face; the code lives in three modules it re-exports from:
``wire`` (precomputed tables, structs, shared checks, ``frame_length``), ``decoders`` (``decode``,
``peek_publish``, one decoder per MsgType) and ``encoders`` (``encode``, one encoder per class).
Import from here (or from ``gateway.protocol``), not from those.
"""

from __future__ import annotations

from gateway.protocol.decoders import decode, peek_publish
from gateway.protocol.encoders import encode
from gateway.protocol.wire import MAX_FRAME_SIZE, frame_length

# isort: split
# Private, but tests/protocol checks through them that the hot-path builders are not constructors.
from gateway.protocol.decoders import _make_puback as _make_puback
from gateway.protocol.decoders import _make_publish as _make_publish
from gateway.protocol.decoders import _make_pubrec as _make_pubrec

__all__ = ["MAX_FRAME_SIZE", "decode", "encode", "frame_length", "peek_publish"]
