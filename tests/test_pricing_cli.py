"""`costspan price`: rates, a call's bill, --list, --check, --json. Prices: the genai-prices 0.2.5 data frozen in
tests/frozen_prices.py (2026-11)."""

from __future__ import annotations

import json
import subprocess
import sys
from decimal import Decimal
from pathlib import Path
from typing import Any

import genai_prices
import pytest

from costspan.cli import main

SEED_CALL = ["--input", "15234", "--cached", "12000", "--output", "5312", "--reasoning", "4500", "--at", "2026-11-02"]


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["price", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def run_json(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, Any]:
    code, out, _ = run(capsys, *argv, "--json")
    return code, json.loads(out)


def test_bill_line_by_line(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "gpt-5.5-2026-04-23", *SEED_CALL)
    assert code == 0
    # 3,234 x 5 = 16,170; 12,000 x 0.50 = 6,000; 5,312 x 30 = 159,360; total 181,530 -> $0.181530
    assert "priced as gpt-5.5" in out
    assert f"genai-prices {genai_prices.__version__}, in force on 2026-11-02 (UTC); service tier: standard" in out
    lines = [line.split() for line in out.splitlines()]
    assert ["input", "(uncached)", "3,234", "5.00", "$0.01617"] in lines
    assert ["cached", "input", "12,000", "0.50", "$0.00600"] in lines
    assert ["output", "5,312", "30.00", "$0.15936"] in lines
    assert ["total", "$0.18153"] in lines
    assert "of which reasoning   4,500" in out and "not added again" in out


def test_bill_as_json(capsys: pytest.CaptureFixture[str]) -> None:
    code, report = run_json(capsys, "gpt-5.5", *SEED_CALL)
    assert code == 0
    assert Decimal(report["total_usd"]) == Decimal("0.18153")
    assert [(line["price_key"], line["tokens"], Decimal(line["usd"])) for line in report["lines"]] == [
        ("cache_read_mtok", 12000, Decimal("0.006")),
        ("input_mtok", 3234, Decimal("0.01617")),
        ("output_mtok", 5312, Decimal("0.15936")),
    ]
    assert report["rates_per_million"]["input_mtok"] == {
        "base": "5",
        "tiers": [{"input_tokens_above": 272000, "rate": "10"}],
    }
    assert (report["source"], report["version"], report["priced_as"]) == (
        "genai-prices",
        genai_prices.__version__,
        "gpt-5.5",
    )


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        # gpt-5.4 above the step: 300,000 x 5 + 2,000 x 22.50 = 1,500,000 + 45,000 -> $1.545
        (["gpt-5.4", "--input", "300000", "--output", "2000"], "1.545"),
        # gpt-5 flex: 1,000 x 0.625 + 500 x 5 = 625 + 2,500 -> $0.003125
        (["gpt-5", "--input", "1000", "--output", "500", "--tier", "flex"], "0.003125"),
        # gpt-4.1 batch: 1,000 x 1 + 500 x 4 = 3,000 -> $0.003
        (["gpt-4.1", "--input", "1000", "--output", "500", "--batch"], "0.003"),
        # o3 before its 2025-06-10 price cut: 1,000 x 10 + 500 x 40 = 30,000 -> $0.03
        (["o3", "--input", "1000", "--output", "500", "--at", "2025-06-01"], "0.03"),
        # gpt-audio: 600 x 2.50 + 400 x 32 + 100 x 10 + 500 x 64 = 1,500 + 12,800 + 1,000 + 32,000 -> $0.0473
        (
            ["gpt-audio", "--input", "1000", "--input-audio", "400", "--output", "600", "--output-audio", "500"],
            "0.0473",
        ),
    ],
)
def test_rules_through_the_cli(capsys: pytest.CaptureFixture[str], argv: list[str], expected: str) -> None:
    code, report = run_json(capsys, *argv, "--at", "2026-11-02") if "--at" not in argv else run_json(capsys, *argv)
    assert code == 0
    assert Decimal(report["total_usd"]) == Decimal(expected)


def test_rates_only(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "gpt-5.4", "--at", "2026-11-02")
    assert code == 0
    assert "long context: a prompt above 272,000 input tokens bills the whole call higher" in out
    assert ["input", "(uncached)", "2.50", "(5.00", "above", "272,000)"] in [line.split() for line in out.splitlines()]


