"""The embedded store: one SQLite file holding one row per LLM span, and the queries the CLI reports from.

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
in the ``attribution`` column, a compact JSON object, and read with ``json_extract``.

Writers from several processes share one file safely: WAL journal, a busy timeout, and every batch in one
``BEGIN IMMEDIATE`` transaction. Rows are keyed by span id and inserted with ``ON CONFLICT (span_id) DO
NOTHING``, so a span delivered twice is stored once. A span that repeats an earlier call of the same handler
(same trace, parent span, model, operation and prompt size) is an app-level retry: the provider billed it
again, so it is kept and counted, and marked ``is_retry = 1``.
"""

from __future__ import annotations

import json
import math
import operator
import os
import re
import shlex
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

from costspan.config import attribution_keys_in_force
from costspan.store.errors import WRONG_PATH as _WRONG_PATH
from costspan.store.errors import StoreError as StoreError  # importable from here too, as before
from costspan.store.errors import explain, explain_open, read_only_uri
from costspan.store.errors import refuse_foreign_file as _refuse_foreign_file
from costspan.store.paths import checkout_for_hints, default_store_path, demo_store_path

NS_PER_S: Final = 1_000_000_000
BUCKET_NS: Final = {"hour": 3600 * NS_PER_S, "day": 86400 * NS_PER_S}
FIRST_NS: Final = -(2**63)  # the open ends of a period
LAST_NS: Final = 2**63 - 1
# Queries over at least this many rows are split across this many reader connections (see Store._aggregate).
PARALLEL_MIN_ROWS: Final = 200_000
PARALLEL_READERS: Final = min(4, os.cpu_count() or 1)

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


@dataclass(frozen=True, slots=True)
class CostRow:
    """One priced (or unpriceable) LLM call, as stored. Field order is the table's column order."""

    span_id: str  # 16 hex digits
    trace_id: str  # 32 hex digits
    parent_span_id: str | None
    start_ns: int  # span start, Unix nanoseconds (UTC)
    feature: str | None = None
    route: str | None = None
    customer_id: str | None = None
    environment: str | None = None
    service: str | None = None
    provider: str | None = None
    operation: str | None = None
    request_model: str | None = None
    response_model: str | None = None
    input_tokens: int | None = None  # None: the call reported no usage
    cached_tokens: int | None = None
    cache_write_tokens: int | None = None
    output_tokens: int | None = None
    reasoning_tokens: int | None = None
    input_audio_tokens: int | None = None
    output_audio_tokens: int | None = None
    input_image_tokens: int | None = None
    output_image_tokens: int | None = None
    latency_ms: float | None = None
    cost_usd: float | None = None  # None unless pricing_status is "priced"
    cost_input: float | None = None
    cost_cache_read: float | None = None
    cost_cache_write: float | None = None
    cost_output: float | None = None
    pricing_status: str | None = None
    pricing_source: str | None = None
    pricing_version: str | None = None
    pricing_model: str | None = None
    error_type: str | None = None
    request_id: str | None = None  # the provider's x-request-id
    prompt_cache_key: str | None = None
    service_tier: str | None = None
    batch_id: str | None = None
    attribution: str | None = None  # the other attribution keys, as attribution_json() writes them
    # What a client sending the span over OTLP said it cost: kept to compare with cost_usd, which ``costspan serve``
    # computes itself; never summed as spend. None for spans priced in-process.
    claimed_cost_usd: float | None = None

    def __getitem__(self, column: str) -> Any:
        """A column by name, as a ``sqlite3.Row`` gives it: so a row about to be stored can be priced by
        ``costspan.pricing.pricer.billable_from_row`` exactly as a stored one is."""
        return getattr(self, column)


ROW_COLUMNS: Final = tuple(f.name for f in fields(CostRow))
_row_values = operator.attrgetter(*ROW_COLUMNS)

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
)
SCHEMA_VERSION: Final = len(MIGRATIONS)

# Only a repeated span id, or a batch job already recorded, is skipped; any other constraint failure is an error,
# never a silently lost row.
_INSERT = (
    f"INSERT INTO spans ({', '.join(ROW_COLUMNS)}) VALUES ({', '.join('?' * len(ROW_COLUMNS))}) "
    "ON CONFLICT (span_id) DO NOTHING "
    "ON CONFLICT (batch_id) WHERE operation = 'batch' AND input_tokens IS NOT NULL DO NOTHING"
)

# Traces of a batch holding more than one stored span: only those can hold a retry.
_SHARED_TRACES = """
SELECT trace_id FROM spans WHERE trace_id IN (SELECT value FROM json_each(?)) GROUP BY trace_id HAVING count(*) > 1
"""

