"""The embedded store: a SQLite landing table, Parquet segments behind it, and the queries the CLI reports from.

Query API (what ``costspan report``, ``alerts``, ``budgets``, ``dashboard`` and ``serve`` call)::

    with Store(path) as store:                      # path defaults to costspan.store.paths.default_store_path()
        store.insert(rows)                          # -> rows newly stored (duplicates by span_id are ignored)
        store.spend_by(["feature"], since=..., until=..., env="prod", every="day", top=5, where={...})
        store.top("customer_id", 10, since=...)     # the 10 biggest spenders, same row shape
        store.totals(since=..., env=...)            # one row over everything that matches
        store.time_range()                          # (first, last) span start as aware datetimes, or None
        store.count()

``spend_by`` returns ``list[dict]``; each dict has the requested dimensions (``None`` when a span lacked
that attribute), ``bucket`` (an aware UTC datetime, only with ``every``) and the measures in ``MEASURES``.
``dimension_names()`` lists what one may group and filter by: the columns in ``DIMENSIONS``, then the
attribution keys in force (``OTEL_COSTSPAN_ATTRIBUTION_KEYS``) that have no column of their own. Those are stored
in the ``attribution`` column, a compact JSON object, and read with ``json_extract_string``.

Writers from several processes share one file safely: WAL journal, a busy timeout, and every batch in one
``BEGIN IMMEDIATE`` transaction. Rows land keyed by ``(start_ns, span_id)`` and are inserted with ``ON CONFLICT
DO NOTHING``, so a span delivered twice is stored once. Compaction (``costspan.store.compaction``) moves them into
Parquet segments; reads go through DuckDB (``costspan.store.reader``) over both, each row once. A span that
repeats an earlier call of the same handler (same trace, parent span, model, operation and prompt size) is an
app-level retry: the provider billed it again, so it is kept and counted, and marked ``is_retry = 1``
(``costspan.store.segments.RETRIES`` says how).
"""

from __future__ import annotations

import json
import re
import shlex
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from costspan.config import attribution_keys_in_force
from costspan.store.errors import WRONG_PATH as _WRONG_PATH
from costspan.store.errors import StoreError as StoreError  # importable from here too, as before
from costspan.store.errors import explain, explain_open, read_only_uri
from costspan.store.errors import refuse_foreign_file as _refuse_foreign_file
from costspan.store.paths import checkout_for_hints, default_store_path, demo_store_path
from costspan.store.schema import ROW_COLUMNS, CostRow, row_values

if TYPE_CHECKING:
    from costspan.store.reader import Row, Snapshot

NS_PER_S: Final = 1_000_000_000
BUCKET_NS: Final = {"hour": 3600 * NS_PER_S, "day": 86400 * NS_PER_S}
FIRST_NS: Final = -(2**63)  # the open ends of a period
LAST_NS: Final = 2**63 - 1

# The attribution keys with a typed column of their own (the default keys; reports and the ClickHouse pack read
# these columns). Any other attribution key in force goes to the ``attribution`` JSON column.
ATTRIBUTION_COLUMNS: Final = ("feature", "route", "customer_id", "environment")

# Columns one may group by (``--by``) and filter on (``--where``), besides the other attribution keys in force.
DIMENSIONS: Final = (
    *ATTRIBUTION_COLUMNS,
    "service",
    "provider",
    "operation",
    "request_model",
    "response_model",
    "service_tier",
    "pricing_status",
    "error_type",
    "prompt_cache_key",
)

# What every ``spend_by`` row carries besides its dimensions.
MEASURES: Final = (
    "requests",  # spans, retries included
    "spend_usd",  # sum of priced costs; None when nothing in the group was priced
    "unpriced",  # spans without a cost (any pricing status but priced): their spend is unknown, not zero
    "input_tokens",
    "output_tokens",
    "cached_tokens",
    "avg_latency_ms",
    "cache_hit_rate",  # cached_tokens / input_tokens; None without input tokens
    "p95_input_tokens",  # nearest-rank 95th percentile of prompt size
    "retries",  # spans marked is_retry
)


