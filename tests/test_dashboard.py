"""``costspan dashboard``: one offline HTML page, checked for its numbers and rendered in headless Chromium."""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from costspan.cli import main
from costspan.reports.dashboard import axis_ticks, compact, percent, spend_chart
from costspan.store.schema import CostRow
from costspan.store.sqlite import Store

NOW = datetime.now(UTC)
DAY = timedelta(days=1)

# (age, feature, route, customer, cost, input tokens, cached tokens): hand-picked dollars, so totals are exact.
CALLS = [
    (2 * DAY, "support-chat", "POST /chat", "acme", 1.50, 1000, 500),
    (2 * DAY, "search", "GET /search", "globex", 0.25, 200, 0),
    (1 * DAY, "support-chat", "POST /chat", "globex", 2.00, 3000, 1500),
    (1 * DAY, "summarize", "POST /summarize", "acme", 4.00, 8000, 0),
    (timedelta(minutes=5), "summarize", "POST /summarize", "initech", 0.60, 1200, 0),
]
TOTAL = "$8.3500"  # 1.50 + 0.25 + 2.00 + 4.00 + 0.60
EXPECTED = {
    "summarize": "$4.6000",
    "support-chat": "$3.5000",
    "acme": "$5.5000",
    "globex": "$2.2500",
    "POST /summarize": "$4.6000",
    "cache": "50.0%",  # support-chat: (500 + 1500) / (1000 + 3000)
}


def row(
    i: int, age: timedelta, feature: str, route: str, customer: str, cost: float, tokens: int, cached: int
) -> CostRow:
    return CostRow(
        span_id=f"{i + 1:016x}",
        trace_id=f"{i + 1:032x}",
        parent_span_id=None,
        start_ns=int((NOW - age).timestamp() * 1e9),
        feature=feature,
        route=route,
        customer_id=customer,
        environment="prod",
        service="shop",
        provider="openai",
        operation="chat",
        request_model="gpt-4.1",
        response_model="gpt-4.1-2025-04-14",
        input_tokens=tokens,
        cached_tokens=cached,
        output_tokens=100,
        latency_ms=250.0,
        cost_usd=cost,
        pricing_status="priced",
    )


# A week of traffic whose names are as long as real ones get: the route must be shown whole, never cut.
LONG_ROUTE = "/api/v2/organizations/{organization_id}/projects/{project_id}/conversations/{conversation_id}/messages"
LONG_FEATURE = "document-summaries-for-enterprise-knowledge-base"
REALISTIC = [
    *CALLS,
    *((n * DAY, "support-chat", LONG_ROUTE, "initech-holdings-international", 3.20, 42_000, 30_000) for n in range(7)),
    *((n * DAY, LONG_FEATURE, "POST /v1/documents/{document_id}/summaries", "acme", 1.85, 96_000, 0) for n in range(6)),
    (3 * DAY, "nightly-batch", "POST /batch/nightly-digest-generation", "globex", 0.0125, 1_500, 0),
]


@pytest.fixture
def store_path(tmp_path: Path) -> Path:
    path = tmp_path / "store.sqlite3"
    with Store(path) as store:
        store.insert(row(i, *call) for i, call in enumerate(CALLS))
    return path


@pytest.fixture
def page(store_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Iterator[Path]:
    out = tmp_path / "spend.html"
    assert main(["dashboard", "--out", str(out), "--store", str(store_path)]) == 0
    assert f"{TOTAL} over 5 calls" in capsys.readouterr().out
    yield out


def test_formatting() -> None:
    assert [compact(v) for v in (999, 25_213, 999_960, 1.3e9)] == ["999", "25.2k", "1.0M", "1.3B"]
    # Axis labels are one column of money: the same decimals on every tick.
    chart = spend_chart([datetime(2026, 11, 2, tzinfo=UTC)], {"chat": [0.0394]}, "day")
    assert re.findall(r">(\$[\d.,]+)</text>", chart) == ["$0.0000", "$0.0100", "$0.0200", "$0.0300", "$0.0400"]
    assert axis_ticks(0) == [0, 1]
    assert axis_ticks(5.8) == [0, 2, 4, 6]
    assert axis_ticks(9.54) == [0, 2.5, 5, 7.5, 10]
    assert axis_ticks(4) == [0, 1, 2, 3, 4]
    assert [round(t, 6) for t in axis_ticks(0.0394)] == [0, 0.01, 0.02, 0.03, 0.04]
    assert [percent(v) for v in (None, 0.0, 0.0004, 0.5)] == ["n/a", "0.0%", "<0.1%", "50.0%"]


def test_page_is_self_contained_with_the_expected_numbers(page: Path) -> None:
    html = page.read_text("utf-8")
    # Nothing fetched from anywhere: no scripts, stylesheets, images or fonts by URL (the SVG namespace is a name).
    assert not re.search(r"<script|<link|<img|@import|url\(", html, re.IGNORECASE)
    assert re.findall(r"https?://[^\s\"'<]+", html) == ["http://www.w3.org/2000/svg"]
    assert TOTAL in html
    for name, figure in EXPECTED.items():
        assert figure in html, name
    # Three daily bars with spend; stacked segments carry exact figures in their tooltips.
    assert html.count("<rect ") == 5
    assert "summarize: $4.0000</title>" in html


def test_empty_period_and_filters(store_path: Path, tmp_path: Path) -> None:
    out = tmp_path / "none.html"
    assert main(["dashboard", "--out", str(out), "--store", str(store_path), "--where", "customer_id=nobody"]) == 0
    html = out.read_text("utf-8")
    assert "No calls in this period." in html and "customer_id = nobody" in html
    assert main(["dashboard", "--out", str(out), "--store", str(store_path), "--since", "1h", "--env", "prod"]) == 0
    html = out.read_text("utf-8")
    assert "$0.6000" in html and "Spend per hour" in html and "$4.6000" not in html


def test_missing_store_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["dashboard", "--out", str(tmp_path / "x.html"), "--store", str(tmp_path / "nope.sqlite3")]) == 2
    assert "costspan demo" in capsys.readouterr().err
    assert not (tmp_path / "x.html").exists()


