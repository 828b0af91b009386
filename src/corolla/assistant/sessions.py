"""Chat sessions, their messages, proposed edits and agent events, kept in SQLite per workspace.

The database lives at ``<root>/.corolla/sessions.db`` (the folder gets a ``.gitignore`` of ``*``
so it never lands in a commit). Several processes (CLI, editor service) and threads use it at
once, so every operation opens its own connection (sqlite3 objects must not cross threads),
the journal is WAL (readers never block the writer), a busy writer is waited for up to 5 s, and
every write that numbers something (``seq``) runs in one ``BEGIN IMMEDIATE`` transaction.

The schema is versioned with ``PRAGMA user_version``; :data:`MIGRATIONS` holds one step per
version and an older file is brought up to date when a store opens it.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from corolla.assistant.errors import EditNotFoundError, SessionNotFoundError, SessionStoreError

BUSY_TIMEOUT_S = 5.0
TITLE_CHARS = 60
EDIT_STATUSES = ("proposed", "accepted", "rejected", "undone", "failed")

# One entry per schema version: the statements that take a file from version i to i + 1.
MIGRATIONS: list[tuple[str, ...]] = [
    (
        """CREATE TABLE sessions (
            id TEXT PRIMARY KEY, title TEXT NOT NULL DEFAULT '', kind TEXT NOT NULL DEFAULT 'chat',
            created REAL NOT NULL, updated REAL NOT NULL, meta TEXT NOT NULL DEFAULT '{}')""",
        "CREATE INDEX sessions_updated ON sessions(updated)",
        """CREATE TABLE messages (
            id TEXT PRIMARY KEY,
            session_id TEXT NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
            seq INTEGER NOT NULL, role TEXT NOT NULL, content TEXT NOT NULL,
            context TEXT NOT NULL DEFAULT '[]', meta TEXT NOT NULL DEFAULT '{}', created REAL NOT NULL,
            UNIQUE (session_id, seq))""",
        """CREATE TABLE edits (
            id TEXT PRIMARY KEY,
            session_id TEXT NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
            status TEXT NOT NULL, proposal TEXT NOT NULL, created REAL NOT NULL, updated REAL NOT NULL)""",
        "CREATE INDEX edits_session ON edits(session_id, created)",
        "CREATE INDEX edits_status_updated ON edits(status, updated)",
        """CREATE TABLE events (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            session_id TEXT NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
            seq INTEGER NOT NULL, type TEXT NOT NULL, data TEXT NOT NULL DEFAULT '{}', created REAL NOT NULL,
            UNIQUE (session_id, seq))""",
    ),
]
SCHEMA_VERSION = len(MIGRATIONS)


@dataclass(frozen=True)
class Session:
    id: str
    title: str
    kind: str
    created: float
    updated: float
    meta: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Message:
    id: str
    session_id: str
    seq: int  # 1, 2, 3 ... within its session
    role: str
    content: str
    context: list[dict] = field(default_factory=list)  # Context.to_json() of what the prompt carried
    meta: dict = field(default_factory=dict)
    created: float = 0.0

    def to_json(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class EditRecord:
    id: str
    session_id: str
    status: str  # one of EDIT_STATUSES
    proposal: dict
    created: float
    updated: float

    def to_json(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Event:
    id: int
    session_id: str
    seq: int  # 1, 2, 3 ... within its session; follow a log with events(after_seq=last seen)
    type: str
    data: Any
    created: float

    def to_json(self) -> dict:
        return asdict(self)


def title_from(text: str, limit: int = TITLE_CHARS) -> str:
    """A session title from a user's message: its first non-empty line, cut at a word near ``limit``."""
    line = next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
    if len(line) <= limit:
        return line
    cut = line[:limit]
    space = cut.rfind(" ")
    if space >= limit // 2:
        cut = cut[:space]
    return cut.rstrip() + "…"