# Schema migrations: MIGRATIONS[i] takes a file from user_version i to i + 1. Append, never edit.
MIGRATIONS: Final = (
    # 1: the span table.
    """
    CREATE TABLE spans (
        span_id TEXT PRIMARY KEY,
        trace_id TEXT NOT NULL,
        parent_span_id TEXT,
        start_ns INTEGER NOT NULL,
        feature TEXT, route TEXT, customer_id TEXT, environment TEXT, service TEXT,
        provider TEXT, operation TEXT, request_model TEXT, response_model TEXT,
        input_tokens INTEGER, cached_tokens INTEGER, cache_write_tokens INTEGER,
        output_tokens INTEGER, reasoning_tokens INTEGER,
        input_audio_tokens INTEGER, output_audio_tokens INTEGER,
        input_image_tokens INTEGER, output_image_tokens INTEGER,
        latency_ms REAL,
        cost_usd REAL, cost_input REAL, cost_cache_read REAL, cost_cache_write REAL, cost_output REAL,
        pricing_status TEXT, pricing_source TEXT, pricing_version TEXT, pricing_model TEXT,
        error_type TEXT, request_id TEXT, prompt_cache_key TEXT, service_tier TEXT, batch_id TEXT,
        is_retry INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX spans_start ON spans (start_ns);
    CREATE INDEX spans_trace ON spans (trace_id);
    """,
    # 2: `costspan reprice` keeps the first figure and its price data version, so a change is auditable.
    """
    ALTER TABLE spans ADD COLUMN original_cost_usd REAL;
    ALTER TABLE spans ADD COLUMN original_pricing_version TEXT;
    ALTER TABLE spans ADD COLUMN repriced_at_ns INTEGER;
    """,
    # 3: a finished Batch job is billed once, but every process that reads it records it: keep the first.
    """
    CREATE UNIQUE INDEX spans_batch_job ON spans (batch_id) WHERE operation = 'batch' AND input_tokens IS NOT NULL;
    """,
    # 4: attribution keys configured beyond the four with columns (e.g. team, tenant), as one JSON object.
    """
    ALTER TABLE spans ADD COLUMN attribution TEXT;
    """,
    # 5: `costspan serve` prices spans itself; the cost a client claimed is kept beside it, for comparison only.
    """
    ALTER TABLE spans ADD COLUMN claimed_cost_usd REAL;
    """,
    # 6: the table becomes the landing table in front of Parquet segments (costspan.store.segments). Rows are
    # keyed by (start_ns, span_id): span ids are random, so a key led by them made every insert land on a random
    # page (6.8-12k rows/s at 1M rows); led by the start time, inserts append. Retries are marked where rows are
    # read and compacted, in DuckDB, so the index on trace ids (a third of an insert's cost) goes. Anthropic's
    # 1-hour cache writes and web searches are priced separately, so reprice needs their counts.
    """
    ALTER TABLE spans RENAME TO spans_v5;
    CREATE TABLE spans (
        span_id TEXT NOT NULL,
        trace_id TEXT NOT NULL,
        parent_span_id TEXT,
        start_ns INTEGER NOT NULL,
        feature TEXT, route TEXT, customer_id TEXT, environment TEXT, service TEXT,
        provider TEXT, operation TEXT, request_model TEXT, response_model TEXT,
        input_tokens INTEGER, cached_tokens INTEGER, cache_write_tokens INTEGER,
        output_tokens INTEGER, reasoning_tokens INTEGER,
        input_audio_tokens INTEGER, output_audio_tokens INTEGER,
        input_image_tokens INTEGER, output_image_tokens INTEGER,
        latency_ms REAL,
        cost_usd REAL, cost_input REAL, cost_cache_read REAL, cost_cache_write REAL, cost_output REAL,
        pricing_status TEXT, pricing_source TEXT, pricing_version TEXT, pricing_model TEXT,
        error_type TEXT, request_id TEXT, prompt_cache_key TEXT, service_tier TEXT, batch_id TEXT,
        attribution TEXT, claimed_cost_usd REAL, cache_write_1h_tokens INTEGER, web_search_requests INTEGER,
        is_retry INTEGER NOT NULL DEFAULT 0,
        original_cost_usd REAL, original_pricing_version TEXT, repriced_at_ns INTEGER,
        UNIQUE (start_ns, span_id)
    );
    INSERT INTO spans (
        span_id, trace_id, parent_span_id, start_ns, feature, route, customer_id, environment, service, provider,
        operation, request_model, response_model, input_tokens, cached_tokens, cache_write_tokens, output_tokens,
        reasoning_tokens, input_audio_tokens, output_audio_tokens, input_image_tokens, output_image_tokens,
        latency_ms, cost_usd, cost_input, cost_cache_read, cost_cache_write, cost_output, pricing_status,
        pricing_source, pricing_version, pricing_model, error_type, request_id, prompt_cache_key, service_tier,
        batch_id, attribution, claimed_cost_usd, is_retry, original_cost_usd, original_pricing_version, repriced_at_ns
    )
    SELECT
        span_id, trace_id, parent_span_id, start_ns, feature, route, customer_id, environment, service, provider,
        operation, request_model, response_model, input_tokens, cached_tokens, cache_write_tokens, output_tokens,
        reasoning_tokens, input_audio_tokens, output_audio_tokens, input_image_tokens, output_image_tokens,
        latency_ms, cost_usd, cost_input, cost_cache_read, cost_cache_write, cost_output, pricing_status,
        pricing_source, pricing_version, pricing_model, error_type, request_id, prompt_cache_key, service_tier,
        batch_id, attribution, claimed_cost_usd, is_retry, original_cost_usd, original_pricing_version, repriced_at_ns
    FROM spans_v5 ORDER BY start_ns, span_id;
    DROP TABLE spans_v5;
    CREATE UNIQUE INDEX spans_batch_job ON spans (batch_id) WHERE operation = 'batch' AND input_tokens IS NOT NULL;
    CREATE TABLE segments (
        name TEXT PRIMARY KEY, level INTEGER NOT NULL, rows INTEGER NOT NULL,
        first_ns INTEGER NOT NULL, last_ns INTEGER NOT NULL
    );
    CREATE TABLE retired_segments (name TEXT PRIMARY KEY, retired_ns INTEGER NOT NULL);
    """,
)
SCHEMA_VERSION: Final = len(MIGRATIONS)

