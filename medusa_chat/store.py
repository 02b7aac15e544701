"""Conversations in SQLite under ``data_dir()``: raw SQL, transactions, ``PRAGMA user_version`` migrations.

Durability: WAL journal with ``synchronous=FULL``; every change is one transaction, so a crash or a kill
in the middle of a generation leaves the database at the last committed state (the user's prompt is
committed before generation starts, the answer when it ends). Each assistant message keeps the model,
the generation settings and the stats (JSON) it was produced with.

Errors: every :class:`Store` method (the constructor included) raises only :class:`StoreError`, with a
one-line message, for anything the database or the file system refuses (read-only file or directory,
a damaged file, a lock held too long). Callers catch ``StoreError`` and keep running; a failed call
changes nothing already stored. Several processes may open a fresh database at once: the schema is
created inside one write transaction, so exactly one of them migrates it.
"""

from __future__ import annotations

import functools
import json
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import UserError

DB_NAME = "history.db"
SCHEMA_VERSION = 1


def _script(db: sqlite3.Connection, script: str) -> None:
    """Run ``;``-separated statements inside the current transaction (``executescript`` would commit)."""
    for statement in script.split(";"):
        if statement.strip():
            db.execute(statement)


def _v1(db: sqlite3.Connection) -> None:
    _script(
        db,
        """
        CREATE TABLE conversations (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            title TEXT NOT NULL DEFAULT '',
            system_prompt TEXT NOT NULL DEFAULT '',
            model TEXT NOT NULL DEFAULT '',
            created REAL NOT NULL,
            updated REAL NOT NULL
        );
        CREATE TABLE messages (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            conversation_id INTEGER NOT NULL REFERENCES conversations(id) ON DELETE CASCADE,
            position INTEGER NOT NULL,
            role TEXT NOT NULL CHECK (role IN ('system', 'user', 'assistant')),
            content TEXT NOT NULL,
            model TEXT NOT NULL DEFAULT '',
            settings TEXT NOT NULL DEFAULT '{}',
            stats TEXT NOT NULL DEFAULT '{}',
            stopped INTEGER NOT NULL DEFAULT 0,
            created REAL NOT NULL,
            UNIQUE (conversation_id, position)
        );
        CREATE INDEX messages_by_conversation ON messages(conversation_id, position);
        """
    )


MIGRATIONS: list[Callable[[sqlite3.Connection], None]] = [_v1]
assert len(MIGRATIONS) == SCHEMA_VERSION


class StoreError(UserError, RuntimeError):
    """The history cannot be read or written (read-only, damaged, newer schema, locked); callers catch it."""


def _describe(path: Path, exc: BaseException) -> str:
    """A one-line message for a SQLite or OS error on the history database at ``path``."""
    text = str(exc).lower()
    if "readonly" in text or "read-only" in text or isinstance(exc, PermissionError):
        return f"the history database {path} is read-only (or its folder is): nothing was changed"
    if "unable to open" in text or isinstance(exc, OSError):
        return f"cannot open the history database {path} ({exc}): check that its folder exists and is writable"
    if "locked" in text or "busy" in text:
        return f"the history database {path} is busy (another medusa-chat is writing): try again"
    if "not a database" in text or "malformed" in text or "disk image" in text:
        return f"{path} is damaged or not a history database; it was left untouched: move it away to start afresh"
    if "is full" in text:
        return f"the disk holding {path} is full: nothing was saved"
    return f"the history database {path} refused the change ({exc}); nothing was changed"


