"""The state file itself: saving and loading, batching, bad files, the size cap, the CLI's answer."""

from __future__ import annotations

import asyncio
import logging
import socket
import sqlite3
from pathlib import Path

import pytest

from gateway.cli import main
from gateway.core import CoreSettings, GatewayCore, PublishUpstream, SessionState
from gateway.protocol.constants import QoS
from gateway.protocol.messages import Connect, Disconnect, Publish, Register, Subscribe
from gateway.store import APPLICATION_ID, SHED_AT, StateStore, StoreError
from tests.mosquitto import free_port
from transports.base import UdpAddress

A1 = UdpAddress("10.0.0.1", 1001)
Q1 = QoS.AT_LEAST_ONCE


def open_core(
    path: Path, settings: CoreSettings | None = None, **options: object
) -> tuple[StateStore, GatewayCore]:
    """A store on ``path`` and a core loaded from it, saved as it changes."""
    loop = asyncio.get_running_loop()
    settings = settings or CoreSettings()
    store = StateStore(path, **options)  # type: ignore[arg-type]
    core = GatewayCore(settings, state=store.load(settings, loop.time()).core)
    store.attach(core, loop)
    return store, core


def sleeper(core: GatewayCore, client_id: str, address: object, topic: str, qos: int) -> None:
    """Connect ``client_id``, subscribe to ``topic``, and put it to sleep for 600 s."""
    now = asyncio.get_running_loop().time()
    core.receive(address, Connect(client_id, 60, False, False), now)
    core.receive(address, Subscribe(1, topic_name=topic, qos=QoS(qos)), now)
    core.receive(address, Disconnect(600), now)


async def test_new_file_is_marked_as_ours(tmp_path: Path) -> None:
    """A new file gets the schema, the application id and WAL mode; parents are created."""
    path = tmp_path / "deep" / "dir" / "state.sqlite"
    store = StateStore(path)
    await store.close()
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA application_id").fetchone()[0] == APPLICATION_ID
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert db.execute("SELECT version FROM schema_version").fetchall() == [(1,)]
    db.close()


async def test_sessions_survive_close_and_open(tmp_path: Path) -> None:
    """A sleeper's subscription and buffer are back after close/open, deadlines on real time."""
    path = tmp_path / "state.sqlite"
    store, core = open_core(path)
    sleeper(core, "n1", A1, "cmd/#", 1)
    now = asyncio.get_running_loop().time()
    core.on_broker_message("cmd/a", b"1", 1, False, now)
    core.on_broker_message("cmd/b", b"2", 0, False, now)
    last_rx = core.sessions["n1"].last_rx
    store.changed()
    await store.close()

    store, core = open_core(path)
    session = core.sessions["n1"]
    assert session.state is SessionState.ASLEEP
    assert session.subscriptions == {"cmd/#": 1}
    assert [(d.topic, d.payload, d.qos) for d in session.queue] == [
        ("cmd/a", b"1", 1),
        ("cmd/b", b"2", 0),
    ]
    assert core.by_address == {A1: "n1"}
    assert core.upstream_subscriptions() == [("cmd/#", 1)]
    assert session.last_rx == pytest.approx(last_rx, abs=0.5)  # same remaining sleep time
    await store.close()


async def test_forgotten_session_row_is_deleted(tmp_path: Path) -> None:
    """A clean DISCONNECT removes the row."""
    store, core = open_core(tmp_path / "s.sqlite")
    now = asyncio.get_running_loop().time()
    core.receive(A1, Connect("n1", 60, False, True), now)
    await store.sync()
    assert list(store.read_sessions()) == ["n1"]
    core.receive(A1, Disconnect(), now)
    await store.sync()
    assert store.read_sessions() == {}
    await store.close()


