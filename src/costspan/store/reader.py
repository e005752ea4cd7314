"""Reading the store: DuckDB over the Parquet segments and the landed rows of one SQLite snapshot.

``Snapshot.query(sql)`` runs DuckDB SQL against a view named ``spans``: every stored span once, whether it is
still in the landing table or already in a segment. The view is rebuilt only when the SQLite file changed since
the last query (``PRAGMA data_version`` and this connection's own changes), so a process that asks many
questions of a quiet store pays for the snapshot once.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from costspan.store.schema import STORED_COLUMNS
from costspan.store.segments import landed_table, mark_retries, read_segments, segment_dir

if TYPE_CHECKING:
    import duckdb

# A segment listed by a snapshot can be deleted by a merge's clean-up before DuckDB opens it (after a grace
# period, so only a reader that stalls for minutes meets this): take a new snapshot and ask again.
SNAPSHOT_ATTEMPTS = 3


def segments(store_path: Path, names: Sequence[str]) -> str:
    return read_segments([segment_dir(store_path) / name for name in names])


class Row(tuple[Any, ...]):
    """A result row, by position or by column name (like ``sqlite3.Row``)."""

    names: dict[str, int]

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, str):
            return tuple.__getitem__(self, self.names[key])
        return tuple.__getitem__(self, key)

    def keys(self) -> list[str]:
        return list(self.names)


class Snapshot:
    """The DuckDB side of one ``Store``: a private in-memory database whose ``spans`` view reads the store."""

    def __init__(self, path: Path) -> None:
        import duckdb

        self.path = path
        self._duck: duckdb.DuckDBPyConnection = duckdb.connect()
        self._version: tuple[int, int] | None = None
        self._lock = threading.Lock()

    def close(self) -> None:
        self._duck.close()

    def query(self, db: sqlite3.Connection, sql: str, parameters: Sequence[Any] = ()) -> list[Row]:
        """Run ``sql`` over the view ``spans``; ``db`` is the store's SQLite connection (its lock held)."""
        import duckdb

        with self._lock:
            for attempt in range(SNAPSHOT_ATTEMPTS):
                self._refresh(db, force=attempt > 0)
                try:
                    cursor = self._duck.execute(sql, list(parameters))
                except duckdb.IOException:
                    if attempt == SNAPSHOT_ATTEMPTS - 1:
                        raise
                    continue
                names = {column[0]: i for i, column in enumerate(cursor.description or ())}
                rows = cursor.fetchall()
                row_type = type("Row", (Row,), {"names": names})
                return [row_type(row) for row in rows]
        raise AssertionError("unreachable")

    def _refresh(self, db: sqlite3.Connection, force: bool) -> None:
        version = (db.execute("PRAGMA data_version").fetchone()[0], db.total_changes)
        if version == self._version and not force:
            return
        db.execute("BEGIN")  # one read snapshot: the catalog and the landed rows agree
        try:
            names = [name for (name,) in db.execute("SELECT name FROM segments ORDER BY first_ns")]
            landed = db.execute(f"SELECT {', '.join(STORED_COLUMNS)} FROM spans").fetchall()
        finally:
            db.execute("COMMIT")
        landed_table(self._duck, "landed", STORED_COLUMNS, landed)
        if landed:
            mark_retries(self._duck, "landed", None)  # against stored rows too only once compacted
        if names and landed:
            # A span delivered again after its first copy was compacted waits in the landing table until the next
            # compaction drops it: count the stored copy only. The bounds (literals, so that DuckDB skips the
            # segments' row groups outside them) keep this to the landed rows' period.
            start = STORED_COLUMNS.index("start_ns")
            first_ns, last_ns = min(row[start] for row in landed), max(row[start] for row in landed)
            view = f"""
                SELECT * FROM {segments(self.path, names)}
                UNION ALL BY NAME
                SELECT * FROM landed WHERE NOT EXISTS (
                    SELECT 1 FROM {segments(self.path, names)} AS stored
                    WHERE stored.start_ns BETWEEN {int(first_ns)} AND {int(last_ns)}
                      AND stored.start_ns = landed.start_ns AND stored.span_id = landed.span_id
                )"""
        elif names:
            view = f"SELECT * FROM {segments(self.path, names)}"
        else:
            view = "SELECT * FROM landed"
        self._duck.execute(f"CREATE OR REPLACE TEMP VIEW spans AS {view}")
        self._version = version
