"""`costspan reconcile`: real instrumented calls in the store against the stand-in's own bill, read through its
organization Costs and Usage endpoints, with every verdict and error path."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

from costspan.cli import main
from costspan.providers.openai.fake import Billed, FakeOpenAI, Scripted
from costspan.reports.reconcile import (
    OK,
    OVER_COUNTED,
    PARTIAL,
    PRICE_MISMATCH,
    UNPRICED_CALLS,
    UNSEEN_CALLS,
    Figures,
    Side,
    reconcile,
)
from costspan.store.exporter import CostspanSpanExporter
from costspan.store.sqlite import Store
from tests.conftest import make_pipeline
from tests.ports import free_port

ADMIN_KEY = "sk-admin-test-not-a-secret"
DAY_NS = 86_400 * 10**9
TODAY = datetime.now(UTC).date()
YESTERDAY = TODAY - timedelta(days=1)
MESSAGES: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hi"}]
# gpt-4.1: $2.00 input, $0.50 cached input, $8.00 output per million, in genai-prices and on the stand-in's bill.
# Large calls: a gap under a cent a day is never a finding.
CALL_1 = {"prompt_tokens": 100_000, "completion_tokens": 20_000, "prompt_tokens_details": {"cached_tokens": 40_000}}
CALL_1_USD = (60_000 * 2.00 + 40_000 * 0.50 + 20_000 * 8.00) / 1e6  # 0.30
CALL_2 = {"prompt_tokens": 300_000, "completion_tokens": 10_000}
CALL_2_USD = (300_000 * 2.00 + 10_000 * 8.00) / 1e6  # 0.68


@pytest.fixture
def provider() -> Iterator[FakeOpenAI]:
    """A stand-in of its own: its bill holds only what this test sent."""
    with FakeOpenAI() as fake:
        yield fake


@pytest.fixture
def store_path(tmp_path: Path) -> Path:
    return tmp_path / "spans.sqlite3"


@pytest.fixture
def admin_key(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("OPENAI_ADMIN_KEY", ADMIN_KEY)
    return ADMIN_KEY


def make_calls(provider: FakeOpenAI, store_path: Path, *usages: dict[str, Any], model: str = "gpt-4.1") -> None:
    """Instrumented chat calls, exported to the store, each with the given usage on both sides."""
    pipeline = make_pipeline()
    exporter = CostspanSpanExporter(store_path)
    pipeline.tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    try:
        provider.script(*(Scripted(usage=usage) for usage in usages))
        with openai.OpenAI(base_url=provider.base_url, api_key="sk-test", max_retries=0) as client:
            for _ in usages:
                client.chat.completions.create(model=model, messages=MESSAGES)
    finally:
        pipeline.instrumentor.uninstrument()
        exporter.shutdown()


def uninstrumented_call(provider: FakeOpenAI, usage: dict[str, Any]) -> None:
    provider.script(Scripted(usage=usage))
    with openai.OpenAI(base_url=provider.base_url, api_key="sk-test", max_retries=0) as client:
        client.chat.completions.create(model="gpt-4.1", messages=MESSAGES)


def move_to_yesterday(provider: FakeOpenAI, store_path: Path) -> None:
    """Both sides' records of today, one day back: a finished day, which the provider reports in full."""
    with Store(store_path) as store:
        store.execute_write("UPDATE spans SET start_ns = start_ns - ?", [(DAY_NS,)])
    with provider.state.lock:
        provider.state.billed[:] = [replace(e, at=e.at - 86_400) for e in provider.state.billed]


def run(provider: FakeOpenAI, store_path: Path, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, Any]:
    argv = ["reconcile", "--store", str(store_path), "--base-url", provider.base_url, "--format", "json", *args]
    code = main(argv)
    out = capsys.readouterr().out
    return code, json.loads(out) if out.strip() else None


def test_instrumented_calls_match_the_bill_to_the_cent(
    provider: FakeOpenAI, store_path: Path, admin_key: str, capsys: pytest.CaptureFixture[str]
) -> None:
    make_calls(provider, store_path, CALL_1, CALL_2)
    code, rows = run(provider, store_path, capsys, "--since", "1d")
    assert code == 0
    assert [r["day"] for r in rows] == [YESTERDAY.isoformat(), TODAY.isoformat()]
    today = rows[-1]
    assert today["verdict"] == PARTIAL  # the provider finishes a day's figures after it ends
    assert today["billed_usd"] == pytest.approx(CALL_1_USD + CALL_2_USD, abs=1e-12)
    assert today["recorded_usd"] == pytest.approx(CALL_1_USD + CALL_2_USD, abs=1e-12)
    assert (today["billed_requests"], today["recorded_requests"]) == (2, 2)
    assert today["billed_tokens"] == today["recorded_tokens"] == 100_000 + 20_000 + 300_000 + 10_000

    move_to_yesterday(provider, store_path)
    code, rows = run(provider, store_path, capsys, "--since", "1d")
    assert code == 0
    assert rows[0]["verdict"] == OK and rows[0]["difference_usd"] == pytest.approx(0, abs=1e-12)


