"""Settings: variables and instrument() keywords are read the same way, and bad values are said, not guessed."""

from __future__ import annotations

import logging

import pytest

from costspan.config import Settings
from costspan.semconv import DEFAULT_ATTRIBUTION_KEYS


def test_keywords_and_variables_are_read_alike() -> None:
    environ = {"OTEL_COSTSPAN_ON_MISSING": " WARN ", "OTEL_COSTSPAN_ATTRIBUTION_KEYS": "feature, team"}
    from_env = Settings.load(environ)
    from_keywords = Settings.load({}, on_missing="WARN", attribution_keys="feature, team")
    assert from_env == from_keywords
    assert (from_env.on_missing, from_env.attribution_keys, from_env.required_keys) == (
        "warn",
        ("feature", "team"),
        ("feature", "team"),
    )
    assert Settings.load({}, attribution_keys=["feature", " team "]).attribution_keys == ("feature", "team")


@pytest.mark.parametrize(("value", "expected"), [("false", False), ("0", False), ("OFF", False), (False, False)])
def test_a_false_flag_is_false_whether_a_variable_or_a_keyword(value: object, expected: bool) -> None:
    assert Settings.load({}, capture_content=value).capture_content is expected
    assert Settings.load({}, metrics=value).metrics is expected
    if isinstance(value, str):
        assert Settings.load({"OTEL_COSTSPAN_METRICS": value}).metrics is expected


def test_a_flag_that_is_neither_true_nor_false_keeps_its_default_and_says_so(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="costspan.config"):
        settings = Settings.load({"OTEL_COSTSPAN_STREAM_USAGE": "ture", "OTEL_COSTSPAN_METRICS": "nope"})
    assert (settings.stream_usage, settings.metrics) == (True, True)
    assert "OTEL_COSTSPAN_STREAM_USAGE='ture' is neither true nor false; using true" in caplog.text


def test_blank_values_mean_unset_and_keywords_win() -> None:
    settings = Settings.load({"OTEL_COSTSPAN_PRICING_FILE": "  ", "OTEL_COSTSPAN_ATTRIBUTION_KEYS": ""})
    assert (settings.pricing_file, settings.attribution_keys) == (None, DEFAULT_ATTRIBUTION_KEYS)
    environ = {"OTEL_COSTSPAN_PRICING_FILE": "/etc/prices.toml", "OTEL_COSTSPAN_COST_COMPAT": "true"}
    settings = Settings.load(environ, pricing_file="mine.toml", cost_compat=False)
    assert (settings.pricing_file, settings.cost_compat) == ("mine.toml", False)


def test_an_unknown_policy_falls_back_to_record(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR, logger="costspan.config"):
        assert Settings.load({}, on_missing="explode").on_missing == "record"
    assert "'explode' is not one of record, warn, raise" in caplog.text