# Only a repeated span id, or a batch job already recorded, is skipped; any other constraint failure is an error,
# never a silently lost row.
_INSERT = (
    f"INSERT INTO spans ({', '.join(ROW_COLUMNS)}) VALUES ({', '.join('?' * len(ROW_COLUMNS))}) "
    "ON CONFLICT (start_ns, span_id) DO NOTHING "
    "ON CONFLICT (batch_id) WHERE operation = 'batch' AND input_tokens IS NOT NULL DO NOTHING"
)


def _no_store_yet(path: Path) -> str:
    """Where to look instead. `costspan demo` writes its own store, so after it the hint points there rather than
    back at the demo."""
    demo = demo_store_path()
    export = "`opentelemetry-instrument --traces_exporter costspan python app.py`"
    if demo.exists() and path.resolve() != demo.resolve():
        quoted = shlex.quote(str(demo))
        return (
            f"no costspan store at {path} yet, but `costspan demo` wrote one: add --store {quoted}, e.g. "
            f"`costspan report --store {quoted}`. Your own app's spans go to {path} once it runs under {export}."
        )
    return (
        f"no costspan store at {path} yet. Export your app's spans into it ({export}), or pass --store / set "
        "COSTSPAN_STORE_PATH. To try costspan first, run `costspan demo`: it writes its own store and prints the "
        "commands that read it."
    )


def _explain(path: Path, error: sqlite3.Error) -> StoreError:
    return explain(path, error, SCHEMA_VERSION)


def to_ns(moment: datetime) -> int:
    if moment.tzinfo is None:
        raise ValueError("give aware datetimes (e.g. datetime.now(timezone.utc))")
    return int(moment.timestamp()) * NS_PER_S + moment.microsecond * 1000


