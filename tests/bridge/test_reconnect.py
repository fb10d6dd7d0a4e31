"""Broker away and back: outbox, acks after reconnect, restored subscriptions, refusals."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.bridge import AggregatingUpstream, parse_broker_url
from tests.bridge.helpers import Observer, Recorder, eventually
from tests.mosquitto import MosquittoBroker


@pytest.fixture
def persistent_mosquitto(broker_dir: Path) -> Iterator[MosquittoBroker]:
    """A private broker that keeps sessions and queued messages across a restart."""
    broker = MosquittoBroker(
        extra_config=f"persistence true\npersistence_location {broker_dir}/\nautosave_interval 0\n"
    )
    broker.start()
    yield broker
    broker.stop()


def _upstream(broker: MosquittoBroker, protocol: str, **options: object) -> AggregatingUpstream:
    settings = parse_broker_url(broker.url, protocol=protocol, **options)  # type: ignore[arg-type]
    return AggregatingUpstream(settings, gateway_id="reconnect-test", status_topic=None)


@pytest.mark.slow
async def test_broker_restart_mid_stream_loses_nothing(
    persistent_mosquitto: MosquittoBroker, protocol: str
) -> None:
    """2,000 QoS 1 publishes across a broker restart: all acked, all delivered at least once."""
    broker = persistent_mosquitto
    observer = Observer(broker, "restart/#", qos=1, client_id="restart-observer", persistent=True)
    observer.start()
    recorder = Recorder()
    upstream = _upstream(broker, protocol)
    await upstream.start(recorder)
    total = 2000
    restart: asyncio.Future[None] | None = None
    try:
        for i in range(total):
            upstream.publish("node", f"restart/{i % 7}", b"%d" % i, 1, False, i)
            if i % 10 == 9:
                await asyncio.sleep(0.005)  # ~1 s of publishing, spanning the restart
            if i == total // 2:
                restart = asyncio.ensure_future(asyncio.to_thread(broker.restart))
        assert restart is not None
        await restart
        await eventually(lambda: len(recorder.done) == total, within=20, what="all acks")
        assert all(recorder.done.values())
        expected = {b"%d" % i for i in range(total)}
        await eventually(
            lambda: expected <= set(observer.payloads()), within=20, what="every payload"
        )
        assert upstream.connection is not None
        assert upstream.connection.stats.connects >= 2
    finally:
        await upstream.close()
        observer.stop()


async def test_publish_done_waits_for_the_broker(
    private_mosquitto: MosquittoBroker, protocol: str
) -> None:
    """With the broker away a QoS 1 publish is held, then acknowledged after reconnect."""
    recorder = Recorder()
    upstream = _upstream(private_mosquitto, protocol)
    await upstream.start(recorder)
    try:
        private_mosquitto.stop()
        await eventually(lambda: not upstream.connected, what="connection lost")
        upstream.publish("node", "held/1", b"x", 1, False, 7)
        upstream.publish("node", "held/0", b"x", 0, False)
        await asyncio.sleep(0.3)
        assert recorder.done == {}
        connection = upstream.connection
        assert connection is not None
        assert connection.outbox_size == 1
        assert connection.stats.dropped_qos0 == 1
        await asyncio.to_thread(private_mosquitto.start)
        await eventually(lambda: recorder.done == {7: True}, within=10, what="ack after restart")
        assert (None, False, 0) in recorder.connections
        assert recorder.connections[-1] == (None, True, 0)
    finally:
        await upstream.close()


async def test_full_outbox_reports_failure_at_once(
    private_mosquitto: MosquittoBroker, protocol: str
) -> None:
    """Beyond outbox_limit a publish is reported not ok right away (the node hears congestion)."""
    recorder = Recorder()
    upstream = _upstream(private_mosquitto, protocol, outbox_limit=5)
    await upstream.start(recorder)
    try:
        private_mosquitto.stop()
        await eventually(lambda: not upstream.connected, what="connection lost")
        for token in range(8):
            upstream.publish("node", "full/x", b"%d" % token, 1, False, token)
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert recorder.done == {5: False, 6: False, 7: False}
        assert upstream.connection is not None
        assert upstream.connection.stats.outbox_rejected == 3
        await asyncio.to_thread(private_mosquitto.start)
        await eventually(lambda: len(recorder.done) == 8, within=10, what="the held five")
        assert [recorder.done[t] for t in range(5)] == [True] * 5
    finally:
        await upstream.close()


async def test_subscriptions_restored_after_restart(
    private_mosquitto: MosquittoBroker, protocol: str
) -> None:
    """After the broker lost its sessions, the bridge subscribes again by itself."""
    recorder = Recorder()
    upstream = _upstream(private_mosquitto, protocol)
    await upstream.start(recorder)
    try:
        upstream.subscribe("node", "cmd/#", 1)
        await asyncio.to_thread(private_mosquitto.restart)
        await eventually(lambda: recorder.connections[-1:] == [(None, True, 0)], within=10)
        await asyncio.sleep(0.2)
        publisher = Observer(private_mosquitto, None).start()
        try:
            publisher.publish("cmd/reboot", b"now")
            await eventually(lambda: recorder.payloads() == [b"now"], what="downlink")
        finally:
            publisher.stop()
    finally:
        await upstream.close()


async def test_bad_credentials_log_once_and_back_off(
    auth_mosquitto: MosquittoBroker, protocol: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A refused login is one clear ERROR and a long wait, not a retry storm."""
    recorder = Recorder()
    url = auth_mosquitto.url.replace("mqtt://", "mqtt://alice:wrong-pw@")
    upstream = AggregatingUpstream(
        parse_broker_url(url, protocol=protocol), gateway_id="auth", status_topic=None
    )
    await upstream.start(recorder)
    try:
        await asyncio.sleep(0.5)
        assert not upstream.connected
        assert recorder.connections == [(None, False, 0x87)]  # not authorized, once
        errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
        assert len(errors) == 1
        assert "refused the credentials" in errors[0].getMessage()
        assert "wrong-pw" not in caplog.text  # never log passwords
    finally:
        await upstream.close()


async def test_good_credentials_connect(auth_mosquitto: MosquittoBroker, protocol: str) -> None:
    """User name and password from the URL are sent in CONNECT."""
    url = auth_mosquitto.url.replace("mqtt://", "mqtt://alice:secret@")
    upstream = AggregatingUpstream(
        parse_broker_url(url, protocol=protocol), gateway_id="auth", status_topic=None
    )
    await upstream.start(Recorder())
    try:
        assert upstream.connected
    finally:
        await upstream.close()


async def test_keepalive_pings_and_detects_a_silent_broker(
    private_mosquitto: MosquittoBroker, protocol: str
) -> None:
    """Keepalive 1 s: idle stays up (PINGREQ); a frozen broker is noticed and left."""
    recorder = Recorder()
    upstream = _upstream(private_mosquitto, protocol, keepalive=1, connect_timeout=1.0)
    await upstream.start(recorder)
    pid = private_mosquitto.pid
    assert pid is not None
    try:
        await asyncio.sleep(2.0)
        assert recorder.connections == [(None, True, 0)]
        os.kill(pid, signal.SIGSTOP)  # TCP stays open, nothing answers
        try:
            await eventually(lambda: not upstream.connected, within=5, what="dead broker noticed")
        finally:
            os.kill(pid, signal.SIGCONT)
        await eventually(lambda: upstream.connected, within=10, what="reconnect")
    finally:
        await upstream.close()
