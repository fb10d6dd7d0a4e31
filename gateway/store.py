"""The state file: sessions, buffers and the upstream outbox in SQLite, so a restart (even
``kill -9``) loses nothing the gateway has taken responsibility for.

What is kept: every ``ClientSession`` (registrations, subscriptions, will, the QoS 1/2 message in
flight to the node, the node's QoS 1/2 publishes awaiting the broker) as one JSON row per
ClientId; its buffered messages (the sleeping-node buffer) one row each in ``queue``; and each
QoS 1/2 publish handed to the broker bridge until the broker acknowledged it (``outbox``).
JSON, not pickle: a state file must never be able to run code.

Writes are batched: the core names the sessions it changed in ``core.dirty`` (a QoS 0 PUBLISH
changes nothing kept, so the hot path writes nothing). Every ``flush_interval`` those sessions
are serialised on the event loop (a consistent snapshot; a buffer is diffed against what is on
disk, so only messages that entered or left it are written) and committed in one transaction
by a writer thread, so a slow SD card never stalls the loop. A change reaches the file within
``flush_interval`` plus the commit; ``kill -9`` inside that window loses that change.

Uplink QoS 1/2 publishes are the exception, to keep the QoS 1 hot path off the disk: one is
saved (outbox row, and its entry in the node's row) only once it has waited a whole interval
for the broker. One acknowledged sooner (the usual case: a few milliseconds) is never written;
losing it to ``kill -9`` loses nothing the node was told: the node gets its PUBACK only after
the broker's, so it retransmits. Likewise an active node's ``last_rx`` is saved coarsely (the
restore starts its keep-alive over anyway), so steady traffic does not rewrite its row.

Times in the core are the loop's monotonic clock; on disk they are wall-clock (mono + the
wall-mono offset at save), rebased on load, so a sleeping node keeps its real deadline.

Size: the file is capped (``max_bytes``, for SD cards). Above ``SHED_AT`` of the cap, buffered
QoS 0 messages are no longer saved (counted); at the cap SQLite refuses new pages (as on a full
disk): the change stays in memory, is counted, logged at ERROR once a minute and retried; the
gateway keeps running.
"""

from __future__ import annotations

import asyncio
import base64
import importlib
import json
import logging
import operator
import shutil
import sqlite3
import time
from collections import Counter, deque
from collections.abc import Callable, Hashable, Iterable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from gateway.core import ClientSession, CoreSettings, CoreState, GatewayCore, PublishUpstream
from gateway.core.delivery_queue import Delivery
from gateway.core.session import OutboundInflight, SessionState, StoredWill, UplinkPending
from gateway.core.topics import TopicRegistry
from gateway.errors import GatewayError

__all__ = [
    "DEFAULT_MAX_BYTES",
    "MEMORY",
    "OutboxEntry",
    "RestoredState",
    "StateStore",
    "StoreError",
    "UnknownAddress",
    "decode_address",
    "decode_session",
    "encode_address",
    "encode_session",
]

_LOGGER = logging.getLogger(__name__)

MEMORY: Final = ":memory:"  # the state-file value that turns persistence off
DEFAULT_MAX_BYTES: Final = 64 * 1024 * 1024
SCHEMA_VERSION: Final = 1
APPLICATION_ID: Final = 0x4D514E53  # "MQNS" in the SQLite header: tells our files from others
SHED_AT: Final = 0.8  # above this share of the cap, buffered QoS 0 messages are not saved
_ERROR_INTERVAL = 60.0  # seconds between two ERROR lines about one kind of failure
_RETRY_DELAY = 1.0  # seconds between save attempts while saving fails
_DISK_LOW = 1024 * 1024  # "database or disk is full" with more free than this: our cap
_OFFSET_SLACK = 1.0  # seconds the wall clock may drift from the saved anchor (NTP steps more)
_LAST_RX_GRAIN = 10.0  # seconds: an active node's last_rx as saved (the restore ignores it)
# Restored with last_rx = max(saved, now) (``_rebase``): a coarse saved value changes nothing.
_LIVE_STATES: Final = frozenset((SessionState.ACTIVE, SessionState.AWAKE, SessionState.CONNECTING))

