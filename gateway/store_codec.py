"""The state file's JSON: addresses and sessions (with their buffered deliveries) as JSON-ready
data, and rebasing a restored session's deadlines after a restart.

JSON, not pickle: a state file must never be able to run code. Times in the core are the loop's
monotonic clock; encoded they are wall-clock (mono + the wall-mono offset at save).
"""

from __future__ import annotations

import base64
import importlib
import json
from collections import deque
from collections.abc import Hashable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from gateway.core import ClientSession, CoreSettings
from gateway.core.delivery_queue import Delivery
from gateway.core.session import OutboundInflight, SessionState, StoredWill, UplinkPending
from gateway.core.topics import TopicRegistry

__all__ = [
    "UnknownAddress",
    "decode_address",
    "decode_session",
    "encode_address",
    "encode_session",
]


# ---------------------------------------------------------------------------------- addresses


@dataclass(frozen=True, slots=True)
class UnknownAddress:
    """A stored address whose transport is not installed here; kept verbatim, owned by nobody."""

    encoded: str  # the JSON it was stored as

    def __str__(self) -> str:
        return f"unknown:{self.encoded}"


# tag -> (module, class, fields): the transports' address types, imported only when loaded, so
# a gateway without bleak still reads a file that mentions a BLE node.
_ADDRESS_TYPES: Final = {
    "udp": ("transports.base", "UdpAddress", ("host", "port")),
    "xbee": ("transports.xbee", "XBeeAddress", ("ieee64",)),
    "serial": ("transports.serial", "SerialAddress", ("port",)),
    "ble": ("transports.ble", "BleAddress", ("mac",)),
    "dtls": ("transports.dtls", "DtlsAddress", ("host", "port")),
}
_ADDRESS_TAGS: Final = {(module, name): tag for tag, (module, name, _) in _ADDRESS_TYPES.items()}
_SCALARS = (str, int, float, bool, type(None))


def encode_address(address: Hashable) -> Any:
    """An address as JSON: ``{"udp": [host, port]}``, ``{"forwarded": [...]}``, scalars as is."""
    cls = type(address)
    tag = _ADDRESS_TAGS.get((cls.__module__, cls.__name__))
    if tag is not None:
        return {tag: [getattr(address, name) for name in _ADDRESS_TYPES[tag][2]]}
    if cls.__name__ == "ForwardedAddress":  # gateway.runtime; not imported here (cycle)
        forwarded: Any = address
        return {"forwarded": [encode_address(forwarded.forwarder), forwarded.node_id.hex()]}
    if cls is UnknownAddress:
        return json.loads(address.encoded)  # type: ignore[attr-defined]
    if isinstance(address, tuple):
        return {"tuple": [encode_address(item) for item in address]}
    if isinstance(address, _SCALARS):
        return address
    raise TypeError(f"cannot store an address of type {cls.__qualname__}: {address!r}")


def decode_address(data: Any) -> Hashable:
    """The inverse of ``encode_address``; a transport that is not installed gives UnknownAddress."""
    if not isinstance(data, dict):
        if isinstance(data, _SCALARS):
            return data
        raise ValueError(f"not an address: {data!r}")
    ((tag, value),) = data.items()
    if tag == "tuple":
        return tuple(decode_address(item) for item in value)
    if tag == "forwarded":
        from gateway.runtime import ForwardedAddress

        return ForwardedAddress(decode_address(value[0]), bytes.fromhex(value[1]))
    module, name, _ = _ADDRESS_TYPES[tag]
    try:
        cls = getattr(importlib.import_module(module), name)
    except ImportError:
        return UnknownAddress(json.dumps(data, separators=(",", ":")))
    return cls(*value)  # type: ignore[no-any-return]


# ---------------------------------------------------------------------------------- sessions


def _delivery(item: Delivery) -> list[Any]:
    return [item.topic, base64.b64encode(item.payload).decode("ascii"), item.qos, item.retain]


def _undelivery(data: list[Any]) -> Delivery:
    topic, payload, qos, retain = data
    return Delivery(str(topic), base64.b64decode(payload), int(qos), bool(retain))


