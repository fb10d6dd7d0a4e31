"""Broker QoS 2 packet ids in the state file: saved with their delivery, freed, kept across reopen."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

from gateway.bridge.base import Qos2Ledger
from gateway.store import StateStore
from tests.store.test_store import A1, open_core, sleeper

CONN = "mqttsn-gw-test"


def saved_ids(path: Path) -> set[tuple[str, int]]:
    """The incoming_qos2 rows of a closed state file."""
    db = sqlite3.connect(path)
    try:
        return set(db.execute("SELECT connection, packet_id FROM incoming_qos2"))
    finally:
        db.close()


async def committed(store: StateStore) -> list[dict[str, int]]:
    """Pass the ack gate like a PUBREC would; return the counters seen when it was released."""
    seen: list[dict[str, int]] = []
    released = asyncio.Event()

    def send() -> None:
        seen.append(dict(store.counters))
        released.set()

    store.ack_gate(send)
    await asyncio.wait_for(released.wait(), 5)
    return seen


async def test_the_ack_gate_is_a_qos2_ledger(tmp_path: Path) -> None:
    """The runtime's ack gate is what the MQTT 5 connection recognises as a ledger."""
    store, _ = open_core(tmp_path / "state.sqlite")
    assert isinstance(store.ack_gate, Qos2Ledger)
    assert not isinstance(store.after_commit, Qos2Ledger)  # a plain gate: QoS 2 not gated
    await store.close()


async def test_id_is_committed_with_the_delivery_before_the_ack_leaves(tmp_path: Path) -> None:
    """The buffered message and its packet id are in one commit, done before PUBREC's gate opens."""
    path = tmp_path / "state.sqlite"
    store, core = open_core(path)
    sleeper(core, "s1", A1, "cmd", 2)
    await store.sync()
    saves = store.counters["saves"]
    gate = store.ack_gate
    # What Mqtt5Connection._on_publish does for a new QoS 2 id: record, deliver, gate PUBREC.
    assert gate.qos2_received(CONN, 7) is True
    core.on_broker_message("cmd", b"exactly-once", 2, False, asyncio.get_running_loop().time())
    store.changed()
    (seen,) = await committed(store)
    assert seen["saves"] == saves + 1  # one commit ...
    assert seen["qos2_ids_changed"] == 1  # ... holding the id ...
    assert seen["buffer_rows_added"] == 1  # ... and the buffered message
    await store.close()
    assert saved_ids(path) == {(CONN, 7)}


async def test_a_repeated_id_is_not_new_until_released(tmp_path: Path) -> None:
    """``qos2_received`` is a test-and-set: a repeat says False; PUBREL frees the id."""
    store, _ = open_core(tmp_path / "state.sqlite")
    gate = store.ack_gate
    assert gate.qos2_received(CONN, 1) is True
    assert gate.qos2_received(CONN, 1) is False  # the broker's DUP: not delivered again
    assert gate.qos2_received("other-node", 1) is True  # ids are per broker connection
    gate.qos2_released(CONN, 1)
    gate.qos2_released(CONN, 1)  # a repeated PUBREL: idempotent
    assert gate.qos2_ids(CONN) == set()
    assert gate.qos2_received(CONN, 1) is True  # the broker may reuse it after PUBCOMP
    await store.close()


async def test_ids_survive_a_reopen_and_release_deletes_them(tmp_path: Path) -> None:
    """Ids in use are back after close and open; a released one is deleted from the file."""
    path = tmp_path / "state.sqlite"
    store, _ = open_core(path)
    for pid in (1, 2, 65535):
        store.ack_gate.qos2_received(CONN, pid)
    store.ack_gate.qos2_received("node-7", 9)
    await committed(store)
    store.ack_gate.qos2_released(CONN, 2)
    await store.close()
    assert saved_ids(path) == {(CONN, 1), (CONN, 65535), ("node-7", 9)}

    again, _ = open_core(path)
    assert again.ack_gate.qos2_ids(CONN) == {1, 65535}
    assert again.ack_gate.qos2_ids("node-7") == {9}
    assert again.ack_gate.qos2_received(CONN, 1) is False  # the broker's redelivery
    again.ack_gate.qos2_released(CONN, 1)
    again.ack_gate.qos2_released(CONN, 65535)
    await committed(again)  # PUBCOMP's gate: the removal is on disk first
    await again.close()
    assert saved_ids(path) == {("node-7", 9)}


async def test_received_and_released_within_one_batch_leaves_nothing(tmp_path: Path) -> None:
    """An id taken and freed between two saves: the last change wins, the file stays empty."""
    path = tmp_path / "state.sqlite"
    store, _ = open_core(path)
    store.ack_gate.qos2_received(CONN, 5)
    store.ack_gate.qos2_released(CONN, 5)
    await committed(store)
    store.ack_gate.qos2_released(CONN, 5)  # then the same id freed again, and reused
    store.ack_gate.qos2_received(CONN, 5)
    await store.close()
    assert saved_ids(path) == {(CONN, 5)}


async def test_a_file_from_before_the_table_gets_it(tmp_path: Path) -> None:
    """A state file written before incoming_qos2 existed opens, keeps version 1, gains the table."""
    path = tmp_path / "state.sqlite"
    store, core = open_core(path)
    sleeper(core, "s1", A1, "cmd", 2)
    await store.close()
    db = sqlite3.connect(path)
    db.execute("DROP TABLE incoming_qos2")
    db.commit()
    db.close()

    store, core = open_core(path)
    assert "s1" in core.sessions
    assert store.ack_gate.qos2_ids(CONN) == set()
    store.ack_gate.qos2_received(CONN, 3)
    await store.close()
    assert saved_ids(path) == {(CONN, 3)}
    db = sqlite3.connect(path)
    assert db.execute("SELECT version FROM schema_version").fetchall() == [(1,)]
    db.close()