_SCHEMA = """
CREATE TABLE schema_version (version INTEGER NOT NULL);
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE sessions (client_id TEXT PRIMARY KEY, data TEXT NOT NULL);
CREATE TABLE queue (
    client_id TEXT NOT NULL, seq REAL NOT NULL, topic TEXT NOT NULL, payload BLOB NOT NULL,
    qos INTEGER NOT NULL, retain INTEGER NOT NULL, PRIMARY KEY (client_id, seq)
);
CREATE TABLE outbox (
    token INTEGER PRIMARY KEY, client_id TEXT, topic TEXT NOT NULL, payload BLOB NOT NULL,
    qos INTEGER NOT NULL, retain INTEGER NOT NULL
);
"""

_MOVE_ASIDE = (
    "move it aside (mv {path} {path}.bad, with its -wal file if there is one) to start with an "
    "empty state, or run with --state :memory: to keep state in memory only"
)
_OTHER_FILE = (
    "check the path and its permissions, choose another file with --state PATH (or "
    "[gateway] state-file), or run with --state :memory: to keep state in memory only"
)


class StoreError(GatewayError):
    """The state file cannot be used; the message names the file, the problem and the way out."""

    def __init__(self, path: str | Path, problem: str, way_out: str | None = None) -> None:
        way_out = way_out or _MOVE_ASIDE.format(path=path)
        super().__init__(f"state file {path}: {problem}. Way out: {way_out}.")
        self.path = str(path)
        self.problem = problem


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


# ---------------------------------------------------------------------------------- batches


@dataclass(frozen=True, slots=True)
class OutboxEntry:
    """A QoS 1/2 publish handed to the broker bridge and not acknowledged yet."""

    token: int
    client_id: str | None
    topic: str
    payload: bytes
    qos: int
    retain: bool


@dataclass(slots=True)
class RestoredState:
    """What a state file held: the core's state and the outbox to publish again."""

    core: CoreState
    outbox: list[OutboxEntry]
    saved_at: float | None = None  # wall-clock time of the last save


QueueKey = tuple[str, float]  # (client_id, seq): one buffered message on disk


def _merge(added: dict[Any, Any], removed: set[Any], more: dict[Any, Any], less: set[Any]) -> None:
    """Apply a later batch's row changes (``less`` first: a key may be freed, then reused)."""
    for key in less:
        if added.pop(key, None) is None:
            removed.add(key)  # never written at all when added and removed before a save
    added.update(more)


@dataclass(slots=True)
class _Batch:
    """One transaction: session rows (None: delete), buffered messages and outbox changes."""

    rows: dict[str, str | None] = field(default_factory=dict)
    queued: dict[QueueKey, Delivery] = field(default_factory=dict)
    unqueued: set[QueueKey] = field(default_factory=set)
    added: dict[int, PublishUpstream] = field(default_factory=dict)  # the action, as is
    removed: set[int] = field(default_factory=set)
    buffered: int = 0  # messages buffered in the saved sessions (for the log)

    def then(self, later: _Batch) -> _Batch:
        """This (unwritten) batch followed by ``later``, as one."""
        self.rows.update(later.rows)
        _merge(self.queued, self.unqueued, later.queued, later.unqueued)
        _merge(self.added, self.removed, later.added, later.removed)
        self.buffered = later.buffered
        return self

    def __bool__(self) -> bool:
        return bool(self.rows or self.queued or self.unqueued or self.added or self.removed)


