"""`costspan report` on a real store file: the table, CSV and JSON outputs, buckets, top N and errors."""

from __future__ import annotations

import csv
import io
import json
import sqlite3
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pytest

from costspan.cli import main
from costspan.store.sqlite import Store
from tests.test_store import T0, damage, row

AT = (T0 + timedelta(days=1)).isoformat()  # --until for every command: the data is in the day before


@pytest.fixture
def store_path(tmp_path: Path) -> str:
    path = tmp_path / "report.sqlite3"
    with Store(path) as store:
        store.insert(
            [
                row(1, feature="search", customer_id="acme", input_tokens=1000, cached_tokens=250, cost_usd=1.25),
                row(2, T0 + timedelta(hours=2), feature="search", customer_id="globex", cost_usd=0.75),
                row(3, feature="chat", customer_id="acme", input_tokens=400, output_tokens=90, cost_usd=3.5),
                row(4, feature="chat", customer_id="acme", cost_usd=None, pricing_status="unknown_model"),
                row(5, feature="summarize", customer_id="initech", environment="staging", cost_usd=9.0),
            ]
        )
    return str(path)


def report(capsys: pytest.CaptureFixture[str], store_path: str, *args: str) -> str:
    assert main(["report", "--store", store_path, "--since", T0.isoformat(), "--until", AT, *args]) == 0
    return capsys.readouterr().out


def test_table_is_aligned_sorted_by_spend_and_explains_unpriced_calls(
    capsys: pytest.CaptureFixture[str], store_path: str
) -> None:
    out = report(capsys, store_path, "--env", "prod")
    title, _, header, rule, chat, search, _, summary, note = out.splitlines()[:9]
    assert title == "Spend by feature, 2026-11-02 09:00 to 2026-11-03 09:00 UTC, environment prod"
    assert header.split() == ["feature", "LLM", "calls", "spend", "tokens", "in", "tokens", "out", "avg", "latency",
                              "cache", "hit", "p95", "prompt"]  # fmt: skip
    assert len(rule) == len(header)
    assert chat.split()[:3] == ["chat", "2", "$3.5000"]
    assert search.split()[:5] == ["search", "2", "$2.0000", "1,100", "20"]
    assert search.split()[-3:] == ["ms", "22.7%", "1,000"]  # 250/1100 cached; p95 of (1000, 100)
    assert header.index("spend") + len("spend") == chat.index("$3.5000") + len("$3.5000")  # right-aligned
    assert summary == "2 rows, 4 LLM calls, $5.5000 spent."
    assert note.startswith("1 LLM calls have no price")


def test_money_in_one_column_has_one_precision(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """A big and a tiny amount in one column: the same decimals, and the tiny one still shows its digits."""
    path = tmp_path / "money.sqlite3"
    with Store(path) as store:
        store.insert([row(1, feature="batch", cost_usd=1234.5), row(2, feature="embed", cost_usd=0.000013)])
    out = report(capsys, str(path))
    spend = {line.split()[0]: line.split()[2] for line in out.splitlines() if line.startswith(("batch", "embed"))}
    assert spend == {"batch": "$1,234.5000000", "embed": "$0.0000130"}


def test_csv_and_json_carry_the_raw_figures(capsys: pytest.CaptureFixture[str], store_path: str) -> None:
    rows = list(
        csv.DictReader(io.StringIO(report(capsys, store_path, "--by", "customer_id,feature", "--format", "csv")))
    )
    assert [(r["customer_id"], r["feature"], r["spend_usd"]) for r in rows] == [
        ("initech", "summarize", "9.0"),
        ("acme", "chat", "3.5"),
        ("acme", "search", "1.25"),
        ("globex", "search", "0.75"),
    ]
    assert rows[1]["unpriced"] == "1" and rows[1]["requests"] == "2"
    assert rows[2]["cache_hit_rate"] == "0.25"

    data = json.loads(report(capsys, store_path, "--by", "customer_id", "--top", "2", "--format", "json"))
    assert [(r["customer_id"], r["spend_usd"]) for r in data] == [("initech", 9.0), ("acme", 4.75)]
    assert set(data[0]) == {
        "customer_id", "requests", "spend_usd", "unpriced", "input_tokens", "output_tokens", "cached_tokens",
        "avg_latency_ms", "cache_hit_rate", "p95_input_tokens", "retries",
    }  # fmt: skip


def test_hourly_buckets(capsys: pytest.CaptureFixture[str], store_path: str) -> None:
    data = json.loads(report(capsys, store_path, "--where", "feature=search", "--every", "hour", "--format", "json"))
    assert [(r["bucket"], r["requests"]) for r in data] == [("2026-11-02T09:00:00Z", 1), ("2026-11-02T11:00:00Z", 1)]
    table = report(capsys, store_path, "--where", "feature=search", "--every", "day")
    assert "day (UTC)" in table and "2026-11-02 " in table and "00:00" not in table  # a day is its date
    hourly = report(capsys, store_path, "--where", "feature=search", "--every", "hour")
    assert "hour (UTC)" in hourly and "2026-11-02 09:00 " in hourly and "2026-11-02 11:00 " in hourly


def test_empty_period_says_what_to_try(capsys: pytest.CaptureFixture[str], store_path: str) -> None:
    assert "No LLM spans in this period" in report(capsys, store_path, "--env", "nowhere")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--by", "colour"], "cannot group by 'colour'; choose from feature, route"),
        (["--since", "last tuesday"], "cannot read time 'last tuesday'"),
        (["--where", "feature"], "use KEY=VALUE"),
        (["--since", "2099-01-01"], "is in the future"),
        (["--since", "2026-11-02", "--until", "2026-11-01"], "is not after --since"),
        (["--since", "999999999d"], "reaches back before the year 1"),
    ],
)
def test_bad_input_exits_2_with_advice(
    capsys: pytest.CaptureFixture[str], store_path: str, args: list[str], message: str
) -> None:
    assert main(["report", "--store", store_path, *args]) == 2
    assert message in capsys.readouterr().err