# Marks the later calls of a handler that repeated the same request: same trace, parent span, model,
# operation and prompt size, started after the first (span id breaks ties).
_MARK_RETRIES = """
UPDATE spans SET is_retry = 1
WHERE trace_id = ? AND is_retry = 0 AND parent_span_id IS NOT NULL AND input_tokens IS NOT NULL
  AND EXISTS (
    SELECT 1 FROM spans AS first
    WHERE first.trace_id = spans.trace_id
      AND first.parent_span_id = spans.parent_span_id
      AND first.request_model IS spans.request_model
      AND first.operation IS spans.operation
      AND first.input_tokens = spans.input_tokens
      AND (first.start_ns, first.span_id) < (spans.start_ns, spans.span_id)
  )
"""


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


def _nearest_rank(sorted_values: Sequence[int], fraction: float) -> int | None:
    if not sorted_values:
        return None
    return sorted_values[max(math.ceil(fraction * len(sorted_values)), 1) - 1]


@dataclass
class _Group:
    """Running sums for one group of ``spend_by``; partial results from row ranges add up."""

    requests: int = 0
    spend: float = 0.0
    priced: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0
    latency_total: float = 0.0
    latency_count: int = 0
    retries: int = 0
    prompt_sizes: list[str] = field(default_factory=list)  # comma-separated input_tokens, one string per part

    def add(self, sums: Sequence[Any]) -> None:
        requests, spend, priced, input_tokens, output_tokens, cached, latency, latency_count, retries, sizes = sums
        self.requests += requests
        self.spend += spend
        self.priced += priced
        # Token sums come back as floats: total(), unlike sum(), cannot overflow on a stored implausible count
        # (an implausible_usage span may say 2**63 - 1 tokens); real sums stay below 2**53, where floats are exact.
        self.input_tokens += int(input_tokens)
        self.output_tokens += int(output_tokens)
        self.cached_tokens += int(cached)
        self.latency_total += latency
        self.latency_count += latency_count
        self.retries += retries or 0
        if sizes:
            self.prompt_sizes.append(sizes)

    def measures(self) -> dict[str, Any]:
        sizes = sorted(map(int, ",".join(self.prompt_sizes).split(","))) if self.prompt_sizes else []
        return {
            "requests": self.requests,
            "spend_usd": round_usd(self.spend) if self.priced else None,
            "unpriced": self.requests - self.priced,
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "cached_tokens": self.cached_tokens,
            "avg_latency_ms": self.latency_total / self.latency_count if self.latency_count else None,
            "cache_hit_rate": self.cached_tokens / self.input_tokens if self.input_tokens else None,
            "p95_input_tokens": _nearest_rank(sizes, 0.95),
            "retries": self.retries,
        }


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
    return f"""json_extract(attribution, '$."{name}"')"""


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
        self._lock = threading.Lock()
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
                self._use_wal()
                self._db.execute("PRAGMA synchronous = NORMAL")  # durable across app crashes; WAL keeps it consistent
                self._migrate()
        except BaseException:
            self._db.close()
            raise

    def _refuse_foreign_database(self) -> None:
        """Raise when the file is another application's SQLite database: it has tables, but not costspan's."""
        tables = {name for (name,) in self._db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if tables and "spans" not in tables:
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
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction; IMMEDIATE takes the write lock up front, so concurrent writers queue."""
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

    def _migrate(self) -> None:
        version = self._db.execute("PRAGMA user_version").fetchone()[0]
        if version == SCHEMA_VERSION:
            return
        with self._write() as db:
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

    # --- writing -----------------------------------------------------------------------------------------

    def insert(self, rows: Iterable[CostRow]) -> int:
        """Store rows in one transaction; returns how many were new (a span id already stored is skipped)."""
        rows = list(rows)
        if not rows:
            return 0
        batch = list(map(_row_values, rows))
        retry_traces = sorted({row.trace_id for row in rows if row.parent_span_id is not None})
        with self._write() as db:
            before = db.total_changes
            db.executemany(_INSERT, batch)
            added = db.total_changes - before
            if added and retry_traces:
                shared = db.execute(_SHARED_TRACES, (json.dumps(retry_traces),)).fetchall()
                db.executemany(_MARK_RETRIES, shared)
        return added

    def execute_write(self, sql: str, parameters: Iterable[Sequence[Any]]) -> int:
        """Run one statement per parameter tuple in a single write transaction; returns rows changed."""
        with self._write() as db:
            before = db.total_changes
            db.executemany(sql, parameters)
            return db.total_changes - before

    # --- reading -----------------------------------------------------------------------------------------

    def query(self, sql: str, parameters: Sequence[Any] = ()) -> list[sqlite3.Row]:
        """A read-only query, for callers that need something the methods below do not give."""
        with self._lock, self._errors():
            cursor = self._db.execute(sql, parameters)
            cursor.row_factory = sqlite3.Row
            return cursor.fetchall()

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
        ``percentiles=False`` skips the p95 prompt size (``p95_input_tokens`` is None): it is most of the cost
        of a query over many rows.
        """
        dims = list(dict.fromkeys(dimensions))
        allowed = dimension_names() if dims else ()
        if every is not None and every not in BUCKET_NS:
            raise ValueError(f"every must be one of {', '.join(BUCKET_NS)}")
        keys = [
            *(dimension_sql(name, allowed) for name in dims),
            *([f"start_ns / {BUCKET_NS[every]}"] if every is not None else []),
        ]
        since_ns = to_ns(since) if since is not None else FIRST_NS
        until_ns = to_ns(until) if until is not None else LAST_NS
        groups = self._aggregate(keys, since_ns, until_ns, env, where, percentiles)
        width = len(dims)
        if top is not None:  # before the measures, so that only the kept groups pay for their percentile
            spend: dict[tuple[Any, ...], float] = {}
            for key, group in groups.items():
                spend[key[:width]] = spend.get(key[:width], 0.0) + group.spend
            ranked = sorted(spend, key=lambda group: (-round_usd(spend[group]), [str(value) for value in group]))
            kept = set(ranked[:top])
            groups = {key: group for key, group in groups.items() if key[:width] in kept}
        results = []
        for key, group in groups.items():
            result: dict[str, Any] = dict(zip(dims, key[:width], strict=True))
            if every is not None:
                result["bucket"] = from_ns(key[-1] * BUCKET_NS[every])
            result.update(group.measures())
            results.append(result)
        # Ties broken by the group itself, so that the order (and --top) is the same on every query path.
        results.sort(
            key=lambda r: (r.get("bucket") or 0, -(r["spend_usd"] or 0.0), -r["requests"], [str(r[d]) for d in dims])
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
        return rows[0] if rows else _Group().measures()

    def _aggregate(
        self,
        keys: Sequence[str],
        since_ns: int,
        until_ns: int,
        env: str | None,
        where: Mapping[str, str] | None,
        percentiles: bool = True,
    ) -> dict[tuple[Any, ...], _Group]:
        """Partial aggregates per group, computed over slices of the period in parallel and merged.

        SQLite sorts to GROUP BY, single-threaded; over many rows, slices sorted on several connections at once
        finish sooner. The prompt sizes come back as one string per group, for the percentile SQLite has no
        aggregate for.
        """
        conditions, parameters = filter_sql(env, where)
        prompt_sizes = "group_concat(input_tokens)" if percentiles else "NULL"
        sql = f"""
            SELECT {"".join(k + ", " for k in keys)}
                   count(*), total(cost_usd), count(cost_usd), total(input_tokens), total(output_tokens),
                   total(cached_tokens), total(latency_ms), count(latency_ms), sum(is_retry), {prompt_sizes}
            FROM spans WHERE {" AND ".join(conditions)} {"GROUP BY " + ", ".join(keys) if keys else ""}
        """
        slices = self._slices(since_ns, until_ns)
        if len(slices) > 1:
            with ThreadPoolExecutor(len(slices)) as pool:
                parts = list(pool.map(lambda bounds: self._read_apart(sql, [*bounds, *parameters]), slices))
        else:
            parts = [self.query(sql, [since_ns, until_ns, *parameters])]
        width = len(keys)
        groups: dict[tuple[Any, ...], _Group] = {}
        for rows in parts:
            for row in rows:
                if row[width]:  # an aggregate over no rows has count 0
                    groups.setdefault(tuple(row[:width]), _Group()).add(row[width:])
        return groups

    def _slices(self, since_ns: int, until_ns: int) -> list[tuple[int, int]]:
        """[since, until) cut into equal time slices, one per reader, when it holds enough rows to be worth it."""
        first, last, rows = self.query(
            "SELECT min(start_ns), max(start_ns), count(*) FROM spans WHERE start_ns >= ? AND start_ns < ?",
            (since_ns, until_ns),
        )[0]
        if rows < PARALLEL_MIN_ROWS or PARALLEL_READERS < 2:
            return [(since_ns, until_ns)]
        step = (last + 1 - first) // PARALLEL_READERS + 1
        return [(start, min(start + step, last + 1)) for start in range(first, last + 1, step)]

    def _read_apart(self, sql: str, parameters: Sequence[Any]) -> list[Any]:
        """A read on a connection of its own (WAL readers do not block each other or the writers)."""
        with self._errors():
            db = sqlite3.connect(self.path, timeout=self.timeout_s)
            try:
                return db.execute(sql, parameters).fetchall()
            finally:
                db.close()
