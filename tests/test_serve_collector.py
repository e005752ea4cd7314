"""A real collector in front of ``costspan serve``: app -> rotel (OTLP/HTTP) -> costspan serve -> SQLite store.

This is the path a team takes when it adds a collector but keeps the embedded store: rotel's own OTLP exporter
(Rust, not the Python SDK) must be understood by the receiver, and every LLM span must land exactly once.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from costspan.providers.openai.fake import FakeOpenAI
from costspan.store.sqlite import Store
from tests.test_rotel_collector import App, Rotel, rotel_binary

pytestmark = pytest.mark.integration


def test_rotel_forwards_into_costspan_serve(fake_openai: FakeOpenAI, tmp_path: Path) -> None:
    binary = rotel_binary()
    store = tmp_path / "store.sqlite3"
    serve = subprocess.Popen(
        [str(Path(sys.executable).parent / "costspan"), "serve", "--port", "0", "--store", str(store)],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert serve.stderr is not None
        banner = serve.stderr.readline()
        assert "receiving OTLP/HTTP on" in banner, banner
        endpoint = banner.split(" on ", 1)[1].split("/v1/traces", 1)[0]
        rotel = Rotel(binary, endpoint, tmp_path / "rotel.log")
        rotel.start()
        app = App(rotel.endpoint, fake_openai.base_url)
        try:
            span_ids = app.calls(4, "POST /chat")
            assert app.flush()
        finally:
            app.close()
            rotel.stop()  # SIGTERM: rotel flushes its batch to costspan serve before exiting
    finally:
        serve.terminate()
        _, log = serve.communicate(timeout=60)
    assert serve.returncode == 0, log
    assert "4 LLM span(s) stored" in log
    with Store(store, create=False) as opened:
        rows = [dict(r) for r in opened.query("SELECT span_id, route, customer_id, cost_usd FROM spans")]
    assert sorted(r["span_id"] for r in rows) == sorted(span_ids), (log, (tmp_path / "rotel.log").read_text())
    assert all(r["route"] == "POST /chat" and r["customer_id"] == "acme" and r["cost_usd"] > 0 for r in rows)
