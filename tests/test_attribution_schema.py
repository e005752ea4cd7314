"""The attribution schema from Settings, end to end: configure ``team,tenant`` instead of the defaults, and the
span, the store (through the real exporter), ``costspan report``, the cost metric and a budget all see them."""

from __future__ import annotations

import json
import shutil
import sqlite3
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import openai
import pytest
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

import costspan
from costspan import semconv
from costspan.budgets.guard import BudgetExceeded, BudgetFileError, load_budgets
from costspan.cli import main as cli_main
from costspan.config import Settings
from costspan.providers.openai.fake import FakeOpenAI, Scripted
from costspan.store.exporter import CostspanSpanExporter
from costspan.store.sqlite import SCHEMA_VERSION, Store, dimension_names
from tests.conftest import Pipeline, make_pipeline

DATA = Path(__file__).parent / "data"


def chat(client: openai.OpenAI) -> None:
    client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])


def report(capsys: pytest.CaptureFixture[str], store: Path, *args: str) -> dict[Any, dict[str, Any]]:
    assert cli_main(["report", "--store", str(store), "--since", "1d", "--format", "json", *args]) == 0
    rows = json.loads(capsys.readouterr().out)
    return {row[args[args.index("--by") + 1]]: row for row in rows}


def test_team_and_tenant_instead_of_the_defaults_end_to_end(
    fake_openai: FakeOpenAI,
    client: openai.OpenAI,
    instrumented: list[Pipeline],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    budgets = tmp_path / "budgets.toml"
    budgets.write_text(
        f'ledger = "sqlite://{tmp_path}/ledger.sqlite3"\n[[budget]]\ntenant = "initech"\nlimit_usd = 0.00001\n'
    )
    # One variable configures the instrumentor, the exporter, the CLI and the budget file alike.
    monkeypatch.setenv("OTEL_COSTSPAN_ATTRIBUTION_KEYS", "team,tenant")
    monkeypatch.setenv("OTEL_COSTSPAN_BUDGET_FILE", str(budgets))
    pipeline = make_pipeline()
    instrumented.append(pipeline)
    exporter = CostspanSpanExporter(tmp_path / "spans.sqlite3")
    pipeline.tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))

    fake_openai.script(
        Scripted(usage={"prompt_tokens": 1000, "completion_tokens": 200}),
        Scripted(usage={"prompt_tokens": 3000, "completion_tokens": 100}),
        Scripted(usage={"prompt_tokens": 500, "completion_tokens": 50}),
    )
    with costspan.attribute(team="search", tenant="acme", feature="ignored"):  # feature is not configured
        chat(client)
        chat(client)
    with costspan.attribute(team="billing", tenant="globex"):
        chat(client)
    with costspan.attribute(team="search", tenant="initech"), pytest.raises(BudgetExceeded) as refused:
        chat(client)
    assert refused.value.budget.scope == {"tenant": "initech"}
    assert len(fake_openai.received) == 3  # the budget refused the fourth call before it was sent

    # The span: the configured keys, and nothing of the defaults.
    spans = [s for s in pipeline.spans() if (s.attributes or {}).get(semconv.GEN_AI_OPERATION_NAME)]
    attribution = [{k: s.attributes[k] for k in ("team", "tenant")} for s in spans if s.attributes]
    assert attribution == [
        {"team": "search", "tenant": "acme"},
        {"team": "search", "tenant": "acme"},
        {"team": "billing", "tenant": "globex"},
        {"team": "search", "tenant": "initech"},
    ]
    assert not any("feature" in (s.attributes or {}) for s in spans)
    spend: dict[str, float] = {}
    for span in spans:
        a: Mapping[str, Any] = span.attributes or {}
        if semconv.GEN_AI_USAGE_COST_AMOUNT in a:
            spend[str(a["tenant"])] = spend.get(str(a["tenant"]), 0.0) + float(a[semconv.GEN_AI_USAGE_COST_AMOUNT])

    # The store, through the real exporter: the keys beyond the typed columns in the attribution JSON.
    assert exporter.failed_spans == 0
    with Store(exporter.path) as store:
        stored = [tuple(r) for r in store.query("SELECT attribution, feature FROM spans ORDER BY start_ns")]
    assert stored == [
        ('{"team":"search","tenant":"acme"}', None),
        ('{"team":"search","tenant":"acme"}', None),
        ('{"team":"billing","tenant":"globex"}', None),
        ('{"team":"search","tenant":"initech"}', None),
    ]

    # costspan report --by tenant, and --where on the other key.
    by_tenant = report(capsys, exporter.path, "--by", "tenant")
    assert {t: r["requests"] for t, r in by_tenant.items()} == {"acme": 2, "globex": 1, "initech": 1}
    assert by_tenant["acme"]["spend_usd"] == pytest.approx(spend["acme"], rel=1e-12)
    assert by_tenant["globex"]["spend_usd"] == pytest.approx(spend["globex"], rel=1e-12)
    assert by_tenant["initech"]["spend_usd"] is None  # refused: nothing billed
    assert report(capsys, exporter.path, "--by", "tenant", "--where", "team=billing").keys() == {"globex"}
    # costspan budgets reads the same file, and its tenant scope, from the store.
    assert cli_main(["budgets", "--store", str(exporter.path), "--format", "json"]) == 0
    (standing,) = json.loads(capsys.readouterr().out)
    assert (standing["subject"], standing["spent_usd"]) == ("tenant=initech", 0.0)

    # The cost metric: the configured keys (none is high-cardinality by default but customer_id).
    points = pipeline.metric_points(semconv.METRIC_OPERATION_COST)
    labels = {
        (p.attributes.get("team"), p.attributes.get("tenant"), p.attributes.get("feature")): p.count for p in points
    }
    assert labels == {("search", "acme", None): 2, ("billing", "globex", None): 1}
    exporter.shutdown()