def _chromium() -> str:
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    if binary is None:
        pytest.skip("Debian's chromium is not installed (scripts/setup-system installs it)")
    return binary


def _headless(binary: str, profile: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            binary,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            f"--user-data-dir={profile}",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=180,
    )


@pytest.mark.integration
def test_renders_in_headless_chromium(page: Path, tmp_path: Path) -> None:
    binary = _chromium()
    shot = tmp_path / "spend.png"
    result = _headless(binary, tmp_path / "profile", f"--screenshot={shot}", "--window-size=1280,2000", page.as_uri())
    assert shot.exists(), result.stderr[-2000:]
    png = shot.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")
    assert (width, height) == (1280, 2000)
    assert len(png) > 20_000  # a blank page compresses to a few kilobytes

    dom = _headless(binary, tmp_path / "profile", "--dump-dom", page.as_uri()).stdout
    text = re.sub(r"<[^>]+>", " ", dom)
    assert TOTAL in text
    for name, figure in EXPECTED.items():
        assert figure in text, name
    assert dom.count("<rect ") == 5


# Measures the page as laid out and writes what it finds into the DOM, where --dump-dom can read it. It goes
# into the test's copy only: the dashboard itself has no script.
LAYOUT_CHECK = """<script>
const problems = [];
const root = document.documentElement;
if (root.scrollWidth > root.clientWidth) {
  problems.push(`the page is ${root.scrollWidth}px wide in a ${root.clientWidth}px window`);
}
for (const panel of document.querySelectorAll("section, .card")) {
  const past = (el) => el.getBoundingClientRect().right > panel.getBoundingClientRect().right + 0.5;
  for (const el of panel.querySelectorAll("*")) {
    if (past(el) && !past(el.parentElement)) {  // the outermost culprit, not each of its children
      problems.push(`<${el.tagName} class="${el.getAttribute("class")}"> sticks out of its panel`);
    }
  }
}
// Every name that could be long carries its full text as a title; the cell must show all of it.
const names = [...document.querySelectorAll("main [title]")];
for (const el of names) {
  if (el.textContent !== el.title) problems.push(`${el.title} reads "${el.textContent}"`);
  if (el.scrollWidth > el.clientWidth) problems.push(`${el.title} is cut off`);
}
const result = {width: window.innerWidth, names: names.map((el) => el.textContent), problems};
const out = document.createElement("pre");
out.id = "layout-check";
out.textContent = JSON.stringify(result);
document.body.append(out);
</script>"""


@pytest.mark.integration
@pytest.mark.parametrize(("width", "height"), [(600, 2600), (1400, 1800)])  # tall enough for the whole page
def test_long_names_read_in_full_at_phone_and_desktop_widths(width: int, height: int, tmp_path: Path) -> None:
    """No sideways scrolling, nothing past its panel, no name cut off, at 600 and 1400 px.

    To look at the screenshots: ``pytest tests/test_dashboard.py -k long_names --basetemp=/tmp/shots`` and open
    /tmp/shots/test_long_names_*/dashboard-600.png and dashboard-1400.png in an image viewer.
    """
    binary = _chromium()
    store = tmp_path / "store.sqlite3"
    with Store(store) as s:
        s.insert(row(i, *call) for i, call in enumerate(REALISTIC))
    page = tmp_path / "spend.html"
    assert main(["dashboard", "--out", str(page), "--store", str(store)]) == 0

    shot = tmp_path / f"dashboard-{width}.png"
    window = f"--window-size={width},{height}"
    result = _headless(binary, tmp_path / "profile", "--hide-scrollbars", f"--screenshot={shot}", window, page.as_uri())
    assert shot.exists(), result.stderr[-2000:]
    assert int.from_bytes(shot.read_bytes()[16:20], "big") == width

    checked = tmp_path / "checked.html"
    checked.write_text(page.read_text("utf-8").replace("</body>", f"{LAYOUT_CHECK}</body>"), "utf-8")
    dom = _headless(binary, tmp_path / "profile", "--dump-dom", window, checked.as_uri()).stdout
    found = re.search(r'<pre id="layout-check">(.*?)</pre>', dom, re.DOTALL)
    assert found, dom[-2000:]
    layout = json.loads(html.unescape(found.group(1)))
    assert layout["width"] == width
    assert not layout["problems"], "\n".join(layout["problems"])
    assert LONG_ROUTE in layout["names"] and LONG_FEATURE in layout["names"]
