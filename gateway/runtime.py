"""The only wiring: transports -> codec -> core -> actions -> transports and the broker bridge.

Hot-path rules (measured, see the README's performance notes): no Task or Future per frame, the
core runs synchronously inside the transport's receive callback, one timer handle follows the
core's ``next_deadline()``, and counters are plain dict increments.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections import Counter
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self

from gateway.access_config import credentials_lookup
from gateway.bridge import create_upstream
from gateway.bridge.base import Upstream
from gateway.config import GatewayConfig
from gateway.core import (
    Action,
    Broadcast,
    CloseUpstreamSession,
    GatewayCore,
    Mode,
    OpenUpstreamSession,
    PublishUpstream,
    SendFrame,
    SubscribeUpstream,
    UnsubscribeUpstream,
)
from gateway.errors import RemoteProtocolError
from gateway.protocol.codec import decode, encode, peek_publish
from gateway.protocol.constants import QoS
from gateway.protocol.messages import Encapsulated, Message
from gateway.store import MEMORY, OutboxEntry, StateStore
from transports import create_transport
from transports.base import Address, LinkEvent, Transport

__all__ = ["ForwardedAddress", "GatewayRuntime"]

_LOGGER = logging.getLogger(__name__)
_WARN_INTERVAL = 10.0  # seconds between two "malformed frame" warnings for one source
_QOS_0 = QoS.AT_MOST_ONCE  # a module constant: the enum lookup costs ~0.2 us per message


@dataclass(frozen=True, slots=True)
class ForwardedAddress:
    """A node behind a forwarder [§5.5]: the forwarder's address plus the wireless node id."""

    forwarder: Hashable
    node_id: bytes

    def __str__(self) -> str:
        return f"{self.forwarder}/{self.node_id.hex()}"