def test_a_high_cardinality_key_stays_off_the_metric(
    fake_openai: FakeOpenAI, client: openai.OpenAI, instrumented: list[Pipeline]
) -> None:
    pipeline = make_pipeline(attribution_keys="team,tenant", high_cardinality_keys="tenant")
    instrumented.append(pipeline)
    fake_openai.script(Scripted(usage={"prompt_tokens": 10, "completion_tokens": 1}))
    with costspan.attribute(team="search", tenant="acme"):
        chat(client)
    (point,) = pipeline.metric_points(semconv.METRIC_OPERATION_COST)
    assert point.attributes["team"] == "search" and "tenant" not in point.attributes
    assert (pipeline.span().attributes or {})["tenant"] == "acme"  # still on the span, and so in the store


def test_metric_keys_by_default_and_on_opt_in() -> None:
    assert Settings().metric_attribution_keys == ("feature", "route", "environment")
    assert Settings.load({"OTEL_COSTSPAN_METRICS_CUSTOMER_ID": "true"}).metric_attribution_keys == (
        "feature",
        "route",
        "customer_id",
        "environment",
    )
    keys = Settings.load(
        {"OTEL_COSTSPAN_ATTRIBUTION_KEYS": "team,customer_id", "OTEL_COSTSPAN_HIGH_CARDINALITY_KEYS": "team"}
    )
    assert keys.metric_attribution_keys == ("customer_id",)


def test_only_configured_plain_keys_reach_the_sql(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_COSTSPAN_ATTRIBUTION_KEYS", "team,tenant.id,service,bad'key")
    # service is a column already (the resource's service.name); a quote never names a JSON label.
    assert dimension_names()[-2:] == ("team", "tenant.id")
    with Store(tmp_path / "s.sqlite3") as store:
        assert store.spend_by(["tenant.id"]) == []
        for name in ("bad'key", "feature; DROP TABLE spans", "unconfigured"):
            with pytest.raises(ValueError, match="unknown dimension"):
                store.spend_by([name])
            with pytest.raises(ValueError, match="unknown dimension"):
                store.totals(where={name: "x"})


def test_a_budget_scopes_only_on_keys_in_force(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "budgets.toml"
    path.write_text('[[budget]]\ntenant = "*"\nlimit_usd = 1\n')
    with pytest.raises(BudgetFileError, match=r"unknown key\(s\) tenant; .*OTEL_COSTSPAN_ATTRIBUTION_KEYS"):
        load_budgets(path)
    (budget,) = load_budgets(path, attribution_keys=("tenant",))
    assert budget.scope == {"tenant": "*"}
    monkeypatch.setenv("OTEL_COSTSPAN_ATTRIBUTION_KEYS", "customer_id,tenant")
    assert load_budgets(path)[0].scope == {"tenant": "*"}


def test_a_store_written_before_the_attribution_column_migrates_without_loss(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Written by costspan at schema version 3 (before this column): two spans, feature search and chat.
    path = tmp_path / "v3.sqlite3"
    shutil.copy(DATA / "store-v3.sqlite3", path)
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == 3
        db.row_factory = sqlite3.Row
        before = [dict(r) for r in db.execute("SELECT * FROM spans ORDER BY span_id")]
    with Store(path) as store:
        assert store.schema_version == SCHEMA_VERSION
        after = [dict(zip(r.keys(), r, strict=True)) for r in store.query("SELECT * FROM spans ORDER BY span_id")]
    # Every old column as it was; the columns later versions added (attribution, claimed cost, ...) empty.
    assert [{k: r[k] for k in before[0]} for r in after] == before
    assert all(v is None for r in after for k, v in r.items() if k not in before[0])
    assert cli_main(["report", "--store", str(path), "--since", "2025-01-01", "--format", "json"]) == 0
    by_feature = {r["feature"]: r["spend_usd"] for r in json.loads(capsys.readouterr().out)}
    assert by_feature == {"search": 0.25, "chat": 0.5}