async def test_changes_are_batched(tmp_path: Path) -> None:
    """Many changes within one flush interval are one transaction."""
    store, core = open_core(tmp_path / "s.sqlite", flush_interval=0.2)
    sleeper(core, "n1", A1, "cmd/#", 1)
    now = asyncio.get_running_loop().time()
    for i in range(50):
        core.on_broker_message("cmd/a", b"%d" % i, 1, False, now)
        store.changed()
    await asyncio.sleep(0.4)
    assert store.counters["saves"] == 1
    assert len(store.read_sessions()["n1"]["queue"]) == 50
    await store.close()


async def test_outbox_acked_within_a_batch_is_never_written(tmp_path: Path) -> None:
    """A QoS 1 publish acked before the next save costs no outbox write at all."""
    store, _ = open_core(tmp_path / "s.sqlite")
    store.outbox_add(PublishUpstream("n1", "t", b"p", 1, False, 5))
    store.outbox_done(5)
    store.outbox_add(PublishUpstream("n1", "t", b"q", 2, True, 6))
    await store.sync()
    assert [(e.token, e.payload, e.qos, e.retain) for e in store.read_outbox()] == [
        (6, b"q", 2, True)
    ]
    assert store.counters["outbox_added"] == 1
    store.outbox_done(6)
    await store.sync()
    assert store.read_outbox() == []
    await store.close()


async def test_uplink_is_saved_only_once_it_waited_an_interval(tmp_path: Path) -> None:
    """Steady QoS 1 uplink acked by the broker in time writes nothing; a slow one is saved,
    in the outbox and in the node's row, one interval later."""
    path = tmp_path / "s.sqlite"
    store, core = open_core(path, flush_interval=0.05)
    now = asyncio.get_running_loop().time()
    core.receive(A1, Connect("n1", 60, False, False), now)
    core.receive(A1, Register(0, 1, "up/t"), now)
    store.changed()
    await asyncio.sleep(0.15)
    saves = store.counters["saves"]
    for msg_id in range(1, 9):  # each acked within one interval (but across a save)
        out = core.receive(A1, Publish(1, b"v", Q1, msg_id), now)
        (action,) = [a for a in out if isinstance(a, PublishUpstream)]
        store.outbox_add(action)
        store.changed()
        await asyncio.sleep(0.03)
        assert action.token is not None
        core.on_publish_done(action.token, True, now)
        store.outbox_done(action.token)
    await asyncio.sleep(0.15)
    assert store.counters["saves"] == saves  # neither outbox rows nor session rows
    out = core.receive(A1, Publish(1, b"slow", Q1, 9), now)
    (action,) = [a for a in out if isinstance(a, PublishUpstream)]
    store.outbox_add(action)
    store.changed()
    await asyncio.sleep(0.2)
    assert [e.token for e in store.read_outbox()] == [action.token]
    assert [u[0] for u in store.read_sessions()["n1"]["uplink"]] == [9]
    await store.close()


async def test_uplink_in_flight_is_tied_to_its_outbox_row(tmp_path: Path) -> None:
    """After a restart the node's pending QoS 1 publish is acked when its saved row is."""
    path = tmp_path / "s.sqlite"
    store, core = open_core(path)
    now = asyncio.get_running_loop().time()
    core.receive(A1, Connect("n1", 60, False, False), now)
    core.receive(A1, Register(0, 1, "up/t"), now)
    out = core.receive(A1, Publish(1, b"v", Q1, 9), now)
    (action,) = [a for a in out if isinstance(a, PublishUpstream)]
    store.outbox_add(action)
    await store.close()

    store, core = open_core(path)
    restored = store.load(core.settings, asyncio.get_running_loop().time())
    assert [e.token for e in restored.outbox] == [action.token]
    actions = core.on_publish_done(action.token, True, asyncio.get_running_loop().time())
    assert [type(a.message).__name__ for a in actions] == ["Puback"]  # type: ignore[attr-defined]
    await store.close()


