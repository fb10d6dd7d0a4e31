"""Fast, seeded fuzz input: valid frames of every MQTT-SN type, their mutations, random bytes.

Hypothesis finds minimal counterexamples but draws a few thousand examples a second; a flood of a
million datagrams needs something ~100x faster. ``FrameFactory(seed)`` builds real messages with
the message classes and ``gateway.protocol.encode`` from one ``random.Random``, so a run is
reproducible from its seed, and mutates them the way radios and buggy firmware do: bit flips,
inserted / deleted / overwritten bytes, truncation, extension, a wrong Length, the other length
form, a swapped MsgType, two frames spliced or glued, forwarder (0xFE) wrapping (nested too), and
huge declared or actual lengths.

Values are biased towards what reaches deep into the gateway: small topic ids (a node's first
registered ids are 1, 2, ...), short keep-alives (so sessions are reaped during a run), short
topic names and a few client ids that recur (so sessions are reused, taken over and woken).
"""

from __future__ import annotations

import random
from collections.abc import Callable

from gateway.protocol import (
    Advertise,
    Connack,
    Connect,
    Disconnect,
    Encapsulated,
    GwInfo,
    Message,
    MsgType,
    Pingreq,
    Pingresp,
    Puback,
    Pubcomp,
    Publish,
    Pubrec,
    Pubrel,
    QoS,
    Regack,
    Register,
    ReturnCode,
    SearchGw,
    Suback,
    Subscribe,
    TopicIdType,
    Unsuback,
    Unsubscribe,
    WillMsg,
    WillMsgReq,
    WillMsgResp,
    WillMsgUpd,
    WillTopic,
    WillTopicReq,
    WillTopicResp,
    WillTopicUpd,
    encode,
    short_name_to_id,
)

__all__ = ["ALL_TYPES", "MUTATIONS", "FrameFactory"]

#: Every MsgType, the forwarder encapsulation included.
ALL_TYPES: tuple[MsgType, ...] = tuple(MsgType)

_QOS012 = (QoS.AT_MOST_ONCE, QoS.AT_LEAST_ONCE, QoS.EXACTLY_ONCE)
_ALL_QOS = (*_QOS012, QoS.MINUS_ONE)
_TOPIC_TYPES = tuple(TopicIdType)
_WORDS = ("a", "b", "sensor", "temp", "x", "+", "#", "$SYS", "fuzz", "ü", "€", "", "🙂")
_RESERVED_TYPES = (0x03, 0x11, 0x19, 0x1E, 0x7F, 0xFD, 0xFF)


