"""`costspan sql`: the user's own SQL sees every stored span once, landed or compacted."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from costspan.cli import main
from costspan.store.compaction import compact
from costspan.store.sqlite import Store
from tests.test_store import row

NOW = datetime.now(UTC)


def test_sql_reads_landed_and_compacted_rows(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "s.sqlite3"
    with Store(path) as store:
        store.insert([row(1, NOW, feature="a", cost_usd=0.25), row(2, NOW, feature="b", cost_usd=0.5)])
        compact(store)
        store.insert([row(3, NOW, feature="a", cost_usd=0.125)])
    query = "SELECT feature, count(*) AS calls, sum(cost_usd) AS usd FROM spans GROUP BY ALL ORDER BY feature"
    assert main(["sql", query, "--store", str(path), "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out) == [
        {"feature": "a", "calls": 2, "usd": 0.375},
        {"feature": "b", "calls": 1, "usd": 0.5},
    ]
    assert main(["sql", query, "--store", str(path)]) == 0
    assert capsys.readouterr().out.splitlines() == ["feature,calls,usd", "a,2,0.375", "b,1,0.5"]


def test_bad_sql_is_one_line_of_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "s.sqlite3"
    Store(path).close()
    assert main(["sql", "SELEC 1", "--store", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("costspan sql: error: Parser Error") and err.count("\n") == 1