class _Mirror:
    """What of one node's buffer is on disk (or on its way): the message objects and their seqs.

    Buffers only ever append, pop from the front, put back at the front and drop from the
    middle, never reorder; so messages still present keep their seq and new ones get a seq
    between their neighbours (or past the ends). Holding the objects keeps their ids unique.
    """

    __slots__ = ("bottom", "items", "seqs", "top")

    def __init__(self) -> None:
        self.items: list[Delivery] = []
        self.seqs: list[float] = []
        self.top = 0.0
        self.bottom = 0.0

    def add_loaded(self, item: Delivery, seq: float) -> None:
        self.items.append(item)
        self.seqs.append(seq)
        self.top = max(self.top, seq)
        self.bottom = min(self.bottom, seq)

    def diff(self, client_id: str, queue: Iterable[Delivery], batch: _Batch) -> None:
        """Record in ``batch`` what changed since the last diff; remember ``queue``."""
        now = list(queue)
        old, seqs = self.items, self.seqs
        # The usual shape, at C speed: some sent from the front, some appended at the back.
        popped = 0
        if now:
            while popped < len(old) and old[popped] is not now[0]:
                popped += 1
        else:
            popped = len(old)
        kept = len(old) - popped
        if kept <= len(now) and all(map(operator.is_, now[:kept], old[popped:])):
            batch.unqueued.update((client_id, seq) for seq in seqs[:popped])
            self.items, self.seqs = now[:kept], seqs[popped:]
            if kept < len(now):
                self._place(client_id, now[kept:], self.seqs[-1] if kept else None, None, batch)
            return
        self._diff_any(client_id, now, batch)

    def _diff_any(self, client_id: str, now: list[Delivery], batch: _Batch) -> None:
        old = {id(item): (item, seq) for item, seq in zip(self.items, self.seqs, strict=True)}
        self.items, self.seqs = [], []
        run: list[Delivery] = []  # new messages since the last one still present
        last: float | None = None
        present: set[int] = set()
        for item in now:
            found = old.get(id(item))
            if found is None or found[0] is not item:
                run.append(item)
                continue
            if run:
                self._place(client_id, run, last, found[1], batch)
                run = []
            self.items.append(item)
            self.seqs.append(found[1])
            present.add(id(item))
            last = found[1]
        if run:
            self._place(client_id, run, last, None, batch)
        batch.unqueued.update(
            (client_id, seq) for key, (_, seq) in old.items() if key not in present
        )

    def _place(
        self,
        client_id: str,
        run: list[Delivery],
        low: float | None,
        high: float | None,
        batch: _Batch,
    ) -> None:
        if high is None:  # appended (the usual case)
            seqs = [max(self.top, low or 0.0) + 1 + i for i in range(len(run))]
        elif low is None:  # put back at the front
            seqs = [min(self.bottom, high) - len(run) + i for i in range(len(run))]
        else:  # between two kept ones (not done by the core today; kept correct anyway)
            step = (high - low) / (len(run) + 1)
            seqs = [low + step * (i + 1) for i in range(len(run))]
        for item, seq in zip(run, seqs, strict=True):
            batch.queued[(client_id, seq)] = item
        self.items.extend(run)  # callers place runs in buffer order: seqs stay increasing
        self.seqs.extend(seqs)
        self.top = max(self.top, seqs[-1])
        self.bottom = min(self.bottom, seqs[0])


# ---------------------------------------------------------------------------------- the store


