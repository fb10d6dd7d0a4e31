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

Broker acknowledgements wait for the disk (``ack_gate``, the bridge's ``Upstream.ack_gate``):
a broker QoS 1 PUBLISH is acknowledged once what it changed is committed; for QoS 2 the packet
id is saved in that same commit (table ``incoming_qos2``) and PUBREC leaves after it, so a
PUBLISH the broker repeats after a crash is known and not delivered twice; PUBREL's removal of
the id is committed before PUBCOMP, so a stale id can never hide the broker's next message.

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
import json
import logging
import sqlite3
import time
from collections import Counter
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from gateway.core import ClientSession, CoreSettings, CoreState, GatewayCore, PublishUpstream
from gateway.core.delivery_queue import Delivery
from gateway.core.session import SessionState
from gateway.store_codec import (
    UnknownAddress,
    _rebase,
    decode_address,
    decode_session,
    encode_address,
    encode_session,
)
from gateway.store_db import (
    APPLICATION_ID,
    MEMORY,
    SCHEMA_VERSION,
    BrokerAckGate,
    StoreError,
    _Batch,
    _disk_free,
    _Mirror,
    _open,
    _page_size,
)

__all__ = [
    "APPLICATION_ID",
    "DEFAULT_MAX_BYTES",
    "MEMORY",
    "SCHEMA_VERSION",
    "SHED_AT",
    "BrokerAckGate",
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

DEFAULT_MAX_BYTES: Final = 64 * 1024 * 1024
SHED_AT: Final = 0.8  # above this share of the cap, buffered QoS 0 messages are not saved
_ERROR_INTERVAL = 60.0  # seconds between two ERROR lines about one kind of failure
_RETRY_DELAY = 1.0  # seconds between save attempts while saving fails
_DISK_LOW = 1024 * 1024  # "database or disk is full" with more free than this: our cap
_OFFSET_SLACK = 1.0  # seconds the wall clock may drift from the saved anchor (NTP steps more)
_LAST_RX_GRAIN = 10.0  # seconds: an active node's last_rx as saved (the restore ignores it)
# Restored with last_rx = max(saved, now) (``_rebase``): a coarse saved value changes nothing.
_LIVE_STATES: Final = frozenset((SessionState.ACTIVE, SessionState.AWAKE, SessionState.CONNECTING))


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
        #: ``Upstream.ack_gate``: acknowledgements after the commit; the bridge's Qos2Ledger.
        self.ack_gate = BrokerAckGate(self.after_commit, self._reschedule)

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
            qos2 = self._db.execute("SELECT connection, packet_id FROM incoming_qos2").fetchall()
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
        self.ack_gate.ids = {}
        for connection, packet_id in qos2:
            self.ack_gate.ids.setdefault(connection, set()).add(packet_id)
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
        gate = self.ack_gate
        if gate.changes:  # with the sessions collected below: one commit (see the docstring)
            batch.qos2, gate.changes = gate.changes, {}
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
        try:
            db.execute("BEGIN")
            saved, gone = batch.apply(db)
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
        counters["sessions_saved"] += saved
        counters["sessions_deleted"] += gone
        counters["buffer_rows_added"] += len(batch.queued)
        counters["buffer_rows_removed"] += len(batch.unqueued)
        counters["outbox_added"] += len(batch.added)
        counters["outbox_removed"] += len(batch.removed)
        counters["qos2_ids_changed"] += len(batch.qos2)
        _LOGGER.debug(
            "state saved in %.1f ms: sessions +%d -%d, buffers +%d -%d (%d held), "
            "outbox +%d -%d, %d bytes used",
            (time.perf_counter() - started) * 1000,
            saved,
            gone,
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