def test_calls_the_instrumentation_never_saw_fail_the_day(
    provider: FakeOpenAI, store_path: Path, admin_key: str, capsys: pytest.CaptureFixture[str]
) -> None:
    make_calls(provider, store_path, CALL_1)
    uninstrumented_call(provider, CALL_2)
    move_to_yesterday(provider, store_path)
    code, rows = run(provider, store_path, capsys, "--since", "1d")
    assert code == 1
    day = rows[0]
    assert day["verdict"] == UNSEEN_CALLS
    assert day["billed_usd"] == pytest.approx(CALL_1_USD + CALL_2_USD)
    assert day["recorded_usd"] == pytest.approx(CALL_1_USD)
    assert "1 more request and 310,000 more tokens" in day["cause"]


def test_a_provider_price_change_is_a_price_mismatch_naming_the_model(
    provider: FakeOpenAI, store_path: Path, admin_key: str, capsys: pytest.CaptureFixture[str]
) -> None:
    provider.rates["gpt-4.1-2025-04-14"] = (Decimal("2.20"), Decimal("0.55"), Decimal("8.80"))  # +10%
    make_calls(provider, store_path, CALL_1, CALL_2)
    move_to_yesterday(provider, store_path)
    code, rows = run(provider, store_path, capsys, "--since", "1d", "--by-model")
    assert code == 1
    (day,) = [r for r in rows if r["day"] == YESTERDAY.isoformat()]
    assert day["model"] == "gpt-4.1-2025-04-14"
    assert day["verdict"] == PRICE_MISMATCH and "gpt-4.1-2025-04-14" in day["cause"]
    assert day["billed_usd"] == pytest.approx(1.1 * (CALL_1_USD + CALL_2_USD))
    assert day["difference_pct"] == pytest.approx(1 / 1.1 - 1)
    # Within a generous tolerance the same day agrees.
    code, rows = run(provider, store_path, capsys, "--since", "1d", "--tolerance", "10")
    assert code == 0 and rows[0]["verdict"] == OK


def test_calls_without_a_price_are_named_as_the_cause(
    provider: FakeOpenAI, store_path: Path, admin_key: str, capsys: pytest.CaptureFixture[str]
) -> None:
    provider.rates["gpt-house-1"] = (Decimal("1.00"), Decimal("0.10"), Decimal("4.00"))  # the bill knows it
    make_calls(provider, store_path, CALL_2, model="gpt-house-1")  # costspan's price data does not
    move_to_yesterday(provider, store_path)
    code, rows = run(provider, store_path, capsys, "--since", "1d")
    assert code == 1
    assert rows[0]["verdict"] == UNPRICED_CALLS and rows[0]["unpriced"] == 1
    assert rows[0]["billed_usd"] == pytest.approx((300_000 * 1.00 + 10_000 * 4.00) / 1e6)


