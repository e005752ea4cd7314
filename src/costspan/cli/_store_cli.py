"""What the commands that read the store share: its options, time parsing, errors, and table/CSV/JSON output."""

from __future__ import annotations

import argparse
import csv
import json
import re
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TextIO

from costspan import environment_variables as env
from costspan.money import NONE_SHOWN, usd_column
from costspan.store.paths import COSTSPAN_STORE_PATH, default_store_path
from costspan.store.segments import LANDING_COMPACT_AT
from costspan.store.sqlite import Store, StoreError, dimension_names

EXIT_ERROR = 2

_DURATION = re.compile(r"^\s*(\d+)\s*([mhdw])\s*$")
_UNITS = {"m": "minutes", "h": "hours", "d": "days", "w": "weeks"}

TIME_HELP = "a duration back from now (30m, 24h, 7d, 2w) or a UTC date/time (2026-11-01, 2026-11-01T09:00)"


class UsageError(Exception):
    """Bad command-line input; the message says what to type instead."""


def parse_time(text: str, now: datetime) -> datetime:
    """``7d``-style durations count back from ``now``; ISO dates and times without a zone are UTC."""
    match = _DURATION.match(text)
    if match:
        try:
            return now - timedelta(**{_UNITS[match[2]]: int(match[1])})
        except OverflowError:
            raise UsageError(f"{text!r} reaches back before the year 1; give a shorter duration") from None
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise UsageError(f"cannot read time {text!r}: give {TIME_HELP}") from None
    # In UTC from here on: day and hour buckets, and the provider's days, are UTC.
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


# Said whenever a dimension is refused: a custom attribution key is only known once it is configured.
_KEYS_HINT = f"attribution keys of your own count once listed in {env.OTEL_COSTSPAN_ATTRIBUTION_KEYS}"


def parse_dimensions(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    allowed = dimension_names()
    unknown = [name for name in names if name not in allowed]
    if unknown or not names:
        raise UsageError(f"cannot group by {text!r}; choose from {', '.join(allowed)} (comma-separated; {_KEYS_HINT})")
    return names


def parse_where(pairs: Sequence[str]) -> dict[str, str]:
    where = {}
    allowed = dimension_names()
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or name.strip() not in allowed:
            raise UsageError(f"--where {pair!r}: use KEY=VALUE with KEY one of {', '.join(allowed)} ({_KEYS_HINT})")
        where[name.strip()] = value
    return where


def add_store_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--store",
        metavar="PATH",
        help=f"the store file (default: ${COSTSPAN_STORE_PATH}, else {default_store_path()})",
    )


def add_filter_options(parser: argparse.ArgumentParser, *, since: str | None = "7d") -> None:
    parser.add_argument(
        "--since", default=since, metavar="WHEN", help=f"start of the period: {TIME_HELP} (default: {since})"
    )
    parser.add_argument("--until", metavar="WHEN", help="end of the period, exclusive (default: now)")
    parser.add_argument("--env", metavar="NAME", help="only this environment (the `environment` baggage value)")
    parser.add_argument(
        "--where",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="only spans whose KEY equals VALUE, e.g. --where customer_id=acme (repeatable)",
    )
    add_store_option(parser)


@dataclass(frozen=True)
class Filters:
    since: datetime | None
    until: datetime | None
    env: str | None
    where: dict[str, str]


def read_filters(args: argparse.Namespace, now: datetime) -> Filters:
    since = parse_time(args.since, now) if args.since else None
    until = parse_time(args.until, now) if args.until else None
    if since is not None and since > now:
        raise UsageError(f"--since {args.since} is in the future: nothing was recorded after it yet")
    if since is not None and until is not None and until <= since:
        raise UsageError(f"--until {args.until} is not after --since {args.since}")
    return Filters(since=since, until=until, env=args.env, where=parse_where(args.where))


def positive_int(text: str) -> int:
    """An argparse type: a whole number of 1 or more."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: give 1 or more")
    return value


def positive_float(text: str) -> float:
    """An argparse type: a number above 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text!r}: give a number above 0")
    return value


def describe(filters: Filters) -> str:
    """The period and filters in words, for the line above a table."""
    start = f"{filters.since:%Y-%m-%d %H:%M}" if filters.since else "the first call"
    end = f"{filters.until:%Y-%m-%d %H:%M}" if filters.until else "now"
    parts = [f"{start} to {end} UTC"]
    if filters.env:
        parts.append(f"environment {filters.env}")
    parts.extend(f"{key}={value}" for key, value in filters.where.items())
    return ", ".join(parts)


