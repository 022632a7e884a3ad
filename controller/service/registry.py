"""The service's job registry: one embedded SQLite database in its state directory.

It holds what the service must not forget across restarts: each search's spec,
state, timestamps, run directory and result summary. The evaluations themselves
stay in the run directory (the registry only caches counts and the best), so the
registry can never disagree with the durable log about what was evaluated.

The registry is created private (0600, in a 0700 state directory) and atomically, so a
crash during creation never leaves an empty file behind; an existing file that is empty,
truncated or not a database stops the service with one clear error instead of being
silently replaced by an empty registry (which would forget every search).
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from raynas.common import DataError, NotFound

PENDING, RUNNING, SUCCEEDED, FAILED, CANCELLED, INTERRUPTED = (
    "pending", "running", "succeeded", "failed", "cancelled", "interrupted")
STATES = (PENDING, RUNNING, SUCCEEDED, FAILED, CANCELLED, INTERRUPTED)
ACTIVE = (PENDING, RUNNING)
#: States a search can be resumed from (its checkpoints are intact).
RESUMABLE = (FAILED, CANCELLED, INTERRUPTED)
#: Stored error texts are cut to this many characters: they travel in every listing.
MAX_ERROR = 2000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS searches (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL DEFAULT '',
    state TEXT NOT NULL,
    spec TEXT NOT NULL,
    created_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    run_dir TEXT NOT NULL,
    ray_namespace TEXT NOT NULL DEFAULT '',
    evaluations_done INTEGER NOT NULL DEFAULT 0,
    evaluations_failed INTEGER NOT NULL DEFAULT 0,
    best TEXT,
    error TEXT NOT NULL DEFAULT '',
    result TEXT,
    owner TEXT NOT NULL DEFAULT '',
    cancel_requested_at REAL
)
"""
#: Columns added since the first schema, for registries written before them.
_ADDED = {"owner": "TEXT NOT NULL DEFAULT ''", "cancel_requested_at": "REAL"}
_JSON_FIELDS = ("spec", "best", "result")


@dataclass(frozen=True)
class SearchRecord:
    id: str
    state: str
    spec: dict[str, Any]
    run_dir: str
    created_at: float = field(default_factory=time.time)
    name: str = ""
    started_at: float | None = None
    finished_at: float | None = None
    ray_namespace: str = ""
    evaluations_done: int = 0
    evaluations_failed: int = 0
    best: dict[str, Any] | None = None
    error: str = ""
    #: The run directory's result.json once the search ended.
    result: dict[str, Any] | None = None
    #: The client that submitted it (its name in the tokens file); '' before owners existed.
    owner: str = ""
    #: When it was asked to stop (by its owner, or at its time limit): a restarted service still
    #: force-stops it once the cancel grace has passed since then.
    cancel_requested_at: float | None = None

    def replace(self, **changes: Any) -> SearchRecord:
        return replace(self, **changes)


_COLUMNS = tuple(f.name for f in fields(SearchRecord))


