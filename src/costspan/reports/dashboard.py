"""``costspan dashboard``: one self-contained HTML page of where the LLM money went.

Everything is inline: CSS from ``templates/dashboard.html`` and SVG charts drawn here, with no script, font or
stylesheet fetched from anywhere, so the file can be mailed, archived or opened offline. Hovering a bar shows
its exact figure through the SVG ``<title>`` element, which browsers render without JavaScript.
"""

from __future__ import annotations

import html
import math
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from importlib import resources
from pathlib import Path
from string import Template
from typing import Any

from costspan.money import usd, usd_column
from costspan.store.paths import default_store_path
from costspan.store.sqlite import BUCKET_NS, Store

# Categorical colours (Tableau 10), distinguishable for most colour-blind readers; the last one is "other".
PALETTE = ("#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#edc948", "#b07aa1", "#ff9da7", "#9c755f")
OTHER_COLOUR = "#bab0ac"
MAX_SERIES = len(PALETTE)
TOP_N = 10
UNATTRIBUTED = "(none)"


@dataclass(frozen=True)
class DashboardData:
    """What the page shows, read from the store in one go; ``render`` is a pure function of it."""

    store: str
    since: datetime
    until: datetime
    every: str  # "hour" or "day": the width of one bar
    env: str | None
    where: dict[str, str]
    totals: dict[str, Any]
    buckets: list[datetime]
    series: dict[str, list[float]]  # feature -> spend per bucket, biggest spender first
    features: list[dict[str, Any]]
    customers: list[dict[str, Any]]
    routes: list[dict[str, Any]]
    models: list[dict[str, Any]]


