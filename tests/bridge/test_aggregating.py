"""Aggregating mode against a real Mosquitto, on the MQTT 5 and the MQTT 3.1.1 path."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from gateway.bridge import AggregatingUpstream
from tests.bridge.helpers import Observer, Recorder, eventually

Observe = Callable[..., Observer]


async def test_publish_qos_0_1_2_arrive_and_acks_are_reported(
    aggregating: AggregatingUpstream, recorder: Recorder, observe: Observe, unique_topic: str
) -> None:
    """QoS 0/1/2 uplink reaches a subscriber; QoS 1/2 report on_publish_done(token, True)."""
    observer = observe(f"{unique_topic}/#")
    for qos in (0, 1, 2):
        aggregating.publish("node-1", f"{unique_topic}/q{qos}", b"v%d" % qos, qos, False, 10 + qos)
    await eventually(lambda: len(observer.messages) == 3, what="three messages")
    await eventually(lambda: recorder.done == {11: True, 12: True}, what="acks")
    got = {m.topic: (bytes(m.payload), m.qos) for m in observer.messages}
    assert got == {f"{unique_topic}/q{q}": (b"v%d" % q, q) for q in (0, 1, 2)}
    assert 10 not in recorder.done  # QoS 0 has nothing to report


async def test_client_id_user_property_on_mqtt5(
    aggregating: AggregatingUpstream, observe: Observe, unique_topic: str, protocol: str
) -> None:
    """MQTT 5 uplink carries the node's ClientId as user property "mqttsn-client-id"."""
    observer = observe(f"{unique_topic}/#")
    aggregating.publish("sensor-7", f"{unique_topic}/t", b"21.5", 1, False, 1)
    await eventually(lambda: observer.messages, what="the publish")
    properties = getattr(observer.messages[0].properties, "UserProperty", [])
    if protocol == "5":
        assert ("mqttsn-client-id", "sensor-7") in properties
    else:
        assert properties == []


async def test_broker_message_reported_once_without_client_id(
    aggregating: AggregatingUpstream, recorder: Recorder, observe: Observe, unique_topic: str
) -> None:
    """A broker PUBLISH is reported once with client_id None, however many nodes subscribed."""
    for node in ("a", "b", "c"):
        aggregating.subscribe(node, f"{unique_topic}/down/#", 1)
    await asyncio.sleep(0.2)
    observe(None).publish(f"{unique_topic}/down/x", b"cmd", qos=1)
    await eventually(lambda: recorder.messages, what="downlink")
    await asyncio.sleep(0.2)
    assert [(m.client_id, m.payload, m.qos, m.retain) for m in recorder.messages] == [
        (None, b"cmd", 1, False)
    ]


async def test_subscriptions_are_reference_counted(
    aggregating: AggregatingUpstream, recorder: Recorder, observe: Observe, unique_topic: str
) -> None:
    """Two subscribes, one unsubscribe: still delivered; the second unsubscribe stops it."""
    topic_filter = f"{unique_topic}/rc/#"
    publisher = observe(None)
    aggregating.subscribe("n1", topic_filter, 0)
    aggregating.subscribe("n2", topic_filter, 1)
    assert aggregating.subscription_count(topic_filter) == 2
    await asyncio.sleep(0.2)
    publisher.publish(f"{unique_topic}/rc/1", b"one")
    await eventually(lambda: b"one" in recorder.payloads(), what="first message")
    assert recorder.messages[-1].qos == 1  # the highest QoS asked for is kept

    aggregating.unsubscribe("n1", topic_filter)
    await asyncio.sleep(0.2)
    publisher.publish(f"{unique_topic}/rc/1", b"two")
    await eventually(lambda: b"two" in recorder.payloads(), what="second message")

    aggregating.unsubscribe("n2", topic_filter)
    assert aggregating.subscription_count(topic_filter) == 0
    await asyncio.sleep(0.2)
    publisher.publish(f"{unique_topic}/rc/1", b"three")
    await asyncio.sleep(0.3)
    assert b"three" not in recorder.payloads()


async def test_repeated_subscribe_resends_retained(
    aggregating: AggregatingUpstream, recorder: Recorder, observe: Observe, unique_topic: str
) -> None:
    """A second node subscribing to an already-subscribed filter gets the retained message."""
    topic = f"{unique_topic}/ret/state"
    observe(None).publish(topic, b"on", qos=1, retain=True)
    aggregating.subscribe("n1", f"{unique_topic}/ret/#", 1)
    await eventually(lambda: len(recorder.messages) == 1, what="retained for n1")
    aggregating.subscribe("n2", f"{unique_topic}/ret/#", 1)
    await eventually(lambda: len(recorder.messages) == 2, what="retained again for n2")
    assert [(m.payload, m.retain) for m in recorder.messages] == [(b"on", True)] * 2
    observe(None).publish(topic, b"", qos=1, retain=True)  # clear it


async def test_status_online_retained_and_offline_on_close(
    aggregating: AggregatingUpstream, observe: Observe, unique_topic: str
) -> None:
    """The gateway announces itself retained: "online" when up, "offline" after close."""
    status = aggregating.status_topic
    assert status is not None and aggregating.gateway_id in status
    observer = observe(status)
    await eventually(lambda: observer.payloads() == [b"online"], what="online")
    assert observer.messages[0].retain
    await aggregating.close()
    await eventually(lambda: observer.payloads() == [b"online", b"offline"], what="offline")
    observe(None).publish(status, b"", qos=1, retain=True)


async def test_repr_shows_state(aggregating: AggregatingUpstream) -> None:
    """repr names the mode, the protocol and the live connection state."""
    text = repr(aggregating)
    assert "AggregatingUpstream" in text and " up " in text and "outbox=0" in text
