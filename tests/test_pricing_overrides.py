"""The pricing override file: precedence, dated entries, discounts, aliases, and one precise error per bad input.

Packaged prices quoted here are from the genai-prices 0.2.5 data frozen in tests/frozen_prices.py (as of 2026-11),
USD per million tokens.
"""

from __future__ import annotations

import hashlib
import logging
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import genai_prices
import openai
import pytest

from costspan import semconv
from costspan.pricing.overrides import PricingFileError, load_pricing_file, price_layers
from costspan.pricing.pricer import Pricer
from costspan.providers.openai.fake import FakeOpenAI, Scripted
from costspan.usage import Usage
from tests.conftest import make_pipeline

AT = datetime(2026, 11, 2, 12, 0, tzinfo=UTC)
M = 1_000_000

PRICES_TOML = """\
# Negotiated: 10% off everything from OpenAI.
[discounts]
openai = 10

[aliases]
"my-ft:gpt-4.1:acme" = "gpt-4.1"
"ft:gpt-4.1-*:acme:*" = "acme-llama-70b"
"prod-chat-eu" = "gpt-4o"

# A self-hosted model behind an OpenAI-compatible URL.
[[models]]
model = "acme-llama-70b"
input = 0.60
output = 0.80

# gpt-4.1 at our own rate from July, and cheaper again from September.
[[models]]
model = "gpt-4.1"
effective_from = 2026-07-01
input = 1.50
cache_read = 0.40
output = 6.00

[[models]]
model = "gpt-4.1"
effective_from = 2026-09-01
input = 1.00
cache_read = 0.25
output = 4.00

[[models]]
model = "acme-llama-70b"
service_tier = "flex"
input = 0.30
output = 0.40
"""