class StateStore:
    """The SQLite state file of one gateway; see the module docstring.

    ``StateStore(path)`` opens (creating it if needed) and checks the file, raising StoreError;
    ``load()`` reads it; ``attach(core, loop)`` starts saving what the core changes; the runtime
    reports the outbox with ``outbox_add`` / ``outbox_done``; ``await close()`` saves the rest.

    Args:
        path: the file (its directory is created); ``":memory:"`` for a throw-away database.
        max_bytes: the cap on the file's size (the WAL adds at most a few MiB on top).
        flush_interval: seconds between a change and its save (the batching window).
    """

    def __init__(
        self, path: str | Path, *, max_bytes: int = DEFAULT_MAX_BYTES, flush_interval: float = 0.05
    ) -> None:
        self.path = str(path)
        self.max_bytes = max_bytes
        self.flush_interval = flush_interval
        self.counters: Counter[str] = Counter()
        self._db = _open(self.path, max_bytes)
        self._after: list[Callable[[], None]] = []
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="state-store")
        self._job: Future[_Batch | None] | None = None
        self._core: GatewayCore | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._handle: asyncio.Handle | None = None
        self._pending = _Batch()  # outbox changes since the last save
        self._young: dict[int, PublishUpstream] = {}  # outbox entries held back one interval
        self._mirrors: dict[str, _Mirror] = {}  # buffers as saved
        self._rows: dict[str, str] = {}  # session rows as saved
        self._offset = 0.0  # wall - mono used for the saved times
        self._delay = flush_interval
        self._shed_qos0 = False  # set by the writer after measuring the file
        self._last_logged: dict[str, float] = {}
        self._closed = False

    # -- reading ------------------------------------------------------------------------------

    def load(self, settings: CoreSettings, now: float) -> RestoredState:
        """Read everything back; ``now`` is the loop's clock (deadlines are rebased onto it).

        Build the core from the returned state: later saves are diffed against these objects.
        """
        offset = time.time() - now
        self._mirrors, self._rows = {}, {}
        try:
            rows = self._db.execute("SELECT client_id, data FROM sessions").fetchall()
            queued = self._db.execute(
                "SELECT client_id, seq, topic, payload, qos, retain FROM queue "
                "ORDER BY client_id, seq"
            ).fetchall()
            outbox = self._read_outbox()
            saved = self._db.execute("SELECT value FROM meta WHERE key = 'saved_at'").fetchone()
        except sqlite3.DatabaseError as exc:
            raise StoreError(self.path, f"cannot be read ({exc})") from None
        sessions: dict[str, ClientSession] = {}
        for client_id, text in rows:
            try:
                session = decode_session(json.loads(text), offset, settings)
            except (ValueError, KeyError, TypeError, AttributeError) as exc:
                raise StoreError(
                    self.path, f"the saved session {client_id!r} is damaged ({exc!r})"
                ) from None
            _rebase(session, now, settings)
            sessions[client_id] = session
        for client_id, seq, topic, payload, qos, retain in queued:
            owner = sessions.get(client_id)
            if owner is not None:  # rows of a session deleted in the same save: none
                item = Delivery(topic, bytes(payload), qos, bool(retain))
                owner.queue.append(item)
                self._mirrors.setdefault(client_id, _Mirror()).add_loaded(item, seq)
        pending = {entry.token for entry in outbox}
        tokens: dict[int, tuple[str, int]] = {}
        top = max(pending, default=0)
        for session in sessions.values():
            for msg_id, uplink in list(session.uplink.items()):
                top = max(top, uplink.token)
                if uplink.token in pending:
                    tokens[uplink.token] = (session.client_id, msg_id)
                elif not uplink.acked:
                    # Taken from the node but not in the outbox (they are saved together, so
                    # this is an older file): forget it, so the node's retransmission is
                    # published instead of being ignored as a duplicate.
                    del session.uplink[msg_id]
        for entry in outbox:
            tokens.setdefault(entry.token, (entry.client_id or "", 0))  # a will: no node to ack
        # An address shared by two saved sessions goes to the one heard from last.
        ordered = sorted(sessions.values(), key=lambda s: s.last_rx)
        saved_at = float(saved[0]) if saved else None
        _LOGGER.info(
            "state file %s: %d session(s), %d buffered message(s), %d unacknowledged "
            "publish(es) restored%s",
            self.path,
            len(ordered),
            len(queued),
            len(outbox),
            f" (saved {time.time() - saved_at:.1f} s ago)" if saved_at else "",
        )
        return RestoredState(CoreState(ordered, tokens, top + 1), outbox, saved_at)

    def read_sessions(self) -> dict[str, dict[str, Any]]:
        """The sessions as committed, with their buffers (waits for the writer; diagnostics)."""
        return self._executor.submit(self._read_sessions).result()

    def read_outbox(self) -> list[OutboxEntry]:
        """The outbox as committed (waits for the writer; for tests and diagnostics)."""
        return self._executor.submit(self._read_outbox).result()

    def size(self) -> int:
        """Bytes in use in the file (pages not on the free list)."""
        return self._executor.submit(self._used_bytes).result()

    # -- saving -------------------------------------------------------------------------------

    def attach(self, core: GatewayCore, loop: asyncio.AbstractEventLoop) -> None:
        """Start saving: the sessions ``core`` marks dirty are written every flush_interval."""
        core.dirty = set()
        self._core = core
        self._loop = loop

    def changed(self) -> None:
        """Schedule a save if anything changed; called after each input (cheap when nothing did)."""
        if self._handle is None and not self._closed and self._loop is not None:
            pending = self._pending
            if (self._core is not None and self._core.dirty) or pending.added or pending.removed:
                self._handle = self._loop.call_later(self._delay, self.flush)

    def after_commit(self, callback: Callable[[], None]) -> None:
        """Run ``callback`` on the loop once everything changed so far is on disk.

        The bridge's acknowledgement gate: a broker PUBLISH is acknowledged only after the
        session it was buffered in (or sent from) is committed. When saving fails (disk full,
        size cap) the callbacks run anyway: the gateway then works from memory, as logged.
        """
        self._after.append(callback)
        self._kick()

    def _kick(self) -> None:
        # Acknowledgements wait: save at the end of this loop iteration, not a whole interval
        # later (group commit; WAL with synchronous=NORMAL makes a commit cheap). A save in
        # progress is followed by another as soon as it is done (see _written).
        if self._closed or self._loop is None:
            return
        job = self._job
        if job is not None and not job.done():
            return
        if self._handle is not None:
            self._handle.cancel()
        self._handle = self._loop.call_soon(self.flush)

    def outbox_add(self, action: PublishUpstream) -> None:
        """A QoS 1/2 publish went to the bridge: keep it until ``outbox_done(token)``."""
        assert action.token is not None
        self._pending.added[action.token] = action
        if self._handle is None:
            self.changed()

    def outbox_done(self, token: int) -> None:
        """The broker acknowledged ``token`` (or the node was refused): forget it."""
        # Acked within one or two batches (see the module docstring): no write at all.
        if self._pending.added.pop(token, None) is None and self._young.pop(token, None) is None:
            self._pending.removed.add(token)
            if self._handle is None:
                self.changed()

    def flush(self, *, everything: bool = False) -> None:
        """Serialise what changed now and hand it to the writer thread.

        Uplink publishes younger than one interval wait for the next flush, unless
        ``everything``.
        """
        self._handle = None
        job = self._job
        if job is not None and not job.done():
            self._reschedule()  # the disk is slow: changes keep collecting meanwhile
            return
        unwritten = job.result() if job is not None else None
        batch = self._collect(everything)
        if unwritten is not None:
            batch = unwritten.then(batch)
        after, self._after = self._after, []
        if batch:
            self._job = self._executor.submit(self._write, batch)
            self._job.add_done_callback(self._written)
            if after:
                self._job.add_done_callback(lambda _job: self._release(after))
        else:
            self._run_all(after)  # nothing to save: already durable
        if self._young:
            self._reschedule()  # saved next time unless acknowledged meanwhile

    async def sync(self) -> None:
        """Save everything changed so far and wait until it is committed (or failed)."""
        await self._wait()
        self.flush(everything=True)
        await self._wait()

    async def close(self) -> None:
        """Save what is left, then close the file; idempotent."""
        if self._closed:
            return
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        await self.sync()
        self._closed = True
        unwritten = self._job.result() if self._job is not None else None
        if unwritten is not None:
            _LOGGER.error(
                "state file %s: changes of %d node(s) could not be saved at shutdown",
                self.path,
                len(unwritten.rows),
            )
        await asyncio.wrap_future(self._executor.submit(self._db.close))
        self._executor.shutdown(wait=True)
        _LOGGER.info("state file %s closed: %s", self.path, dict(self.counters))

    def abandon(self) -> None:
        """Close the file without saving (when starting failed after opening it)."""
        self._closed = True
        self._executor.shutdown(wait=True)
        self._db.close()

    def __repr__(self) -> str:
        busy = self._job is not None and not self._job.done()
        state = "closed" if self._closed else ("saving" if busy else "idle")
        dirty = len(self._core.dirty or ()) if self._core is not None else 0
        return (
            f"<StateStore {self.path} {state} dirty={dirty} outbox+={len(self._pending.added)}"
            f" outbox-={len(self._pending.removed)} saves={self.counters['saves']}>"
        )

    # -- event loop side ----------------------------------------------------------------------

    def _collect(self, everything: bool = False) -> _Batch:
        batch, self._pending = self._pending, _Batch()
        # Outbox entries held back last time and still unacknowledged are saved now; those
        # added since are held back in turn (see the module docstring).
        young = batch.added
        batch.added = self._young
        if everything:
            batch.added.update(young)
            young = {}
        self._young = young
        core = self._core
        if core is None:
            return batch
        if batch.added and core.dirty is not None:
            # Their nodes' rows were saved without them: save those rows again, with them.
            core.dirty.update(e.client_id for e in batch.added.values() if e.client_id)
        if not core.dirty:
            return batch
        dirty, core.dirty = core.dirty, set()
        assert self._loop is not None
        offset = time.time() - self._loop.time()
        if abs(offset - self._offset) > _OFFSET_SLACK:
            self._offset = offset  # (re)anchored; kept otherwise, so unchanged rows compare equal
        shed = self._shed_qos0
        for client_id in dirty:
            session = core.sessions.get(client_id)
            mirror = self._mirrors.get(client_id)
            if session is None:
                batch.rows[client_id] = None
                self._rows.pop(client_id, None)
                if mirror is not None:
                    mirror.diff(client_id, (), batch)
                    del self._mirrors[client_id]
                continue
            data = encode_session(session, self._offset, queue=False)
            if session.state in _LIVE_STATES:
                data["last_rx"] -= data["last_rx"] % _LAST_RX_GRAIN
            if young and session.uplink:
                # Not yet in the outbox: nor in the row (the loader would drop it anyway).
                data["uplink"] = [u for u in data["uplink"] if u[3] or u[4] not in young]
            text = json.dumps(data, separators=(",", ":"))
            if self._rows.get(client_id) != text:  # e.g. a QoS 1 publish in and acked: same
                batch.rows[client_id] = self._rows[client_id] = text
            queue: Iterable[Delivery] = session.queue
            if shed:
                kept = [item for item in session.queue if item.qos]
                self.counters["qos0_not_saved"] += len(session.queue) - len(kept)
                queue = kept
            if mirror is None:
                if not session.queue:
                    continue
                mirror = self._mirrors[client_id] = _Mirror()
            mirror.diff(client_id, queue, batch)
            batch.buffered += len(mirror.seqs)
        return batch

    def _release(self, callbacks: list[Callable[[], None]]) -> None:
        # Writer thread: hand the acknowledgements back to the loop.
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._run_all, callbacks)

    @staticmethod
    def _run_all(callbacks: list[Callable[[], None]]) -> None:
        for callback in callbacks:
            try:
                callback()
            except Exception:
                _LOGGER.exception("after-commit callback failed")

    def _reschedule(self) -> None:
        if self._handle is None and not self._closed and self._loop is not None:
            self._handle = self._loop.call_later(self._delay, self.flush)

    def _written(self, job: Future[_Batch | None]) -> None:
        # Writer thread: a failed batch is retried (merged with newer changes) after a pause.
        failed = not job.cancelled() and job.exception() is None and job.result() is not None
        self._delay = _RETRY_DELAY if failed else self.flush_interval
        if failed and self._loop is not None and not self._closed:
            self._loop.call_soon_threadsafe(self._reschedule)
        elif self._after and self._loop is not None and not self._closed:
            self._loop.call_soon_threadsafe(self._kick)  # acknowledgements arrived meanwhile

    async def _wait(self) -> None:
        if self._job is not None and not self._job.done():
            await asyncio.wrap_future(self._job)

    # -- writer thread ------------------------------------------------------------------------

    def _write(self, batch: _Batch) -> _Batch | None:
        """Commit one batch; returns it when it could not be saved (to be retried)."""
        db = self._db
        started = time.perf_counter()
        rows = [(cid, data) for cid, data in batch.rows.items() if data is not None]
        gone = [(cid,) for cid, data in batch.rows.items() if data is None]
        try:
            db.execute("BEGIN")
            # DELETE then INSERT, not an UPSERT: the old row's pages are free for the new one
            # within the transaction (an UPSERT needs room for both).
            db.executemany("DELETE FROM sessions WHERE client_id = ?", [(c,) for c in batch.rows])
            db.executemany("INSERT INTO sessions VALUES (?, ?)", rows)
            db.executemany("DELETE FROM queue WHERE client_id = ? AND seq = ?", batch.unqueued)
            db.executemany(
                "INSERT OR REPLACE INTO queue VALUES (?, ?, ?, ?, ?, ?)",
                [
                    (cid, seq, d.topic, d.payload, d.qos, d.retain)
                    for (cid, seq), d in batch.queued.items()
                ],
            )
            db.executemany("DELETE FROM queue WHERE client_id = ?", gone)
            db.executemany("DELETE FROM outbox WHERE token = ?", [(t,) for t in batch.removed])
            db.executemany(
                "INSERT OR REPLACE INTO outbox VALUES (?, ?, ?, ?, ?, ?)",
                [
                    (e.token, e.client_id, e.topic, e.payload, e.qos, e.retain)
                    for e in batch.added.values()
                ],
            )
            db.execute("INSERT OR REPLACE INTO meta VALUES ('saved_at', ?)", (repr(time.time()),))
            db.execute("COMMIT")
        except sqlite3.Error as exc:
            self._rollback()
            self._failed(exc)
            return batch
        except Exception:  # our bug: never lose the batch, never stop saving
            self._rollback()
            self.counters["save_failed"] += 1
            if self._due("bug"):
                _LOGGER.exception("state file %s: saving failed", self.path)
            return batch
        used = self._used_bytes()
        shed = used >= self.max_bytes * SHED_AT
        if shed and not self._shed_qos0 and self._due("shed"):
            _LOGGER.warning(
                "state file %s holds %d of its %d bytes: buffered QoS 0 messages are no "
                "longer saved (QoS 1/2 still are)",
                self.path,
                used,
                self.max_bytes,
            )
        self._shed_qos0 = shed
        counters = self.counters
        counters["saves"] += 1
        counters["sessions_saved"] += len(rows)
        counters["sessions_deleted"] += len(gone)
        counters["buffer_rows_added"] += len(batch.queued)
        counters["buffer_rows_removed"] += len(batch.unqueued)
        counters["outbox_added"] += len(batch.added)
        counters["outbox_removed"] += len(batch.removed)
        _LOGGER.debug(
            "state saved in %.1f ms: sessions +%d -%d, buffers +%d -%d (%d held), "
            "outbox +%d -%d, %d bytes used",
            (time.perf_counter() - started) * 1000,
            len(rows),
            len(gone),
            len(batch.queued),
            len(batch.unqueued),
            batch.buffered,
            len(batch.added),
            len(batch.removed),
            used,
        )
        return None

    def _rollback(self) -> None:
        if self._db.in_transaction:
            try:
                self._db.execute("ROLLBACK")
            except sqlite3.Error:
                _LOGGER.debug("rollback of a failed save failed", exc_info=True)

    def _failed(self, exc: sqlite3.Error) -> None:
        """Count and report a failed save (ERROR once a minute); the state stays in memory."""
        if getattr(exc, "sqlite_errorcode", None) != sqlite3.SQLITE_FULL:
            key, why = "save_failed", f"saving failed ({exc})"
        elif _disk_free(self.path) > _DISK_LOW:
            key, why = "save_failed_cap", f"reached its cap of {self.max_bytes} bytes"
        else:
            key, why = "save_failed_disk_full", "the disk is full"
        self.counters[key] += 1
        if self._due(key):
            _LOGGER.error(
                "state file %s: %s: recent changes are kept in memory only, retrying (%d "
                "failed saves so far)%s",
                self.path,
                why,
                self.counters[key],
                "; raise [gateway] state-max-bytes or lower [mqttsn] queue-per-client / queue-total"
                if key == "save_failed_cap"
                else "",
            )

    def _due(self, key: str) -> bool:
        """True at most once per _ERROR_INTERVAL for ``key`` (the log rate limit)."""
        now = time.monotonic()
        last = self._last_logged.get(key)
        if last is None or now - last >= _ERROR_INTERVAL:
            self._last_logged[key] = now
            return True
        return False

    def _used_bytes(self) -> int:
        db = self._db
        pages = db.execute("PRAGMA page_count").fetchone()[0]
        free = db.execute("PRAGMA freelist_count").fetchone()[0]
        return int((pages - free) * _page_size(db))

    def _read_outbox(self) -> list[OutboxEntry]:
        return [
            OutboxEntry(token, client_id, topic, bytes(payload), qos, bool(retain))
            for token, client_id, topic, payload, qos, retain in self._db.execute(
                "SELECT token, client_id, topic, payload, qos, retain FROM outbox ORDER BY token"
            )
        ]

    def _read_sessions(self) -> dict[str, dict[str, Any]]:
        sessions = {
            client_id: {**json.loads(data), "queue": []}
            for client_id, data in self._db.execute("SELECT client_id, data FROM sessions")
        }
        for client_id, topic, payload, qos, retain in self._db.execute(
            "SELECT client_id, topic, payload, qos, retain FROM queue ORDER BY client_id, seq"
        ):
            if client_id in sessions:
                sessions[client_id]["queue"].append([topic, bytes(payload), qos, bool(retain)])
        return sessions


