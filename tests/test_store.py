"""The embedded store against real SQLite files: dedup, retries, several writer processes, schema, queries."""

from __future__ import annotations

import multiprocessing
import sqlite3
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypedDict

import pytest

from costspan.store.schema import CostRow
from costspan.store.sqlite import MIGRATIONS, SCHEMA_VERSION, Store, StoreError, to_ns

T0 = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)


class Period(TypedDict):
    """The time range and environment keywords of the store's queries."""

    since: datetime
    until: datetime
    env: str


def row(n: int, at: datetime = T0, **fields: Any) -> CostRow:
    values: dict[str, Any] = {
        "span_id": f"{n:016x}",
        "trace_id": f"{n:032x}",
        "parent_span_id": None,
        "start_ns": to_ns(at),
        "feature": "search",
        "environment": "prod",
        "operation": "chat",
        "request_model": "gpt-4o-mini",
        "input_tokens": 100,
        "cached_tokens": 0,
        "output_tokens": 10,
        "latency_ms": 100.0,
        "cost_usd": 0.01,
        "pricing_status": "priced",
    }
    values.update(fields)
    return CostRow(**values)


def test_a_batch_job_recorded_by_two_processes_is_stored_once(tmp_path: Path) -> None:
    with Store(tmp_path / "s.sqlite3") as store:
        job: dict[str, Any] = {"operation": "batch", "batch_id": "batch_1", "input_tokens": 120_000}
        created = row(1, operation="batch", batch_id="batch_1", input_tokens=None, cost_usd=None)
        assert store.insert([created, row(2, **job)]) == 2
        assert store.insert([row(3, **job)]) == 0  # the same job, read by another process: its own span id
        assert store.count() == 2


def test_a_span_delivered_twice_is_stored_once(tmp_path: Path) -> None:
    with Store(tmp_path / "s.sqlite3") as store:
        assert store.insert([row(1), row(2), row(1)]) == 2
        assert store.insert([row(2), row(3)]) == 1  # a redelivered batch, with one new span
        assert store.count() == 3
        assert store.totals()["spend_usd"] == pytest.approx(0.03)


def test_app_level_retries_are_counted_and_marked(tmp_path: Path) -> None:
    parent = "a" * 16
    first = row(1, trace_id="t" * 32, parent_span_id=parent)
    retry = row(2, T0 + timedelta(seconds=2), trace_id="t" * 32, parent_span_id=parent)
    other_prompt = row(3, T0 + timedelta(seconds=3), trace_id="t" * 32, parent_span_id=parent, input_tokens=101)
    failed_attempt = row(4, trace_id="u" * 32, parent_span_id=parent, input_tokens=None, cost_usd=None)
    failed_retry = row(5, T0 + timedelta(seconds=1), trace_id="u" * 32, parent_span_id=parent, input_tokens=None)
    with Store(tmp_path / "s.sqlite3") as store:
        # The retry arrives before the first attempt (another batch, another process): still the later one is marked.
        store.insert([retry, failed_retry])
        store.insert([first, other_prompt, failed_attempt])
        marked = {r["span_id"] for r in store.query("SELECT span_id FROM spans WHERE is_retry = 1")}
        assert marked == {retry.span_id}
        totals = store.totals()
    assert totals["requests"] == 5  # billed twice, counted twice
    assert totals["retries"] == 1


