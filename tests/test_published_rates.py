"""Says which published rates a newer genai-prices release changed.

The rest of the suite prices calls from ``tests/frozen_prices.py`` (see conftest), so a new price-data release
cannot change any other test's dollars. This is the one test that compares the installed release with that
frozen copy. When it fails, the data changed a rate the tests were written against: check the change against
the provider's published price page, then run ``scripts/freeze-test-prices`` and update the hand-computed
dollars of the tests that use that model.
"""

from __future__ import annotations

import genai_prices
import genai_prices.data

from tests import frozen_prices


def test_installed_price_data_has_the_rates_the_tests_were_written_against() -> None:
    installed = {(p.id, m.id): m for p in genai_prices.data.providers for m in p.models}
    changed = []
    for provider in frozen_prices.providers:
        for model in provider.models:
            now = installed.get((provider.id, model.id))
            if now is None:
                changed.append(f"{provider.id}/{model.id}: no longer in the data")
            elif (now.prices, now.price_variants) != (model.prices, model.price_variants):
                changed.append(f"{provider.id}/{model.id}: prices differ")
    assert not changed, (
        f"genai-prices {genai_prices.__version__} changed published rates the tests were written against "
        f"(frozen copy: {frozen_prices.VERSION}):\n  " + "\n  ".join(changed)
    )
