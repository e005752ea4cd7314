"""``costspan demo``: run an instrumented app against a local OpenAI stand-in, then show where the money went."""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path
from typing import Any

from costspan.cli._store_cli import usd
from costspan.reconcile import DEFAULT_TOLERANCE, OK, PARTIAL, DayResult

EPILOG = """\
What it does:
  1. starts a stand-in for the OpenAI API on 127.0.0.1 (bundled; no key, no network, no cost),
  2. runs a small support app through the real openai SDK, instrumented by costspan: support chat
     (streaming, prompt caching), document summaries, semantic search and a nightly batch job, for six
     customers, with gpt-4o-mini, gpt-4.1, gpt-5 and text-embedding-3-small. Two weeks of traffic are
     replayed in a few seconds, ending with one customer's burst in the last hour,
  3. prints the spend report by feature and by customer, checks the store against the stand-in's own bill
     day by day (what `costspan reconcile` does with OpenAI's), and prints the commands to dig further.

Its spans go to a separate demo store, recreated on every run, so your real store is never touched.

With OPENAI_API_KEY set (and OPENAI_BASE_URL, if you use one) it calls the real API instead: about ten
small gpt-4o-mini and embedding calls, a fraction of a cent. --offline keeps it on the stand-in.
"""


def demo_store_path() -> Path:
    """The demo's own store, beside the real one but never it: ``$XDG_DATA_HOME/costspan/demo.sqlite3``."""
    data_home = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(data_home) / "costspan" / "demo.sqlite3"


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="see costspan work in seconds: a demo app against a local OpenAI stand-in",
        description="Run an instrumented demo app and print the spend report it produced.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--store",
        metavar="PATH",
        help=f"write here instead of the demo store {demo_store_path()} (an existing file is appended to)",
    )
    parser.add_argument(
        "--requests", type=int, default=400, metavar="N", help="customer requests to replay (default: %(default)s)"
    )
    parser.add_argument("--offline", action="store_true", help="use the local stand-in even if OPENAI_API_KEY is set")
    parser.set_defaults(run=run)


def _fresh(path: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)


def _reconciliation(days: list[DayResult]) -> str:
    """What `costspan reconcile` would say, against the stand-in's own bill instead of OpenAI's."""
    finished = [day for day in days if day.verdict != PARTIAL]
    billed, recorded = sum(d.provider.usd for d in days), sum(d.costspan.usd for d in days)
    lines = [
        "\nReconciled with the stand-in's own bill, as `costspan reconcile` does with OpenAI's Costs and Usage APIs:",
        f"  billed {usd(billed)}, recorded {usd(recorded)} over {len(days)} days (today's bill is partial)",
    ]
    gaps = [day for day in finished if day.verdict != OK]
    if not gaps:
        lines.append(f"  all {len(finished)} finished days agree within {DEFAULT_TOLERANCE:.0%}")
    lines.extend(f"  {day.day}: {day.verdict}: {day.cause}" for day in gaps)
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    try:
        from costspan import demo
    except ImportError as exc:  # openai is an optional dependency of costspan, and the demo drives the real SDK
        print(
            f"costspan demo: {exc.name or 'a package'} is not installed; the demo drives the real OpenAI SDK. "
            "Install it with: pip install 'costspan[instruments]'",
            file=sys.stderr,
        )
        return 2
    from costspan.cli import main as costspan_main

    if args.requests < 1:
        print("costspan demo: --requests must be at least 1", file=sys.stderr)
        return 2
    real_api = bool(os.environ.get("OPENAI_API_KEY")) and not args.offline
    store = Path(args.store).expanduser() if args.store else demo_store_path()
    if not args.store:
        _fresh(store)
    if real_api:
        target = os.environ.get("OPENAI_BASE_URL") or "the OpenAI API"
        print(f"costspan demo: OPENAI_API_KEY is set, so about ten small calls go to {target}", file=sys.stderr)
        print("  (a fraction of a cent; run with --offline to use the local stand-in instead)", file=sys.stderr)
    else:
        print(
            f"costspan demo: replaying two weeks of a support app's traffic ({args.requests} requests and a nightly "
            "job)\n  against a local OpenAI stand-in on 127.0.0.1: no API key, no network, no cost",
            file=sys.stderr,
        )
    try:
        # Reconciliation compares the whole store with this run's bill: only for the demo's own fresh store.
        result = demo.run(store, real_api=real_api, requests=args.requests, reconcile_bill=not args.store)
    except Exception as exc:  # e.g. the real API refused the key: say what happened, not a traceback
        print(f"costspan demo: the demo app failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    print(
        f"costspan demo: {result.stored_spans} priced LLM spans written to {store} in {result.seconds:.1f}s",
        file=sys.stderr,
    )
    if result.failed_spans or not result.stored_spans:
        print(f"costspan demo: {result.failed_spans} spans could not be stored; see the errors above", file=sys.stderr)
        return 1
    flag = ["--store", str(store)]
    for dimension in ("feature", "customer_id"):
        command = ["report", "--by", dimension, "--since", "30d", *flag]
        print(f"\n$ costspan {shlex.join(command)}", flush=True)
        status = costspan_main(command)
        if status:
            return status
    if result.reconciliation is not None:
        print(_reconciliation(result.reconciliation))
    quoted = shlex.quote(str(store))
    burst = "" if real_api else f"   # flags {demo.BURST_CUSTOMER}'s burst in the last full hour"
    print(
        "\nNext, try:\n"
        f"  costspan report --by feature,route --every day --since 7d --store {quoted}\n"
        f"  costspan alerts --by customer_id --store {quoted}{burst}\n"
        f"  costspan dashboard --out spend.html --store {quoted}   # then open spend.html in a browser\n"
        "  OPENAI_ADMIN_KEY=sk-admin-... costspan reconcile --since 14d   # your own store against your OpenAI bill\n"
        "Then instrument your own app: pip install costspan, and run it under\n"
        "  opentelemetry-instrument --traces_exporter costspan python app.py"
    )
    return 0
