"""`costspan alerts`: the last full hour against 3x the trailing 7-day hourly average, at the boundary."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import pytest

from costspan.cli import main
from costspan.cli.alerts import find_alerts
from costspan.store.schema import CostRow
from costspan.store.sqlite import Store
from tests.test_store import T0, row

HOUR = T0  # the last full hour evaluated: 09:00-10:00
NOW = (HOUR + timedelta(hours=1, minutes=20)).isoformat()  # --at 10:20 -> last full hour is 09:00


def baseline(feature: str, first_id: int) -> list[CostRow]:
    """$2 in every other hour of the 168 before HOUR: $168 in all, so the hourly average is exactly $1."""
    return [
        row(first_id + h, HOUR - timedelta(hours=h, minutes=-30), feature=feature, cost_usd=2.0)
        for h in range(2, 169, 2)
    ]


@pytest.fixture
def store_path(tmp_path: Path) -> str:
    path = tmp_path / "alerts.sqlite3"
    with Store(path) as store:
        store.insert(
            [
                *baseline("search", 1000),
                *baseline("chat", 2000),
                *baseline("embed", 3000),
                # last hour: just under, exactly at, and just over 3 x $1
                row(1, HOUR + timedelta(minutes=5), feature="search", cost_usd=2.0),
                row(2, HOUR + timedelta(minutes=50), feature="search", cost_usd=0.99),
                row(3, HOUR + timedelta(minutes=10), feature="chat", cost_usd=3.0),
                row(4, HOUR + timedelta(minutes=10), feature="embed", cost_usd=3.01),
                # a spike outside the window (the current, unfinished hour, and 8 days ago) is not looked at
                row(5, HOUR + timedelta(hours=1, minutes=1), feature="search", cost_usd=500.0),
                row(6, HOUR - timedelta(days=8), feature="chat", cost_usd=500.0),
            ]
        )
    return str(path)


def test_fires_just_above_3x_and_stays_silent_at_and_below(capsys: pytest.CaptureFixture[str], store_path: str) -> None:
    assert main(["alerts", "--store", store_path, "--at", NOW, "--format", "json"]) == 1
    (alert,) = json.loads(capsys.readouterr().out)
    assert alert["feature"] == "embed"
    assert alert["spend_usd"] == pytest.approx(3.01)
    assert alert["baseline_hourly_usd"] == pytest.approx(1.0)
    assert alert["hour"] == "2026-11-02T09:00:00Z"


def test_table_and_silence(capsys: pytest.CaptureFixture[str], store_path: str) -> None:
    assert main(["alerts", "--store", store_path, "--at", NOW]) == 1
    out = capsys.readouterr().out
    assert out.startswith("1 alert(s) for 2026-11-02 09:00-10:00 UTC (factor 3):")
    assert "embed" in out and "3.0x" in out and "search" not in out
    assert main(["alerts", "--store", store_path, "--at", NOW, "--factor", "3.02"]) == 0
    assert "No alerts" in capsys.readouterr().out
    # An hour later, 10:00-11:00 holds the $500 search spike.
    later = (HOUR + timedelta(hours=2, minutes=1)).isoformat()
    assert main(["alerts", "--store", store_path, "--at", later, "--format", "json"]) == 1
    assert [a["feature"] for a in json.loads(capsys.readouterr().out)] == ["search"]


def test_new_spend_fires_unless_under_min_spend() -> None:
    hourly = [{"feature": "brand-new", "bucket": HOUR, "spend_usd": 0.5}]
    (alert,) = find_alerts(hourly, ["feature"], HOUR, 3.0, 0.0)
    assert alert.ratio is None  # no baseline: new spend
    assert find_alerts(hourly, ["feature"], HOUR, 3.0, 1.0) == []


def test_errors_exit_2(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["alerts", "--store", str(tmp_path / "none.sqlite3")]) == 2
    assert "no costspan store" in capsys.readouterr().err
