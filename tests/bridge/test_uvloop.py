"""The bridge under uvloop (the production loop): its transports are not asyncio classes."""

from __future__ import annotations

import uvloop  # a dependency of the gateway

from gateway.bridge import AggregatingUpstream, TransparentUpstream, Will, parse_broker_url
from tests.bridge.helpers import Observer, Recorder, eventually
from tests.mosquitto import MosquittoBroker


async def _scenario(broker: MosquittoBroker, protocol: str, topic: str) -> None:
    observer = Observer(broker, f"{topic}/#", qos=1).start()
    settings = parse_broker_url(broker.url, protocol=protocol)
    try:
        recorder = Recorder()
        aggregating = AggregatingUpstream(settings, gateway_id="uv", status_topic=None)
        await aggregating.start(recorder)
        aggregating.subscribe("n", f"{topic}/down", 1)
        aggregating.publish("n", f"{topic}/up", b"1", 1, False, 1)
        await eventually(lambda: recorder.done == {1: True}, what="ack")
        observer.publish(f"{topic}/down", b"2")
        await eventually(lambda: recorder.payloads() == [b"2"], what="downlink")
        await aggregating.close()

        recorder = Recorder()
        transparent = TransparentUpstream(settings, status_topic=None)
        await transparent.start(recorder)
        for i in range(20):
            transparent.open_session(f"uv-{protocol}-{i}", True, Will(f"{topic}/will", b"w"), 60)
        await eventually(lambda: len(recorder.sessions()) == 20, what="20 sessions")
        transparent.close_session(f"uv-{protocol}-0", fire_will=True)
        await eventually(lambda: b"w" in observer.payloads(f"{topic}/will"), what="will")
        await transparent.close()
    finally:
        observer.stop()


def test_bridge_runs_on_uvloop(
    mosquitto: MosquittoBroker, protocol: str, unique_topic: str
) -> None:
    """Publish, ack, downlink, transparent sessions and a will, all on uvloop."""
    uvloop.run(_scenario(mosquitto, protocol, unique_topic))
