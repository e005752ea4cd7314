"""Either SDK may be missing: the instrumentor turns on the providers whose SDK is installed, and says nothing of
the others. ``scripts/test-sdk-compat`` also runs this in venvs that hold only one of the two SDKs."""

from __future__ import annotations

import importlib.util
import logging

import pytest

from tests.conftest import make_pipeline


@pytest.mark.parametrize("missing", ["openai", "anthropic"])
def test_a_missing_sdk_is_not_an_error(
    missing: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # As if not installed (the compat venvs with one SDK check the real thing).
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == missing else find_spec(name, *a))
    with caplog.at_level(logging.DEBUG, logger="costspan"):
        pipeline = make_pipeline()
    try:
        assert missing not in {provider.sdk for provider in pipeline.instrumentor.providers}
        assert caplog.records == []
    finally:
        pipeline.instrumentor.uninstrument()


def test_each_installed_sdk_is_instrumented() -> None:
    pipeline = make_pipeline()
    try:
        installed = {sdk for sdk in ("openai", "anthropic") if importlib.util.find_spec(sdk) is not None}
        assert {provider.sdk for provider in pipeline.instrumentor.providers} == installed
    finally:
        pipeline.instrumentor.uninstrument()