def from_ns(ns: int) -> datetime:
    return datetime.fromtimestamp(ns // NS_PER_S, tz=UTC).replace(microsecond=(ns % NS_PER_S) // 1000)


def round_usd(value: float) -> float:
    """A sum of stored dollar amounts, to the nano-dollar (the budget ledger's unit). Each amount is a float, so
    sums drift in their last bits (0.7 + 0.1 + 0.1 + 0.1 = 0.9999999999999999), and differently with the order
    they are added in; rounded, they are the same on every path and at every threshold."""
    return round(value, 9)


def _measures(sums: Sequence[Any]) -> dict[str, Any]:
    """The measures of one group (one bucket of it, with ``every``) from the aggregate columns of ``_AGGREGATES``."""
    requests, spend, priced, input_tokens, output_tokens, cached, latency, retries, p95 = sums
    # Token sums come back as floats (DOUBLE): they cannot overflow on a stored implausible count (an
    # implausible_usage span may say 2**63 - 1 tokens); real sums stay below 2**53, where floats are exact.
    input_tokens, cached = int(input_tokens), int(cached)
    return {
        "requests": requests,
        "spend_usd": round_usd(spend) if priced else None,
        "unpriced": requests - priced,
        "input_tokens": input_tokens,
        "output_tokens": int(output_tokens),
        "cached_tokens": cached,
        "avg_latency_ms": latency,
        "cache_hit_rate": cached / input_tokens if input_tokens else None,
        "p95_input_tokens": None if p95 is None else int(p95),
        "retries": int(retries or 0),
    }


# The measures of a group, in _measures' order. quantile_disc is the nearest-rank percentile.
_AGGREGATES = """
    count(*), coalesce(sum(cost_usd), 0), count(cost_usd),
    coalesce(sum(input_tokens::DOUBLE), 0), coalesce(sum(output_tokens::DOUBLE), 0),
    coalesce(sum(cached_tokens::DOUBLE), 0), avg(latency_ms), sum(is_retry), {p95}
"""


def attribution_json(values: Mapping[str, str]) -> str | None:
    """The ``attribution`` column for the attribution values a span carried beyond the typed columns: compact
    JSON with sorted keys (so equal attributions are equal text), or None when there are none."""
    extra = {key: value for key, value in values.items() if key not in ATTRIBUTION_COLUMNS}
    return json.dumps(extra, separators=(",", ":"), sort_keys=True) if extra else None


# An attribution key that may name a JSON label in SQL: never a quote, backslash or space.
_PLAIN_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*")


def dimension_names(attribution_keys: Sequence[str] | None = None) -> tuple[str, ...]:
    """What one may group and filter by: ``DIMENSIONS``, then the attribution keys in force (default: from the
    environment) that have no column. A key named like a column (``service``) is that column."""
    keys = attribution_keys_in_force() if attribution_keys is None else attribution_keys
    return (*DIMENSIONS, *(key for key in keys if key not in DIMENSIONS and _PLAIN_KEY.fullmatch(key)))


def dimension_sql(name: str, allowed: Sequence[str]) -> str:
    """The SQL expression of a dimension; raises ValueError unless it is one of ``allowed`` (``dimension_names()``).
    Only a column name or a plain key, checked again here where it meets the SQL text, is ever put into it."""
    if name not in allowed:
        raise ValueError(f"unknown dimension {name!r}; choose from {', '.join(allowed)}")
    if name in DIMENSIONS:
        return name
    if not _PLAIN_KEY.fullmatch(name):
        raise ValueError(f"attribution key {name!r} is not a plain name (letters, digits, _ . -)")
    return f"""json_extract_string(attribution, '$."{name}"')"""


def filter_sql(env: str | None, where: Mapping[str, str] | None) -> tuple[list[str], list[Any]]:
    """SQL conditions (after the period's ``start_ns >= ? AND start_ns < ?``) and their parameters for the
    environment and ``where`` filters. Raises ValueError for a name that is not one of ``dimension_names()``."""
    conditions = ["start_ns >= ?", "start_ns < ?"]
    parameters: list[Any] = []
    if env is not None:
        conditions.append("environment = ?")
        parameters.append(env)
    allowed = dimension_names() if where else ()
    for name, value in (where or {}).items():
        conditions.append(f"{dimension_sql(name, allowed)} = ?")
        parameters.append(value)
    return conditions, parameters


class Store:
    """One SQLite store file. Thread-safe; open one per process (or per exporter)."""

    def __init__(self, path: str | Path | None = None, *, create: bool = True, timeout_s: float = 10.0) -> None:
        """Open (and, with ``create``, make) the store and bring its schema up to date.

        Raises ``StoreError`` with advice when the file is missing (``create=False``), damaged, locked past
        ``timeout_s``, or written by a newer costspan.
        """
        self.path = Path(path).expanduser() if path is not None else default_store_path()
        if not create and not self.path.exists():
            raise StoreError(_no_store_yet(self.path))
        _refuse_foreign_file(self.path)
        self.timeout_s = timeout_s
        self._lock = threading.RLock()  # reads take it, then a snapshot's read transaction takes it again
        self._snapshot: Snapshot | None = None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            uri = None if create else read_only_uri(self.path)  # reading an intact store on a read-only filesystem
            self._db = sqlite3.connect(
                uri or self.path, uri=uri is not None, timeout=timeout_s, isolation_level=None, check_same_thread=False
            )
        except (OSError, sqlite3.Error) as error:
            raise explain_open(self.path, error) from error
        try:
            with self._errors():
                self._db.execute(f"PRAGMA busy_timeout = {int(timeout_s * 1000)}")
                self._refuse_foreign_database()  # before WAL and migrations change the file
                if self._db.execute("PRAGMA page_count").fetchone()[0] == 0:  # a new file: before any table exists
                    self._db.execute("PRAGMA auto_vacuum = INCREMENTAL")  # returns what compaction frees

                self._use_wal()
                self._db.execute("PRAGMA synchronous = NORMAL")  # durable across app crashes; WAL keeps it consistent
                self._migrate()
        except BaseException:
            self._db.close()
            raise

    def _refuse_foreign_database(self) -> None:
        """Raise when the file is another application's SQLite database: it has tables, but not costspan's. (The
        budget ledger and the batch origins keep ``costspan_*`` tables in the store's file, and may create it.)"""
        tables = {name for (name,) in self._db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if tables and "spans" not in tables and not all(name.startswith("costspan_") for name in tables):
            raise StoreError(
                f"{self.path} is not a costspan store (a SQLite database without costspan's tables). {_WRONG_PATH}"
            )

    def _use_wal(self) -> None:
        """Switch the file to WAL. The switch needs a moment alone with the file and does not wait on the busy
        timeout: when other processes open a new file at once, it fails at once ("database is locked"), so it
        is retried here until the timeout."""
        deadline = time.monotonic() + self.timeout_s
        while True:
            try:
                if self._db.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                    self._db.execute("PRAGMA journal_mode = WAL")
                return
            except sqlite3.OperationalError as error:
                if "locked" not in str(error) or time.monotonic() >= deadline:
                    raise
                time.sleep(0.01)

    # --- lifecycle ---------------------------------------------------------------------------------------

    def close(self) -> None:
        with self._lock:
            if self._snapshot is not None:
                self._snapshot.close()
            self._db.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _errors(self) -> Iterator[None]:
        try:
            yield
        except sqlite3.Error as error:
            raise _explain(self.path, error) from error

    @contextmanager
    def write_transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction on the SQLite file; IMMEDIATE takes the write lock up front, so writers queue."""
        with self._lock, self._errors():
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                if db.in_transaction:  # SQLite may have rolled back already (e.g. on a full disk)
                    db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    @contextmanager
    def read_transaction(self) -> Iterator[sqlite3.Connection]:
        """One read snapshot of the SQLite file (the landing table and the segment catalog)."""
        with self._lock, self._errors():
            self._db.execute("BEGIN")
            try:
                yield self._db
            finally:
                self._db.execute("COMMIT")

    def _migrate(self) -> None:
        version = self._db.execute("PRAGMA user_version").fetchone()[0]
        if version == SCHEMA_VERSION:
            return
        with self.write_transaction() as db:
            version = db.execute("PRAGMA user_version").fetchone()[0]  # another process may have migrated
            if version > SCHEMA_VERSION:
                raise StoreError(
                    f"costspan store {self.path} has schema version {version}, newer than this costspan "
                    f"understands ({SCHEMA_VERSION}). Upgrade costspan: update its checkout and reinstall it "
                    f"(`pip install -e {checkout_for_hints()}`)."
                )
            for number in range(version, SCHEMA_VERSION):
                for statement in MIGRATIONS[number].split(";"):
                    if statement.strip():
                        db.execute(statement)
            db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    @property
    def schema_version(self) -> int:
        with self._lock, self._errors():
            return int(self._db.execute("PRAGMA user_version").fetchone()[0])

    # --- writing -----------------------------------------------------------------------------------------

    def insert(self, rows: Iterable[CostRow]) -> int:
        """Land rows in one transaction; returns how many were new (a span already landed is skipped; one whose
        first copy was already compacted is dropped by the next compaction, and never counted twice)."""
        rows = list(rows)
        if not rows:
            return 0
        with self.write_transaction() as db:
            before = db.total_changes
            db.executemany(_INSERT, map(row_values, rows))
            return db.total_changes - before

    def execute_write(self, sql: str, parameters: Iterable[Sequence[Any]]) -> int:
        """Run one statement per parameter tuple on the landing table in a single write transaction; returns rows
        changed. Rows already compacted are not there: ``Store.land_again`` brings a period's rows back first."""
        with self.write_transaction() as db:
            before = db.total_changes
            db.executemany(sql, parameters)
            return db.total_changes - before

    def query_landed(self, sql: str, parameters: Sequence[Any] = ()) -> list[sqlite3.Row]:
        """A SQLite query of the landing table alone (named ``spans``): the rows not yet compacted."""
        with self._lock, self._errors():
            cursor = self._db.execute(sql, parameters)
            cursor.row_factory = sqlite3.Row
            return cursor.fetchall()

    def reclaim_space(self) -> None:
        """Give the pages compaction freed back to the file system. A file made before segments existed is
        rewritten once (VACUUM) to start reclaiming; after that, freeing is incremental and cheap."""
        with self._lock, self._errors():
            free_pages = self._db.execute("PRAGMA freelist_count").fetchone()[0]
            if not free_pages:
                return
            if self._db.execute("PRAGMA auto_vacuum").fetchone()[0] != 2:  # 2: INCREMENTAL
                self._db.execute("PRAGMA auto_vacuum = INCREMENTAL")
                self._db.execute("VACUUM")
            else:
                self._db.execute("PRAGMA incremental_vacuum")
        self.checkpoint()  # the WAL held those pages too

    def checkpoint(self) -> None:
        """Copy the WAL's committed pages into the file and empty the WAL."""
        with self._lock, self._errors():
            self._db.execute("PRAGMA wal_checkpoint(PASSIVE)")  # never makes a writer wait

    def landed(self) -> int:
        """Rows in the landing table, not yet compacted into segments."""
        with self._lock, self._errors():
            return int(self._db.execute("SELECT count(*) FROM spans").fetchone()[0])

    # --- reading -----------------------------------------------------------------------------------------

    def query(self, sql: str, parameters: Sequence[Any] = ()) -> list[Row]:
        """A read-only DuckDB query over the view ``spans`` (every stored span once), for callers that need
        something the methods below do not give. Rows index by position and by column name."""
        from costspan.store.reader import Snapshot

        with self._lock, self._errors():
            if self._snapshot is None:
                self._snapshot = Snapshot(self.path)
            return self._snapshot.query(self._db, sql, parameters)

    def count(self) -> int:
        return int(self.query("SELECT count(*) FROM spans")[0][0])

    def time_range(self) -> tuple[datetime, datetime] | None:
        first, last = self.query("SELECT min(start_ns), max(start_ns) FROM spans")[0]
        return None if first is None else (from_ns(first), from_ns(last))

    def spend_by(
        self,
        dimensions: Sequence[str],
        *,
        since: datetime | None = None,
        until: datetime | None = None,
        env: str | None = None,
        where: Mapping[str, str] | None = None,
        every: str | None = None,
        top: int | None = None,
        percentiles: bool = True,
    ) -> list[dict[str, Any]]:
        """Spend and usage per group of ``dimensions`` (and per ``every`` = "hour"/"day" bucket).

        ``since`` is inclusive, ``until`` exclusive. ``top`` keeps the N groups with the highest spend over
        the whole period (all their buckets). Rows come sorted by bucket, then spend, highest first.
        ``percentiles=False`` skips the p95 prompt size (``p95_input_tokens`` is None).
        """
        dims = list(dict.fromkeys(dimensions))
        allowed = dimension_names() if dims else ()
        if every is not None and every not in BUCKET_NS:
            raise ValueError(f"every must be one of {', '.join(BUCKET_NS)}")
        keys = [
            *(dimension_sql(name, allowed) for name in dims),
            *([f"start_ns // {BUCKET_NS[every]}"] if every is not None else []),
        ]
        since_ns = to_ns(since) if since is not None else FIRST_NS
        until_ns = to_ns(until) if until is not None else LAST_NS
        conditions, parameters = filter_sql(env, where)
        aggregates = _AGGREGATES.format(p95="quantile_disc(input_tokens, 0.95)" if percentiles else "NULL")
        sql = f"""
            SELECT {"".join(k + ", " for k in keys)} {aggregates}
            FROM spans WHERE {" AND ".join(conditions)} {"GROUP BY " + ", ".join(keys) if keys else ""}
        """
        width, named = len(keys), len(dims)
        results = []
        spend: dict[tuple[Any, ...], float] = {}  # per group over the whole period (all its buckets), for ``top``
        for row in self.query(sql, [since_ns, until_ns, *parameters]):
            if not row[width]:  # an aggregate over no rows has count 0
                continue
            group = tuple(row[:named])
            spend[group] = spend.get(group, 0.0) + row[width + 1]
            result: dict[str, Any] = dict(zip(dims, group, strict=True))
            if every is not None:
                result["bucket"] = from_ns(row[named] * BUCKET_NS[every])
            result.update(_measures(row[width:]))
            results.append(result)
        if top is not None:
            ranked = sorted(spend, key=lambda group: (-round_usd(spend[group]), [str(value) for value in group]))
            kept = set(ranked[:top])
            results = [result for result in results if tuple(result[d] for d in dims) in kept]
        # Ties broken by the group itself, so that the order (and --top) is the same on every query path.
        results.sort(
            key=lambda r: (r.get("bucket") or 0, -(r["spend_usd"] or 0.0), -r["requests"], *(str(r[d]) for d in dims))
        )
        return results

    def top(
        self,
        dimension: str,
        n: int,
        *,
        since: datetime | None = None,
        until: datetime | None = None,
        env: str | None = None,
        where: Mapping[str, str] | None = None,
        percentiles: bool = True,
    ) -> list[dict[str, Any]]:
        """The ``n`` groups of one dimension that spent most, biggest first."""
        return self.spend_by(
            [dimension], since=since, until=until, env=env, where=where, top=n, percentiles=percentiles
        )

    def totals(
        self,
        *,
        since: datetime | None = None,
        until: datetime | None = None,
        env: str | None = None,
        where: Mapping[str, str] | None = None,
        percentiles: bool = True,
    ) -> dict[str, Any]:
        """All matching spans as one row of measures (zero requests when nothing matches)."""
        rows = self.spend_by([], since=since, until=until, env=env, where=where, percentiles=percentiles)
        return rows[0] if rows else _measures((0, 0.0, 0, 0, 0, 0, None, 0, None))