def test_project_scope_and_pagination_over_many_days(
    provider: FakeOpenAI, store_path: Path, admin_key: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """40 days need two pages of 31 buckets from every endpoint; another project's spend is left out with
    --project and shows as over-counted on costspan's side when the store holds it."""
    make_calls(provider, store_path, CALL_1, CALL_2)
    long_ago = int((datetime.now(UTC) - timedelta(days=35)).timestamp())
    provider.bill(Billed(long_ago, "completions", "gpt-4.1-2025-04-14", 1_000_000, 0, 0, project_id="proj_other"))
    code, rows = run(provider, store_path, capsys, "--since", "40d")
    assert len(rows) == 41
    (old,) = [r for r in rows if r["billed_usd"] and r["day"] != TODAY.isoformat()]
    assert old["billed_usd"] == pytest.approx(2.00) and old["verdict"] == UNSEEN_CALLS
    assert code == 1

    code, rows = run(provider, store_path, capsys, "--since", "40d", "--project", "proj_fake")
    assert code == 0 and sum(r["billed_requests"] for r in rows) == 2

    move_to_yesterday(provider, store_path)
    code, rows = run(provider, store_path, capsys, "--since", "1d", "--project", "proj_elsewhere")
    assert code == 1 and rows[0]["verdict"] == OVER_COUNTED


def test_errors_say_what_to_do_and_exit_2(
    provider: FakeOpenAI,
    store_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    make_calls(provider, store_path, CALL_1)
    monkeypatch.delenv("OPENAI_ADMIN_KEY", raising=False)
    assert main(["reconcile", "--store", str(store_path), "--base-url", provider.base_url]) == 2
    assert "set $OPENAI_ADMIN_KEY to an organization admin key" in capsys.readouterr().err

    monkeypatch.setenv("OPENAI_ADMIN_KEY", "sk-proj-an-ordinary-key")
    assert main(["reconcile", "--store", str(store_path), "--base-url", provider.base_url]) == 2
    err = capsys.readouterr().err
    assert "HTTP 401" in err and "admin key (sk-admin-..." in err

    monkeypatch.setenv("OPENAI_ADMIN_KEY", ADMIN_KEY)
    closed = f"http://127.0.0.1:{free_port()}/v1"
    assert main(["reconcile", "--store", str(store_path), "--base-url", closed]) == 2
    assert "cannot reach" in capsys.readouterr().err

    assert main(["reconcile", "--store", str(store_path / "missing"), "--base-url", provider.base_url]) == 2
    assert "error" in capsys.readouterr().err


def test_the_table_lists_each_gap_with_its_cause(
    provider: FakeOpenAI, store_path: Path, admin_key: str, capsys: pytest.CaptureFixture[str]
) -> None:
    make_calls(provider, store_path, CALL_1)
    uninstrumented_call(provider, CALL_2)
    move_to_yesterday(provider, store_path)
    assert main(["reconcile", "--store", str(store_path), "--base-url", provider.base_url, "--since", "1d"]) == 1
    out = capsys.readouterr().out
    assert "Recorded by costspan vs billed by OpenAI (the whole organization)" in out
    assert f"{YESTERDAY}: unseen calls: the provider billed 1 more request and" in out
    assert "billed $0.9800, recorded $0.3000, difference -$0.6800" in out


# --- the verdict rules, on hand-made figures ------------------------------------------------------------------


def side(day: date, model: str, figures: Figures) -> Side:
    made = Side()
    made.days[day] = {model: figures}
    return made


@pytest.mark.parametrize(
    ("billed", "recorded", "verdict"),
    [
        (Figures(10.00, 100, 90_000, 0, 10_000), Figures(10.19, 100, 90_000, 0, 10_000), OK),  # 1.9% < 2%
        (Figures(0.004, 1, 1000, 0, 100), Figures(0.0, 1, 1000, 0, 100, unpriced=1), OK),  # under a cent
        (Figures(10.00, 100, 90_000, 0, 10_000), Figures(9.00, 90, 81_000, 0, 9_000), UNSEEN_CALLS),
        (Figures(10.00, 100, 90_000, 0, 10_000), Figures(9.00, 100, 90_000, 0, 10_000, unpriced=10), UNPRICED_CALLS),
        (Figures(10.00, 100, 90_000, 0, 10_000), Figures(11.00, 110, 99_000, 0, 11_000), OVER_COUNTED),
        (Figures(10.00, 100, 90_000, 0, 10_000), Figures(9.50, 100, 90_000, 0, 10_000), PRICE_MISMATCH),
        # A cause must move the figure the way the gap goes: unpriced or unseen calls cannot make recorded higher,
        # and more recorded calls cannot make it lower.
        (Figures(10.00, 100, 90_000, 0, 10_000), Figures(20.00, 100, 90_000, 0, 10_000, unpriced=3), PRICE_MISMATCH),
        (Figures(10.00, 100, 90_000, 0, 10_000), Figures(12.00, 90, 81_000, 0, 9_000), PRICE_MISMATCH),
        (Figures(10.00, 100, 90_000, 0, 10_000), Figures(8.00, 110, 99_000, 0, 11_000), PRICE_MISMATCH),
    ],
)
def test_verdicts(billed: Figures, recorded: Figures, verdict: str) -> None:
    (result,) = reconcile(side(YESTERDAY, "m", billed), side(YESTERDAY, "m", recorded), [YESTERDAY], TODAY, 0.02)
    assert result.verdict == verdict, result.cause
    assert result.difference_usd == pytest.approx(recorded.usd - billed.usd)


def test_today_is_partial_whatever_the_figures() -> None:
    (result,) = reconcile(side(TODAY, "m", Figures(5.0, 5)), Side(), [TODAY], TODAY, 0.02)
    assert result.verdict == PARTIAL


def test_sums_of_stored_amounts_do_not_drift() -> None:
    """0.7 + 0.1 + 0.1 + 0.1 is 0.9999999999999999 in floats: sums are kept to the nano-dollar."""
    ours = Side()
    for amount in (0.7, 0.1, 0.1, 0.1):
        ours.at(YESTERDAY, "m").add(Figures(amount, 1))
    (result,) = reconcile(side(YESTERDAY, "m", Figures(1.0, 4)), ours, [YESTERDAY], TODAY, 0.02)
    assert (result.costspan.usd, result.difference_usd) == (1.0, 0.0)