def test_unknown_model_and_tier_exit_1(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "gpt-4.1-turbo-x", "--input", "10")
    assert code == 1 and out == ""
    assert err.startswith("costspan price: no price for 'gpt-4.1-turbo-x' (provider openai)")
    assert "unknown_model and no amount" in err and "not used: a near neighbour's price is a guess" in err
    code, _, err = run(capsys, "gpt-5", "--input", "10", "--tier", "scale", "--at", "2026-11-02")
    assert (code, err.strip()) == (1, "costspan price: unknown_tier: no 'scale' service-tier price for gpt-5")
    code, report = run_json(capsys, "no-such-model")
    assert code == 1 and report["ok"] is False and "no price for 'no-such-model'" in report["error"]


def test_contradictory_counts(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "gpt-4o", "--input", "10", "--cached", "20")
    assert code == 1
    assert "--cached plus --cache-write cannot exceed --input" in err
    code, _, err = run(capsys, "gpt-4o", "--output", "10", "--reasoning", "20")
    assert code == 1 and "--reasoning cannot exceed --output" in err


def test_list(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "--list", "gpt-5.5", "--at", "2026-11-02")
    assert code == 0
    rows = {line.split()[0]: line.split() for line in out.splitlines()[2:]}
    assert set(rows) == {"gpt-5.5", "gpt-5.5-cyber", "gpt-5.5-pro"}
    assert rows["gpt-5.5"][:6] == ["gpt-5.5", "5.00*", "0.50*", "-", "30.00*", "genai-prices"]
    code, report = run_json(capsys, "--list", "o3", "--at", "2026-11-02")
    assert code == 0
    o3 = next(m for m in report["models"] if m["model"] == "o3")
    assert o3["rates_per_million"] == {"input_mtok": "2", "cache_read_mtok": "0.5", "output_mtok": "8"}
    assert {"flex", "priority", "batch"} <= set(o3["variants"])


def test_pricing_file_alias_discount_and_list(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "prices.toml"
    path.write_text(
        '[discounts]\nopenai = 10\n[aliases]\n"my-ft:gpt-4.1:acme" = "gpt-4.1"\n'
        '[[models]]\nmodel = "acme-llama"\ninput = 0.6\noutput = 0.8\n'
    )
    # gpt-4.1 less 10%: (1,000 x 2 + 500 x 8) x 0.9 = 5,400 -> $0.0054
    code, report = run_json(
        capsys, "my-ft:gpt-4.1:acme", "--input", "1000", "--output", "500", "--pricing-file", str(path)
    )
    assert code == 0
    assert (Decimal(report["total_usd"]), report["source"]) == (Decimal("0.0054"), f"override:{path}")
    code, out, _ = run(capsys, "--list", "acme", "--pricing-file", str(path))
    assert code == 0
    assert ["acme-llama", "0.54", "-", "-", "0.72", "override"] in [line.split() for line in out.splitlines()]


def test_check(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = tmp_path / "good.toml"
    good.write_text('[aliases]\n"prod-chat" = "gpt-4o"\n[[models]]\nmodel = "acme"\ninput = 1\n')
    code, out, _ = run(capsys, "--check", str(good))
    assert code == 0
    assert out.startswith(f"{good}: OK (version ") and "1 model rate entry, 1 alias(es)" in out
    bad = tmp_path / "bad.toml"
    bad.write_text('[[models]]\nmodel = "acme"\ninput = -1\n')
    code, out, err = run(capsys, "--check", str(bad))
    assert (code, out) == (1, "")
    assert err.strip() == (
        f"costspan price: {bad}:3: models[0].input: a price in USD per million tokens cannot be negative, got -1"
    )
    code, report = run_json(capsys, "--check", str(bad))
    assert code == 1
    assert (report["ok"], report["line"], report["field"]) == (False, 3, "models[0].input")


def test_help_teaches(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["price", "--help"])
    assert exited.value.code == 0
    out = capsys.readouterr().out
    assert "costspan price --check prices.toml" in out and "reasoning tokens included" in out


def test_installed_command(tmp_path: Path) -> None:
    costspan = Path(sys.executable).parent / "costspan"
    if not costspan.exists():
        pytest.skip(f"the costspan script is not installed next to {sys.executable}")
    done = subprocess.run(
        [
            *(str(costspan), "price", "gpt-4o-mini", "--input", "1000", "--output", "500", "--at", "2026-11-02"),
            *("--json", "--pricing-file", str(Path(__file__).parent / "data" / "gpt-4o-mini.toml")),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    # 1,000 x 0.15 + 500 x 0.60 = 150 + 300 = 450 -> $0.00045 (rates from tests/data/gpt-4o-mini.toml)
    assert Decimal(json.loads(done.stdout)["total_usd"]) == Decimal("0.00045")