class GatewayRuntime:
    """Runs one gateway: ``async with GatewayRuntime(config) as gw: await gw.wait_closed()``."""

    def __init__(
        self,
        config: GatewayConfig,
        *,
        transports: list[Transport] | None = None,
        upstream: Upstream | None = None,
    ) -> None:
        self.config = config
        self.core = GatewayCore(config.core)
        self.counters: Counter[str] = Counter()
        self._transports = transports
        self._upstream = upstream
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._warned: dict[Hashable, float] = {}
        self._closed = asyncio.Event()
        self._started = False
        self.observers: list[Any] = []  # callables(event: str, **fields) for the demo and tests
        self.store: StateStore | None = None  # the state file, once started (None: in memory)
        self._held: list[tuple[Hashable, Message, int]] | None = None  # before transports open
        self._time: Callable[[], float] = time.monotonic  # the loop's clock, once started
        self._last_message: Message | None = None  # the last frame encoded, and its bytes
        self._last_frame = b""

    # ------------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def start(self) -> None:
        """Open the broker bridge and every transport; start timers."""
        if self._started:
            raise RuntimeError("GatewayRuntime is not re-entrant")
        self._started = True
        self._loop = asyncio.get_running_loop()
        self._time = self._loop.time
        outbox = self._open_store()  # first: a bad state file stops us before any I/O
        if self._upstream is None:
            options: dict[str, Any] = {}
            if self.config.credentials and self.config.core.mode is Mode.TRANSPARENT:
                options["credentials"] = credentials_lookup(self.config.credentials)
            self._upstream = create_upstream(
                self.config.broker,
                self.config.core.mode.value,
                gateway_id=f"{self.config.gateway_name}-{self.config.core.gw_id}",
                **options,
            )
        if self._transports is None:
            self._transports = [
                create_transport(name, options) for name, options in self.config.transports.items()
            ]
        if self.store is not None:
            # Acknowledge broker PUBLISHes only once they are on disk (Upstream.ack_gate); the
            # gate also keeps broker QoS 2 packet ids in the state file (bridge.base.Qos2Ledger).
            self._upstream.ack_gate = self.store.ack_gate
        await self._upstream.start(self)
        if self.store is not None:
            # Restored nodes may be answered (a PUBACK for a saved publish) before the
            # transports are open: hold those frames, never drop them.
            self._held = []
            self._resume(outbox)
        for transport in self._transports:
            await transport.start(self._make_sink(transport), self._on_link_event)
            _LOGGER.info("transport %s started: %r", transport.name, transport)
        if self.upstream.connected:
            # The bridge connected before the transports were up: announce the gateway now.
            self._execute(self.core.on_broker_state(True, self._now()))
        held, self._held = self._held, None
        for address, message, radius in held or ():
            self._send(address, message, radius)
        self._reschedule()

    async def close(self) -> None:
        """Stop transports, flush the bridge, cancel timers; idempotent."""
        if self._closed.is_set():
            return
        self._closed.set()
        if self._timer is not None:
            self._timer.cancel()
        for transport in self._transports or []:
            try:
                await transport.close()
            except Exception:  # a failing transport must not keep the others open
                _LOGGER.exception("closing transport %s failed", transport.name)
        if self.store is not None and self._upstream is not None:
            # Commit first, so the broker acknowledgements waiting for the disk go out on the
            # live connection; otherwise the broker would deliver those messages again.
            await self.store.sync()
            await asyncio.sleep(0)  # the released acknowledgements are written
        if self._upstream is not None:
            await self._upstream.close()
        if self.store is not None:
            await self.store.close()  # after the bridge: its last acknowledgements are saved
        _LOGGER.info("gateway stopped: %s", dict(self.counters))

    async def wait_closed(self) -> None:
        """Return once ``close()`` has run."""
        await self._closed.wait()

    @property
    def transports(self) -> list[Transport]:
        """The running transports."""
        return list(self._transports or [])

    @property
    def upstream(self) -> Upstream:
        """The broker bridge."""
        assert self._upstream is not None
        return self._upstream

    def __repr__(self) -> str:
        names = [t.name for t in self._transports or []]
        return f"<GatewayRuntime transports={names} {self.core!r}>"

    # ------------------------------------------------------------------ inbound

    def _make_sink(self, transport: Transport) -> Any:
        # A partial, not a closure: one Python frame less per received frame.
        return functools.partial(self._on_frame, transport)

    def _on_frame(self, transport: Transport, address: Address, frame: bytes) -> None:
        if not self.observers:
            # Hot paths (tests/bench/RESULTS.md). A QoS 0 or 1 PUBLISH on a route the core
            # accepted before (same node, flags and topic id) goes to the bridge's publisher for
            # that topic in two calls. Any other plain PUBLISH goes to the broker without a
            # Publish or an action list. Anything else, including every refusal, takes the
            # general path below.
            # PUBLISH: Length, MsgType 0x0C, Flags, TopicId, MsgId, Data [§5.4.12]; a route is
            # keyed by MsgType, Flags and TopicId, so the same Flags mean the same checks.
            if 6 < len(frame) == frame[0] and frame[1] == 0x0C and frame.__class__ is bytes:
                flags = frame[2] & 0x70  # QoS (0x60) and Retain (0x10) [§5.3.4]
                if not flags:
                    publish = self.core.qos0_route(address, frame[1:5], self._time())
                    if publish is not None:
                        publish(frame[7:])
                        return
                elif flags == 0x20:  # QoS 1, no retain
                    hit = self.core.qos1_route(
                        address, frame[1:5], frame[5] << 8 | frame[6], self._time()
                    )
                    if hit is not None:
                        (publish_qos1, client_id, topic), token = hit
                        payload = frame[7:]
                        publish_qos1(payload, token)
                        if self.store is not None:  # kept until the broker has it
                            self.store.outbox_add(
                                PublishUpstream(client_id, topic, payload, 1, False, token)
                            )
                        return
            fields = peek_publish(frame)
            if fields is not None:
                if fields[0] is _QOS_0 and not fields[2]:
                    publish = self.core.add_qos0_route(
                        address,
                        frame[1:5],
                        fields[1],
                        fields[3],
                        self._time(),
                        self._upstream.publisher,  # type: ignore[union-attr]
                    )
                    if publish is not None:
                        publish(fields[5])
                        return
                a = self.core.publish_fields(address, *fields, self._time())
                if a is not None:
                    self._upstream.publish(  # type: ignore[union-attr]
                        a.client_id, a.topic, a.payload, a.qos, a.retain, a.token
                    )
                    if a.token is not None and self.store is not None:
                        self.store.outbox_add(a)  # QoS 1/2: kept until the broker has it
                    if a.qos == 1 and not a.retain:  # the next ones take the route
                        self.core.add_qos1_route(
                            address,
                            frame[1:5],
                            fields[1],
                            fields[3],
                            self._upstream.qos1_publisher,  # type: ignore[union-attr]
                        )
                    return
        try:
            message = decode(frame)
            if type(message) is Encapsulated:
                address = ForwardedAddress(address, message.wireless_node_id)
                message = decode(message.message)
        except RemoteProtocolError as exc:
            self._malformed(address, frame, exc)
            return
        actions = self.core.receive(address, message, self._time())
        if actions:
            self._execute(actions)
        elif self.store is not None:
            self.store.changed()
        if self.observers:
            self._notify("frame_in", address=address, message=message)

    def _malformed(self, address: Address, frame: bytes, exc: RemoteProtocolError) -> None:
        self.counters["rx_malformed"] += 1
        now = time.monotonic()
        last = self._warned.get(address)
        if last is None or now - last >= _WARN_INTERVAL:
            if len(self._warned) > 10_000:
                self._warned.clear()
            self._warned[address] = now
            _LOGGER.warning(
                "malformed frame from %s dropped: %s [%s%s]",
                address,
                exc,
                frame[:16].hex(" "),
                " ..." if len(frame) > 16 else "",
            )

    def _on_link_event(self, address: Address, event: LinkEvent) -> None:
        if event is LinkEvent.SEND_FAILED:
            self._execute(self.core.on_send_failed(address, self._now()))
        self.counters[f"link_{event.value}"] += 1

    # UpstreamEvents ------------------------------------------------------------

    def on_broker_message(
        self,
        client_id: str | None,
        topic: str,
        payload: bytes,
        qos: int,
        retain: bool,
        filters: frozenset[str] | None = None,
    ) -> None:
        """A PUBLISH from the broker (fan-out happens in the core)."""
        actions = self.core.on_broker_message(
            topic, payload, qos, retain, self._now(), client_id, filters
        )
        if qos == 2 and self.store is not None:
            # Exactly once across a crash: no node hears of a broker QoS 2 message before the
            # state file holds it with its packet id, as for the broker's PUBREC (the bridge's
            # ack gate); otherwise a kill -9 in between would let an awake node get it twice.
            self.store.after_commit(functools.partial(self._execute, actions))
        else:
            self._execute(actions)
        if self.observers:
            self._notify("broker_message", topic=topic, payload=payload, qos=qos, retain=retain)

    def on_publish_done(self, token: int, ok: bool) -> None:
        """The broker acknowledged an uplink QoS 1/2 publish (or it failed)."""
        if self.store is not None:
            if not ok and self._closed.is_set():
                return  # given up because we stop: kept in the state file, sent after restart
            self.store.outbox_done(token)
        self._execute(self.core.on_publish_done(token, ok, self._now()))

    def on_connection(self, client_id: str | None, connected: bool, return_code: int) -> None:
        """A broker connection changed state."""
        now = self._now()
        if client_id is None:
            self._execute(self.core.on_broker_state(connected, now))
        elif self.config.core.mode is Mode.TRANSPARENT:
            self._execute(self.core.on_upstream_session(client_id, connected, return_code, now))

    # ------------------------------------------------------------------ outbound

    def _execute(self, actions: list[Action]) -> None:
        upstream = self._upstream
        assert upstream is not None
        # Frames for nodes are collected and handed to their transport together (a fan-out:
        # one sendmmsg on UDP), in order; anything else first sends what was collected.
        batch: list[tuple[Transport, Hashable, bytes, Message]] = []
        for action in actions:
            kind = type(action)
            if kind is SendFrame:
                frame = self._frame_for(action.address, action.message)  # type: ignore[attr-defined]
                if frame is not None:
                    batch.append(frame)
                continue
            if batch:
                self._send_batch(batch)
                batch = []
            if kind is PublishUpstream:
                self._publish_upstream(action)  # type: ignore[arg-type]
            elif kind is SubscribeUpstream:
                upstream.subscribe(action.client_id, action.topic_filter, action.qos)  # type: ignore[attr-defined]
            elif kind is UnsubscribeUpstream:
                upstream.unsubscribe(action.client_id, action.topic_filter)  # type: ignore[attr-defined]
            elif kind is Broadcast:
                self._broadcast(action)  # type: ignore[arg-type]
            elif kind is OpenUpstreamSession:
                a: Any = action
                upstream.open_session(a.client_id, a.clean_session, a.will, a.keepalive)
            elif kind is CloseUpstreamSession:
                upstream.close_session(action.client_id, action.fire_will)  # type: ignore[attr-defined]
        if batch:
            self._send_batch(batch)
        self._reschedule()
        if self.store is not None and self.core.dirty:
            self.store.changed()

    def _send_batch(self, batch: list[tuple[Transport, Hashable, bytes, Message]]) -> None:
        """Hand each transport its frames of ``batch`` with one ``send_many``, keeping order."""
        transport = batch[0][0]
        if len(batch) == 1:
            transport.send(batch[0][1], batch[0][2])
        elif all(item[0] is transport for item in batch):
            transport.send_many([(item[1], item[2]) for item in batch])
        else:  # several transports: runs of one transport each
            start = 0
            for end in range(1, len(batch) + 1):
                if end == len(batch) or batch[end][0] is not batch[start][0]:
                    batch[start][0].send_many([(item[1], item[2]) for item in batch[start:end]])
                    start = end
        if self.observers:
            for _, address, _, message in batch:
                self._notify("frame_out", address=address, message=message)

    def _publish_upstream(self, a: PublishUpstream) -> None:
        assert self._upstream is not None
        self._upstream.publish(a.client_id, a.topic, a.payload, a.qos, a.retain, a.token)
        if a.token is not None and self.store is not None:
            self.store.outbox_add(a)
        if self.observers:
            self._notify(
                "publish_upstream",
                client_id=a.client_id,
                topic=a.topic,
                payload=a.payload,
                qos=a.qos,
            )

    def _send(self, address: Hashable, message: Message, radius: int = 0) -> None:
        item = self._frame_for(address, message, radius)
        if item is not None:
            transport, address, frame, _ = item
            transport.send(address, frame)
            if self.observers:
                self._notify("frame_out", address=address, message=message)

    def _frame_for(
        self, address: Hashable, message: Message, radius: int = 0
    ) -> tuple[Transport, Hashable, bytes, Message] | None:
        """Encode ``message`` for the node at ``address``: (transport, link address, frame).

        None when it is not to be sent now: held until the transports are open, no transport
        for the address, or too long for the link (counted).
        """
        if self._held is not None:
            self._held.append((address, message, radius))
            return None
        if message is self._last_message:
            frame = self._last_frame  # a fan-out: the core handed every node the same PUBLISH
        else:
            try:
                frame = encode(message)
            except Exception:  # our bug: log it, never take the loop down
                _LOGGER.exception("cannot encode %r for %s", message, address)
                return None
            self._last_message, self._last_frame = message, frame
        if type(address) is ForwardedAddress:
            frame = encode(Encapsulated(address.node_id, frame, min(radius, 3)))
            address = address.forwarder
        transport = self._transport_for(address)
        if transport is None:
            self.counters["tx_no_transport"] += 1
            return None
        if len(frame) > transport.max_frame_size(address):
            # [§6.10] too long for this node's link: dropped, never cut (pitfall P7).
            self.counters["tx_oversize_dropped"] += 1
            _LOGGER.info(
                "%d-byte %s for %s exceeds the link's frame size; dropped",
                len(frame),
                type(message).__name__,
                address,
            )
            return None
        return transport, address, frame, message

    def _broadcast(self, action: Broadcast) -> None:
        frame = encode(action.message)
        if action.via is None:
            for transport in self._transports or []:
                transport.broadcast(frame, action.radius)
            return
        via = action.via
        if type(via) is ForwardedAddress:
            # Back through the forwarder, with the SEARCHGW's radius in Ctrl [§5.5].
            self._send(via, action.message, action.radius)
            return
        target = self._transport_for(via)
        if target is None:
            return
        if target.can_broadcast:
            target.broadcast(frame, action.radius)
        else:
            target.send(via, frame)  # P14: unicast GWINFO where the link cannot broadcast

    def _transport_for(self, address: Hashable) -> Transport | None:
        for transport in self._transports or []:
            if transport.owns(address):
                return transport
        return None

    # ------------------------------------------------------------------ state file

    def _open_store(self) -> list[OutboxEntry]:
        """Open the state file (StoreError if unusable) and load the core from it."""
        path = self.config.state_file
        if path is None or path == MEMORY:
            return []
        store = StateStore(path, max_bytes=self.config.state_max_bytes)
        try:
            restored = store.load(self.config.core, self._now())
        except BaseException:
            store.abandon()
            raise
        self.core = GatewayCore(self.config.core, state=restored.core)
        assert self._loop is not None
        store.attach(self.core, self._loop)
        self.store = store
        return restored.outbox

    def _resume(self, outbox: list[OutboxEntry]) -> None:
        """After a restart: reopen node sessions, publish the saved outbox, then re-subscribe."""
        upstream = self.upstream
        actions = self.core.resume_actions()
        opens: list[Action] = [a for a in actions if isinstance(a, OpenUpstreamSession)]
        opened = {a.client_id for a in opens if isinstance(a, OpenUpstreamSession)}
        self._execute(opens)
        transparent = self.config.core.mode is Mode.TRANSPARENT
        for entry in outbox:
            # Transparent: a node without a connection now goes out on the gateway's own one.
            client_id = entry.client_id if not transparent or entry.client_id in opened else None
            upstream.publish(
                client_id, entry.topic, entry.payload, entry.qos, entry.retain, entry.token
            )
        self._execute([a for a in actions if not isinstance(a, OpenUpstreamSession)])
        if outbox:
            _LOGGER.info("published %d saved uplink message(s) again", len(outbox))

    # ------------------------------------------------------------------ timers

    def _now(self) -> float:
        assert self._loop is not None
        return self._loop.time()

    def _reschedule(self) -> None:
        deadline = self.core.next_deadline()
        if deadline is None or (self._timer_at is not None and self._timer_at <= deadline):
            return
        if self._timer is not None:
            self._timer.cancel()
        assert self._loop is not None
        self._timer_at = deadline
        self._timer = self._loop.call_at(deadline, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = None
        if self._closed.is_set():
            return
        self._execute(self.core.tick(self._now()))
        self._reschedule()

    def _notify(self, event: str, **fields: Any) -> None:
        for observer in self.observers:
            try:
                observer(event, **fields)
            except Exception:
                _LOGGER.exception("observer failed on %s", event)
