"""The landing table and the Parquet segments behind it: every row once, whichever side it is on."""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
import sys
import textwrap
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from costspan.cli import main as cli_main
from costspan.store import compaction
from costspan.store.compaction import compact
from costspan.store.segments import segment_dir
from costspan.store.sqlite import SCHEMA_VERSION, Store
from tests.test_store import row

DATA = Path(__file__).parent / "data"
NOW = datetime.now(UTC)
SRC = Path(__file__).parents[1] / "src"


@pytest.fixture
def small_segments(monkeypatch: pytest.MonkeyPatch) -> None:
    """Segments of 50 rows, merged four at a time, retired files deleted at once: many levels from few rows."""
    monkeypatch.setattr(compaction, "COMPACT_CHUNK", 50)
    monkeypatch.setattr(compaction, "FANOUT", 4)
    monkeypatch.setattr(compaction, "RETIRED_GRACE_NS", -1)


def answers(store: Store) -> tuple[object, ...]:
    return (
        store.count(),
        store.spend_by(["feature", "customer_id"], every="day"),
        store.totals(),
        store.time_range(),
    )


def many_rows(count: int, first: int = 0) -> list:  # type: ignore[type-arg]
    return [
        row(
            first + i,
            NOW - timedelta(minutes=count - i),
            feature=f"f{i % 3}",
            customer_id=f"c{i % 7}",
            input_tokens=100 + i,
            cost_usd=0.001 * (i % 5),
        )
        for i in range(count)
    ]


def test_compaction_keeps_every_row_and_every_answer(tmp_path: Path, small_segments: None) -> None:
    with Store(tmp_path / "s.sqlite3") as store:
        store.insert(many_rows(1000))
        before = answers(store)
        assert compact(store) == 1000
        assert store.landed() == 0
        assert answers(store) == before
        catalog = store.query_landed("SELECT level, sum(rows) FROM segments GROUP BY level ORDER BY level")
        assert sum(r[1] for r in catalog) == 1000 and max(r[0] for r in catalog) >= 2  # merged twice over
        files = {p.name for p in segment_dir(store.path).glob("*.parquet")}
        assert files == {r[0] for r in store.query_landed("SELECT name FROM segments")}  # the retired are gone


def test_a_span_delivered_again_after_compaction_counts_once(tmp_path: Path, small_segments: None) -> None:
    rows = many_rows(120)
    with Store(tmp_path / "s.sqlite3") as store:
        store.insert(rows)
        before = answers(store)
        compact(store)
        store.insert(rows[:60])  # an OTLP retry of spans already compacted
        assert store.landed() == 60
        assert answers(store) == before  # readers count the stored copy only
        compact(store)
        assert store.landed() == 0 and answers(store) == before


def test_a_retry_is_marked_when_its_first_call_was_already_compacted(tmp_path: Path) -> None:
    call = {"trace_id": "e" * 32, "parent_span_id": "00000000000000f1", "input_tokens": 500}
    with Store(tmp_path / "s.sqlite3") as store:

        def marks() -> list[tuple[str, int]]:
            return [(r[0][-1], r[1]) for r in store.query("SELECT span_id, is_retry FROM spans ORDER BY span_id")]

        store.insert([row(1, NOW - timedelta(seconds=30), **call)])
        compact(store)
        store.insert([row(2, NOW, **call), row(3, NOW, **{**call, "input_tokens": 501})])  # a retry; a new call
        # Landed rows are compared with each other only: the retry is known once the compaction sees both calls.
        assert marks() == [("1", 0), ("2", 0), ("3", 0)]
        compact(store)
        assert marks() == [("1", 0), ("2", 1), ("3", 0)] and store.totals()["retries"] == 1


def test_a_batch_job_recorded_again_after_compaction_counts_once(tmp_path: Path) -> None:
    job = {"operation": "batch", "batch_id": "batch_1", "cost_usd": 0.5}
    with Store(tmp_path / "s.sqlite3") as store:
        store.insert([row(1, NOW, **job)])
        compact(store)
        store.insert([row(2, NOW, **job)])  # another process read the finished job: a new span, the same job
        compact(store)
        assert store.count() == 1 and store.totals()["spend_usd"] == 0.5


