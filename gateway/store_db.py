"""The state file's SQLite side: the schema, opening and checking the file, the row changes
one transaction writes (session rows, buffered messages diffed against what is on disk, outbox,
broker QoS 2 packet ids), and the broker ack gate that feeds those ids into the next transaction.
"""

from __future__ import annotations

import operator
import shutil
import sqlite3
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from gateway.core import PublishUpstream
from gateway.core.delivery_queue import Delivery
from gateway.errors import GatewayError

MEMORY: Final = ":memory:"  # the state-file value that turns persistence off
SCHEMA_VERSION: Final = 1
APPLICATION_ID: Final = 0x4D514E53  # "MQNS" in the SQLite header: tells our files from others

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
# Broker QoS 2 packet ids taken and not yet released, per broker connection (its client id).
# Added after version 1 without a version change: created in older files when opened, and an
# older gateway reading a newer file just does not see it.
_QOS2_TABLE = """
CREATE TABLE IF NOT EXISTS incoming_qos2 (
    connection TEXT NOT NULL, packet_id INTEGER NOT NULL, PRIMARY KEY (connection, packet_id)
) WITHOUT ROWID
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


# ---------------------------------------------------------------------------------- batches


QueueKey = tuple[str, float]  # (client_id, seq): one buffered message on disk


def _merge(added: dict[Any, Any], removed: set[Any], more: dict[Any, Any], less: set[Any]) -> None:
    """Apply a later batch's row changes (``less`` first: a key may be freed, then reused)."""
    for key in less:
        if added.pop(key, None) is None:
            removed.add(key)  # never written at all when added and removed before a save
    added.update(more)


@dataclass(slots=True)
class _Batch:
    """One transaction: session rows (None: delete), buffered messages, outbox changes and
    broker QoS 2 packet ids (True: in use, False: released; the last change wins)."""

    rows: dict[str, str | None] = field(default_factory=dict)
    queued: dict[QueueKey, Delivery] = field(default_factory=dict)
    unqueued: set[QueueKey] = field(default_factory=set)
    added: dict[int, PublishUpstream] = field(default_factory=dict)  # the action, as is
    removed: set[int] = field(default_factory=set)
    qos2: dict[tuple[str, int], bool] = field(default_factory=dict)
    buffered: int = 0  # messages buffered in the saved sessions (for the log)

    def then(self, later: _Batch) -> _Batch:
        """This (unwritten) batch followed by ``later``, as one."""
        self.rows.update(later.rows)
        _merge(self.queued, self.unqueued, later.queued, later.unqueued)
        _merge(self.added, self.removed, later.added, later.removed)
        self.qos2.update(later.qos2)
        self.buffered = later.buffered
        return self

    def apply(self, db: sqlite3.Connection) -> tuple[int, int]:
        """Execute the batch's row changes (in the caller's transaction); rows saved, deleted."""
        rows = [(cid, data) for cid, data in self.rows.items() if data is not None]
        gone = [(cid,) for cid, data in self.rows.items() if data is None]
        # DELETE then INSERT, not an UPSERT: the old row's pages are free for the new one
        # within the transaction (an UPSERT needs room for both).
        db.executemany("DELETE FROM sessions WHERE client_id = ?", [(c,) for c in self.rows])
        db.executemany("INSERT INTO sessions VALUES (?, ?)", rows)
        db.executemany("DELETE FROM queue WHERE client_id = ? AND seq = ?", self.unqueued)
        db.executemany(
            "INSERT OR REPLACE INTO queue VALUES (?, ?, ?, ?, ?, ?)",
            [
                (cid, seq, d.topic, d.payload, d.qos, d.retain)
                for (cid, seq), d in self.queued.items()
            ],
        )
        db.executemany("DELETE FROM queue WHERE client_id = ?", gone)
        db.executemany("DELETE FROM outbox WHERE token = ?", [(t,) for t in self.removed])
        db.executemany(
            "INSERT OR REPLACE INTO outbox VALUES (?, ?, ?, ?, ?, ?)",
            [
                (e.token, e.client_id, e.topic, e.payload, e.qos, e.retain)
                for e in self.added.values()
            ],
        )
        db.executemany(
            "DELETE FROM incoming_qos2 WHERE connection = ? AND packet_id = ?",
            [key for key, used in self.qos2.items() if not used],
        )
        db.executemany(
            "INSERT OR IGNORE INTO incoming_qos2 VALUES (?, ?)",
            [key for key, used in self.qos2.items() if used],
        )
        return len(rows), len(gone)

    def __bool__(self) -> bool:
        return bool(
            self.rows or self.queued or self.unqueued or self.added or self.removed or self.qos2
        )


class BrokerAckGate:
    """A state file's ``Upstream.ack_gate`` and the bridge's ``Qos2Ledger`` (bridge/base.py).

    ``gate(send)`` runs ``send`` once everything changed so far is committed. QoS 2 packet ids
    changed since the last save are collected by the store's next batch together with the
    sessions, so an id is committed with the delivery it belongs to, before its PUBREC.
    """

    __slots__ = ("_after_commit", "_changed", "changes", "ids")

    def __init__(
        self, after_commit: Callable[[Callable[[], None]], None], changed: Callable[[], None]
    ) -> None:
        self._after_commit = after_commit
        self._changed = changed  # schedules a save (an ack through the gate saves sooner)
        self.ids: dict[str, set[int]] = {}  # connection -> ids in use (as loaded, then live)
        self.changes: dict[tuple[str, int], bool] = {}  # not yet in a batch (see _Batch.qos2)

    def __call__(self, send: Callable[[], None]) -> None:
        self._after_commit(send)

    def qos2_ids(self, connection_id: str) -> set[int]:
        """Broker QoS 2 packet ids in use on ``connection_id`` (a copy)."""
        return set(self.ids.get(connection_id, ()))

    def qos2_received(self, connection_id: str, packet_id: int) -> bool:
        """Mark the id in use (saved with what its delivery changes); False if it already was."""
        ids = self.ids.setdefault(connection_id, set())
        if packet_id in ids:
            return False
        ids.add(packet_id)
        self.changes[connection_id, packet_id] = True
        self._changed()
        return True

    def qos2_released(self, connection_id: str, packet_id: int) -> None:
        """PUBREL (or a broker session gone) freed the id: delete it in the next commit."""
        ids = self.ids.get(connection_id)
        if ids is not None:
            ids.discard(packet_id)
            if not ids:
                del self.ids[connection_id]
        self.changes[connection_id, packet_id] = False
        self._changed()

    def __repr__(self) -> str:
        in_use = sum(map(len, self.ids.values()))
        return f"<BrokerAckGate qos2_ids={in_use} unsaved={len(self.changes)}>"


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
    db.execute(_QOS2_TABLE)
    page = _page_size(db)
    db.execute(f"PRAGMA max_page_count = {max(1, max_bytes // page)}")
    # Checkpoint (copy the WAL into the file) well before the WAL is a sizeable part of the cap.
    db.execute(f"PRAGMA wal_autocheckpoint = {max(16, min(1000, max_bytes // page // 8))}")
