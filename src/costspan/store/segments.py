"""Columnar segments: the Parquet files behind the landing table, where they are and how DuckDB reads them.

A segment is an immutable Parquet file (zstd, rows in time order) in ``<store file>.segments/``, listed in the
store's ``segments`` catalog; ``costspan.store.compaction`` writes and merges them, ``costspan.store.reader`` reads
them beside the landed rows. What both need lives here: the folder, the DuckDB table function, landed rows as a
DuckDB table, and the rule that marks retries.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from costspan.store.schema import STORED_TYPES

if TYPE_CHECKING:
    import duckdb


def segment_dir(store_path: Path) -> Path:
    return store_path.with_name(store_path.name + ".segments")


def read_segments(files: Sequence[Path]) -> str:
    """The DuckDB table function reading segment files (a literal list: a table function's file list takes no
    parameter). Older segments may lack columns added since: those read as NULL."""
    listed = ", ".join("'" + str(path).replace("'", "''") + "'" for path in files)
    return f"read_parquet([{listed}], union_by_name = true)"


def landed_table(
    con: duckdb.DuckDBPyConnection, name: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]
) -> None:
    """Create temp table ``name`` in DuckDB from rows read out of SQLite, one list parameter per column."""
    select = ", ".join(f"unnest(${i + 1}::{STORED_TYPES[c]}[]) AS {c}" for i, c in enumerate(columns))
    if rows:
        con.execute(
            f"CREATE OR REPLACE TEMP TABLE {name} AS SELECT {select}", [list(c) for c in zip(*rows, strict=True)]
        )
    else:
        empty = ", ".join(f"NULL::{STORED_TYPES[c]} AS {c}" for c in columns)
        con.execute(f"CREATE OR REPLACE TEMP TABLE {name} AS SELECT {empty} LIMIT 0")


# A span repeating an earlier call of the same handler (same trace, parent span, model, operation and prompt
# size, started later; span id breaks ties) is an app-level retry: billed again, so counted, and marked. NULLs
# partition together, as SQL's IS does.
RETRIES: Final = """
    CASE WHEN parent_span_id IS NOT NULL AND input_tokens IS NOT NULL AND row_number() OVER (
        PARTITION BY trace_id, parent_span_id, request_model, operation, input_tokens ORDER BY start_ns, span_id
    ) > 1 THEN 1 ELSE 0 END
"""
# Landed rows that make a writer start a compaction, and a reading command compact first: beyond it, reading
# them beside the segments costs every query more than compacting them once.
LANDING_COMPACT_AT: Final = 10_000
# How far back a compaction looks in the segments for the first call of a retry it holds.
RETRY_LOOKBACK_NS: Final = 3600 * 1_000_000_000


def mark_retries(con: duckdb.DuckDBPyConnection, table: str, earlier: str | None) -> None:
    """Set ``is_retry`` in ``table``: among its own rows, and against ``earlier`` (a query of stored rows) when
    given. A stored row is never changed: a retry whose first call arrives after it was compacted stays unmarked."""
    stored = (
        f"SELECT *, 0 AS landed FROM ({earlier}) WHERE trace_id IN (SELECT trace_id FROM {table})" if earlier else None
    )
    rows = f"SELECT *, 1 AS landed FROM {table}" + (f" UNION ALL BY NAME {stored}" if stored else "")
    con.execute(
        f"""UPDATE {table} SET is_retry = marked.is_retry FROM (
                SELECT start_ns, span_id, {RETRIES} AS is_retry, landed FROM ({rows})
            ) AS marked
            WHERE marked.landed = 1 AND {table}.start_ns = marked.start_ns AND {table}.span_id = marked.span_id"""
    )
