"""Broker acknowledgements through the ack gate, on real Mosquitto: QoS 2 packet ids kept in the
state file (MQTT 5), PUBREC/PUBCOMP held until committed, and the paho (MQTT 3.1.1) path."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from pathlib import Path

import aiomqtt
import pytest

from gateway.bridge import parse_broker_url
from gateway.bridge.base import Qos2Ledger
from gateway.bridge.connection import BrokerConnection, open_connection
from gateway.core import CoreSettings, GatewayCore
from gateway.store import StateStore
from tests.bridge.helpers import eventually
from tests.mosquitto import MosquittoBroker

Send = Callable[[], None]


class Owner:
    """A connection's owner (what an Upstream is): records broker messages; has an ack gate."""

    def __init__(self, gate: object | None) -> None:
        if gate is not None:
            self.ack_gate = gate
        self.messages: list[tuple[str, bytes, int]] = []

    def on_message(
        self, topic: str, payload: bytes, qos: int, retain: bool, filters: object = None
    ) -> None:
        self.messages.append((topic, payload, qos))

    def on_publish_done(self, token: int, ok: bool) -> None:
        pass

    def on_state(self, connected: bool, return_code: int) -> None:
        pass


class HeldGate:
    """An ack gate whose acknowledgements wait until the test releases them, as if the commit
    (or the process) never finished; the QoS 2 ids go to the state file's ledger."""

    def __init__(self, ledger: Qos2Ledger | None) -> None:
        self.ledger = ledger
        self.held: list[Send] = []

    def __call__(self, send: Send) -> None:
        self.held.append(send)

    def release(self) -> None:
        held, self.held = self.held, []
        for send in held:
            send()


class HeldLedgerGate(HeldGate):
    """A HeldGate that is also a Qos2Ledger (the shape of the state file's gate)."""

    ledger: Qos2Ledger

    def qos2_ids(self, connection_id: str) -> set[int]:
        return self.ledger.qos2_ids(connection_id)

    def qos2_received(self, connection_id: str, packet_id: int) -> bool:
        return self.ledger.qos2_received(connection_id, packet_id)

    def qos2_released(self, connection_id: str, packet_id: int) -> None:
        self.ledger.qos2_released(connection_id, packet_id)


def open_store(path: Path) -> StateStore:
    """A state file loaded and saving, as the runtime opens it."""
    loop = asyncio.get_running_loop()
    store = StateStore(path)
    settings = CoreSettings()
    store.attach(GatewayCore(settings, state=store.load(settings, loop.time()).core), loop)
    return store


async def connect(
    broker: MosquittoBroker,
    client_id: str,
    owner: Owner,
    protocol: str = "5",
    subscribe: str | None = None,
) -> BrokerConnection:
    """A connection with a persistent broker session (as with a state file), up."""
    settings = parse_broker_url(broker.url, protocol=protocol)
    connection = open_connection(settings, client_id, owner, clean_start=False, session_expiry=300)
    await connection.start()
    assert connection.connected
    if subscribe is not None:
        connection.subscribe(subscribe, 2)
        await eventually(lambda: not connection._pending_acks, what="SUBACK")  # type: ignore[attr-defined]
    return connection


async def publish(broker: MosquittoBroker, topic: str, payload: bytes, qos: int) -> None:
    async with aiomqtt.Client(broker.host, broker.port) as client:
        await client.publish(topic, payload, qos=qos)


async def drop(connection: BrokerConnection) -> None:
    """Cut TCP without DISCONNECT (the broker keeps the session) and wait for the reconnect.

    First a pause: acknowledgements just released are written and read by the broker (a
    reset would discard what it has not read yet).
    """
    await asyncio.sleep(0.2)
    connects = connection.stats.connects
    if hasattr(connection, "_abort"):
        connection._abort()
    else:
        connection._drop_socket()  # type: ignore[attr-defined]
    await eventually(
        lambda: connection.connected and connection.stats.connects > connects, 10, "reconnect"
    )


def client_id(unique_topic: str) -> str:
    return unique_topic.replace("/", "-")[-60:]


# -- MQTT 5: QoS 2 packet ids in the state file -----------------------------------------------