def test_a_store_written_by_the_previous_release_migrates_without_loss(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Written by costspan 0.1.0 at commit 890dac4 (schema version 5): a retry pair, an Anthropic call with a team
    # attribution, a Batch job and an unpriced call.
    path = tmp_path / "v5.sqlite3"
    shutil.copy(DATA / "store-v5.sqlite3", path)
    with sqlite3.connect(path) as db:
        db.row_factory = sqlite3.Row
        assert db.execute("PRAGMA user_version").fetchone()[0] == 5
        before = [dict(r) for r in db.execute("SELECT * FROM spans ORDER BY span_id")]
    with Store(path) as store:
        assert store.schema_version == SCHEMA_VERSION
        compact(store)
        after = [dict(zip(r.keys(), r, strict=True)) for r in store.query("SELECT * FROM spans ORDER BY span_id")]
    assert [{key: r[key] for key in before[0]} for r in after] == before
    assert [r["is_retry"] for r in after] == [0, 1, 0, 0, 0]
    assert (
        cli_main(["report", "--store", str(path), "--since", "2025-01-01", "--by", "provider", "--format", "json"]) == 0
    )
    spend = {r["provider"]: r["spend_usd"] for r in json.loads(capsys.readouterr().out)}
    assert spend == {"openai": round(0.00021 * 2 + 0.00105, 9), "anthropic": 0.0135}


WRITER = textwrap.dedent(
    """
    import sys
    from costspan.store import compaction, exporter
    from tests.test_store import row
    from datetime import datetime, timedelta

    exporter.LANDING_COMPACT_AT = 300  # compactions start while the writers write
    compaction.SPAWN_INTERVAL_S = 0.2
    writer, batches = int(sys.argv[2]), int(sys.argv[3])
    sink = exporter.CostspanSpanExporter(sys.argv[1])
    now = datetime.fromisoformat(sys.argv[4])  # one clock for all: a span sent twice has one start time
    for batch in range(batches):
        # Every writer also sends the first writer's spans: duplicates across processes are stored once.
        ids = [writer * 1_000_000 + batch * 100 + i for i in range(100)] + [batch * 100 + i for i in range(0, 100, 10)]
        rows = [row(n, now - timedelta(seconds=n % 5000), feature=f"w{n // 1_000_000}") for n in ids]
        assert sink.write_rows(rows).name == "SUCCESS", sink.failed_spans
    """
)
READER = textwrap.dedent(
    """
    import sys, time
    from costspan.store.sqlite import Store
    seen = []
    with Store(sys.argv[1], create=False) as store:
        while not __import__("os").path.exists(sys.argv[2]):
            seen.append(store.count())
    assert seen == sorted(seen), "a reader saw rows vanish"
    print(len(seen), seen[-1])
    """
)


def test_several_writers_and_a_reader_at_once(tmp_path: Path) -> None:
    path = tmp_path / "shared.sqlite3"
    Store(path).close()
    environment = {"PYTHONPATH": f"{SRC}:{Path(__file__).parents[1]}", "PATH": "/usr/bin:/bin"}
    done = tmp_path / "done"
    reader = subprocess.Popen(
        [sys.executable, "-c", READER, str(path), str(done)], env=environment, stdout=subprocess.PIPE, text=True
    )
    writers = [
        subprocess.Popen([sys.executable, "-c", WRITER, str(path), str(n), "30", NOW.isoformat()], env=environment)
        for n in (0, 1, 2)
    ]
    assert [w.wait(timeout=300) for w in writers] == [0, 0, 0]
    done.touch()
    out, _ = reader.communicate(timeout=120)
    assert reader.returncode == 0
    reads, last_count = map(int, out.split())
    assert reads > 1 and last_count <= 9000
    expected = 3 * 30 * 100  # each writer's own spans; writer 0's are also sent by 1 and 2
    with Store(path) as store:
        compact(store)
        assert store.count() == expected
        assert store.query("SELECT count(DISTINCT span_id) FROM spans")[0][0] == expected
        assert {r["feature"]: r["requests"] for r in store.spend_by(["feature"])} == {
            "w0": 3000,
            "w1": 3000,
            "w2": 3000,
        }
        assert store.query_landed("SELECT count(*) FROM segments")[0][0] >= 1
