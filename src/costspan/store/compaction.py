"""Compaction: moving landed rows into Parquet segments, merging segments, and the reverse for ``costspan reprice``.

Writers (apps, ``costspan serve``) only ever insert into the SQLite ``spans`` table, the *landing table*: several
processes at once, each row once by ``(start_ns, span_id)``. A compaction moves landed rows into an immutable
Parquet *segment* (``costspan.store.segments``). One transaction of the SQLite file records the new segment in the
``segments`` catalog and deletes the rows it holds, so a reader, which takes the catalog and the landed rows from
one snapshot (``costspan.store.reader``), sees every row exactly once, whether a compaction ran before it or not.

- Segments are never changed: a merge writes one new segment from ``FANOUT`` of the same level, then retires them;
  a retired file is deleted only after ``RETIRED_GRACE_NS``, so a reader that listed it a moment before can still
  read it.
- A span delivered again after its first copy was compacted lands again; the compaction drops it (same
  ``start_ns`` and ``span_id`` as a stored row), and until then readers skip it the same way.
- One compaction runs at a time per store (an ``flock`` on ``.lock`` in the segment folder); a writer that finds
  ``LANDING_COMPACT_AT`` rows landed starts one in a child process (``start_compaction``), so the application's
  own process never loads DuckDB nor spends its CPU on it.

Run by hand: ``python -m costspan.store.compaction STORE_PATH`` compacts now.
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Final

from costspan.store.errors import StoreError, on_read_only_filesystem, read_only_store
from costspan.store.schema import STORED_COLUMNS
from costspan.store.segments import (
    RETRY_LOOKBACK_NS,
    landed_table,
    mark_retries,
    read_segments,
    segment_dir,
)
from costspan.store.sqlite import Store

if TYPE_CHECKING:
    import duckdb

COMPACT_CHUNK: Final = 25_000  # rows moved per landing-table transaction (writers wait for it)
FANOUT: Final = 8  # segments of one level merged into one of the next
RETIRED_GRACE_NS: Final = 60 * 1_000_000_000  # a query takes well under a second
SPAWN_INTERVAL_S: Final = 5.0  # at most one child compaction per writer this often


# A finished batch job is recorded once (the landing table's spans_batch_job index says the same).
BATCH_JOB: Final = "operation = 'batch' AND input_tokens IS NOT NULL"


@contextmanager
def compaction_lock(store_path: Path, *, wait: bool = False) -> Iterator[bool]:
    """Yields True while this process holds the store's compaction lock; without ``wait``, False at once when
    another process holds it."""
    folder = segment_dir(store_path)
    try:
        folder.mkdir(exist_ok=True)
        lock = (folder / ".lock").open("a")
    except OSError as error:
        if on_read_only_filesystem(store_path):
            raise read_only_store(store_path, str(error)) from error
        raise StoreError(f"costspan store {store_path}: cannot write beside it ({error})") from error
    with lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def compact(store: Store, progress: Callable[[int], None] | None = None) -> int:
    """Move every landed row into segments, merge segments level by level, delete expired retired files.
    Returns the rows moved (0 when another process is compacting). ``progress`` gets the running total."""
    with compaction_lock(store.path) as held:
        return compact_under_lock(store, progress) if held else 0


def compact_under_lock(store: Store, progress: Callable[[int], None] | None = None) -> int:
    """``compact``, for a caller that holds ``compaction_lock`` already (``costspan reprice``)."""
    import duckdb

    with duckdb.connect() as con:
        moved = 0
        while chunk := _compact_chunk(store, con):
            moved += chunk
            if progress is not None:
                progress(moved)
        while _merge_one_level(store, con):
            pass
        _delete_retired(store)
        store.reclaim_space()  # whoever compacted last may have had the file open beside a writer
        return moved


def _compact_chunk(store: Store, con: duckdb.DuckDBPyConnection) -> int:
    """Move up to COMPACT_CHUNK landed rows into one new segment.

    The rows are read in a read snapshot and written out with no lock on the landing table: writers never wait
    for DuckDB. Only the commit (list the segment, delete the rows) is a write transaction. No row read can change
    meanwhile: only a compaction deletes landed rows, one at a time (the lock), and a new row gets a rowid above
    every row still there; reprice updates landed rows only while it holds the compaction lock itself."""
    with store.read_transaction() as db:
        rows = db.execute(
            f"SELECT rowid, {', '.join(STORED_COLUMNS)} FROM spans ORDER BY rowid LIMIT ?", (COMPACT_CHUNK,)
        ).fetchall()
        segments = db.execute("SELECT name, first_ns, last_ns FROM segments").fetchall()
    if not rows:
        return 0
    landed_table(con, "batch", STORED_COLUMNS, [row[1:] for row in rows])
    first_ns, last_ns = con.execute("SELECT min(start_ns), max(start_ns) FROM batch").fetchone() or (0, 0)
    folder = segment_dir(store.path)
    overlapping = [folder / name for name, first, last in segments if first <= last_ns and last >= first_ns]
    recent = [
        folder / name for name, first, last in segments if first <= last_ns and last >= first_ns - RETRY_LOOKBACK_NS
    ]
    if overlapping:  # spans delivered again after their first copy was compacted
        con.execute(
            f"DELETE FROM batch USING (SELECT start_ns, span_id FROM {read_segments(overlapping)} "
            "WHERE start_ns BETWEEN ? AND ?) AS stored "
            "WHERE batch.start_ns = stored.start_ns AND batch.span_id = stored.span_id",
            (first_ns, last_ns),
        )
    if segments and con.execute(f"SELECT count(*) FROM batch WHERE {BATCH_JOB}").fetchone() != (0,):
        every = [folder / name for name, _, _ in segments]
        con.execute(
            f"DELETE FROM batch WHERE {BATCH_JOB} AND batch_id IN "
            f"(SELECT batch_id FROM {read_segments(every)} WHERE {BATCH_JOB})"
        )
    earlier = f"SELECT * FROM {read_segments(recent)} WHERE start_ns >= {first_ns - RETRY_LOOKBACK_NS}"
    mark_retries(con, "batch", earlier if recent else None)
    written = _write_segment(con, "SELECT * FROM batch", folder, level=0)
    with store.write_transaction() as db:
        if written is not None:
            db.execute("INSERT INTO segments (name, level, rows, first_ns, last_ns) VALUES (?, ?, ?, ?, ?)", written)
        db.execute("DELETE FROM spans WHERE rowid <= ?", (rows[-1][0],))
    return len(rows)


def _write_segment(
    con: duckdb.DuckDBPyConnection, select: str, folder: Path, level: int
) -> tuple[str, int, int, int, int] | None:
    """Write ``select``'s rows, in time order, to a new segment file; its catalog row, or None for no rows."""
    counted = con.execute(f"SELECT count(*), min(start_ns), max(start_ns) FROM ({select})").fetchone()
    if counted is None or not counted[0]:
        return None
    rows, first_ns, last_ns = counted
    name = f"L{level}-{time.time_ns()}-{uuid.uuid4().hex[:8]}.parquet"
    partial = folder / f".{name}.tmp"
    con.execute(f"COPY ({select} ORDER BY start_ns, span_id) TO '{partial}' (FORMAT parquet, COMPRESSION zstd)")
    with partial.open("rb") as file:  # on disk before the catalog names it
        os.fsync(file.fileno())
    partial.rename(folder / name)
    return name, level, rows, first_ns, last_ns