class SessionStore:
    """The sessions of one workspace; safe to share between threads and to open from several processes."""

    def __init__(self, root: Path):
        self.root = Path(root)
        folder = self.root / ".corolla"
        folder.mkdir(parents=True, exist_ok=True)
        ignore = folder / ".gitignore"
        if not ignore.exists():
            ignore.write_text("*\n")
        self.path = folder / "sessions.db"
        self._migrate()

    # --- connections ------------------------------------------------------------------------
    def _connect(self) -> sqlite3.Connection:
        try:
            conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
            conn.row_factory = sqlite3.Row
            conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
            conn.execute("PRAGMA foreign_keys = ON")
        except sqlite3.DatabaseError as e:
            raise SessionStoreError(f"cannot open the session database {self.path}: {e}") from e
        return conn

    @contextlib.contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        conn = self._connect()
        try:
            yield conn
        finally:
            conn.close()

    @contextlib.contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """A connection inside ``BEGIN IMMEDIATE``: the write lock is taken up front, so a
        read-then-write (the next ``seq``) cannot race another writer or deadlock on upgrade."""
        conn = self._connect()
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
        finally:
            conn.close()

    def _migrate(self) -> None:
        conn = self._connect()
        try:
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":  # e.g. a filesystem without shared memory; still correct, slower
                conn.execute("PRAGMA journal_mode = DELETE")
            conn.execute("BEGIN IMMEDIATE")
            try:
                version = conn.execute("PRAGMA user_version").fetchone()[0]
                if version > len(MIGRATIONS):
                    raise SessionStoreError(
                        f"{self.path} has schema version {version}, newer than this corolla knows "
                        f"({len(MIGRATIONS)}); upgrade corolla or move the file away")
                for step in MIGRATIONS[version:]:
                    for statement in step:
                        conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {len(MIGRATIONS)}")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
        except sqlite3.DatabaseError as e:
            raise SessionStoreError(f"cannot use the session database {self.path}: {e}") from e
        finally:
            conn.close()

    # --- sessions ---------------------------------------------------------------------------
    def create(self, title: str = "", kind: str = "chat", meta: dict | None = None) -> Session:
        with self._write() as conn:
            now = _next_time(conn, "sessions")
            session = Session(secrets.token_hex(6), title.strip(), kind, now, now, dict(meta or {}))
            conn.execute("INSERT INTO sessions (id, title, kind, created, updated, meta) VALUES (?, ?, ?, ?, ?, ?)",
                         (session.id, session.title, kind, now, now, _dump(session.meta)))
        return session

    def list(self, kind: str | None = None) -> list[Session]:
        """Sessions, most recently updated first (ties: by id, so the order is stable)."""
        query = "SELECT * FROM sessions" + (" WHERE kind = ?" if kind is not None else "")
        with self._read() as conn:
            rows = conn.execute(query + " ORDER BY updated DESC, id", () if kind is None else (kind,)).fetchall()
        return [_session(r) for r in rows]

    def get(self, session_id: str) -> Session:
        with self._read() as conn:
            return _session(_session_row(conn, session_id))

    def rename(self, session_id: str, title: str) -> None:
        with self._write() as conn:
            _session_row(conn, session_id)
            conn.execute("UPDATE sessions SET title = ?, updated = ? WHERE id = ?",
                         (title.strip(), _next_time(conn, "sessions"), session_id))

    def update_meta(self, session_id: str, changes: dict) -> Session:
        """Merge ``changes`` into the session's meta (a key set to None is removed)."""
        with self._write() as conn:
            meta = json.loads(_session_row(conn, session_id)["meta"])
            meta.update(changes)
            meta = {k: v for k, v in meta.items() if v is not None}
            conn.execute("UPDATE sessions SET meta = ?, updated = ? WHERE id = ?",
                         (_dump(meta), _next_time(conn, "sessions"), session_id))
            return _session(_session_row(conn, session_id))

    def delete(self, session_id: str) -> None:
        """Delete the session with its messages, edits and events."""
        with self._write() as conn:
            if conn.execute("DELETE FROM sessions WHERE id = ?", (session_id,)).rowcount == 0:
                raise _not_found(session_id)

    # --- messages ---------------------------------------------------------------------------
    def add_message(self, session_id: str, role: str, content: str, context: list[dict] | None = None,
                    meta: dict | None = None) -> Message:
        """Append a message; the first user message names a session that has no title yet."""
        with self._write() as conn:
            row = _session_row(conn, session_id)
            now = _touch(conn, session_id)
            seq = _next_seq(conn, "messages", session_id)
            message = Message(secrets.token_hex(6), session_id, seq, role, content, list(context or []),
                              dict(meta or {}), now)
            conn.execute("INSERT INTO messages (id, session_id, seq, role, content, context, meta, created) "
                         "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                         (message.id, session_id, seq, role, content, _dump(message.context), _dump(message.meta), now))
            if role == "user" and not row["title"]:
                conn.execute("UPDATE sessions SET title = ? WHERE id = ?", (title_from(content), session_id))
        return message

    def messages(self, session_id: str) -> list[Message]:
        with self._read() as conn:
            _session_row(conn, session_id)
            rows = conn.execute("SELECT * FROM messages WHERE session_id = ? ORDER BY seq", (session_id,)).fetchall()
        return [Message(r["id"], r["session_id"], r["seq"], r["role"], r["content"], json.loads(r["context"]),
                        json.loads(r["meta"]), r["created"]) for r in rows]

    # --- edits ------------------------------------------------------------------------------
    def add_edit(self, session_id: str, proposal_json: dict, status: str = "proposed") -> str:
        _check_status(status)
        edit_id = secrets.token_hex(6)
        with self._write() as conn:
            _session_row(conn, session_id)
            _touch(conn, session_id)
            now = _next_time(conn, "edits")
            conn.execute("INSERT INTO edits (id, session_id, status, proposal, created, updated) "
                         "VALUES (?, ?, ?, ?, ?, ?)", (edit_id, session_id, status, _dump(proposal_json), now, now))
        return edit_id

    def get_edit(self, edit_id: str) -> EditRecord:
        with self._read() as conn:
            return _edit(_edit_row(conn, edit_id))

    def set_edit_status(self, edit_id: str, status: str) -> None:
        _check_status(status)
        with self._write() as conn:
            row = _edit_row(conn, edit_id)
            conn.execute("UPDATE edits SET status = ?, updated = ? WHERE id = ?",
                         (status, _next_time(conn, "edits"), edit_id))
            _touch(conn, row["session_id"])

    def edits(self, session_id: str) -> list[EditRecord]:
        """The session's edits, oldest first."""
        with self._read() as conn:
            _session_row(conn, session_id)
            rows = conn.execute("SELECT * FROM edits WHERE session_id = ? ORDER BY created, id",
                                (session_id,)).fetchall()
        return [_edit(r) for r in rows]

    def last_accepted_edit(self, session_id: str | None = None) -> EditRecord | None:
        """The edit accepted most recently (in one session, or in the workspace): what undo reverts."""
        query = "SELECT * FROM edits WHERE status = 'accepted'"
        args: tuple = ()
        if session_id is not None:
            query, args = query + " AND session_id = ?", (session_id,)
        with self._read() as conn:
            if session_id is not None:
                _session_row(conn, session_id)
            row = conn.execute(query + " ORDER BY updated DESC, id LIMIT 1", args).fetchone()
        return None if row is None else _edit(row)

    # --- events -----------------------------------------------------------------------------
    def add_event(self, session_id: str, type: str, data: Any = None) -> int:
        """Append an event (an agent step, a log line); returns its ``seq`` in the session."""
        with self._write() as conn:
            _session_row(conn, session_id)
            now = _touch(conn, session_id)
            seq = _next_seq(conn, "events", session_id)
            conn.execute("INSERT INTO events (session_id, seq, type, data, created) VALUES (?, ?, ?, ?, ?)",
                         (session_id, seq, type, _dump(data), now))
        return seq

    def events(self, session_id: str, after_seq: int = 0) -> list[Event]:
        """The session's events with ``seq > after_seq``, in order (poll with the last seq seen)."""
        with self._read() as conn:
            _session_row(conn, session_id)
            rows = conn.execute("SELECT * FROM events WHERE session_id = ? AND seq > ? ORDER BY seq",
                                (session_id, after_seq)).fetchall()
        return [Event(r["id"], r["session_id"], r["seq"], r["type"], json.loads(r["data"]), r["created"])
                for r in rows]


# --- helpers (all run inside an open connection) ---------------------------------------------
def _dump(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


def _not_found(session_id: str) -> SessionNotFoundError:
    return SessionNotFoundError(f"no session {session_id!r} in this workspace (list them with /sessions)")


def _session_row(conn: sqlite3.Connection, session_id: str) -> sqlite3.Row:
    row = conn.execute("SELECT * FROM sessions WHERE id = ?", (session_id,)).fetchone()
    if row is None:
        raise _not_found(session_id)
    return row


def _edit_row(conn: sqlite3.Connection, edit_id: str) -> sqlite3.Row:
    row = conn.execute("SELECT * FROM edits WHERE id = ?", (edit_id,)).fetchone()
    if row is None:
        raise EditNotFoundError(f"no proposed edit {edit_id!r} in this workspace (it may belong to a deleted session)")
    return row


def _session(row: sqlite3.Row) -> Session:
    return Session(row["id"], row["title"], row["kind"], row["created"], row["updated"], json.loads(row["meta"]))


def _edit(row: sqlite3.Row) -> EditRecord:
    return EditRecord(row["id"], row["session_id"], row["status"], json.loads(row["proposal"]),
                      row["created"], row["updated"])


def _check_status(status: str) -> None:
    if status not in EDIT_STATUSES:
        raise ValueError(f"edit status {status!r} is not one of {', '.join(EDIT_STATUSES)}")


def _next_time(conn: sqlite3.Connection, table: str) -> float:
    """Now, but strictly after every ``updated`` in ``table``: "most recent" never ties, even when
    the clock is coarse or steps back."""
    latest = conn.execute(f"SELECT MAX(updated) FROM {table}").fetchone()[0]
    now = time.time()
    return now if latest is None or now > latest else latest + 1e-6


def _touch(conn: sqlite3.Connection, session_id: str) -> float:
    now = _next_time(conn, "sessions")
    conn.execute("UPDATE sessions SET updated = ? WHERE id = ?", (now, session_id))
    return now


def _next_seq(conn: sqlite3.Connection, table: str, session_id: str) -> int:
    row = conn.execute(f"SELECT COALESCE(MAX(seq), 0) FROM {table} WHERE session_id = ?", (session_id,)).fetchone()
    return row[0] + 1
