"""``costspan demo``: the whole path a new user sees, against the bundled stand-in and a real SQLite store."""

from __future__ import annotations

import shlex
import subprocess
import sys
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

import costspan.demo
from costspan.cli import main
from costspan.demo.scenario import BURST_CUSTOMER, simulated_traffic
from costspan.providers.openai.fake import FakeOpenAI
from costspan.store.paths import demo_store_path
from costspan.store.sqlite import Store

FEATURE_ROUTES = {
    "support-chat": "POST /api/chat",
    "summarize": "POST /api/documents/summarize",
    "search-embeddings": "GET /api/search",
    "nightly-batch": "cron:nightly-batch",
}


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    monkeypatch.delenv("COSTSPAN_STORE_PATH", raising=False)


def rows(path: Path) -> list[dict[str, Any]]:
    with Store(path, create=False) as store:
        return [dict(r) for r in store.query("SELECT * FROM spans")]


def test_demo_runs_the_app_and_prints_the_report(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert main(["demo", "--requests", "80"]) == 0
    out, err = capsys.readouterr()
    store = demo_store_path()
    assert store == tmp_path / "data" / "costspan" / "demo.sqlite3"
    # Progress while it runs, the report by feature and by customer after, then what to try next.
    assert "requests" in err and "[####################]" in err
    assert f"--by feature --since 30d --store {store}" in out and "--by customer_id" in out
    # Both providers, side by side: the OpenAI and the Anthropic stand-in served the app.
    assert f"--by provider,request_model --since 30d --store {store}" in out
    assert "anthropic  claude-sonnet-4-5-20250929" in out and "openai     gpt-4.1" in out
    for name in [*FEATURE_ROUTES, "acme", BURST_CUSTOMER, "system"]:
        assert name in out
    assert "costspan dashboard --out spend.html" in out and "costspan alerts" in out
    # costspan is not on PyPI yet: the install hint names a checkout, never `pip install costspan`.
    assert "pip install -e " in out and "pip install costspan" not in out
    assert "app requests and jobs made" in err and "LLM calls, priced and written to" in err
    # The store, checked against each stand-in's own bill (kept at its own rates), as `costspan reconcile` does.
    assert "Reconciled with each stand-in's own bill" in out
    for provider in ("OpenAI", "Anthropic"):
        (line,) = [line for line in out.splitlines() if line.startswith(f"  {provider}: billed ")]
        assert line.endswith("over 15 days; all 14 finished days agree within 2%")

    stored = rows(store)
    assert len(stored) > 80
    # Baggage set per request by the middleware, features by the handlers, across 4 worker threads: every row
    # is fully attributed and no request's attribution leaked into another's.
    for row in stored:
        assert row["environment"] == "prod" and row["service"] == "support-app"
        assert FEATURE_ROUTES[str(row["feature"])] == row["route"]
        assert (row["customer_id"] == "system") == (row["feature"] == "nightly-batch")
        assert row["pricing_status"] == "priced" and row["cost_usd"] > 0
    models = Counter(str(row["request_model"]) for row in stored)
    assert set(models) == {"gpt-4o-mini", "gpt-4.1", "gpt-5", "text-embedding-3-small", "claude-sonnet-4-5-20250929"}
    assert {row["provider"] for row in stored} == {"openai", "anthropic"}
    chat = [row for row in stored if row["feature"] == "support-chat"]
    assert all(row["cached_tokens"] > 0 for row in chat)
    assert any((row["reasoning_tokens"] or 0) > 0 for row in stored)

    # Two weeks of history, and the last full hour belongs to one customer's burst.
    starts = sorted(row["start_ns"] for row in stored)
    assert timedelta(days=12) < timedelta(microseconds=(starts[-1] - starts[0]) / 1000) <= timedelta(days=14)
    this_hour = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    last_hour = (this_hour - timedelta(hours=1)).timestamp() * 1e9, this_hour.timestamp() * 1e9
    burst = [row for row in stored if last_hour[0] <= row["start_ns"] < last_hour[1]]
    assert burst and {(r["customer_id"], r["feature"]) for r in burst} == {(BURST_CUSTOMER, "support-chat")}

    # The burst is what `costspan alerts` pages on (evaluated at the hour the demo ran, whatever the clock says now).
    at = datetime.fromtimestamp(starts[-1] / 1e9, UTC).replace(minute=0, second=0, microsecond=0)
    at += timedelta(hours=1)
    assert main(["alerts", "--by", "customer_id", "--at", at.strftime("%Y-%m-%dT%H:%M"), "--store", str(store)]) == 1
    alerts = capsys.readouterr().out
    assert BURST_CUSTOMER in alerts and "acme" not in alerts

    # Every `costspan ...` command it suggests works as written (the hour it ran may have passed: alerts may be 0).
    monkeypatch.chdir(tmp_path)
    suggested = [line.split("#")[0].split() for line in out.splitlines() if line.startswith("  costspan ")]
    assert len(suggested) == 3
    for command in suggested:
        assert main(shlex.split(" ".join(command[1:]))) in (0, 1), command
    capsys.readouterr()

    # Reading the default store, which the demo did not write, points at the demo's store instead of back at it.
    assert main(["report"]) == 2
    err = capsys.readouterr().err
    assert f"`costspan demo` wrote one: add --store {store}, e.g. `costspan report --store {store}`" in err
    assert "run `costspan demo`" not in err

    # A second run starts the demo store afresh instead of doubling it.
    assert main(["demo", "--requests", "80"]) == 0
    assert len(rows(store)) == len(stored)


def test_explicit_store_is_appended_to_and_never_deleted(tmp_path: Path) -> None:
    store = tmp_path / "mine.sqlite3"
    assert main(["demo", "--requests", "10", "--store", str(store)]) == 0
    first = len(rows(store))
    assert main(["demo", "--requests", "10", "--store", str(store)]) == 0
    assert len(rows(store)) == 2 * first
    assert not demo_store_path().exists()


def test_real_api_mode_makes_a_few_small_calls(
    fake_openai: FakeOpenAI, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # OPENAI_API_KEY / OPENAI_BASE_URL as a user sets them for the real API (pointed here at the stand-in).
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-not-a-secret")
    monkeypatch.setenv("OPENAI_BASE_URL", fake_openai.base_url)
    before = datetime.now(UTC).timestamp() * 1e9
    assert main(["demo", "--real-api"]) == 0
    assert "about ten small calls go to" in capsys.readouterr().err
    assert 8 <= len(fake_openai.received) <= 12
    assert {r.body.get("model") for r in fake_openai.received} == {"gpt-4o-mini", "text-embedding-3-small"}
    stored = rows(demo_store_path())
    assert len(stored) == len(fake_openai.received)
    assert all(row["start_ns"] >= before for row in stored)  # real timestamps


@pytest.mark.parametrize("flags", [[], ["--offline"]], ids=["default", "offline"])
def test_a_key_in_the_environment_never_reaches_the_real_api(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], flags: list[str]
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-would-cost-money")
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/v1")  # nothing listens: any call would fail
    assert main(["demo", *flags, "--requests", "10"]) == 0
    err = capsys.readouterr().err
    assert (
        "local OpenAI and Anthropic stand-ins" in err and "OPENAI_API_KEY is set but not used: --real-api calls" in err
    )


def test_real_api_without_a_key_says_so(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--real-api"]) == 2
    assert "--real-api needs OPENAI_API_KEY set; run without --real-api" in capsys.readouterr().err


def test_unreachable_real_api_is_one_line_with_what_to_do(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/v1")  # connection refused
    assert main(["demo", "--real-api"]) == 1
    err = capsys.readouterr().err
    (error,) = [line for line in err.splitlines() if "error" in line]
    assert error.startswith("costspan demo: error: cannot reach http://127.0.0.1:9/v1")
    assert error.endswith("or run without --real-api to use the local stand-in.")
    assert "Traceback" not in err


@pytest.mark.parametrize("sdk", ["openai", "anthropic"])
def test_a_missing_sdk_says_what_to_install(
    sdk: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, sdk, None)  # as on a machine with only `pip install costspan`
    monkeypatch.delitem(sys.modules, "costspan.demo.scenario")
    monkeypatch.delattr(costspan.demo, "scenario")
    assert main(["demo"]) == 2
    assert {"openai": "pip install 'openai>=1.40'", "anthropic": "pip install 'anthropic>=0.52'"}[sdk] in (
        capsys.readouterr().err
    )


def test_traffic_shape() -> None:
    now = datetime(2026, 11, 23, 10, 30, tzinfo=UTC)
    visits = simulated_traffic(now, days=14, requests=400)
    routes = Counter(v.route for v in visits)
    assert routes["cron:nightly-batch"] == 14
    assert sum(routes.values()) == 400 + 14 + 40
    assert all(now - timedelta(days=14, hours=1) <= v.at < now.replace(minute=0) for v in visits)
    assert visits == simulated_traffic(now, days=14, requests=400)  # deterministic


@pytest.mark.integration
def test_demo_from_a_fresh_process(tmp_path: Path) -> None:
    """What the README's first command runs: `costspan demo` in its own process, nothing set up beforehand."""
    env = {"PATH": str(Path(sys.executable).parent), "HOME": str(tmp_path), "LANG": "C.UTF-8"}
    result = subprocess.run(
        [str(Path(sys.executable).parent / "costspan"), "demo"], env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    assert "support-chat" in result.stdout and "$" in result.stdout
    assert (tmp_path / ".local" / "share" / "costspan" / "demo.sqlite3").exists()
