"""``costspan alerts``: groups whose last full hour of spend jumped above their trailing 7-day hourly average.

The rule, for each group of ``--by`` (e.g. each feature)::

    last   = spend in the last full UTC hour [H - 1h, H), where H is the start of the current hour
    avg    = spend in the 168 hours before that, [H - 169h, H - 1h), divided by 168 (empty hours count as 0)
    fires when last > factor * avg and last >= min_spend

A group with no spend in the baseline has avg = 0, so any new spend of at least ``--min-spend`` fires.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from costspan.cli._store_cli import (
    Column,
    add_store_option,
    guarded,
    money_column,
    open_store,
    parse_dimensions,
    parse_time,
    parse_where,
    positive_float,
    render_table,
    text,
    write_json,
)

BASELINE_HOURS = 168
EXIT_FIRED = 1

EXAMPLES = """\
rule (per group):
  last  = spend in the last full UTC hour
  avg   = spend in the 168 hours before it / 168 (hours without spend count as $0)
  fires when last > FACTOR x avg and last >= MIN_SPEND

exit status: 0 nothing fired, 1 at least one alert fired, 2 error (e.g. no store). Made for cron:
  5 * * * *  costspan alerts --by feature --env prod || notify-team

examples:
  costspan alerts                               features at more than 3x their usual hourly spend
  costspan alerts --by customer_id --factor 5 --min-spend 1
  costspan alerts --by feature,route --format json
"""


@dataclass(frozen=True)
class Alert:
    group: dict[str, Any]
    hour: datetime
    spend_usd: float
    baseline_hourly_usd: float

    @property
    def ratio(self) -> float | None:
        return self.spend_usd / self.baseline_hourly_usd if self.baseline_hourly_usd else None


def last_full_hour(now: datetime) -> datetime:
    return now.astimezone(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=1)


def find_alerts(
    hourly: Sequence[dict[str, Any]], dimensions: Sequence[str], hour: datetime, factor: float, min_spend: float
) -> list[Alert]:
    """Apply the rule to ``Store.spend_by(dimensions, every="hour")`` rows covering the baseline and ``hour``."""
    baseline_start = hour - timedelta(hours=BASELINE_HOURS)
    last: dict[tuple[Any, ...], float] = {}
    baseline: dict[tuple[Any, ...], float] = {}
    for row in hourly:
        key = tuple(row[d] for d in dimensions)
        spend = row["spend_usd"] or 0.0
        if row["bucket"] == hour:
            last[key] = last.get(key, 0.0) + spend
        elif baseline_start <= row["bucket"] < hour:
            baseline[key] = baseline.get(key, 0.0) + spend
    alerts = []
    for key, spend in last.items():
        average = baseline.get(key, 0.0) / BASELINE_HOURS
        if spend > factor * average and spend >= min_spend and spend > 0:
            alerts.append(Alert(dict(zip(dimensions, key, strict=True)), hour, spend, average))
    alerts.sort(key=lambda a: -a.spend_usd)
    return alerts


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "alerts",
        help="spend anomalies: last hour above K x the 7-day hourly average",
        description="Report groups whose spend in the last full hour exceeds FACTOR times their average hourly "
        "spend over the 7 days before it. Exits 1 when any alert fires, so cron or CI can page.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--by", default="feature", metavar="DIM[,DIM...]", help="groups to watch (default: feature)")
    parser.add_argument(
        "--factor", type=positive_float, default=3.0, help="how many times the average fires (default: 3)"
    )
    parser.add_argument(
        "--min-spend",
        type=float,
        default=0.0,
        metavar="USD",
        help="ignore hours that spent less than this, to keep tiny groups quiet (default: 0)",
    )
    parser.add_argument("--env", metavar="NAME", help="only this environment")
    parser.add_argument("--where", action="append", default=[], metavar="KEY=VALUE", help="only matching spans")
    parser.add_argument(
        "--at", metavar="WHEN", help="evaluate as if it were this UTC time (default: now), e.g. to replay a day"
    )
    parser.add_argument("--format", choices=("table", "json"), default="table", help="output format")
    add_store_option(parser)
    parser.set_defaults(run=guarded(run))


def run(args: argparse.Namespace) -> int:
    dimensions = parse_dimensions(args.by)
    now = datetime.now(UTC)
    hour = last_full_hour(parse_time(args.at, now) if args.at else now)
    with open_store(args) as store:
        hourly = store.spend_by(
            dimensions,
            since=hour - timedelta(hours=BASELINE_HOURS),
            until=hour + timedelta(hours=1),
            env=args.env,
            where=parse_where(args.where),
            every="hour",
            percentiles=False,
        )
    alerts = find_alerts(hourly, dimensions, hour, args.factor, args.min_spend)
    rows = [
        {
            **a.group,
            "hour": a.hour,
            "spend_usd": a.spend_usd,
            "baseline_hourly_usd": a.baseline_hourly_usd,
            "ratio": a.ratio,
        }
        for a in alerts
    ]
    if args.format == "json":
        write_json([*dimensions, "hour", "spend_usd", "baseline_hourly_usd", "ratio"], rows, sys.stdout)
    elif not alerts:
        print(
            f"No alerts: no {args.by} spent more than {args.factor:g}x its 7-day hourly average in "
            f"{hour:%Y-%m-%d %H:00}-{hour + timedelta(hours=1):%H:00} UTC."
        )
    else:
        columns = [
            *(Column(d, d, text) for d in dimensions),
            money_column("spend_usd", "last hour"),
            money_column("baseline_hourly_usd", "7d hourly avg"),
            Column("ratio", "x avg", lambda r: "new" if r is None else f"{r:.1f}x", numeric=True),
        ]
        print(
            f"{len(alerts)} alert(s) for {hour:%Y-%m-%d %H:00}-{hour + timedelta(hours=1):%H:00} UTC "
            f"(factor {args.factor:g}):"
        )
        print(render_table(columns, rows))
    return EXIT_FIRED if alerts else 0
