"""`costspan budgets`: stored spend against a budget file's caps, at the 80% and 100% marks."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import pytest

from costspan.cli import main
from costspan.store.sqlite import Store
from tests.test_store import T0, row

BUDGETS = """
[[budget]]
customer_id = "acme"
window = "monthly"
limit_usd = 10

[[budget]]
customer_id = "*"
window = "monthly"
limit_usd = 5

[[budget]]
feature = "search"
window = "daily"
limit_usd = 4
"""
AT = (T0 + timedelta(hours=3)).isoformat()  # 2026-11-02 12:00 UTC


@pytest.fixture
def files(tmp_path: Path) -> tuple[str, str]:
    budget_file = tmp_path / "budgets.toml"
    budget_file.write_text(BUDGETS)
    return str(tmp_path / "budgets.sqlite3"), str(budget_file)


def standings(capsys: pytest.CaptureFixture[str], store: str, budget_file: str, code: int) -> dict[str, dict]:  # type: ignore[type-arg]
    assert main(["budgets", "--store", store, "--file", budget_file, "--at", AT, "--format", "json"]) == code
    return {f"{r['window']} {r['subject']}": r for r in json.loads(capsys.readouterr().out)}


@pytest.mark.parametrize(
    ("acme_spend", "mark", "code"),
    [(7.99, None, 0), (8.0, "80%", 0), (9.99, "80%", 0), (10.0, "100%", 1), (12.5, "100%", 1)],
)
def test_marks_at_80_and_100_percent(
    capsys: pytest.CaptureFixture[str], files: tuple[str, str], acme_spend: float, mark: str | None, code: int
) -> None:
    store_path, budget_file = files
    with Store(store_path) as store:
        store.insert(
            [
                row(1, T0 - timedelta(days=1), customer_id="acme", feature="chat", cost_usd=acme_spend),
                row(2, T0, customer_id="globex", feature="search", cost_usd=1.0),
                row(3, T0 - timedelta(days=1), customer_id="globex", feature="search", cost_usd=2.0),  # the day before
                row(
                    4, T0.replace(day=1, hour=0) - timedelta(seconds=1), customer_id="acme", cost_usd=99.0
                ),  # last month
            ]
        )
    found = standings(capsys, store_path, budget_file, code)
    acme = found["monthly customer_id=acme"]
    assert (acme["spent_usd"], acme["limit_usd"], acme["mark"]) == (pytest.approx(acme_spend), 10.0, mark)
    assert acme["window_start"] == "2026-11-01T00:00:00Z"
    assert "monthly customer_id=*" not in found  # acme's own entry wins over the * entry
    globex = found["monthly customer_id=globex"]  # the * entry: every other customer gets its own cap
    assert (globex["spent_usd"], globex["used"], globex["mark"]) == (3.0, 0.6, None)
    search = found["daily feature=search"]
    assert (search["spent_usd"], search["used"], search["mark"]) == (1.0, 0.25, None)


def test_table_marks_and_bad_file(capsys: pytest.CaptureFixture[str], files: tuple[str, str], tmp_path: Path) -> None:
    store_path, budget_file = files
    with Store(store_path) as store:
        store.insert(
            [row(1, customer_id="acme", cost_usd=10.0), row(2, customer_id="globex", cost_usd=4.0)]
        )  # search: $14 of $4
    assert main(["budgets", "--store", store_path, "--file", budget_file, "--at", AT]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["subject", "window", "since", "spent", "cap", "used", "mark"]
    by_subject = {line.split()[0]: line for line in lines[2:]}
    assert by_subject["feature=search"].endswith("350.0%  100% cap reached")
    assert by_subject["customer_id=acme"].endswith("100.0%  100% cap reached")
    assert by_subject["customer_id=globex"].endswith("80.0%  80%")

    bad = tmp_path / "bad.toml"
    bad.write_text('[[budget]]\ncustomer_id = "acme"\nwindow = "weekly"\nlimit_usd = 1\n')
    assert main(["budgets", "--store", store_path, "--file", str(bad)]) == 2
    assert "window must be one of hourly, daily, monthly" in capsys.readouterr().err


def test_the_since_column_names_each_window_s_time_zone(
    capsys: pytest.CaptureFixture[str], files: tuple[str, str], tmp_path: Path
) -> None:
    """A Berlin day starts at 23:00 UTC the evening before: unlabelled, its midnight reads as a UTC one."""
    store_path, _ = files
    Store(store_path).close()
    budget_file = tmp_path / "berlin.toml"
    budget_file.write_text(
        BUDGETS + '\n[[budget]]\ncustomer_id = "acme"\nwindow = "daily"\nlimit_usd = 1\ntimezone = "Europe/Berlin"\n'
    )
    assert main(["budgets", "--store", store_path, "--file", str(budget_file), "--at", AT]) == 0
    since = {tuple(line.split()[:2]): line for line in capsys.readouterr().out.splitlines()[2:]}
    assert "2026-11-02 00:00 Europe/Berlin" in since[("customer_id=acme", "daily")]
    assert "2026-11-01 00:00 UTC" in since[("customer_id=acme", "monthly")]