# ---------------------------------------------------------------------------------- opening


def _disk_free(path: str) -> int:
    try:
        return shutil.disk_usage(Path(path).parent).free
    except OSError:
        return 0


def _page_size(db: sqlite3.Connection) -> int:
    return int(db.execute("PRAGMA page_size").fetchone()[0])


def _open(path: str, max_bytes: int) -> sqlite3.Connection:
    """Open and check the file; create the schema in a new one. Raises StoreError."""
    if path != MEMORY:
        try:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(path, f"cannot create its directory ({exc})", _OTHER_FILE) from None
    try:
        # Autocommit (isolation_level None): transactions are explicit. The writer thread uses
        # the connection after opening, hence check_same_thread=False.
        db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=1.0)
    except sqlite3.Error as exc:
        raise StoreError(path, f"cannot be opened ({exc})", _OTHER_FILE) from None
    try:
        _check(db, path, max_bytes)
    except StoreError:
        db.close()
        raise
    except sqlite3.OperationalError as exc:
        db.close()
        if "locked" in str(exc):
            raise StoreError(
                path,
                "is in use by another process",
                "stop the other gateway, or give this one its own file with --state PATH "
                "(or [gateway] state-file)",
            ) from None
        raise StoreError(path, f"cannot be used ({exc})", _OTHER_FILE) from None
    except sqlite3.DatabaseError as exc:
        db.close()
        if "not a database" in str(exc):
            raise StoreError(path, f"is not an SQLite database at all ({exc})") from None
        raise StoreError(path, f"is damaged ({exc})") from None
    return db


