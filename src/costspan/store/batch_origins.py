"""Who created each batch, in a table of the embedded store's file, for batches that carry no metadata of their own.

An Anthropic Message Batch has no metadata field, and its results echo only each request's ``custom_id``: nothing
returned by the API says who created it. So the creating process writes the creator's attribution here, keyed by
the batch id, and whichever process on this host reads the results looks it up. A row is a few hundred bytes,
written once per batch; rows older than ``KEEP_SECONDS`` are dropped as new ones are written.

The table lives beside the spans (like the budget ledger's), in its own connection, so the span store's schema is
untouched. Every process of one host shares it; processes on other hosts do not (see docs/cost.md).
"""

from __future__ import annotations

import json
import threading
import time
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import sqlite3

_SCHEMA = """
CREATE TABLE IF NOT EXISTS costspan_batch_origins (
    batch_id TEXT PRIMARY KEY,
    attribution TEXT NOT NULL,
    created_at REAL NOT NULL
)
"""


class SQLiteBatchOrigins:
    """``BatchOrigins`` in a SQLite file (default: the embedded store), opened on first use.

    What this process remembered is also kept in memory, so that its own batches stay attributed if the file
    cannot be written (a read-only home directory, a full disk).
    """

    KEEP_SECONDS = 60 * 86_400
    BUSY_TIMEOUT_S = 10.0
    MEMORY_LIMIT = 10_000

    def __init__(self, path: str | Path | None = None) -> None:
        self._path = None if path is None else Path(path)
        self._local = threading.local()
        self._lock = threading.Lock()
        self._memory: OrderedDict[str, dict[str, str]] = OrderedDict()

    def _connection(self) -> sqlite3.Connection:
        db: sqlite3.Connection | None = getattr(self._local, "db", None)
        if db is None:
            # Imported here: most processes never create a batch, and sqlite3 and the store take ~50 ms to import.
            import sqlite3

            from costspan.store.paths import default_store_path
            from costspan.store.sqlite import Store

            if self._path is None:
                self._path = default_store_path()  # read at first use, so the variable can be set after instrument()
            # Opened as a store first: it refuses a file that is not one, and makes the spans table, without which
            # the store would take a file holding only this table for another application's database.
            Store(self._path).close()
            db = sqlite3.connect(self._path, timeout=self.BUSY_TIMEOUT_S, isolation_level=None)  # autocommit
            db.execute("PRAGMA journal_mode=WAL")
            db.execute(_SCHEMA)
            self._local.db = db
        return db

    def remember(self, batch_id: str, attribution: Mapping[str, str]) -> None:
        values = dict(attribution)
        with self._lock:
            self._memory[batch_id] = values
            if len(self._memory) > self.MEMORY_LIMIT:
                self._memory.popitem(last=False)
        now = time.time()
        db = self._connection()
        db.execute(
            "INSERT INTO costspan_batch_origins (batch_id, attribution, created_at) VALUES (?, ?, ?) "
            "ON CONFLICT (batch_id) DO NOTHING",  # the first creation wins; an id is never reused
            (batch_id, json.dumps(values, sort_keys=True), now),
        )
        db.execute("DELETE FROM costspan_batch_origins WHERE created_at < ?", (now - self.KEEP_SECONDS,))

    def recall(self, batch_id: str) -> Mapping[str, str] | None:
        with self._lock:
            known = self._memory.get(batch_id)
        if known is not None:
            return known
        row = (
            self._connection()
            .execute("SELECT attribution FROM costspan_batch_origins WHERE batch_id = ?", (batch_id,))
            .fetchone()
        )
        if row is None:
            return None
        values = json.loads(row[0])
        return {str(k): str(v) for k, v in values.items()} if isinstance(values, dict) else None

    def close(self) -> None:
        db: sqlite3.Connection | None = getattr(self._local, "db", None)
        if db is not None:
            db.close()
            self._local.db = None