def _floor(moment: datetime, every: str) -> datetime:
    step = BUCKET_NS[every] // 1_000_000_000
    return datetime.fromtimestamp(int(moment.timestamp()) // step * step, UTC)


def collect(
    store: Store,
    *,
    since: datetime | None,
    until: datetime,
    every: str | None = None,
    env: str | None = None,
    where: Mapping[str, str] | None = None,
) -> DashboardData:
    """Read the dashboard's figures. ``every`` defaults to hourly bars for up to two days, daily beyond.

    The period starts no earlier than the day of the first stored call, so a young store fills the chart.
    """
    first = store.time_range()
    start = _floor(first[0], "day") if first else until - timedelta(days=1)
    since = max(since, start) if since else start
    every = every or ("hour" if until - since <= timedelta(days=2) else "day")
    window: dict[str, Any] = {"since": since, "until": until, "env": env, "where": where}
    features = store.spend_by(["feature"], **window)
    names = [_label(row["feature"]) for row in features]
    shown = names if len(names) <= MAX_SERIES else [*names[: MAX_SERIES - 1], "other"]
    step = timedelta(seconds=BUCKET_NS[every] // 1_000_000_000)
    buckets: list[datetime] = []
    moment = _floor(since, every)
    while moment < until:
        buckets.append(moment)
        moment += step
    index = {bucket: i for i, bucket in enumerate(buckets)}
    series = {name: [0.0] * len(buckets) for name in shown}
    for row in store.spend_by(["feature"], every=every, percentiles=False, **window):
        position = index.get(row["bucket"])
        if position is not None:
            name = _label(row["feature"])
            series[name if name in series else "other"][position] += row["spend_usd"] or 0.0
    return DashboardData(
        store=str(store.path),
        since=since,
        until=until,
        every=every,
        env=env,
        where=dict(where or {}),
        totals=store.totals(percentiles=False, **window),
        buckets=buckets,
        series=series,
        features=features,
        customers=store.top("customer_id", TOP_N, percentiles=False, **window),
        routes=store.top("route", TOP_N, percentiles=False, **window),
        models=store.top("response_model", TOP_N, percentiles=False, **window),
    )


# --- formatting -----------------------------------------------------------------------------------------
def _label(value: Any) -> str:
    return UNATTRIBUTED if value is None else str(value)


def percent(value: float | None) -> str:
    if value is None:
        return "n/a"
    return "<0.1%" if 0 < value < 0.0005 else f"{value * 100:.1f}%"


def compact(value: float | None) -> str:
    """Large counts at a glance: 1.3B, 203.9M, 25.2k."""
    if value is None:
        return "n/a"
    for limit, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= limit * 0.99995:  # 999,960 reads 1.0M, not 1000.0k
            return f"{value / limit:.1f}{suffix}"
    return f"{value:,.0f}"


def exact(value: int | None) -> str:
    return "n/a" if value is None else f"{value:,}"


def _e(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _breakable(text: str) -> str:
    """Escaped ``text`` that may wrap after each slash, so a long route breaks between its segments.

    ``<wbr>`` adds no characters: the text a reader copies or searches for stays the route itself.
    """
    return "/<wbr>".join(_e(part) for part in text.split("/"))


def axis_ticks(peak: float) -> list[float]:
    """Round gridline values from 0 to at or above ``peak``: steps of 1, 2, 2.5 or 5 x 10^k, three to five of them."""
    if peak <= 0:
        return [0.0, 1.0]
    rough = peak / 4
    magnitude = 10 ** math.floor(math.log10(rough))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= rough * (1 - 1e-9))
    return [step * i for i in range(math.ceil(peak / step * (1 - 1e-9)) + 1)]


# --- charts ---------------------------------------------------------------------------------------------
def colours(names: Sequence[str]) -> dict[str, str]:
    return {name: OTHER_COLOUR if name == "other" else PALETTE[i % len(PALETTE)] for i, name in enumerate(names)}


def spend_chart(
    buckets: Sequence[datetime], series: dict[str, list[float]], every: str, width: int = 1040, height: int = 300
) -> str:
    """A stacked bar chart of spend per bucket, one colour per series, as an inline SVG element."""
    left, right, top, bottom = 64, 12, 12, 30
    plot_w, plot_h = width - left - right, height - top - bottom
    totals = [sum(values[i] for values in series.values()) for i in range(len(buckets))]
    ticks = axis_ticks(max(totals, default=0.0))
    y_max = ticks[-1]
    parts = [
        f'<svg class="chart" viewBox="0 0 {width} {height}" role="img" '
        f'aria-label="Spend per {every}, stacked by feature" xmlns="http://www.w3.org/2000/svg">'
    ]
    for value, label in zip(ticks, usd_column(ticks), strict=True):
        y = top + plot_h - plot_h * value / y_max
        parts.append(f'<line class="grid" x1="{left}" x2="{width - right}" y1="{y:.1f}" y2="{y:.1f}"/>')
        parts.append(f'<text class="axis" x="{left - 8}" y="{y + 4:.1f}" text-anchor="end">{_e(label)}</text>')
    slot = plot_w / max(len(buckets), 1)
    bar_w = max(slot * 0.72, 1.0)
    palette = colours(list(series))
    label_every = max(1, math.ceil(len(buckets) / 12))
    for i, bucket in enumerate(buckets):
        x = left + slot * i + (slot - bar_w) / 2
        y = top + plot_h
        when = bucket.strftime("%a %b %d" if every == "day" else "%b %d %H:00")
        for name, values in series.items():
            value = values[i]
            if value <= 0:
                continue
            h = plot_h * value / y_max
            y -= h
            parts.append(
                f'<rect x="{x:.1f}" y="{y:.1f}" width="{bar_w:.1f}" height="{h:.1f}" fill="{palette[name]}">'
                f"<title>{_e(when)} · {_e(name)}: {_e(usd(value))}</title></rect>"
            )
        if i % label_every == 0:
            label = bucket.strftime("%b %d" if every == "day" else "%H:00")
            parts.append(
                f'<text class="axis" x="{x + bar_w / 2:.1f}" y="{height - 10}" text-anchor="middle">{_e(label)}</text>'
            )
    parts.append(
        f'<line class="baseline" x1="{left}" x2="{width - right}" y1="{top + plot_h}" y2="{top + plot_h}"/></svg>'
    )
    return "".join(parts)


def legend(series: dict[str, list[float]]) -> str:
    palette = colours(list(series))
    items = "".join(
        f'<li><span class="swatch" style="background:{palette[name]}"></span>{_e(name)}'
        f' <span class="muted">{_e(usd(sum(values)))}</span></li>'
        for name, values in series.items()
    )
    return f'<ul class="legend">{items}</ul>'


def ranking(rows: Sequence[dict[str, Any]], dimension: str, total: float) -> str:
    """A top-N list with a proportional bar behind each row's spend."""
    if not rows:
        return '<p class="empty">No calls in this period.</p>'
    biggest = max((row["spend_usd"] or 0.0) for row in rows) or 1.0
    lines = []
    for row, shown in zip(rows, usd_column([row["spend_usd"] for row in rows]), strict=True):
        spend = row["spend_usd"] or 0.0
        share = spend / total if total else 0.0
        lines.append(
            f'<li><div class="bar" style="width:{100 * spend / biggest:.1f}%"></div>'
            f'<span class="name" title="{_e(_label(row[dimension]))}">{_breakable(_label(row[dimension]))}</span>'
            f'<span class="num">{_e(shown)}</span>'
            f'<span class="num muted">{_e(percent(share))}</span>'
            f'<span class="num muted">{_e(compact(row["requests"]))} calls</span></li>'
        )
    return f'<ol class="ranking">{"".join(lines)}</ol>'


# The feature table's columns; on a narrow screen each row stacks and labels its figures with these names.
FEATURE_COLUMNS = (
    "Feature",
    "LLM calls",
    "Spend",
    "Share",
    "Per call",
    "Tokens",
    "Avg latency",
    "Cache-hit rate",
    "p95 prompt",
)


def feature_table(rows: Sequence[dict[str, Any]], total: float, palette: dict[str, str]) -> str:
    if not rows:
        return '<p class="empty">No calls in this period.</p>'
    body = []
    spend_cells = usd_column([row["spend_usd"] for row in rows])
    per_request_cells = usd_column([(row["spend_usd"] or 0.0) / row["requests"] for row in rows])
    for row, spend, per_request in zip(rows, spend_cells, per_request_cells, strict=True):
        name = _label(row["feature"])
        rate = row["cache_hit_rate"]
        latency = row["avg_latency_ms"]
        swatch = palette.get(name, OTHER_COLOUR)
        figures = (
            _e(exact(row["requests"])),
            _e(spend),
            _e(percent((row["spend_usd"] or 0.0) / total if total else None)),
            _e(per_request),
            _e(compact(row["input_tokens"] + row["output_tokens"])),
            "n/a" if latency is None else f"{latency:,.0f} ms",
            f'<span class="meter"><span style="width:{100 * (rate or 0):.1f}%"></span></span>{_e(percent(rate))}',
            _e(exact(row["p95_input_tokens"])),
        )
        cells = "".join(
            f'<td class="num" data-label="{_e(label)}">{figure}</td>'
            for label, figure in zip(FEATURE_COLUMNS[1:], figures, strict=True)
        )
        body.append(
            f'<tr><td class="name" title="{_e(name)}"><span class="swatch" style="background:{swatch}"></span>'
            f"{_breakable(name)}</td>{cells}</tr>"
        )
    head = "".join(f'<th scope="col">{_e(label)}</th>' for label in FEATURE_COLUMNS)
    return f'<table class="features"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'


def _card(label: str, value: str, note: str = "", cls: str = "") -> str:
    return (
        f'<div class="card {cls}"><div class="label">{_e(label)}</div><div class="value">{_e(value)}</div>'
        f'<div class="note">{_e(note)}</div></div>'
    )


def render(data: DashboardData, generated_at: datetime | None = None) -> str:
    """The whole page, as one string."""
    generated_at = generated_at or datetime.now(UTC)
    totals = data.totals
    spend = totals["spend_usd"] or 0.0
    requests = totals["requests"] or 0
    days = max((data.until - data.since).total_seconds() / 86400, 1 / 24)
    unpriced = totals["unpriced"] or 0
    cards = [
        _card("Spend", usd(spend), f"{usd(spend / days)} per day on average"),
        _card("LLM calls", exact(requests), f"{usd(spend / requests) if requests else 'n/a'} per call"),
        _card(
            "Tokens",
            compact((totals["input_tokens"] or 0) + (totals["output_tokens"] or 0)),
            f"{compact(totals['input_tokens'])} in · {compact(totals['output_tokens'])} out",
        ),
        _card("Cache-hit rate", percent(totals["cache_hit_rate"]), f"{compact(totals['cached_tokens'])} cached tokens"),
        _card(
            "Unpriced calls",
            exact(unpriced),
            "spend of these is unknown, not zero" if unpriced else "every call was priced",
            "warn" if unpriced else "",
        ),
    ]
    if totals["retries"]:
        cards.append(_card("App-level retries", exact(totals["retries"]), "billed again, counted again", "warn"))
    palette = colours(list(data.series))
    period = f"{data.since:%b %d %Y %H:%M} to {data.until:%b %d %Y %H:%M} UTC"
    scope = ", ".join(
        [f"environment {data.env}" if data.env else "all environments"]
        + [f"{name} = {value}" for name, value in data.where.items()]
    )
    template = Template(resources.files("costspan.reports").joinpath("templates/dashboard.html").read_text("utf-8"))
    return template.substitute(
        title=_e(f"LLM spend · {usd(spend)} · {data.since:%b %d} to {data.until:%b %d}"),
        period=_e(period),
        scope=_e(scope),
        store=_e(data.store),
        generated=_e(f"{generated_at:%Y-%m-%d %H:%M} UTC"),
        cards="".join(cards),
        every=_e(data.every),
        chart=spend_chart(data.buckets, data.series, data.every)
        if requests
        else '<p class="empty">No calls in this period.</p>',
        legend=legend(data.series),
        features=feature_table(data.features, spend, palette),
        customers=ranking(data.customers, "customer_id", spend),
        routes=ranking(data.routes, "route", spend),
        models=ranking(data.models, "response_model", spend),
        next="".join(f"<p><code>{_e(command)}</code></p>" for command in next_commands(data.store)),
    )


def next_commands(store: str) -> list[str]:
    """Commands to dig further into the same store (naming it only when it is not the default one)."""
    flag = "" if Path(store) == default_store_path() else f" --store {shlex.quote(store)}"
    return [
        f"costspan report --by feature,customer_id --since 7d{flag}",
        f"costspan report --by route --every day{flag}",
        f"costspan alerts{flag}",
    ]