def test_a_missing_or_damaged_store_exits_2(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["report", "--store", str(tmp_path / "nothing.sqlite3")]) == 2
    assert "no costspan store at" in capsys.readouterr().err
    damaged = tmp_path / "damaged.sqlite3"
    damage(damaged)
    assert main(["report", "--store", str(damaged)]) == 2
    assert f"mv {damaged} {damaged}.damaged" in capsys.readouterr().err


def _foreign_sqlite(path: Path) -> None:
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE notes (body TEXT)")
    sqlite3.connect(path).close()


@pytest.mark.parametrize(
    ("make", "why"),
    [
        (lambda path: path.write_text("root:x:0:0:root:/root:/bin/bash\n"), "(it is not a SQLite file)"),
        (lambda path: path.write_bytes(b"\0garbage" * 512), "(it is not a SQLite file)"),
        (_foreign_sqlite, "(a SQLite database without costspan's tables)"),
    ],
    ids=["text", "binary", "other-sqlite"],
)
@pytest.mark.parametrize("command", ["report", "alerts", "serve"])
def test_a_file_that_is_no_store_is_named_so_and_never_moved_or_changed(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, make: Callable[[Path], object], why: str, command: str
) -> None:
    """`--store /etc/passwd` is a wrong path, not a damaged store: no `mv` advice, and the file is left alone."""
    foreign = tmp_path / "passwd"
    make(foreign)
    before = foreign.read_bytes()
    assert main([command, "--store", str(foreign)]) == 2
    err = capsys.readouterr().err
    assert f"{foreign} is not a costspan store {why}. Pass the right --store path" in err
    assert "mv " not in err and "damaged" not in err
    assert foreign.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["passwd"]


def test_top_must_be_1_or_more(capsys: pytest.CaptureFixture[str], store_path: str) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["report", "--store", store_path, "--top", "0"])
    assert exit_.value.code == 2 and "give 1 or more" in capsys.readouterr().err


def test_times_with_an_offset_are_read_and_shown_in_utc(capsys: pytest.CaptureFixture[str], store_path: str) -> None:
    """14:00 at +05:00 is 09:00 UTC, when the data starts; the header says so."""
    out = report(capsys, store_path, "--since", "2026-11-02T14:00+05:00")
    assert "2026-11-02 09:00 to " in out


def test_spend_sums_do_not_drift(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """0.7 + 0.1 + 0.1 + 0.1 is 0.9999999999999999 in floats; the report says 1.0."""
    path = tmp_path / "drift.sqlite3"
    with Store(path) as store:
        store.insert([row(n, cost_usd=amount) for n, amount in enumerate((0.7, 0.1, 0.1, 0.1), start=1)])
    assert main(["report", "--store", str(path), "--since", T0.isoformat(), "--until", AT, "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["spend_usd"] == 1.0