class JobRegistry:
    """Thread-safe: the servicer's threads and the monitor share one connection under a lock."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        if not self.path.exists():
            _create(self.path)
        elif self.path.stat().st_size == 0:
            raise DataError(f"the registry {self.path} is empty (0 bytes), so it lost every search it held: restore "
                            "it from a backup, or move it away to start with an empty registry")
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        try:
            # WAL: readers never wait for the monitor's writes; a crash mid-write loses nothing committed.
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            problem = self._db.execute("PRAGMA quick_check").fetchone()[0]
            if problem != "ok":
                raise sqlite3.DatabaseError(problem)
            self._db.execute(_SCHEMA)
            present = {row[1] for row in self._db.execute("PRAGMA table_info(searches)")}
            for column, kind in _ADDED.items():
                if column not in present:
                    self._db.execute(f"ALTER TABLE searches ADD COLUMN {column} {kind}")
        except sqlite3.DatabaseError as exc:
            self._db.close()
            raise DataError(f"the registry {self.path} is damaged ({exc}): restore it from a backup, or move it "
                            "away to start with an empty registry") from None

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def add(self, record: SearchRecord) -> SearchRecord:
        record = record.replace(error=bounded_error(record.error))
        row = self._to_row(record)
        with self._lock:
            self._db.execute(f"INSERT INTO searches ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' * len(row))})", row)
        return record

    def update(self, search_id: str, **changes: Any) -> SearchRecord:
        if "error" in changes:
            changes["error"] = bounded_error(changes["error"])
        record = self.get(search_id).replace(**changes)
        row = dict(zip(_COLUMNS, self._to_row(record)))
        sets = ", ".join(f"{k} = ?" for k in changes)
        with self._lock:
            self._db.execute(f"UPDATE searches SET {sets} WHERE id = ?", [row[k] for k in changes] + [search_id])
        return record

    def get(self, search_id: str) -> SearchRecord:
        with self._lock:
            row = self._db.execute(f"SELECT {', '.join(_COLUMNS)} FROM searches WHERE id = ?", (search_id,)).fetchone()
        if row is None:
            raise NotFound(f"no search with id {search_id!r} (nas status lists them)")
        return self._from_row(row)

    def list(self, limit: int, before: str | None = None, state: str | None = None,
             owner: str | None = None) -> list[SearchRecord]:
        """Newest first (ids sort by creation time); `before` is the last id of the previous page;
        `owner` None lists every owner's searches."""
        where, args = [], []
        for clause, value in (("id < ?", before), ("state = ?", state), ("owner = ?", owner)):
            if value is not None:
                where.append(clause)
                args.append(value)
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        with self._lock:
            rows = self._db.execute(
                f"SELECT {', '.join(_COLUMNS)} FROM searches {clause} ORDER BY id DESC LIMIT ?", (*args, limit)
            ).fetchall()
        return [self._from_row(r) for r in rows]

    def delete(self, search_id: str) -> None:
        with self._lock:
            self._db.execute("DELETE FROM searches WHERE id = ?", (search_id,))

    def in_states(self, states: tuple[str, ...]) -> Iterator[SearchRecord]:
        with self._lock:
            rows = self._db.execute(
                f"SELECT {', '.join(_COLUMNS)} FROM searches WHERE state IN ({', '.join('?' * len(states))})",
                states).fetchall()
        return iter([self._from_row(r) for r in rows])

    def count(self, states: tuple[str, ...], owner: str | None = None) -> int:
        """The searches in `states`; only `owner`'s unless None."""
        clause, args = f"state IN ({', '.join('?' * len(states))})", list(states)
        if owner is not None:
            clause, args = f"{clause} AND owner = ?", [*args, owner]
        with self._lock:
            return self._db.execute(f"SELECT COUNT(*) FROM searches WHERE {clause}", args).fetchone()[0]

    @staticmethod
    def _to_row(record: SearchRecord) -> tuple:
        return tuple(json.dumps(getattr(record, c), sort_keys=True) if c in _JSON_FIELDS else getattr(record, c)
                     for c in _COLUMNS)

    @staticmethod
    def _from_row(row: tuple) -> SearchRecord:
        """The row's search; one whose JSON columns do not parse (a disk error, a hand edit) comes back
        failed, saying which, so that it fails alone instead of every listing that includes it."""
        values, damaged = dict(zip(_COLUMNS, row)), []
        for column in _JSON_FIELDS:
            if values[column] is not None:
                try:
                    values[column] = json.loads(values[column])
                except ValueError:
                    damaged.append(column)
                    values[column] = {} if column == "spec" else None
        record = SearchRecord(**values)
        if damaged:
            record = record.replace(state=FAILED, error=f"its registry row is damaged ({', '.join(damaged)}: not "
                                    f"JSON); nas delete {record.id} forgets it")
        return record


def bounded_error(text: str) -> str:
    """`text` cut to MAX_ERROR characters, saying how much was cut."""
    if len(text) <= MAX_ERROR:
        return text
    return f"{text[:MAX_ERROR]}... ({len(text) - MAX_ERROR:,} more characters cut)"


def _create(path: Path) -> None:
    """An empty registry at `path`, owner-only, appearing whole or not at all."""
    tmp = path.with_name(f".{path.name}.new")
    tmp.unlink(missing_ok=True)
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    db = sqlite3.connect(tmp, isolation_level=None)
    try:
        db.execute(_SCHEMA)
    finally:
        db.close()
    os.replace(tmp, path)