async def test_redelivered_qos2_with_a_known_id_is_not_delivered_again(
    mosquitto: MosquittoBroker, unique_topic: str, tmp_path: Path
) -> None:
    """PUBREC waits for the gate; the broker's DUP (after a reconnect) is answered, not delivered
    again; PUBREL frees the id, and PUBCOMP waits for the commit of that removal."""
    store = open_store(tmp_path / "state.sqlite")
    gate = HeldLedgerGate(store.ack_gate)
    owner = Owner(gate)
    cid = client_id(unique_topic)
    connection = await connect(mosquitto, cid, owner, subscribe=unique_topic)
    await publish(mosquitto, unique_topic, b"once", 2)
    await eventually(lambda: len(owner.messages) == 1, what="delivery")
    (pid,) = store.ack_gate.qos2_ids(cid)
    assert len(gate.held) == 1  # the PUBREC, held: the broker has not been told

    await drop(connection)  # the broker never got PUBREC: it sends the PUBLISH again (DUP)
    await eventually(lambda: len(gate.held) == 2, what="the repeated PUBLISH answered")
    assert owner.messages == [(unique_topic, b"once", 2)]  # not delivered twice
    assert store.ack_gate.qos2_ids(cid) == {pid}

    gate.release()  # the first PUBREC was for the old connection: dropped; the second goes
    await eventually(lambda: store.ack_gate.qos2_ids(cid) == set(), what="PUBREL frees the id")
    assert len(gate.held) == 1  # PUBCOMP waits until the removal is committed
    gate.release()

    await drop(connection)  # the flow is complete at the broker: nothing is repeated
    await asyncio.sleep(0.5)
    assert gate.held == [] and owner.messages == [(unique_topic, b"once", 2)]
    await connection.close()
    await store.close()


async def test_a_pubrel_for_an_id_no_longer_known_is_answered(
    mosquitto: MosquittoBroker, unique_topic: str, tmp_path: Path
) -> None:
    """PUBCOMP lost with the connection: the broker repeats PUBREL for an id we already freed;
    it gets PUBCOMP (idempotent), and then stops repeating it."""
    store = open_store(tmp_path / "state.sqlite")
    gate = HeldLedgerGate(store.ack_gate)
    owner = Owner(gate)
    cid = client_id(unique_topic)
    connection = await connect(mosquitto, cid, owner, subscribe=unique_topic)
    await publish(mosquitto, unique_topic, b"m", 2)
    await eventually(lambda: len(gate.held) == 1, what="PUBREC gated")
    gate.release()
    await eventually(lambda: len(gate.held) == 1, what="PUBCOMP gated")
    assert store.ack_gate.qos2_ids(cid) == set()

    await drop(connection)  # PUBCOMP never left
    await eventually(lambda: len(gate.held) == 2, what="the repeated PUBREL answered")
    gate.release()
    await drop(connection)
    await asyncio.sleep(0.5)
    assert gate.held == []  # no PUBREL any more: the broker got our PUBCOMP
    assert owner.messages == [(unique_topic, b"m", 2)]
    await connection.close()
    await store.close()


@pytest.mark.parametrize("state_file", [True, False], ids=["ledger", "no-ledger"])
async def test_qos2_ids_survive_a_restart_of_the_state_file(
    mosquitto: MosquittoBroker, unique_topic: str, tmp_path: Path, state_file: bool
) -> None:
    """Delivered and committed, but PUBREC never sent (kill -9): the broker sends it again to the
    next process. With the state file's ledger the id is known and the message is not delivered
    a second time; the id is then freed on disk. (Without a ledger it would be: the control.)"""
    path = tmp_path / "state.sqlite"
    cid = client_id(unique_topic)
    first_store = open_store(path)
    first_gate = HeldLedgerGate(first_store.ack_gate)
    first = Owner(first_gate)
    connection = await connect(mosquitto, cid, first, subscribe=unique_topic)
    await publish(mosquitto, unique_topic, b"after-restart", 2)
    await eventually(lambda: len(first.messages) == 1, what="delivery")
    assert len(first_gate.held) == 1 and len(first_store.ack_gate.qos2_ids(cid)) == 1
    await first_store.sync()  # the id is on disk; its PUBREC stays held forever
    await connection.close()  # the broker keeps the session and the unacknowledged PUBLISH
    await first_store.close()

    store = open_store(path)
    owner = Owner(store.ack_gate if state_file else None)
    again = await connect(mosquitto, cid, owner)
    if state_file:
        await eventually(lambda: store.ack_gate.qos2_ids(cid) == set(), what="PUBREL")
        await asyncio.sleep(0.2)
        assert owner.messages == []
    else:
        await eventually(lambda: len(owner.messages) == 1, what="the duplicate")
    await again.close()
    await store.close()
    db = sqlite3.connect(path)
    rows = db.execute("SELECT packet_id FROM incoming_qos2").fetchall()
    db.close()
    assert len(rows) == (0 if state_file else 1)  # no ledger: nobody freed the saved id