async def test_second_gateway_on_the_same_file_is_refused(tmp_path: Path) -> None:
    """The file is locked while a gateway runs: a second one gets a clear StoreError."""
    path = tmp_path / "s.sqlite"
    store = StateStore(path)
    with pytest.raises(StoreError, match="in use by another process"):
        StateStore(path)
    await store.close()
    await StateStore(path).close()  # free again after close


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b"this is not a database, just text\n" * 100, "not an SQLite database"),
        (b"SQLite format 3\x00" + b"\xff" * 4080, "damaged|not an SQLite"),
    ],
)
def test_garbage_file_is_a_clear_error(tmp_path: Path, content: bytes, problem: str) -> None:
    """A file that is no SQLite database names itself and the way out."""
    path = tmp_path / "state.sqlite"
    path.write_bytes(content)
    with pytest.raises(StoreError, match=problem) as info:
        StateStore(path)
    message = str(info.value)
    assert str(path) in message
    assert "--state :memory:" in message
    assert f"mv {path} {path}.bad" in message


def test_foreign_sqlite_file_is_refused(tmp_path: Path) -> None:
    """Another application's SQLite file is never touched: the error names its tables."""
    path = tmp_path / "app.db"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE users (name TEXT)")
    db.commit()
    db.close()
    with pytest.raises(StoreError, match=r"another application.*users"):
        StateStore(path)
    db = sqlite3.connect(path)
    assert db.execute("SELECT name FROM sqlite_master").fetchall() == [("users",)]
    db.close()


async def test_damaged_file_is_a_clear_error(tmp_path: Path) -> None:
    """Overwritten pages are found at start (quick_check or reading), not later as a traceback."""
    path = tmp_path / "state.sqlite"
    store, core = open_core(path)
    for i in range(30):
        sleeper(core, f"node-{i}", UdpAddress("10.0.0.1", 2000 + i), f"cmd/{i}", 1)
    await store.close()
    data = bytearray(path.read_bytes())
    assert len(data) > 4 * 4096
    data[2 * 4096 : 4 * 4096] = b"\x5a" * (2 * 4096)
    path.write_bytes(bytes(data))
    with pytest.raises(StoreError, match="damaged"):
        StateStore(path).load(CoreSettings(), 0.0)


async def test_damaged_row_is_a_clear_error(tmp_path: Path) -> None:
    """A session row that is not what we wrote names the ClientId."""
    path = tmp_path / "state.sqlite"
    await StateStore(path).close()
    db = sqlite3.connect(path)
    db.execute("INSERT INTO sessions VALUES ('n9', '{\"client_id\": 1}')")
    db.commit()
    db.close()
    store = StateStore(path)
    with pytest.raises(StoreError, match="'n9' is damaged"):
        store.load(CoreSettings(), 0.0)
    store.abandon()


async def test_newer_schema_is_refused(tmp_path: Path) -> None:
    """A file from a newer gateway says so."""
    path = tmp_path / "state.sqlite"
    await StateStore(path).close()
    db = sqlite3.connect(path)
    db.execute("UPDATE schema_version SET version = 99")
    db.commit()
    db.close()
    with pytest.raises(StoreError, match="schema version 99"):
        StateStore(path)


@pytest.mark.parametrize("kind", ["garbage", "foreign"])
def test_cli_exits_2_with_the_way_out(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], kind: str
) -> None:
    """`run --state BAD` exits 2 before touching the network; no traceback."""
    path = tmp_path / "state.sqlite"
    if kind == "garbage":
        path.write_bytes(b"\x00garbage" * 600)
    else:
        db = sqlite3.connect(path)
        db.execute("CREATE TABLE t (x)")
        db.commit()
        db.close()
    udp = f"127.0.0.1:{free_port(socket.SOCK_DGRAM)}"
    code = main(["run", "--udp", udp, "--broker", "mqtt://127.0.0.1:9", "--state", str(path)])
    err = capsys.readouterr().err
    assert code == 2
    assert str(path) in err and "--state :memory:" in err
    assert "Traceback" not in err