def _guarded(method):
    """Re-raise SQLite and OS errors of a Store method as :class:`StoreError`."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except StoreError:
            raise
        except (sqlite3.Error, OSError) as exc:
            raise StoreError(_describe(self.path, exc)) from exc

    return wrapper


@dataclass
class StoredMessage:
    role: str
    content: str
    model: str = ""
    settings: dict[str, Any] = field(default_factory=dict)
    stats: dict[str, Any] = field(default_factory=dict)
    stopped: bool = False
    id: int | None = None


@dataclass
class Conversation:
    id: int
    title: str
    system_prompt: str
    model: str
    created: float
    updated: float
    messages: list[StoredMessage] = field(default_factory=list)
    message_count: int = 0


class Store:
    """The conversation history. Use from one thread (the UI thread); every call is short.

    Every method raises only :class:`StoreError` (see the module docstring): catch it and carry on.
    """

    def __init__(self, path: Path | str | None = None, clock: Callable[[], float] = time.time) -> None:
        self.path = Path(path) if path is not None else Path(DB_NAME)
        self.clock = clock
        self.read_only = False  # True when only reading works (a read-only file or folder)
        try:
            if path is None:
                from .paths import data_dir

                self.path = data_dir() / DB_NAME
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(_describe(self.path, exc)) from exc
        try:
            self.db = self._connect(str(self.path), uri=False)
            self._open()
        except StoreError as exc:
            if not (self.path.is_file() and "read-only" in str(exc)):
                raise
            self._open_read_only()

    def _connect(self, target: str, uri: bool) -> sqlite3.Connection:
        try:
            db = sqlite3.connect(target, uri=uri, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as exc:
            raise StoreError(_describe(self.path, exc)) from exc
        db.row_factory = sqlite3.Row
        return db

    def _open(self) -> None:
        try:
            self._configure()
        except BaseException:
            self.db.close()
            raise

    @_guarded
    def _configure(self) -> None:
        self.db.execute("PRAGMA busy_timeout = 10000")  # first: the other PRAGMAs may wait for a lock
        self.db.execute("PRAGMA foreign_keys = ON")
        self._use_wal()
        self.db.execute("PRAGMA synchronous = FULL")
        self._migrate()

    def _use_wal(self, patience: float = 10.0) -> None:
        """Switch to WAL; retried, since SQLite answers "locked" at once (no busy wait) while another
        process opening the same fresh database holds the lock the switch needs."""
        deadline = time.monotonic() + patience
        while True:
            try:
                self.db.execute("PRAGMA journal_mode = WAL")
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(0.02)

    @_guarded
    def _open_read_only(self) -> None:
        """Open a database nobody may write here (immutable: SQLite then needs no -wal/-shm files)."""
        self.db = self._connect(self.path.resolve().as_uri() + "?immutable=1", uri=True)
        try:
            current = self.version
            self._check_version(current)
            if current < SCHEMA_VERSION:
                raise StoreError(_describe(self.path, PermissionError("read-only")))
        except BaseException:
            self.db.close()
            raise
        self.read_only = True

    # --- plumbing ---------------------------------------------------------------------------------

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction (``BEGIN IMMEDIATE``): committed at the end, rolled back on any error."""
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield self.db
        except BaseException:
            if self.db.in_transaction:  # SQLite may already have rolled back (e.g. disk full)
                self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    @property
    @_guarded
    def version(self) -> int:
        return int(self.db.execute("PRAGMA user_version").fetchone()[0])

    def _check_version(self, current: int) -> None:
        if current > SCHEMA_VERSION:
            raise StoreError(
                f"{self.path} has schema version {current}, newer than this medusa-chat ({SCHEMA_VERSION}); "
                "upgrade medusa-chat"
            )

    def _migrate(self) -> None:
        """Bring the schema up to date; the version is read again inside the write transaction, so
        processes opening a fresh database at once migrate it exactly once."""
        self._check_version(self.version)
        if self.version == SCHEMA_VERSION:
            return  # up to date: no write lock needed (a read-only database still opens)
        with self.transaction() as db:
            current = int(db.execute("PRAGMA user_version").fetchone()[0])
            self._check_version(current)
            for number in range(current, SCHEMA_VERSION):
                MIGRATIONS[number](db)
            db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    @_guarded
    def close(self) -> None:
        self.db.close()

    # --- conversations ----------------------------------------------------------------------------

    @_guarded
    def create_conversation(self, title: str = "", system_prompt: str = "", model: str = "") -> int:
        now = self.clock()
        with self.transaction() as db:
            cur = db.execute(
                "INSERT INTO conversations (title, system_prompt, model, created, updated) VALUES (?, ?, ?, ?, ?)",
                (title, system_prompt, model, now, now),
            )
            return int(cur.lastrowid or 0)

    @_guarded
    def add_message(self, conversation_id: int, message: StoredMessage) -> int:
        with self.transaction() as db:
            row = db.execute(
                "SELECT COALESCE(MAX(position), -1) + 1 FROM messages WHERE conversation_id = ?", (conversation_id,)
            ).fetchone()
            cur = db.execute(
                "INSERT INTO messages (conversation_id, position, role, content, model, settings, stats, stopped,"
                " created) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    conversation_id,
                    row[0],
                    message.role,
                    message.content,
                    message.model,
                    json.dumps(message.settings, sort_keys=True),
                    json.dumps(message.stats, sort_keys=True),
                    int(message.stopped),
                    self.clock(),
                ),
            )
            db.execute(
                "UPDATE conversations SET updated = ?, model = CASE WHEN ? != '' THEN ? ELSE model END,"
                " title = CASE WHEN title = '' AND ? = 'user' THEN ? ELSE title END WHERE id = ?",
                (
                    self.clock(),
                    message.model,
                    message.model,
                    message.role,
                    _title_from(message.content),
                    conversation_id,
                ),
            )
            message.id = int(cur.lastrowid or 0)
            return message.id

    @_guarded
    def delete_messages_from(self, conversation_id: int, message_id: int) -> None:
        """Delete a message and everything after it (regenerate replaces the last answer)."""
        with self.transaction() as db:
            row = db.execute(
                "SELECT position FROM messages WHERE id = ? AND conversation_id = ?", (message_id, conversation_id)
            ).fetchone()
            if row is not None:
                db.execute(
                    "DELETE FROM messages WHERE conversation_id = ? AND position >= ?", (conversation_id, row[0])
                )

    def delete_messages(self, conversation_id: int, message_ids: list[int]) -> int:
        """Delete exactly these messages of a conversation (what one app instance knows); returns how many."""
        ids = [int(i) for i in message_ids]
        if not ids:
            return 0
        marks = ", ".join("?" * len(ids))
        with self.transaction() as db:
            cur = db.execute(
                f"DELETE FROM messages WHERE conversation_id = ? AND id IN ({marks})", (conversation_id, *ids)
            )
            return int(cur.rowcount)

    @_guarded
    def set_system_prompt(self, conversation_id: int, system_prompt: str) -> None:
        with self.transaction() as db:
            db.execute("UPDATE conversations SET system_prompt = ? WHERE id = ?", (system_prompt, conversation_id))

    @_guarded
    def rename(self, conversation_id: int, title: str) -> None:
        with self.transaction() as db:
            db.execute("UPDATE conversations SET title = ? WHERE id = ?", (title.strip(), conversation_id))

    @_guarded
    def delete(self, conversation_id: int) -> None:
        with self.transaction() as db:
            db.execute("DELETE FROM conversations WHERE id = ?", (conversation_id,))

    @_guarded
    def list_conversations(self) -> list[Conversation]:
        rows = self.db.execute(
            "SELECT c.*, (SELECT COUNT(*) FROM messages m WHERE m.conversation_id = c.id) AS n"
            " FROM conversations c ORDER BY c.updated DESC, c.id DESC"
        ).fetchall()
        return [_conversation(row, message_count=row["n"]) for row in rows]

    @_guarded
    def get(self, conversation_id: int) -> Conversation | None:
        row = self.db.execute("SELECT * FROM conversations WHERE id = ?", (conversation_id,)).fetchone()
        if row is None:
            return None
        conv = _conversation(row)
        for m in self.db.execute(
            "SELECT * FROM messages WHERE conversation_id = ? ORDER BY position", (conversation_id,)
        ).fetchall():
            conv.messages.append(
                StoredMessage(
                    role=m["role"],
                    content=m["content"],
                    model=m["model"],
                    settings=_json(m["settings"]),
                    stats=_json(m["stats"]),
                    stopped=bool(m["stopped"]),
                    id=m["id"],
                )
            )
        conv.message_count = len(conv.messages)
        return conv


