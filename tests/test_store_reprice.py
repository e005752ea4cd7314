"""`costspan reprice`: stored costs recomputed, with the first figure and both pricing versions kept."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import genai_prices
import pytest

from costspan.cli import main
from costspan.store.compaction import compact
from costspan.store.sqlite import Store
from tests.test_store import row

RECENT = datetime.now(UTC) - timedelta(days=2)
# gpt-4o-mini in genai-prices 0.2.5 (tests/frozen_prices.py): $0.15 input, $0.075 cached input, $0.60 output per
# million tokens.
PACKAGED = (600 * 0.15 + 400 * 0.075 + 1000 * 0.60) / 1e6


@pytest.fixture(params=["landed", "compacted"])
def store_path(tmp_path: Path, request: pytest.FixtureRequest) -> str:
    """The rows still in the landing table, or already in Parquet segments: reprice updates both."""
    path = tmp_path / "reprice.sqlite3"
    usage = {"input_tokens": 1000, "cached_tokens": 400, "output_tokens": 1000, "response_model": "gpt-4o-mini"}
    with Store(path) as store:
        store.insert(
            [
                row(1, RECENT, cost_usd=1.0, pricing_version="0.1.0-wrong", **usage),  # a price since fixed
                row(
                    2,
                    RECENT,
                    cost_usd=None,
                    pricing_status="unknown_model",
                    **{**usage, "request_model": "ft:x", "response_model": "ft:x"},
                ),
                row(3, RECENT, input_tokens=None, output_tokens=None, cost_usd=None, pricing_status="no_usage"),
                row(4, RECENT - timedelta(days=60), cost_usd=1.0, **usage),  # outside --since 30d
            ]
        )
        if request.param == "compacted":
            compact(store)
            assert store.landed() == 0
    return str(path)


def costs(store_path: str) -> dict[int, tuple[object, ...]]:
    with Store(store_path) as store:
        rows = store.query(
            "SELECT span_id, cost_usd, pricing_status, pricing_version, pricing_source, original_cost_usd, "
            "original_pricing_version FROM spans"
        )
    return {int(r[0], 16): tuple(r[1:]) for r in rows}


def test_reprice_keeps_the_original_figure_and_both_versions(
    capsys: pytest.CaptureFixture[str], store_path: str, tmp_path: Path
) -> None:
    assert main(["reprice", "--store", store_path, "--since", "30d", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("Would re-price 2 calls since ") and "1 would change" in out
    assert "(dry run: nothing written)" in out and "Re-priced" not in out and "changed" not in out
    assert costs(store_path)[1][0] == 1.0  # a dry run writes nothing

    assert main(["reprice", "--store", store_path, "--since", "30d"]) == 0
    out, err = capsys.readouterr()
    assert "Re-priced 2 calls" in out and "1 changed" in out and "spend $1.000000 -> $0.000720 (-$0.999280)" in out
    assert "re-pricing: 2/2 calls" in err  # progress
    after = costs(store_path)
    version = genai_prices.__version__
    assert after[1] == (pytest.approx(PACKAGED, rel=1e-12), "priced", version, "genai-prices", 1.0, "0.1.0-wrong")
    assert after[2][:2] == (None, "unknown_model")  # still unknown: unchanged, never guessed
    assert after[3][:2] == (None, "no_usage")  # nothing to price
    assert after[4][0] == 1.0  # outside the period

    # A negotiated rate later: the original figure stays the very first one.
    prices = tmp_path / "prices.toml"
    prices.write_text('[[models]]\nmodel = "gpt-4o-mini"\ninput = 1.0\ncache_read = 0.5\noutput = 2.0\n')
    assert main(["reprice", "--store", store_path, "--pricing-file", str(prices)]) == 0
    cost, status, new_version, source, original, original_version = costs(store_path)[1]
    assert status == "priced"
    assert cost == pytest.approx((600 * 1.0 + 400 * 0.5 + 1000 * 2.0) / 1e6, rel=1e-12)
    assert source == f"override:{prices}" and new_version != version
    assert (original, original_version) == (1.0, "0.1.0-wrong")


def test_a_bad_pricing_file_is_an_error_not_a_silent_fallback(
    capsys: pytest.CaptureFixture[str], store_path: str, tmp_path: Path
) -> None:
    prices = tmp_path / "prices.toml"
    prices.write_text('[[models]]\nmodel = "gpt-4o-mini"\ninput = "cheap"\n')
    assert main(["reprice", "--store", store_path, "--pricing-file", str(prices)]) == 2
    assert str(prices) in capsys.readouterr().err
    assert costs(store_path)[1][0] == 1.0