def test_check_config_shows_the_state_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The default follows $STATE_DIRECTORY (systemd); --state and the TOML key override it."""
    monkeypatch.setenv("STATE_DIRECTORY", str(tmp_path / "svc"))
    config = tmp_path / "gw.toml"
    config.write_text("[gateway]\nstate-max-bytes = 1048576\n")
    assert main(["check-config", str(config)]) == 0
    out = capsys.readouterr().out
    assert f'state-file = "{tmp_path / "svc" / "state.sqlite"}"' in out
    assert "state-max-bytes = 1048576" in out
    assert main(["check-config", str(config), "--state", ":memory:"]) == 0
    assert 'state-file = ":memory:"' in capsys.readouterr().out
    config.write_text('[gateway]\nstate-file = "/var/lib/gw.sqlite"\n')
    assert main(["check-config", str(config)]) == 0
    assert 'state-file = "/var/lib/gw.sqlite"' in capsys.readouterr().out
    config.write_text("[gateway]\nstate-max-bytes = 10\n")
    assert main(["check-config", str(config)]) == 2
    assert "gateway.state-max-bytes" in capsys.readouterr().err


def test_default_without_systemd(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Outside systemd: ~/.local/state/mqttsn-gateway/state.sqlite (or $XDG_STATE_HOME)."""
    from gateway.config import default_state_file

    monkeypatch.delenv("STATE_DIRECTORY", raising=False)
    monkeypatch.delenv("XDG_STATE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert default_state_file() == str(tmp_path / ".local/state/mqttsn-gateway/state.sqlite")
    monkeypatch.setenv("XDG_STATE_HOME", "/srv/state")
    assert default_state_file() == "/srv/state/mqttsn-gateway/state.sqlite"


# ---------------------------------------------------------------------------------- size cap


async def test_size_cap_sheds_qos0_then_refuses_and_recovers(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Near the cap QoS 0 buffers are not saved; at the cap saves fail (counted, one ERROR a
    minute) while the gateway keeps everything in memory; freed space lets the retry land."""
    caplog.set_level(logging.WARNING, logger="gateway.store")
    cap = 256 * 1024
    store, core = open_core(tmp_path / "s.sqlite", max_bytes=cap)
    sleeper(core, "small", A1, "q0/#", 0)
    now = asyncio.get_running_loop().time()
    payload = b"\xa5" * 1000

    # Sleepers with a few QoS 1 messages each, until the file is near its cap.
    nodes: list[tuple[str, UdpAddress]] = []
    while store.size() < cap * SHED_AT:
        name, address = f"big-{len(nodes)}", UdpAddress("10.0.1.1", 3000 + len(nodes))
        sleeper(core, name, address, f"q1/{name}", 1)
        nodes.append((name, address))
        for _ in range(5):
            core.on_broker_message(f"q1/{name}", payload, 1, False, now)
        await store.sync()
    assert store.counters["save_failed_cap"] == 0
    for _ in range(5):
        core.on_broker_message("q0/x", b"zero", 0, False, now)
    await store.sync()
    assert store.counters["qos0_not_saved"] == 5
    assert store.read_sessions()["small"]["queue"] == []
    assert len(core.sessions["small"].queue) == 5  # still delivered from memory
    assert "buffered QoS 0 messages are no longer saved" in caplog.text

    # Past the cap: saves fail, the core keeps going, one ERROR for several failures.
    for _ in range(3):
        for name, _address in nodes:
            for _ in range(3):
                core.on_broker_message(f"q1/{name}", payload, 1, False, now)
        await store.sync()
    assert store.counters["save_failed_cap"] == 3
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "reached its cap" in errors[0].getMessage()
    assert len(store.read_sessions()["big-0"]["queue"]) == 5  # the last good save stands
    assert len(core.sessions["big-0"].queue) == 5 + 9

    # The nodes reconnect with a clean session: buffers go, and the pending save now fits.
    for name, address in nodes:
        core.receive(address, Connect(name, 60, False, True), now)
    await store.sync()
    saved = store.read_sessions()
    assert all(saved[name]["queue"] == [] for name, _ in nodes)
    assert store.size() < cap * SHED_AT
    await store.close()
