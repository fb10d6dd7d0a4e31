"""Transparent mode against a real Mosquitto: one connection per node, wills, sessions."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from gateway.bridge import TransparentUpstream, Will, parse_broker_url
from tests.bridge.helpers import Observer, Recorder, eventually
from tests.mosquitto import MosquittoBroker

Observe = Callable[..., Observer]


async def test_two_hundred_sessions_each_with_its_client_id(
    mosquitto: MosquittoBroker, protocol: str, unique_topic: str
) -> None:
    """200 sessions connect, each visible at the broker under its own (prefixed) ClientId."""
    prefix = f"gw{unique_topic.rsplit('/', 1)[-1]}-{protocol}-"
    recorder = Recorder()
    upstream = TransparentUpstream(
        parse_broker_url(mosquitto.url, protocol=protocol, client_id_prefix=prefix),
        status_topic=None,
    )
    await upstream.start(recorder)
    nodes = [f"node-{i:03d}" for i in range(200)]
    try:
        for node in nodes:
            upstream.open_session(node, True, None, 60)
        await eventually(
            lambda: sum(1 for c, up, _ in recorder.connections if up and c) == 200,
            within=20,
            what="200 CONNACKs",
        )
        assert sorted(c for c, _, _ in recorder.connections if c) == nodes
        assert upstream.session_count == 200 and upstream.connected
        log = mosquitto.log_text()
        assert all(f" as {prefix}{node} " in log for node in nodes)
    finally:
        await upstream.close()
    assert upstream.session_count == 0


async def test_gateway_connection_for_anonymous_traffic_and_status(
    transparent: TransparentUpstream, recorder: Recorder, observe: Observe, unique_topic: str
) -> None:
    """client_id None (QoS -1 from unconnected nodes) goes out on the gateway's own connection,
    which also announces the gateway's status."""
    assert transparent.connected and transparent.session_count == 0
    assert recorder.connections == [(None, True, 0)]
    observer = observe(f"{unique_topic}/#")
    status = observe(transparent.gateway.status_topic)
    transparent.publish(None, f"{unique_topic}/anon", b"qos-1", 0, False)
    await eventually(lambda: observer.payloads() == [b"qos-1"], what="anonymous publish")
    await eventually(lambda: status.payloads() == [b"online"], what="gateway status")


async def test_broker_messages_carry_the_client_id(
    transparent: TransparentUpstream, recorder: Recorder, observe: Observe, unique_topic: str
) -> None:
    """A PUBLISH for one node's subscription is reported with that node's ClientId."""
    for node in ("alpha", "beta"):
        transparent.open_session(node, True, None, 60)
    await eventually(lambda: len(recorder.sessions()) == 2, what="two sessions")
    transparent.subscribe("alpha", f"{unique_topic}/alpha/#", 1)
    transparent.subscribe("beta", f"{unique_topic}/beta/#", 1)
    await asyncio.sleep(0.2)
    observe(None).publish(f"{unique_topic}/beta/led", b"on")
    await eventually(lambda: recorder.messages, what="downlink")
    await asyncio.sleep(0.1)
    assert [(m.client_id, m.payload) for m in recorder.messages] == [("beta", b"on")]


async def test_uplink_goes_out_under_the_node_session(
    transparent: TransparentUpstream, recorder: Recorder, observe: Observe, unique_topic: str
) -> None:
    """publish(client_id, ...) uses the node's connection and reports the ack."""
    observer = observe(f"{unique_topic}/#")
    transparent.open_session("gamma", True, None, 60)
    transparent.publish("gamma", f"{unique_topic}/t", b"7", 1, False, 99)
    await eventually(lambda: recorder.done == {99: True}, what="ack")
    await eventually(lambda: observer.payloads() == [b"7"], what="delivery")
    transparent.publish("nobody", f"{unique_topic}/t", b"8", 1, False, 100)
    await eventually(lambda: recorder.done.get(100) is False, what="refusal without a session")


async def test_will_fires_only_with_fire_will(
    transparent: TransparentUpstream, recorder: Recorder, observe: Observe, unique_topic: str
) -> None:
    """close_session(fire_will=True) makes the broker publish the will; False does not."""
    observer = observe(f"{unique_topic}/will/#")
    for node in ("dies", "leaves"):
        will = Will(f"{unique_topic}/will/{node}", b"gone:" + node.encode(), qos=1)
        transparent.open_session(node, True, will, 60)
    await eventually(lambda: len(recorder.sessions()) == 2, what="two sessions")
    transparent.close_session("dies", fire_will=True)
    transparent.close_session("leaves", fire_will=False)
    await eventually(lambda: observer.payloads() == [b"gone:dies"], what="the will")
    await asyncio.sleep(0.3)
    assert observer.payloads() == [b"gone:dies"]