def _merge_one_level(store: Store, con: duckdb.DuckDBPyConnection) -> bool:
    """Merge the oldest FANOUT segments of the lowest level that has that many; False when none has."""
    with store.read_transaction() as db:
        catalog = db.execute("SELECT name, level FROM segments ORDER BY level, first_ns").fetchall()
    by_level: dict[int, list[str]] = {}
    for name, level in catalog:
        by_level.setdefault(level, []).append(name)
    level = next((level for level, names in sorted(by_level.items()) if len(names) >= FANOUT), None)
    if level is None:
        return False
    names = by_level[level][:FANOUT]
    folder = segment_dir(store.path)
    files = [folder / name for name in names]
    written = _write_segment(con, f"SELECT * FROM {read_segments(files)}", folder, level + 1)
    with store.write_transaction() as db:
        _swap(db, names, written)
    return True


def _swap(db: sqlite3.Connection, retired: Sequence[str], written: tuple[str, int, int, int, int] | None) -> None:
    """In one catalog transaction: retire segments, and list the one written in their place."""
    db.executemany("DELETE FROM segments WHERE name = ?", [(name,) for name in retired])
    now = time.time_ns()
    db.executemany("INSERT INTO retired_segments (name, retired_ns) VALUES (?, ?)", [(name, now) for name in retired])
    if written is not None:
        db.execute("INSERT INTO segments (name, level, rows, first_ns, last_ns) VALUES (?, ?, ?, ?, ?)", written)