def write(tmp_path: Path, text: str, name: str = "prices.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.fixture
def prices_file(tmp_path: Path) -> Path:
    return write(tmp_path, PRICES_TOML)


@pytest.fixture
def pricer(prices_file: Path) -> Pricer:
    return Pricer(price_layers(prices_file))


def at(day: str) -> datetime:
    return datetime.fromisoformat(day).replace(tzinfo=UTC)


# --- precedence, dates, discount, aliases ----------------------------------------------------------------------


def test_override_rates_win_over_packaged_and_cover_dated_snapshots(pricer: Pricer, prices_file: Path) -> None:
    # From 2026-09-01, with 10% off: (1,000,000 x 1.00 + 1,000,000 x 4.00) x 0.9 = 5,000,000 x 0.9 -> $4.50
    # (packaged gpt-4.1 would be 2 + 8 = $10 before the discount).
    cost = pricer.price(Usage(M, M), "gpt-4.1-2025-04-14", at=AT)
    assert cost.total == Decimal("4.5")
    assert cost.source == f"override:{prices_file}"
    assert cost.version == hashlib.sha256(prices_file.read_bytes()).hexdigest()[:12]
    assert cost.model_id == "gpt-4.1"


def test_effective_from_boundary(pricer: Pricer) -> None:
    usage = Usage(M, M, cache_read_tokens=500_000)
    # 2026-06-30: no entry in force yet, so the packaged rate, discounted:
    # (500,000 x 2 + 500,000 x 0.50 + 1,000,000 x 8) x 0.9 = (1,000,000 + 250,000 + 8,000,000) x 0.9 -> $8.325
    before = pricer.price(usage, "gpt-4.1", at=at("2026-06-30T23:59:59"))
    # 2026-07-01 00:00 UTC: the July entry. (500,000 x 1.50 + 500,000 x 0.40 + 1,000,000 x 6) x 0.9
    # = (750,000 + 200,000 + 6,000,000) x 0.9 = 6,950,000 x 0.9 -> $6.255
    july = pricer.price(usage, "gpt-4.1", at=at("2026-07-01T00:00:00"))
    # 2026-08-31: still July's. 2026-09-01: September's.
    # (500,000 x 1 + 500,000 x 0.25 + 1,000,000 x 4) x 0.9 = 4,625,000 x 0.9 -> $4.1625
    august = pricer.price(usage, "gpt-4.1", at=at("2026-08-31T23:59:59"))
    september = pricer.price(usage, "gpt-4.1", at=at("2026-09-01T00:00:00"))
    assert (before.total, july.total, august.total, september.total) == (
        Decimal("8.325"),
        Decimal("6.255"),
        Decimal("6.255"),
        Decimal("4.1625"),
    )
    assert before.version is not None and before.version.endswith(
        f"+genai-prices {genai_prices.__version__}"
    )  # packaged, discounted


def test_discount_applies_to_packaged_prices_and_their_tiers(pricer: Pricer) -> None:
    # gpt-4o: (1,000 x 2.50 + 500 x 10) x 0.9 = 7,500 x 0.9 = 6,750 -> $0.00675
    assert pricer.price(Usage(1000, 500), "gpt-4o", at=AT).total == Decimal("0.00675")
    # gpt-5.5 above the 272K step: (300,000 x 10 + 1,000 x 45) x 0.9 = 3,045,000 x 0.9 = 2,740,500 -> $2.7405
    assert pricer.price(Usage(300_000, 1000), "gpt-5.5", at=AT).total == Decimal("2.7405")


def test_discount_applies_per_provider(tmp_path: Path) -> None:
    pricer = Pricer(price_layers(write(tmp_path, "[discounts]\nazure = 20\n")))
    # Azure gets 20% off: (1,000 x 2.50 + 500 x 10) x 0.8 = 6,000 -> $0.006; OpenAI pays list: $0.0075
    assert pricer.price(Usage(1000, 500), "gpt-4o", at=AT, provider="azure").total == Decimal("0.006")
    openai_cost = pricer.price(Usage(1000, 500), "gpt-4o", at=AT, provider="openai")
    assert (openai_cost.total, openai_cost.source) == (Decimal("0.0075"), "genai-prices")


def test_alias_prices_a_name_as_another_model(pricer: Pricer, prices_file: Path) -> None:
    # my-ft:gpt-4.1:acme -> gpt-4.1 (September entry): (1,000 x 1 + 500 x 4) x 0.9 = 2,700 -> $0.0027
    cost = pricer.price(Usage(1000, 500), "my-ft:gpt-4.1:acme", at=AT)
    assert (cost.total, cost.model_id, cost.source) == (Decimal("0.0027"), "gpt-4.1", f"override:{prices_file}")
    # a glob alias for every acme fine-tune: (1,000 x 0.60 + 500 x 0.80) x 0.9 = 900 -> $0.0009
    cost = pricer.price(Usage(1000, 500), "ft:gpt-4.1-2025-04-14:acme:support:9xYz", at=AT)
    assert (cost.total, cost.model_id) == (Decimal("0.0009"), "acme-llama-70b")


def test_alias_maps_an_azure_deployment_name(pricer: Pricer) -> None:
    # prod-chat-eu -> gpt-4o on Azure: (1,000 x 2.50 + 500 x 10) = 7,500 (no Azure discount here) -> $0.0075
    cost = pricer.price(Usage(1000, 500), "prod-chat-eu", at=AT, provider="azure")
    assert (cost.status, cost.total, cost.model_id) == (semconv.STATUS_PRICED, Decimal("0.0075"), "gpt-4o")


def test_new_model_tiers_and_unknowns(pricer: Pricer) -> None:
    # flex entry of the self-hosted model: (1,000 x 0.30 + 500 x 0.40) x 0.9 = 450 -> $0.00045
    assert pricer.price(Usage(1000, 500), "acme-llama-70b", at=AT, service_tier="flex").total == Decimal("0.00045")
    # no priority entry: flagged, not billed at the standard rate
    cost = pricer.price(Usage(1000, 500), "acme-llama-70b", at=AT, service_tier="priority")
    assert (cost.status, cost.total) == (semconv.STATUS_UNKNOWN_TIER, None)
    cost = pricer.price(Usage(1000, 500), "acme-llama-70b", at=AT, batch=True)
    assert (cost.status, cost.note) == (semconv.STATUS_UNKNOWN_TIER, "no batch price for acme-llama-70b")
    # a name neither the file nor the data knows stays unknown
    assert pricer.price(Usage(1000, 500), "acme-llama-8b", at=AT).status == semconv.STATUS_UNKNOWN_MODEL


def test_a_flex_only_entry_names_the_missing_standard_price(tmp_path: Path) -> None:
    text = '[[models]]\nmodel = "acme-mini"\nservice_tier = "flex"\ninput = 0.10\noutput = 0.20\n'
    pricer = Pricer(price_layers(write(tmp_path, text)))
    cost = pricer.price(Usage(1000, 500), "acme-mini", at=AT)
    assert (cost.status, cost.note) == (semconv.STATUS_UNKNOWN_TIER, "no standard-tier price for acme-mini")


def test_untouched_models_keep_the_packaged_source(tmp_path: Path) -> None:
    pricer = Pricer(price_layers(write(tmp_path, '[[models]]\nmodel = "acme"\ninput = 1\n')))
    cost = pricer.price(Usage(1000, 500), "gpt-4o-mini", at=AT)
    assert (cost.source, cost.version, cost.total) == ("genai-prices", genai_prices.__version__, Decimal("0.00045"))


def test_yaml_file(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
discounts:
  openai: 25
aliases:
  my-deployment: gpt-4.1-mini
models:
  - model: acme-llama-70b
    effective_from: 2026-10-01
    input: 0.6
    output: 0.8
""",
        "prices.yaml",
    )
    pricer = Pricer(price_layers(path))
    # (1,000 x 0.60 + 500 x 0.80) x 0.75 = 1,000 x 0.75 = 750 -> $0.00075
    assert pricer.price(Usage(1000, 500), "acme-llama-70b", at=AT).total == Decimal("0.00075")
    # gpt-4.1-mini: (1,000 x 0.40 + 500 x 1.60) x 0.75 = 1,200 x 0.75 = 900 -> $0.0009
    assert pricer.price(Usage(1000, 500), "my-deployment", at=AT).total == Decimal("0.0009")


def test_lookups_are_memoized(pricer: Pricer) -> None:
    first = pricer.resolve("my-ft:gpt-4.1:acme", "openai", AT)
    assert first is not None
    assert first is pricer.resolve("my-ft:gpt-4.1:acme", "openai", AT.replace(hour=1))


# --- malformed files: one precise message each -----------------------------------------------------------------

BAD = [
    pytest.param(
        '[[models]]\nmodel = "acme"\ninput = "cheap"\n',
        "{path}:3: models[0].input: must be a price in USD per million tokens (a number), got a string 'cheap'",
        id="wrong-type",
    ),
    pytest.param(
        '[[models]]\nmodel = "acme"\ninput = 0.5\ncached = 0.25\n',
        "{path}:4: models[0].cached: unknown field; did you mean 'cache_read'? Known: model, provider, "
        "effective_from, service_tier, batch, input, cache_read, cache_write, cache_write_1h, output, reasoning, "
        "input_audio, cache_audio_read, output_audio, input_image, cache_image_read, output_image",
        id="unknown-field",
    ),
    pytest.param(
        '[[models]]\nmodel = "acme"\ninput = 0.5\n\n[[models]]\nmodel = "acme-2"\ninput = 1\noutput = -2\n',
        "{path}:8: models[1].output: a price in USD per million tokens cannot be negative, got -2",
        id="negative-price",
    ),
    pytest.param(
        '[[models]]\nmodel = "acme"\neffective_from = "2026-13-01"\ninput = 1\n',
        "{path}:3: models[0].effective_from: is not a real date: '2026-13-01' (month must be in 1..12)",
        id="bad-date-string",
    ),
    pytest.param(
        '[[models]]\nmodel = "acme"\neffective_from = "May 1st"\ninput = 1\n',
        "{path}:3: models[0].effective_from: must be a date like 2026-05-01, got a string 'May 1st'",
        id="bad-date-words",
    ),
    pytest.param(
        '[[models]]\nmodel = "acme"\neffective_from = 2026-13-01\ninput = 1\n',
        "{path}:3: effective_from: not valid TOML: Expected newline or end of document after a statement "
        "(is it a real date, written 2026-05-01?)",
        id="bad-date-literal",
    ),
    pytest.param(
        '[[models]]\nmodel = "acme"\neffective_from = 2026-05-01T10:00:00\ninput = 1\n',
        "{path}:3: models[0].effective_from: must be a date like 2026-05-01 without a time of day, "
        "got 2026-05-01T10:00:00",
        id="datetime-not-date",
    ),
    pytest.param(
        "[discount]\nopenai = 10\n",
        "{path}:1: discount: unknown section; did you mean 'discounts'? Known: discounts, aliases, models",
        id="unknown-section",
    ),
    pytest.param(
        "[discounts]\nopenai = 100\n",
        "{path}:2: discounts.openai: a discount is a percentage below 100, got 100",
        id="discount-too-big",
    ),
    pytest.param(
        "[discounts]\nopen-ai = 10\n",
        "{path}:2: discounts.open-ai: unknown provider; did you mean 'openai'? Known: ",
        id="discount-unknown-provider",
    ),
    pytest.param(
        '[aliases]\n"prod-chat-eu" = "gpt-4q"\n',
        "{path}:2: aliases.prod-chat-eu: alias target 'gpt-4q' is neither in the price data nor a [[models]] "
        "entry of this file",
        id="alias-to-nothing",
    ),
    pytest.param(
        '[[models]]\nmodel = "acme"\nbatch = "yes"\ninput = 1\n',
        "{path}:3: models[0].batch: must be true or false, got a string",
        id="batch-not-bool",
    ),
    pytest.param(
        '[[models]]\nmodel = "acme"\n',
        "{path}:1: models[0]: entry for 'acme' has no input rate; give input (and output for a model that "
        "generates), then any of cache_read, cache_write, cache_write_1h, output, reasoning, input_audio, "
        "cache_audio_read, output_audio, input_image, cache_image_read, output_image",
        id="no-rates",
    ),
    pytest.param(
        '[[models]]\nmodel = "acme"\noutput = 0.80\n',  # input tokens would be billed at $0
        "{path}:1: models[0]: entry for 'acme' has no input rate; give input (and output for a model that "
        "generates), then any of cache_read, cache_write, cache_write_1h, output, reasoning, input_audio, "
        "cache_audio_read, output_audio, input_image, cache_image_read, output_image",
        id="output-only",
    ),
    pytest.param(
        "[[models]]\ninput = 1\n",
        '{path}:1: models[0].model: every entry needs model = "<model name>"',
        id="no-model",
    ),
    pytest.param(
        '[[models]]\nmodel = "acme"\ninput = 1\n[[models]]\nmodel = "ACME"\ninput = 2\n',
        "{path}:5: models[1].model: duplicates models[0]: same model, provider, effective_from, service_tier and batch",
        id="duplicate",
    ),
    pytest.param(
        "models = 3\n",
        "{path}:1: models: must be a list of model entries ([[models]] in TOML), got a number",
        id="models-not-a-list",
    ),
    pytest.param(
        '[[models]]\nmodel = "acme"\ninput = 1\noutput = [\n',
        "{path}:4: output: not valid TOML: Invalid value (at end of document)",
        id="syntax",
    ),
]


@pytest.mark.parametrize(("text", "message"), BAD)
def test_malformed_file_gets_one_precise_message(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(PricingFileError) as raised:
        load_pricing_file(path)
    expected = message.format(path=path)
    if expected.endswith("Known: "):
        assert str(raised.value).startswith(expected)
    else:
        assert str(raised.value) == expected


def test_malformed_yaml_names_the_line(tmp_path: Path) -> None:
    path = write(tmp_path, "models:\n  - model: acme\n    input: 0.5\n    output: -1.5\n", "prices.yaml")
    with pytest.raises(PricingFileError, match=r"prices\.yaml:4: models\[0\]\.output: .* cannot be negative"):
        load_pricing_file(path)
    path = write(tmp_path, "models:\n  - model: acme\n    input: [0.5\n", "broken.yml")
    with pytest.raises(PricingFileError, match=r"broken\.yml:4: not valid YAML: expected ',' or ']'"):
        load_pricing_file(path)


def test_unreadable_or_unknown_kind_of_file(tmp_path: Path) -> None:
    with pytest.raises(PricingFileError, match=r"missing\.toml: cannot read the file \(No such file or directory\)"):
        load_pricing_file(tmp_path / "missing.toml")
    with pytest.raises(
        PricingFileError, match=r"prices\.json: unknown file type '\.json'; use \.toml, \.yaml or \.yml"
    ):
        load_pricing_file(write(tmp_path, "{}", "prices.json"))


def test_bad_file_falls_back_to_packaged_prices_with_one_logged_error(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = write(tmp_path, '[[models]]\nmodel = "acme"\ninput = -1\n')
    with caplog.at_level(logging.ERROR, logger="costspan"):
        layers = price_layers(path)
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1
    assert f"{path}:3: models[0].input: a price in USD per million tokens cannot be negative, got -1" in (
        errors[0].getMessage()
    )
    assert "costspan price --check" in errors[0].getMessage()
    cost = Pricer(layers).price(Usage(1000, 500), "gpt-4o-mini", at=AT)
    assert (cost.source, cost.total) == ("genai-prices", Decimal("0.00045"))


# --- through the instrumentation ---------------------------------------------------------------------------------


def test_instrumentation_prices_spans_from_the_file(
    prices_file: Path, client: openai.OpenAI, fake_openai: FakeOpenAI
) -> None:
    fake_openai.script(Scripted(model="acme-llama-70b", usage={"prompt_tokens": 1000, "completion_tokens": 500}))
    p = make_pipeline(pricing_file=str(prices_file))
    try:
        client.chat.completions.create(model="acme-llama-70b", messages=[{"role": "user", "content": "hi"}])
        a = dict(p.span().attributes or {})
    finally:
        p.instrumentor.uninstrument()
    # (1,000 x 0.60 + 500 x 0.80) x 0.9 = 900 -> $0.0009
    assert a[semconv.GEN_AI_USAGE_COST_AMOUNT] == 0.0009
    assert a[semconv.COSTSPAN_PRICING_SOURCE] == f"override:{prices_file}"
    assert a[semconv.COSTSPAN_PRICING_VERSION] == hashlib.sha256(prices_file.read_bytes()).hexdigest()[:12]


def test_instrumentation_reads_the_env_var_and_survives_a_bad_file(
    tmp_path: Path,
    client: openai.OpenAI,
    fake_openai: FakeOpenAI,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    bad = write(tmp_path, '[[models]]\nmodel = "gpt-4o-mini"\ninput = "free"\n')
    monkeypatch.setenv("OTEL_COSTSPAN_PRICING_FILE", str(bad))
    fake_openai.script(Scripted(usage={"prompt_tokens": 1000, "completion_tokens": 500}))
    with caplog.at_level(logging.ERROR, logger="costspan"):
        p = make_pipeline()
    try:
        client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
        a = dict(p.span().attributes or {})
    finally:
        p.instrumentor.uninstrument()
    assert any(f"{bad}:3: models[0].input" in r.getMessage() for r in caplog.records)
    # the packaged price: 1,000 x 0.15 + 500 x 0.60 = 450 -> $0.00045
    assert a[semconv.GEN_AI_USAGE_COST_AMOUNT] == 0.00045
    assert a[semconv.COSTSPAN_PRICING_SOURCE] == "genai-prices"


def test_a_tier_only_entry_leaves_the_other_tiers_to_the_packaged_data(tmp_path: Path) -> None:
    text = '[[models]]\nmodel = "gpt-5"\nservice_tier = "flex"\ninput = 0.50\noutput = 4.00\n'
    pricer = Pricer(price_layers(write(tmp_path, text)))
    # flex, from the file: 1,000 x 0.50 + 500 x 4 = 2,500 -> $0.0025
    cost = pricer.price(Usage(1000, 500), "gpt-5", at=AT, service_tier="flex")
    assert (cost.total, cost.source) == (Decimal("0.0025"), f"override:{tmp_path / 'prices.toml'}")
    # standard, packaged gpt-5: $1.25 in, $10 out per 1M (genai-prices 0.2.5): 1,000 x 1.25 + 500 x 10 = 6,250
    cost = pricer.price(Usage(1000, 500), "gpt-5", at=AT)
    assert (cost.status, cost.total, cost.source) == (semconv.STATUS_PRICED, Decimal("0.00625"), "genai-prices")
    # batch, packaged gpt-5 batch: $0.625 in, $5 out per 1M: 1,000 x 0.625 + 500 x 5 = 3,125
    assert pricer.price(Usage(1000, 500), "gpt-5", at=AT, batch=True).total == Decimal("0.003125")