def open_store(args: argparse.Namespace) -> Store:
    """The store named by --store (or the default), which must exist: reading never creates one. Rows waiting in
    its landing table past the compaction threshold (an app that has not compacted yet, a store from an older
    costspan) are compacted first, with progress on stderr: read as they are, every query would pay for them."""
    store = Store(args.store, create=False)
    try:
        total = store.landed()
        if total >= LANDING_COMPACT_AT:
            from costspan.store.compaction import compact  # DuckDB's writing side: only when needed

            progress = Progress(f"compacting {total:,} new rows of {store.path}", total)
            compact(store, progress.show)
            progress.done()
    except (StoreError, OSError) as error:  # e.g. a read-only copy: the query still reads every row
        print(f"costspan: note: could not compact {store.path} now ({error}); reading it as it is.", file=sys.stderr)
    return store


class Progress:
    """A progress line on stderr for long work: rewritten in place on a terminal, one line a second otherwise."""

    def __init__(self, what: str, total: int) -> None:
        self.what = what
        self.total = total
        self.tty = sys.stderr.isatty()
        self.last = 0.0
        self.shown = False

    def show(self, done: int, detail: str = "") -> None:
        now = time.monotonic()
        if now - self.last < (0.1 if self.tty else 1.0):
            return
        self.last = now
        line = f"{self.what}: {done:,}/{self.total:,}{detail}"
        print(f"\r{line}" if self.tty else line, end="" if self.tty else "\n", file=sys.stderr, flush=True)
        self.shown = True

    def done(self) -> None:
        if self.shown and self.tty:
            print(file=sys.stderr)


def guarded(run: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Turn store and usage errors into one clear line on stderr and exit status 2."""

    def wrapper(args: argparse.Namespace) -> int:
        try:
            return run(args)
        except (StoreError, UsageError) as error:
            print(f"costspan {args.command}: error: {error}", file=sys.stderr)
            return EXIT_ERROR

    return wrapper


# --- output ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Column:
    key: str
    title: str
    show: Callable[[Any], str] = str
    numeric: bool = False
    # Formats the whole column at once, when its cells must agree (money: one number of decimals per column).
    show_all: Callable[[Sequence[Any]], list[str]] | None = None

    def cells(self, rows: Sequence[Mapping[str, Any]]) -> list[str]:
        values = [row.get(self.key) for row in rows]
        return self.show_all(values) if self.show_all else [self.show(value) for value in values]


def money_column(key: str, title: str) -> Column:
    return Column(key, title, numeric=True, show_all=usd_column)


def count(value: int | None) -> str:
    return NONE_SHOWN if value is None else f"{value:,}"


def percent(value: float | None) -> str:
    return NONE_SHOWN if value is None else f"{value * 100:.1f}%"


def millis(value: float | None) -> str:
    return NONE_SHOWN if value is None else f"{value:,.0f} ms"


def zoned(moment: datetime) -> str:
    """A time for people, with its zone, so that nobody reads a Berlin midnight as a UTC one:
    ``2026-11-02 00:00 UTC``, ``2026-11-02 00:00 Europe/Berlin``."""
    zone = getattr(moment.tzinfo, "key", None) or moment.tzname() or "local time"
    return f"{moment:%Y-%m-%d %H:%M} {zone}"


def bucket_label(every: str) -> Callable[[Any], str]:
    """Report buckets, in a column headed ``(UTC)``: a day is its date, an hour its start."""
    pattern = "%Y-%m-%d" if every == "day" else "%Y-%m-%d %H:%M"
    return lambda moment: moment.strftime(pattern)


def text(value: Any) -> str:
    if value is None:
        return "(none)"
    if isinstance(value, datetime):
        return zoned(value)
    return str(value)


def render_table(columns: Sequence[Column], rows: Sequence[Mapping[str, Any]]) -> str:
    """An aligned plain-text table: text left-aligned, numbers right-aligned."""
    by_column = [column.cells(rows) for column in columns]
    widths = [max(len(column.title), *map(len, cells)) for column, cells in zip(columns, by_column, strict=True)]
    # One format string for every line: a report may have a hundred thousand of them.
    template = "  ".join(
        f"{{:{'>' if column.numeric else '<'}{width}}}" for column, width in zip(columns, widths, strict=True)
    )
    lines = [
        template.format(*(column.title for column in columns)),
        template.format(*("-" * width for width in widths)),
        *(template.format(*cells) for cells in zip(*by_column, strict=True)),
    ]
    return "\n".join(line.rstrip() for line in lines)


def machine_value(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat().replace("+00:00", "Z")
    return value


def write_csv(keys: Sequence[str], rows: Sequence[Mapping[str, Any]], out: TextIO) -> None:
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(keys)
    for row in rows:
        writer.writerow(["" if row.get(k) is None else machine_value(row.get(k)) for k in keys])


def write_json(keys: Sequence[str], rows: Sequence[Mapping[str, Any]], out: TextIO) -> None:
    json.dump([{k: machine_value(row.get(k)) for k in keys} for row in rows], out, indent=2)
    out.write("\n")