def _delete_retired(store: Store) -> None:
    """Delete segment files retired more than RETIRED_GRACE_NS ago, and files a crashed compaction left."""
    folder = segment_dir(store.path)
    cutoff = time.time_ns() - RETIRED_GRACE_NS
    with store.write_transaction() as db:
        expired = [name for (name,) in db.execute("SELECT name FROM retired_segments WHERE retired_ns < ?", (cutoff,))]
        for name in expired:
            (folder / name).unlink(missing_ok=True)
        db.executemany("DELETE FROM retired_segments WHERE name = ?", [(name,) for name in expired])
    # A compaction killed while writing leaves its partial file: never listed, safe to delete once it is old.
    # Any other file here is left alone (a segment of a store restored from a backup is somebody's data).
    for partial in folder.glob(".*.parquet.tmp"):
        try:
            if partial.stat().st_mtime_ns < cutoff:
                partial.unlink()
        except FileNotFoundError:
            pass


def land_again(store: Store, since_ns: int, until_ns: int) -> int:
    """Move the compacted rows of [since_ns, until_ns) back into the landing table, where ``costspan reprice``
    updates them in place (the next compaction writes them out again). Returns the rows moved. The caller holds
    ``compaction_lock`` until its updates are done, so that no compaction moves a row away before it is updated.

    Rows are landed in chunks of their own transactions first, so writers never wait long; readers count each
    once meanwhile (a landed row that is also in a segment is counted from the segment). Then one transaction
    swaps each segment for one without the period's rows."""
    import duckdb

    insert = (
        f"INSERT INTO spans ({', '.join(STORED_COLUMNS)}) VALUES ({', '.join('?' * len(STORED_COLUMNS))}) "
        "ON CONFLICT DO NOTHING"
    )
    folder = segment_dir(store.path)
    moved = 0
    with duckdb.connect() as con:
        with store.read_transaction() as db:
            catalog = db.execute(
                "SELECT name, level FROM segments WHERE first_ns < ? AND last_ns >= ?", (until_ns, since_ns)
            ).fetchall()
        for name, level in catalog:
            segment = read_segments([folder / name])
            cursor = con.execute(
                f"SELECT {', '.join(STORED_COLUMNS)} FROM {segment} WHERE start_ns >= ? AND start_ns < ?",
                (since_ns, until_ns),
            )
            while chunk := cursor.fetchmany(COMPACT_CHUNK):
                with store.write_transaction() as db:
                    db.executemany(insert, chunk)
                moved += len(chunk)
            rest = _write_segment(
                con,
                f"SELECT * FROM {segment} WHERE NOT (start_ns >= {since_ns} AND start_ns < {until_ns})",
                folder,
                level,
            )
            with store.write_transaction() as db:
                _swap(db, [name], rest)
    return moved


_last_spawn = -SPAWN_INTERVAL_S


def start_compaction(store_path: Path) -> None:
    """Compact ``store_path`` in a child process (``python -m costspan.store.compaction``), at most once per
    SPAWN_INTERVAL_S from this process. The child inherits no auto-instrumentation: it would trace itself."""
    global _last_spawn
    now = time.monotonic()
    if now - _last_spawn < SPAWN_INTERVAL_S:
        return
    _last_spawn = now
    environment = {key: value for key, value in os.environ.items() if not key.startswith("OTEL_")}
    paths = os.environ.get("PYTHONPATH", "").split(os.pathsep)
    environment["PYTHONPATH"] = os.pathsep.join(
        p for p in paths if p and not p.rstrip("/").endswith("auto_instrumentation")
    )
    subprocess.Popen(
        [sys.executable, "-m", "costspan.store.compaction", str(store_path)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=environment,
        start_new_session=True,
        close_fds=True,
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else list(argv)
    if len(args) != 1:
        print("usage: python -m costspan.store.compaction STORE_PATH", file=sys.stderr)
        return 2
    with Store(Path(args[0]), create=False) as store:
        compact(store)
    return 0


if __name__ == "__main__":
    sys.exit(main())