def _json(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _conversation(row: sqlite3.Row, message_count: int = 0) -> Conversation:
    return Conversation(
        id=row["id"],
        title=row["title"],
        system_prompt=row["system_prompt"],
        model=row["model"],
        created=row["created"],
        updated=row["updated"],
        message_count=message_count,
    )


def _title_from(text: str) -> str:
    line = " ".join(text.split())
    return line[:60] + ("…" if len(line) > 60 else "")


def export_markdown(conversation: Conversation) -> str:
    """The conversation as Markdown: a heading, the system prompt, each turn, each answer's stats."""
    out = [f"# {conversation.title or 'Conversation'}", ""]
    if conversation.model:
        out += [f"*Model:* `{conversation.model}`", ""]
    if conversation.system_prompt:
        out += ["## System", "", conversation.system_prompt, ""]
    for message in conversation.messages:
        heading = {"user": "User", "assistant": "Assistant", "system": "System"}.get(message.role, message.role)
        out += [f"## {heading}", "", message.content, ""]
        if message.role == "assistant":
            if message.stopped:
                out += ["*(stopped)*", ""]
            summary = stats_summary(message.stats)
            if summary:
                out += [f"> {summary}", ""]
    return "\n".join(out).rstrip() + "\n"


def stats_summary(stats: dict[str, Any]) -> str:
    """One line like ``128 tokens · 2.41 tok/step · 35.2 tok/s · 2.10× · Medusa on``."""
    if not stats:
        return ""
    parts = []
    if "new_tokens" in stats:
        parts.append(f"{stats['new_tokens']} tokens")
    if stats.get("mean_accepted"):
        parts.append(f"{stats['mean_accepted']:.2f} tok/step")
    if stats.get("tokens_per_s"):
        parts.append(f"{stats['tokens_per_s']:.1f} tok/s")
    if stats.get("speedup"):
        parts.append(f"{stats['speedup']:.2f}×")
    if "medusa" in stats:
        parts.append("Medusa on" if stats["medusa"] else "Medusa off")
    return " · ".join(parts)