def _writer(path: str, writer: int, batches: int, batch_size: int) -> None:
    with Store(path, timeout_s=60) as store:
        for b in range(batches):
            rows = [row(writer * 1_000_000 + b * batch_size + i) for i in range(batch_size)]
            shared = [row(999_000_000 + b)]  # every writer delivers this span: it must be stored once
            store.insert(rows + shared)
            store.insert(rows[: batch_size // 2])  # an at-least-once pipeline redelivers


def test_several_writer_processes_lose_and_duplicate_nothing(tmp_path: Path) -> None:
    path = tmp_path / "shared.sqlite3"
    writers, batches, batch_size = 3, 40, 25
    context = multiprocessing.get_context("spawn")
    processes = [context.Process(target=_writer, args=(str(path), w, batches, batch_size)) for w in range(writers)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=180)
        assert process.exitcode == 0
    with Store(path) as store:
        ids = [r["span_id"] for r in store.query("SELECT span_id FROM spans")]
    expected = {f"{w * 1_000_000 + i:016x}" for w in range(writers) for i in range(batches * batch_size)}
    expected |= {f"{999_000_000 + b:016x}" for b in range(batches)}
    assert len(ids) == len(set(ids)) == len(expected)
    assert set(ids) == expected


def _open_at(path: str, start: float, writer: int) -> None:
    while time.time() < start:  # all together, as a server's workers exporting for the first time
        pass
    with Store(path) as store:
        store.insert([row(writer)])


def test_processes_creating_the_store_at_once_all_open_it(tmp_path: Path) -> None:
    """Switching a new file to WAL fails at once ("database is locked") while another process holds it, whatever
    the busy timeout; it is retried. Before, about 1 open in 80 failed here, and its batch was lost."""
    context = multiprocessing.get_context("fork")
    for attempt in range(15):
        path = str(tmp_path / f"new-{attempt}.sqlite3")
        start = time.time() + 0.3
        processes = [context.Process(target=_open_at, args=(path, start, w)) for w in range(8)]
        for process in processes:
            process.start()
        for process in processes:
            process.join(timeout=60)
        assert [process.exitcode for process in processes] == [0] * 8
        with Store(path) as store:
            assert store.count() == 8


def test_an_older_file_is_migrated_and_keeps_its_rows(tmp_path: Path) -> None:
    path = tmp_path / "v1.sqlite3"
    db = sqlite3.connect(path)
    db.executescript(MIGRATIONS[0])
    db.execute("INSERT INTO spans (span_id, trace_id, start_ns, cost_usd) VALUES ('00000000000000aa', 't', 1, 0.5)")
    db.execute("PRAGMA user_version = 1")
    db.commit()
    db.close()
    with Store(path) as store:
        assert store.schema_version == SCHEMA_VERSION
        assert store._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        (kept,) = store.query("SELECT span_id, cost_usd, original_cost_usd FROM spans")
    assert tuple(kept) == ("00000000000000aa", 0.5, None)


def test_a_file_from_a_newer_costspan_is_refused_with_advice(tmp_path: Path) -> None:
    path = tmp_path / "future.sqlite3"
    Store(path).close()
    db = sqlite3.connect(path)
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    db.commit()
    db.close()
    with pytest.raises(StoreError, match=r"newer than this costspan understands.*Upgrade costspan"):
        Store(path)


def damage(path: Path) -> None:
    """A costspan store that lost every page after the first (its header and schema version survive)."""
    with Store(path) as store:
        store.insert([row(n) for n in range(1, 300)])
    data = path.read_bytes()
    page_size = int.from_bytes(data[16:18], "big")
    path.write_bytes(data[:page_size] + b"\x55" * (len(data) - page_size))


def test_a_damaged_store_gives_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "damaged.sqlite3"
    damage(path)
    with pytest.raises(StoreError, match=r"is damaged .* Move it aside"), Store(path) as store:
        store.count()


def test_a_file_that_is_no_store_is_never_called_damaged(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_bytes(b"this is not a database, it was overwritten by mistake" * 100)
    with pytest.raises(StoreError, match=r"is not a costspan store \(it is not a SQLite file\)") as raised:
        Store(path)
    assert "damaged" not in str(raised.value)


def test_reading_never_creates_a_store(tmp_path: Path) -> None:
    path = tmp_path / "missing.sqlite3"
    with pytest.raises(StoreError, match=r"no costspan store at .*`costspan demo`"):
        Store(path, create=False)
    assert not path.exists()


def test_spend_by_measures_by_hand(tmp_path: Path) -> None:
    rows = [
        # search, prod: 20 calls with prompts 10, 20, ..., 200 tokens -> p95 (nearest rank 19) = 190
        *(
            row(i, T0 + timedelta(minutes=i), input_tokens=10 * i, cached_tokens=i, latency_ms=float(i), cost_usd=0.5)
            for i in range(1, 21)
        ),
        # chat, prod: one priced, one without a price (unknown model), in the next hour
        row(21, T0 + timedelta(hours=1), feature="chat", input_tokens=1000, cached_tokens=500, cost_usd=2.0),
        row(22, T0 + timedelta(hours=1, minutes=5), feature="chat", cost_usd=None, pricing_status="unknown_model"),
        # staging and out-of-period rows, filtered away below
        row(23, T0, environment="staging", cost_usd=100.0),
        row(24, T0 - timedelta(days=1), cost_usd=100.0),
        row(25, T0 + timedelta(days=1), cost_usd=100.0),
    ]
    with Store(tmp_path / "s.sqlite3") as store:
        store.insert(rows)
        period: Period = {"since": T0, "until": T0 + timedelta(days=1), "env": "prod"}
        by_feature = store.spend_by(["feature"], **period)
        assert [r["feature"] for r in by_feature] == ["search", "chat"]  # biggest spend first
        search, chat = by_feature
        assert search["requests"] == 20
        assert search["spend_usd"] == pytest.approx(10.0)
        assert search["input_tokens"] == 2100
        assert search["output_tokens"] == 200
        assert search["cache_hit_rate"] == pytest.approx(210 / 2100)
        assert search["avg_latency_ms"] == pytest.approx(10.5)
        assert search["p95_input_tokens"] == 190
        assert (chat["requests"], chat["spend_usd"], chat["unpriced"]) == (2, pytest.approx(2.0), 1)
        assert chat["cache_hit_rate"] == pytest.approx(500 / 1100)

        hourly = store.spend_by(["feature"], every="hour", **period)
        assert [(r["bucket"], r["feature"], r["requests"]) for r in hourly] == [
            (T0, "search", 20),
            (T0 + timedelta(hours=1), "chat", 2),
        ]
        assert [r["feature"] for r in store.top("feature", 1, **period)] == ["search"]
        assert store.spend_by(["feature"], where={"feature": "chat"}, **period)[0]["requests"] == 2
        assert store.totals(since=T0 + timedelta(days=2))["requests"] == 0
        with pytest.raises(ValueError, match="unknown dimension"):
            store.spend_by(["feature; DROP TABLE spans"])


def test_a_full_disk_is_a_clear_error_and_writes_nothing(tmp_path: Path) -> None:
    with Store(tmp_path / "s.sqlite3") as store:
        store.insert([row(1)])
        pages = store._db.execute("PRAGMA page_count").fetchone()[0]
        store._db.execute(f"PRAGMA max_page_count = {pages}")  # SQLite's own SQLITE_FULL, without filling a disk
        with pytest.raises(StoreError, match="Free disk space; nothing was written"):
            store.insert([row(i, feature="x" * 500) for i in range(2, 200)])
        assert store.count() == 1


def test_a_file_the_budget_ledger_created_first_becomes_a_store(tmp_path: Path) -> None:
    from costspan.budgets.ledger import SQLiteLedger

    path = tmp_path / "costspan.sqlite3"
    SQLiteLedger(path)  # an app whose budgets ran before its first export
    with Store(path) as store:
        assert store.insert([row(1, datetime.now(UTC))]) == 1