def _check(db: sqlite3.Connection, path: str, max_bytes: int) -> None:
    # EXCLUSIVE: the file is ours while we run (a second gateway on it gets "in use"), and WAL
    # then needs no shared-memory (-shm) file.
    db.execute("PRAGMA locking_mode = EXCLUSIVE")
    app_id = db.execute("PRAGMA application_id").fetchone()[0]  # "file is not a database" here
    tables = [row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
    if app_id != APPLICATION_ID and (app_id != 0 or tables):
        listed = ", ".join(sorted(tables)[:5]) or "none"
        raise StoreError(
            path,
            f"is an SQLite database of another application (application_id {app_id:#x}, "
            f"tables: {listed}), not a gateway state file",
            f"point --state (or [gateway] state-file) at another file, or run with "
            f"--state :memory: to keep state in memory only; {path} is left untouched",
        )
    # WAL: a commit appends to the -wal file (nothing rewritten in place) and a crash mid-commit
    # leaves the last committed state intact.
    db.execute("PRAGMA journal_mode = WAL")
    # NORMAL: in WAL mode a commit survives a crash of the process (kill -9: it is in the -wal
    # file, in the OS cache) and the file never corrupts; only a power cut may roll back the
    # last commits. FULL would fsync the SD card on every commit (up to 20 a second): wear and
    # latency for no gain against kill -9.
    db.execute("PRAGMA synchronous = NORMAL")
    db.execute(f"PRAGMA journal_size_limit = {4 * 1024 * 1024}")
    if not tables:
        db.executescript(
            f"BEGIN IMMEDIATE; {_SCHEMA} PRAGMA application_id = {APPLICATION_ID}; "
            f"INSERT INTO schema_version VALUES ({SCHEMA_VERSION}); COMMIT;"
        )
    else:
        # An empty write transaction takes the lock now: "in use" shows at start, not later.
        db.execute("BEGIN IMMEDIATE")
        db.execute("COMMIT")
        row = db.execute("SELECT max(version) FROM schema_version").fetchone()
        version = row[0] if row else None
        if version != SCHEMA_VERSION:
            raise StoreError(
                path,
                f"has schema version {version}, this gateway reads version {SCHEMA_VERSION} "
                "(written by a newer gateway?)",
                f"run the newer gateway again, or {_MOVE_ASIDE.format(path=path)}",
            )
        problems = [row[0] for row in db.execute("PRAGMA quick_check(5)")]
        if problems != ["ok"]:
            raise StoreError(path, f"is damaged ({'; '.join(problems)})")
    page = _page_size(db)
    db.execute(f"PRAGMA max_page_count = {max(1, max_bytes // page)}")
    # Checkpoint (copy the WAL into the file) well before the WAL is a sizeable part of the cap.
    db.execute(f"PRAGMA wal_autocheckpoint = {max(16, min(1000, max_bytes // page // 8))}")