async def test_without_a_state_file_qos2_is_acknowledged_at_once(
    mosquitto: MosquittoBroker, unique_topic: str
) -> None:
    """A plain gate (not a ledger) holds QoS 1 PUBACK only: QoS 2 goes through at once, as with
    ``--state :memory:`` (gating it without the ids on disk would only trade loss for
    duplicates)."""
    gate = HeldGate(None)
    owner = Owner(gate)
    connection = await connect(mosquitto, client_id(unique_topic), owner, subscribe=unique_topic)
    await publish(mosquitto, unique_topic, b"q2", 2)
    await publish(mosquitto, unique_topic, b"q1", 1)
    await eventually(lambda: len(owner.messages) == 2, what="both delivered")
    assert len(gate.held) == 1  # the PUBACK only
    gate.release()
    await connection.close()


# -- MQTT 3.1.1 through paho ------------------------------------------------------------------


async def test_paho_qos1_puback_waits_for_the_gate(
    mosquitto: MosquittoBroker, unique_topic: str
) -> None:
    """paho with manual acks: PUBACK leaves only through the gate, on the connection the PUBLISH
    came on; unacknowledged, the broker delivers it again after a reconnect (at least once)."""
    gate = HeldGate(None)
    owner = Owner(gate)
    connection = await connect(
        mosquitto, client_id(unique_topic), owner, protocol="3.1.1", subscribe=unique_topic
    )
    await publish(mosquitto, unique_topic, b"q1", 1)
    await eventually(lambda: len(gate.held) == 1, what="PUBACK gated")
    await drop(connection)
    await eventually(lambda: len(owner.messages) == 2, what="the broker's redelivery")
    gate.release()  # the old connection's PUBACK is dropped, the new one's goes
    await drop(connection)
    await asyncio.sleep(0.5)
    assert owner.messages == [(unique_topic, b"q1", 1)] * 2  # acknowledged: not a third time
    await connection.close()


async def _read_packet(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    first = (await reader.readexactly(1))[0]
    length = shift = 0
    while True:
        byte = (await reader.readexactly(1))[0]
        length |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return first, await reader.readexactly(length)
        shift += 7


async def _raw_connect(
    broker: MosquittoBroker, cid: str
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, bool]:
    """A hand-made MQTT 3.1.1 client (clean session off); returns session present."""
    reader, writer = await asyncio.open_connection(broker.host, broker.port)
    name = cid.encode()
    body = b"\x00\x04MQTT\x04\x00\x00\x3c" + len(name).to_bytes(2, "big") + name
    writer.write(bytes((0x10, len(body))) + body)
    kind, data = await asyncio.wait_for(_read_packet(reader), 5)
    assert kind == 0x20 and data[1] == 0, data
    return reader, writer, bool(data[0] & 1)


async def test_paho_answers_a_pubrel_for_a_message_it_never_held(
    mosquitto: MosquittoBroker, unique_topic: str
) -> None:
    """A process PUBREC'd a QoS 2 message and died before PUBCOMP: the next one (paho, manual
    acks) gets only PUBREL and must answer PUBCOMP, or the id stays in use at the broker. The
    message itself died with the first process: the MQTT 3.1.1 path's documented limit."""
    cid = client_id(unique_topic)
    reader, writer, _ = await _raw_connect(mosquitto, cid)
    topic = unique_topic.encode()
    body = b"\x00\x01" + len(topic).to_bytes(2, "big") + topic + b"\x02"
    writer.write(bytes((0x82, len(body))) + body)
    assert (await asyncio.wait_for(_read_packet(reader), 5))[0] == 0x90
    await publish(mosquitto, unique_topic, b"lost", 2)
    kind, data = await asyncio.wait_for(_read_packet(reader), 5)
    assert kind & 0xF6 == 0x34, hex(kind)  # PUBLISH, QoS 2
    pid = data[2 + int.from_bytes(data[:2], "big") :][:2]
    writer.write(b"\x50\x02" + pid)  # PUBREC
    assert await asyncio.wait_for(_read_packet(reader), 5) == (0x62, pid)  # PUBREL
    writer.close()  # gone without PUBCOMP

    owner = Owner(HeldGate(None))
    connection = await connect(mosquitto, cid, owner, protocol="3.1.1")
    await asyncio.sleep(0.5)  # the broker repeats PUBREL; paho answers through our subclass
    await connection.close()
    assert owner.messages == []

    reader, writer, present = await _raw_connect(mosquitto, cid)
    assert present
    with pytest.raises(TimeoutError):  # PUBREL is not repeated: the flow is complete
        await asyncio.wait_for(_read_packet(reader), 0.5)
    writer.write(b"\xe0\x00")  # DISCONNECT
    writer.close()