async def test_will_update_reconnects_and_keeps_the_session(
    transparent: TransparentUpstream, recorder: Recorder, observe: Observe, unique_topic: str
) -> None:
    """open_session again replaces the will; subscriptions keep working; the new will fires."""
    observer = observe(f"{unique_topic}/will/#")
    publisher = observe(None)
    node = "updating"
    transparent.open_session(node, False, Will(f"{unique_topic}/will/old", b"old"), 60)
    await eventually(lambda: recorder.sessions() == [(node, True, 0)], what="session")
    transparent.subscribe(node, f"{unique_topic}/cmd", 1)
    await asyncio.sleep(0.2)
    transparent.open_session(node, False, Will(f"{unique_topic}/will/new", b"new"), 60)
    await eventually(lambda: len(recorder.sessions()) == 2, what="reconnect")
    assert recorder.sessions()[1] == (node, True, 0)  # no "down" for a deliberate reconnect
    publisher.publish(f"{unique_topic}/cmd", b"still subscribed")
    await eventually(lambda: recorder.payloads() == [b"still subscribed"], what="downlink")
    transparent.close_session(node, fire_will=True)
    await eventually(lambda: observer.payloads() == [b"new"], what="the new will")
    await asyncio.sleep(0.2)
    assert observer.payloads() == [b"new"]  # the old will was dropped by the clean DISCONNECT


async def test_persistent_session_queues_while_the_node_is_away(
    transparent: TransparentUpstream, recorder: Recorder, observe: Observe, unique_topic: str
) -> None:
    """Clean session off: the broker keeps subscriptions and queues messages between sessions."""
    node = f"roamer-{unique_topic.rsplit('/', 1)[-1]}"
    transparent.open_session(node, False, None, 60)
    await eventually(lambda: recorder.sessions() == [(node, True, 0)], what="session")
    transparent.subscribe(node, f"{unique_topic}/inbox", 1)
    await asyncio.sleep(0.2)
    transparent.close_session(node, fire_will=False)
    await asyncio.sleep(0.2)
    observe(None).publish(f"{unique_topic}/inbox", b"while away")
    transparent.open_session(node, False, None, 60)
    await eventually(lambda: recorder.payloads() == [b"while away"], what="queued message")
    assert recorder.messages[0].client_id == node


async def test_refused_session_is_reported_and_dropped(
    auth_mosquitto: MosquittoBroker, protocol: str
) -> None:
    """A node whose CONNECT the broker refuses gets on_connection(id, False, code), once."""
    recorder = Recorder()
    upstream = TransparentUpstream(
        parse_broker_url(auth_mosquitto.url, protocol=protocol), status_topic=None
    )
    await upstream.start(recorder)
    try:
        upstream.open_session("intruder", True, None, 60)
        upstream.publish("intruder", "x/y", b"1", 1, False, 5)
        mine = lambda: [c for c in recorder.connections if c[0] == "intruder"]  # noqa: E731
        await eventually(mine, what="refusal")
        await asyncio.sleep(0.3)
        assert mine() == [("intruder", False, 0x87)]
        assert upstream.session_count == 0
        assert recorder.done == {5: False}
    finally:
        await upstream.close()


async def test_client_id_fight_backs_off(mosquitto: MosquittoBroker, unique_topic: str) -> None:
    """Another client taking the node's ClientId over and over: we reconnect with backoff.

    (An MQTT 5 broker that sends DISCONNECT "session taken over" ends the session instead;
    Mosquitto 2.0.11 just closes the socket, so this is what we see here.)
    """
    recorder = Recorder()
    upstream = TransparentUpstream(parse_broker_url(mosquitto.url), status_topic=None)
    await upstream.start(recorder)
    node = f"mover-{unique_topic.rsplit('/', 1)[-1]}"
    try:
        upstream.open_session(node, False, None, 60)
        await eventually(lambda: recorder.sessions() == [(node, True, 0)], what="session")
        other = Observer(mosquitto, None, client_id=node).start()  # reconnects every 1 s
        try:
            await asyncio.sleep(3.0)
        finally:
            other.stop()
        session = upstream.session(node)
        assert session is not None
        # 0.1 + 0.2 + 0.4 + 0.8 + 1.6 s (+-20 %): about five reconnects, not hundreds
        assert session.stats.connects <= 7, session.stats
    finally:
        await upstream.close()