class FrameFactory:
    """Random valid messages of every type, their encodings, mutations and noise, from one seed."""

    def __init__(
        self, seed: int, *, client_ids: int = 5000, pool: int = 4096, refresh: float = 0.1
    ) -> None:
        self.rng = random.Random(seed)
        self.client_ids = client_ids  # how many distinct ClientIds CONNECT / PINGREQ draw from
        # datagram() draws valid frames from a rolling pool (a fresh one replaces the drawn one
        # with probability ``refresh``): encoding a new message costs 3x a mutation, and the
        # flood's sender must outrun the gateway.
        self.pool_size = pool
        self.refresh = refresh
        self._pool: list[bytes] = []
        self._builders: dict[MsgType, Callable[[], Message]] = {
            MsgType.ADVERTISE: lambda: Advertise(self._u8(), self._u16()),
            MsgType.SEARCHGW: lambda: SearchGw(self._u8()),
            MsgType.GWINFO: lambda: GwInfo(self._u8(), self._bytes(8)),
            MsgType.CONNECT: self._connect,
            MsgType.CONNACK: lambda: Connack(self._return_code()),
            MsgType.WILLTOPICREQ: WillTopicReq,
            MsgType.WILLTOPIC: lambda: self._will_topic(WillTopic),
            MsgType.WILLMSGREQ: WillMsgReq,
            MsgType.WILLMSG: lambda: WillMsg(self._payload()),
            MsgType.REGISTER: lambda: Register(self._topic_id(), self._u16(), self._topic()),
            MsgType.REGACK: lambda: Regack(self._topic_id(), self._u16(), self._return_code()),
            MsgType.PUBLISH: self._publish,
            MsgType.PUBACK: lambda: Puback(self._topic_id(), self._msg_id(), self._return_code()),
            MsgType.PUBCOMP: lambda: Pubcomp(self._msg_id()),
            MsgType.PUBREC: lambda: Pubrec(self._msg_id()),
            MsgType.PUBREL: lambda: Pubrel(self._msg_id()),
            MsgType.SUBSCRIBE: self._subscribe,
            MsgType.SUBACK: lambda: Suback(
                self._topic_id(), self._msg_id(), self._return_code(), self.rng.choice(_QOS012)
            ),
            MsgType.UNSUBSCRIBE: self._unsubscribe,
            MsgType.UNSUBACK: lambda: Unsuback(self._msg_id()),
            MsgType.PINGREQ: lambda: Pingreq(
                self._client_id() if self.rng.random() < 0.3 else None
            ),
            MsgType.PINGRESP: Pingresp,
            MsgType.DISCONNECT: lambda: Disconnect(
                self.rng.randrange(1, 30) if self.rng.random() < 0.3 else None
            ),
            MsgType.WILLTOPICUPD: lambda: self._will_topic(WillTopicUpd),
            MsgType.WILLTOPICRESP: lambda: WillTopicResp(self._return_code()),
            MsgType.WILLMSGUPD: lambda: WillMsgUpd(self._payload()),
            MsgType.WILLMSGRESP: lambda: WillMsgResp(self._return_code()),
            MsgType.ENCAPSULATED: self._encapsulated,
        }
        assert set(self._builders) == set(ALL_TYPES), "a message type has no generator"
        self._mutations: tuple[Callable[[bytes], bytes], ...] = tuple(
            getattr(self, f"_m_{name}") for name in MUTATIONS
        )
        self._recent: list[bytes] = [b"\x02\x16"]  # splice partners

    # -- public -------------------------------------------------------------------------------

    def message(self, msg_type: MsgType | None = None) -> Message:
        """A valid message of ``msg_type`` (random type if None)."""
        if msg_type is None:
            msg_type = self.rng.choice(ALL_TYPES)
        return self._builders[msg_type]()

    def frame(self, msg_type: MsgType | None = None) -> bytes:
        """The encoding of a valid message of ``msg_type`` (random type if None)."""
        frame = encode(self.message(msg_type))
        if len(self._recent) < 64:
            self._recent.append(frame)
        else:
            self._recent[self.rng.randrange(64)] = frame
        return frame

    def mutate(self, frame: bytes, rounds: int | None = None) -> bytes:
        """``frame`` after 1-3 (or ``rounds``) random mutations."""
        rng = self.rng
        mutations = self._mutations
        for _ in range(rounds if rounds is not None else rng.choice((1, 1, 1, 2, 3))):
            frame = rng.choice(mutations)(frame)
        return frame

    def mutated(self) -> bytes:
        """A mutation of a fresh valid frame of a random type."""
        return self.mutate(self.frame())

    def noise(self, max_size: int = 80) -> bytes:
        """Random bytes, sometimes starting with a plausible length header."""
        rng = self.rng
        data = self._bytes(max_size)
        if data and rng.random() < 0.5:
            data = bytes((len(data) & 0xFF,)) + data[1:]
        return data

    def pooled(self) -> bytes:
        """A valid frame from the rolling pool (see ``refresh``)."""
        pool = self._pool
        if len(pool) < self.pool_size:
            pool.append(self.frame())
            return pool[-1]
        i = self.rng.randrange(len(pool))
        if self.rng.random() < self.refresh:
            pool[i] = self.frame()
        return pool[i]

    def datagram(self, mutated: float = 0.5, valid: float = 0.3) -> bytes:
        """One datagram: mutated valid frame, valid frame or noise, with those probabilities."""
        roll = self.rng.random()
        if roll < mutated:
            return self.mutate(self.pooled())
        if roll < mutated + valid:
            return self.pooled()
        return self.noise()

    # -- field values -------------------------------------------------------------------------

    def _u8(self) -> int:
        return self.rng.randrange(256)

    def _u16(self) -> int:
        return self.rng.randrange(65536)

    def _msg_id(self) -> int:
        return self.rng.randrange(1, 20) if self.rng.random() < 0.5 else self._u16()

    def _topic_id(self) -> int:
        return self.rng.randrange(0, 12) if self.rng.random() < 0.6 else self._u16()

    def _short_id(self) -> int:
        """A short topic name's TopicId: two ASCII letters mostly, else any valid 2-byte UTF-8."""
        rng = self.rng
        if rng.random() < 0.7:
            return (rng.randrange(0x61, 0x7B) << 8) | rng.randrange(0x61, 0x7B)  # "ab".."zz"
        if rng.random() < 0.5:
            return (rng.randrange(1, 0x80) << 8) | rng.randrange(1, 0x80)
        return short_name_to_id(chr(rng.randrange(0x80, 0x800)))

    def _bytes(self, max_size: int) -> bytes:
        return self.rng.randbytes(self.rng.randrange(max_size + 1))

    def _payload(self) -> bytes:
        rng = self.rng
        roll = rng.random()
        if roll < 0.85:
            return rng.randbytes(rng.randrange(24))
        if roll < 0.97:
            return rng.randbytes(rng.randrange(240, 300))  # straddles the long Length form
        return rng.randbytes(rng.randrange(900, 1100))  # around the UDP max_frame (1024)

    def _return_code(self) -> ReturnCode:
        value = self.rng.choice((0, 0, 1, 2, 3, self._u8()))
        return ReturnCode(value)

    def _text(self) -> str:
        rng = self.rng
        if rng.random() < 0.9:
            return "/".join(rng.choice(_WORDS) for _ in range(rng.randrange(1, 5)))
        return "".join(chr(rng.randrange(1, 0x3000)) for _ in range(rng.randrange(1, 300)))

    def _topic(self) -> str:
        text = self._text()
        return text or "t"

    def _client_id(self) -> str:
        rng = self.rng
        if rng.random() < 0.95:
            return f"fz{rng.randrange(self.client_ids)}"
        return self._topic()[:40]  # odd characters, wildcards, '/', long ones

    # -- messages -----------------------------------------------------------------------------

    def _connect(self) -> Connect:
        rng = self.rng
        # Mostly short keep-alives, so sessions are reaped (lost) while the flood goes on.
        duration = rng.randrange(1, 20) if rng.random() < 0.8 else self._u16()
        return Connect(
            self._client_id(), duration, rng.random() < 0.2, clean_session=rng.random() < 0.8
        )

    def _will_topic(self, cls: type[WillTopic | WillTopicUpd]) -> WillTopic | WillTopicUpd:
        if self.rng.random() < 0.1:
            return cls()
        return cls(self._topic(), self.rng.choice(_QOS012), self.rng.random() < 0.2)

    def _publish(self) -> Publish:
        rng = self.rng
        qos = rng.choice(_ALL_QOS)
        if qos is QoS.MINUS_ONE:
            tit = rng.choice((TopicIdType.PREDEFINED, TopicIdType.SHORT_NAME))
        else:
            tit = rng.choice(_TOPIC_TYPES)
        topic_id = self._short_id() if tit is TopicIdType.SHORT_NAME else self._topic_id()
        msg_id = self._msg_id() if qos in (QoS.AT_LEAST_ONCE, QoS.EXACTLY_ONCE) else 0
        return Publish(
            topic_id,
            self._payload(),
            qos,
            msg_id,
            tit,
            dup=rng.random() < 0.1,
            retain=rng.random() < 0.05,
        )

    def _subscribe(self) -> Subscribe:
        rng = self.rng
        tit = rng.choice(_TOPIC_TYPES)
        if tit is TopicIdType.NORMAL:
            return Subscribe(self._msg_id(), tit, self._topic(), 0, rng.choice(_QOS012))
        topic_id = self._short_id() if tit is TopicIdType.SHORT_NAME else self._topic_id()
        return Subscribe(self._msg_id(), tit, "", topic_id, rng.choice(_QOS012))

    def _unsubscribe(self) -> Unsubscribe:
        tit = self.rng.choice(_TOPIC_TYPES)
        if tit is TopicIdType.NORMAL:
            return Unsubscribe(self._msg_id(), tit, self._topic())
        topic_id = self._short_id() if tit is TopicIdType.SHORT_NAME else self._topic_id()
        return Unsubscribe(self._msg_id(), tit, "", topic_id)

    def _encapsulated(self) -> Encapsulated:
        rng = self.rng
        inner_type = rng.choice(ALL_TYPES[:-1])  # nesting comes from the 0xFE mutation
        node_id = rng.randbytes(rng.choice((1, 2, 2, 8, rng.randrange(0, 20))))
        return Encapsulated(node_id, encode(self.message(inner_type)), rng.randrange(4))

    # -- mutations (names listed in MUTATIONS) ------------------------------------------------

    def _m_bit_flip(self, frame: bytes) -> bytes:
        if not frame:
            return frame
        data = bytearray(frame)
        for _ in range(self.rng.choice((1, 1, 2, 3))):
            data[self.rng.randrange(len(data))] ^= 1 << self.rng.randrange(8)
        return bytes(data)

    def _m_byte_set(self, frame: bytes) -> bytes:
        if not frame:
            return frame
        i = self.rng.randrange(len(frame))
        value = self.rng.choice((0x00, 0x01, 0x7E, 0x7D, 0xC0, 0xDB, 0xFE, 0xFF, self._u8()))
        return frame[:i] + bytes((value,)) + frame[i + 1 :]

    def _m_insert(self, frame: bytes) -> bytes:
        i = self.rng.randrange(len(frame) + 1)
        return frame[:i] + self.rng.randbytes(self.rng.randrange(1, 3)) + frame[i:]

    def _m_delete(self, frame: bytes) -> bytes:
        if not frame:
            return frame
        i = self.rng.randrange(len(frame))
        return frame[:i] + frame[i + self.rng.randrange(1, 4) :]

    def _m_truncate(self, frame: bytes) -> bytes:
        return frame[: self.rng.randrange(len(frame) + 1)]

    def _m_extend(self, frame: bytes) -> bytes:
        return frame + self._bytes(12)

    def _m_length(self, frame: bytes) -> bytes:
        """Tamper with the Length field: off by a little, zero, one, or any byte."""
        if not frame:
            return b"\x00"
        rng = self.rng
        if frame[0] == 1 and len(frame) >= 3:
            declared = (frame[1] << 8 | frame[2]) + rng.choice((-2, -1, 1, 2, 256, -256))
            return b"\x01" + (declared & 0xFFFF).to_bytes(2, "big") + frame[3:]
        value = rng.choice((frame[0] - 1, frame[0] + 1, 0, 1, 2, 255, self._u8()))
        return bytes((value & 0xFF,)) + frame[1:]

    def _m_long_form(self, frame: bytes) -> bytes:
        """Re-encode a short-form header in the 3-byte long form (legal), or the reverse."""
        if len(frame) >= 2 and frame[0] > 1:
            body = frame[1:]
            return b"\x01" + (len(body) + 3).to_bytes(2, "big") + body
        if len(frame) >= 4 and frame[0] == 1:
            body = frame[3:]
            return bytes(((len(body) + 1) & 0xFF,)) + body
        return frame

    def _m_huge(self, frame: bytes) -> bytes:
        """A huge declared length, or a huge body behind an honest long-form length."""
        rng = self.rng
        if rng.random() < 0.5:
            body = frame[1:] if frame and frame[0] != 1 else frame[3:]
            return b"\x01\xff\xff" + body
        body = (frame[1:2] or b"\x0c") + rng.randbytes(rng.randrange(1000, 2100))
        return b"\x01" + (len(body) + 3).to_bytes(2, "big") + body

    def _m_type_swap(self, frame: bytes) -> bytes:
        at = 3 if frame[:1] == b"\x01" else 1
        if len(frame) <= at:
            return frame
        rng = self.rng
        new = rng.choice(ALL_TYPES) if rng.random() < 0.8 else rng.choice(_RESERVED_TYPES)
        return frame[:at] + bytes((new,)) + frame[at + 1 :]

    def _m_splice(self, frame: bytes) -> bytes:
        """The head of this frame and the tail of another, the Length fixed up or not."""
        other = self.rng.choice(self._recent)
        spliced = (
            frame[: self.rng.randrange(len(frame) + 1)]
            + other[self.rng.randrange(len(other) + 1) :]
        )
        if spliced and spliced[0] > 1 and self.rng.random() < 0.5:
            spliced = bytes((len(spliced) & 0xFF,)) + spliced[1:]
        return spliced

    def _m_glue(self, frame: bytes) -> bytes:
        """Two frames in one datagram (a serial habit)."""
        return frame + self.rng.choice(self._recent)

    def _m_encapsulate(self, frame: bytes) -> bytes:
        """Wrap in a forwarder header (sometimes twice, sometimes with a lying Length).

        Built by hand: ``encode`` rightly refuses to wrap a frame that is not a valid one.
        """
        rng = self.rng
        wrapped = _forwarder_header(rng.randbytes(rng.randrange(0, 9)), rng.randrange(4)) + frame
        if rng.random() < 0.2:
            wrapped = _forwarder_header(b"\x01", 0) + wrapped  # nested: not allowed [§5.5]
        if rng.random() < 0.1:
            wrapped = bytes((rng.randrange(256),)) + wrapped[1:]
        return wrapped

    def _m_empty(self, frame: bytes) -> bytes:
        return b"" if self.rng.random() < 0.5 else frame[:1]

    def _m_flags(self, frame: bytes) -> bytes:
        """Overwrite the byte after MsgType (Flags in PUBLISH, CONNECT, SUBSCRIBE, WILLTOPIC)."""
        at = 4 if frame[:1] == b"\x01" else 2
        if len(frame) <= at:
            return frame
        return frame[:at] + bytes((self._u8(),)) + frame[at + 1 :]


def _forwarder_header(node_id: bytes, radius: int) -> bytes:
    """Length, 0xFE, Ctrl (radius), WirelessNodeId [§5.5]; the inner frame follows."""
    return bytes((3 + len(node_id), MsgType.ENCAPSULATED, radius & 3)) + node_id


#: The mutation operators ``FrameFactory.mutate`` picks from.
MUTATIONS: tuple[str, ...] = (
    "bit_flip",
    "byte_set",
    "insert",
    "delete",
    "truncate",
    "extend",
    "length",
    "long_form",
    "huge",
    "type_swap",
    "splice",
    "glue",
    "encapsulate",
    "empty",
    "flags",
)
