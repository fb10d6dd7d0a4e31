"""The core's tunables (timers, bounds, mode), validated once."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from gateway.core.access import AccessPolicy

__all__ = ["CoreSettings", "Mode"]


class Mode(StrEnum):
    """How the gateway maps nodes onto broker connections [§4]."""

    AGGREGATING = "aggregating"
    TRANSPARENT = "transparent"


@dataclass(frozen=True, slots=True)
class CoreSettings:
    """Everything the engine needs to know; times in seconds.

    Attributes:
        gw_id: GwId sent in ADVERTISE and GWINFO; distinct per gateway in one radio cell.
        mode: aggregating (one broker connection) or transparent (one per node).
        t_adv: ADVERTISE period; 0 turns advertising off.
        t_retry: retransmission timeout for gateway-originated REGISTER and QoS 1/2 PUBLISH.
        n_retry: retransmissions before the node is declared lost.
        keepalive_factor: a node silent for this many keep-alive periods is lost (1.5 as in 2.0).
        sleep_factor: an asleep node silent for this many sleep durations is lost.
        zero_keepalive: supervision period for nodes that ask for keep-alive 0 (pitfall P18).
        predefined: pre-defined topic ids shared by every node (id -> topic name).
        max_clients: sessions beyond this get CONNACK "rejected: congestion".
        max_topics_per_client / max_subscriptions_per_client: per-node bounds.
        queue_per_client / queue_total: buffered deliveries (sleeping, offline, or waiting
            behind an unacknowledged one); the oldest QoS 0 goes first, then new ones are refused.
        session_expiry: a disconnected or lost persistent session is forgotten after this.
        gwinfo_interval: at most one GWINFO per source in this time (anti-amplification).
        gwinfo_per_second: at most this many GWINFO answers per second overall.
        retained_window: how long after a SUBSCRIBE retained messages are routed to that node.
        uplink_topic_template: topic used upstream for a node's publish, e.g.
            ``"nodes/{client_id}/{topic}"``; the default keeps topics as the node named them.
        connect_per_second / connect_burst: CONNECTs accepted per source address (a token
            bucket); beyond them a CONNECT is dropped unanswered and counted. 0: no limit.
        max_connecting: sessions half-open (CONNECTING) at once; beyond it CONNACK
            "rejected: congestion".
        access: the allow-list and topic rules (``[access]``); the default allows everything.
        outage_policy: what nodes hear while the gateway's broker connection is down.
            ``"buffer"``: QoS 1/2 publishes wait in the bounded, persistent outbox and are
            acknowledged once the broker took them (QoS 0 is dropped and counted).
            ``"reject"``: QoS 1/2 publishes get PUBACK "rejected: congestion" at once, and a
            CONNECT (aggregating mode) CONNACK "rejected: congestion", so nodes back off for
            T_WAIT and retry [§6.6] instead of waiting on the gateway.
    """

    gw_id: int = 1
    mode: Mode = Mode.AGGREGATING
    t_adv: float = 900.0
    t_retry: float = 10.0
    n_retry: int = 3
    keepalive_factor: float = 1.5
    sleep_factor: float = 1.5
    zero_keepalive: float = 3600.0
    predefined: Mapping[int, str] = field(default_factory=dict)
    max_clients: int = 10_000
    max_topics_per_client: int = 1_000
    max_subscriptions_per_client: int = 100
    queue_per_client: int = 100
    queue_total: int = 200_000
    session_expiry: float = 86_400.0
    gwinfo_interval: float = 1.0
    gwinfo_per_second: float = 20.0
    retained_window: float = 5.0
    uplink_topic_template: str = "{topic}"
    connect_per_second: float = 5.0
    connect_burst: int = 10
    max_connecting: int = 1_000
    access: AccessPolicy = field(default_factory=AccessPolicy)
    outage_policy: str = "buffer"

    def __post_init__(self) -> None:
        if not 0 <= self.gw_id <= 255:
            raise ValueError(f"gw_id must be 0..255, got {self.gw_id}")
        # Fix: keep a plain dict of our own. Each session's TopicRegistry refers to this
        # mapping, so a read-only MappingProxyType from a frozen config made export_state()
        # unpicklable (and a caller's later mutation would have changed ids under live nodes).
        object.__setattr__(self, "predefined", dict(self.predefined))
        for key, value in self.predefined.items():
            if not 1 <= key <= 0xFFFE:
                raise ValueError(f"predefined topic id must be 1..65534, got {key}")
            if not value or "+" in value or "#" in value:
                raise ValueError(f"predefined topic {key} must be a concrete topic, got {value!r}")
        if self.connect_per_second < 0:
            raise ValueError("connect_per_second must be >= 0 (0: no limit)")
        if self.connect_burst < 1 or self.max_connecting < 1:
            raise ValueError("connect_burst and max_connecting must be >= 1")
        if self.t_retry <= 0 or self.n_retry < 0:
            raise ValueError("t_retry must be > 0 and n_retry >= 0")
        if self.outage_policy not in ("buffer", "reject"):
            raise ValueError(
                f'outage_policy must be "buffer" or "reject", got {self.outage_policy!r}'
            )
        if "{topic}" not in self.uplink_topic_template:
            raise ValueError("uplink_topic_template must contain {topic}")
        try:
            # Fix: an unknown placeholder used to raise KeyError on every uplink publish.
            self.uplink_topic_template.format(client_id="c", topic="t")
        except (KeyError, IndexError, ValueError) as exc:
            raise ValueError(
                f"uplink_topic_template may only use {{client_id}} and {{topic}}: {exc!r}"
            ) from None