def encode_session(session: ClientSession, offset: float, *, queue: bool = True) -> dict[str, Any]:
    """The session as a JSON-ready dict; times become wall-clock (mono + ``offset``).

    ``queue=False`` leaves the buffer out (the store keeps it in its own table).
    """
    will = session.will
    inflight = session.inflight
    data = {
        "client_id": session.client_id,
        "address": encode_address(session.address),
        "state": session.state.value,
        "keepalive": session.keepalive,
        "clean_session": session.clean_session,
        "will": None
        if will is None
        else _delivery(Delivery(will.topic, will.message, will.qos, will.retain)),
        "will_stage": session.will_stage,
        "sleep_duration": session.sleep_duration,
        "last_rx": session.last_rx + offset,
        "subscriptions": session.subscriptions,
        "retained_until": {f: t + offset for f, t in session.retained_until.items()},
        "topics": sorted(session.registry.by_id.items()),
        "next_topic_id": session.registry.next_id,
        "inflight": None
        if inflight is None
        else [
            inflight.kind,
            inflight.msg_id,
            inflight.topic_id,
            inflight.topic_id_type,
            _delivery(inflight.delivery),
            inflight.retries,
            inflight.deadline + offset,
        ],
        "uplink": [
            [p.msg_id, p.topic_id, p.qos, p.acked, p.token] for p in session.uplink.values()
        ],
        "next_msg_id": session.next_msg_id,
    }
    if queue:
        data["queue"] = [_delivery(item) for item in session.queue]
    return data


def decode_session(data: Mapping[str, Any], offset: float, settings: CoreSettings) -> ClientSession:
    """The inverse of ``encode_session``; wall-clock times become mono (wall - ``offset``).

    Raises ValueError, KeyError or TypeError on a malformed row.
    """
    registry = TopicRegistry(settings.predefined, settings.max_topics_per_client)
    for topic_id, name in data["topics"]:
        registry.by_id[int(topic_id)] = str(name)
        registry.by_name[str(name)] = int(topic_id)
    registry.next_id = int(data["next_topic_id"])
    will = None if data["will"] is None else _undelivery(data["will"])
    session = ClientSession(
        str(data["client_id"]),
        decode_address(data["address"]),
        registry,
        state=SessionState(data["state"]),
        keepalive=float(data["keepalive"]),
        clean_session=bool(data["clean_session"]),
        will=None if will is None else StoredWill(will.topic, will.payload, will.qos, will.retain),
        will_stage=str(data["will_stage"]),
        sleep_duration=float(data["sleep_duration"]),
        last_rx=float(data["last_rx"]) - offset,
        subscriptions={str(f): int(q) for f, q in data["subscriptions"].items()},
        retained_until={str(f): float(t) - offset for f, t in data["retained_until"].items()},
        queue=deque(_undelivery(item) for item in data.get("queue", ())),
        next_msg_id=int(data["next_msg_id"]),
    )
    if data["inflight"] is not None:
        kind, msg_id, topic_id, id_type, delivery, retries, deadline = data["inflight"]
        session.inflight = OutboundInflight(
            str(kind),
            int(msg_id),
            int(topic_id),
            int(id_type),
            _undelivery(delivery),
            int(retries),
            float(deadline) - offset,
        )
    for msg_id, topic_id, qos, acked, token in data["uplink"]:
        session.uplink[int(msg_id)] = UplinkPending(
            int(msg_id), int(topic_id), int(qos), bool(acked), int(token)
        )
    return session


def _rebase(session: ClientSession, now: float, settings: CoreSettings) -> None:
    """Deadlines after a restart: real time, but the gateway's own downtime is not the node's.

    A connected node could not reach us while we were down, so its keep-alive starts over; a
    sleeping node keeps its remaining sleep time, and gets one more full period if it ran out
    while we were down; disconnected sessions expire on wall-clock time.
    """
    state = session.state
    if state in (SessionState.ACTIVE, SessionState.AWAKE, SessionState.CONNECTING):
        session.last_rx = max(session.last_rx, now)
    elif state is SessionState.ASLEEP and (
        session.last_rx + session.sleep_duration * settings.sleep_factor < now
    ):
        session.last_rx = now
