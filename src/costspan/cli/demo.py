"""``costspan demo``: run an instrumented app against local OpenAI and Anthropic stand-ins, then show where the money
went."""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from costspan.money import usd_column
from costspan.store.paths import checkout_for_hints, demo_store_path

SDKS = {"openai": "openai>=1.40", "anthropic": "anthropic>=0.52"}  # what `pip install` needs for the demo

EPILOG = """\
What it does:
  1. starts stand-ins for the OpenAI and Anthropic APIs on 127.0.0.1 (bundled; no key, no network, no cost),
  2. runs a small support app through the real openai and anthropic SDKs, instrumented by costspan: support
     chat (streaming, prompt caching), document summaries, semantic search and a nightly batch job, for six
     customers, with gpt-4o-mini, gpt-4.1, gpt-5, text-embedding-3-small and claude-sonnet-4-5. Two weeks of
     traffic are replayed in a few seconds, ending with one customer's burst in the last hour,
  3. prints the spend report by feature, by customer and by provider and model, checks the store against
     each stand-in's own bill day by day (what `costspan reconcile` does with the providers' reports), and
     prints the commands to dig further.

Its spans go to a separate demo store, recreated on every run, so your real store is never touched.

It never calls the real API on its own, even with OPENAI_API_KEY set. With --real-api it does: about ten
small gpt-4o-mini and embedding calls to OPENAI_BASE_URL (default: the OpenAI API), a fraction of a cent.

examples:
  costspan demo                       the stand-in, two weeks of traffic, the report
  costspan demo --requests 2000       more traffic
  costspan demo --real-api            ten small real calls with your OPENAI_API_KEY
"""

if TYPE_CHECKING:
    from costspan.reports.reconcile import DayResult


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="see costspan work in seconds: a demo app against local OpenAI and Anthropic stand-ins",
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
        "--requests", type=int, default=400, metavar="N", help="customer HTTP requests to replay (default: %(default)s)"
    )
    target = parser.add_mutually_exclusive_group()
    target.add_argument(
        "--real-api",
        action="store_true",
        help="call the real OpenAI API with $OPENAI_API_KEY instead of the stand-in (a fraction of a cent)",
    )
    target.add_argument("--offline", action="store_true", help="use the local stand-in (the default)")
    parser.set_defaults(run=run)


def _fresh(path: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)


def _reconciliation(bills: dict[str, list[DayResult]]) -> str:
    """What `costspan reconcile` would say, against each stand-in's own bill instead of the provider's."""
    from costspan.reports.reconcile import DEFAULT_TOLERANCE, OK, PARTIAL

    lines = [
        "\nReconciled with each stand-in's own bill, as `costspan reconcile --provider ...` does with the real one:"
    ]
    for provider, days in bills.items():
        finished = [day for day in days if day.verdict != PARTIAL]
        billed, recorded = sum(d.provider.usd for d in days), sum(d.costspan.usd for d in days)
        shown = usd_column([billed, recorded])
        gaps = [day for day in finished if day.verdict != OK]
        agreed = f"all {len(finished)} finished days agree within {DEFAULT_TOLERANCE:.0%}" if not gaps else ""
        lines.append(
            f"  {provider}: billed {shown[0]}, recorded {shown[1]} over {len(days)} days; {agreed}".rstrip("; ")
        )
        lines.extend(f"    {day.day}: {day.verdict}: {day.cause}" for day in gaps)
    lines.append("  (today's bills are partial)")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    try:
        from costspan.demo import scenario
    except ImportError as exc:  # the SDKs are optional dependencies of costspan, and the demo drives both
        package = exc.name if exc.name in SDKS else "openai"
        print(
            f"costspan demo: {exc.name or 'a package'} is not installed; the demo drives the real OpenAI and "
            f"Anthropic SDKs. Install it with: pip install '{SDKS[package]}'",
            file=sys.stderr,
        )
        return 2
    import openai

    from costspan.cli import main as costspan_main

    if args.requests < 1:
        print("costspan demo: --requests must be at least 1", file=sys.stderr)
        return 2
    real_api = args.real_api
    if real_api and not os.environ.get("OPENAI_API_KEY"):
        print(
            "costspan demo: --real-api needs OPENAI_API_KEY set; run without --real-api to use the local stand-in",
            file=sys.stderr,
        )
        return 2
    store = Path(args.store).expanduser() if args.store else demo_store_path()
    if not args.store:
        _fresh(store)
    target = os.environ.get("OPENAI_BASE_URL") or "the OpenAI API"
    if real_api:
        print(f"costspan demo: --real-api: about ten small calls go to {target}", file=sys.stderr)
        print("  (a fraction of a cent; run without --real-api to use the local stand-in instead)", file=sys.stderr)
    else:
        print(
            f"costspan demo: replaying two weeks of a support app's traffic ({args.requests} customer requests, "
            "a burst\n  and a nightly job) against local OpenAI and Anthropic stand-ins on 127.0.0.1: no API key, "
            "no network, no cost",
            file=sys.stderr,
        )
        if os.environ.get("OPENAI_API_KEY"):
            print("  (OPENAI_API_KEY is set but not used: --real-api calls the real API with it)", file=sys.stderr)
    try:
        # Reconciliation compares the whole store with this run's bill: only for the demo's own fresh store.
        result = scenario.run(store, real_api=real_api, requests=args.requests, reconcile_bill=not args.store)
    except openai.APIConnectionError as exc:  # no network, a proxy, a wrong OPENAI_BASE_URL
        print(
            f"costspan demo: error: cannot reach {target} ({exc}). Check the network and OPENAI_BASE_URL, or run "
            "without --real-api to use the local stand-in.",
            file=sys.stderr,
        )
        return 1
    except Exception as exc:  # e.g. the real API refused the key: say what happened, not a traceback
        retry = " (run without --real-api to use the local stand-in)" if real_api else ""
        print(f"costspan demo: the demo app failed: {type(exc).__name__}: {exc}{retry}", file=sys.stderr)
        return 1
    print(
        f"costspan demo: {result.visits} app requests and jobs made {result.stored_spans} LLM calls, priced and "
        f"written to {store} in {result.seconds:.1f}s",
        file=sys.stderr,
    )
    if result.failed_spans or not result.stored_spans:
        print(f"costspan demo: {result.failed_spans} spans could not be stored; see the errors above", file=sys.stderr)
        return 1
    flag = ["--store", str(store)]
    dimensions = ("feature", "customer_id") if real_api else ("feature", "customer_id", "provider,request_model")
    for dimension in dimensions:
        command = ["report", "--by", dimension, "--since", "30d", *flag]
        print(f"\n$ costspan {shlex.join(command)}", flush=True)
        status = costspan_main(command)
        if status:
            return status
    if result.reconciliations is not None:
        print(_reconciliation(result.reconciliations))
    quoted = shlex.quote(str(store))
    checkout = checkout_for_hints()
    burst = "" if real_api else f"   # flags {scenario.BURST_CUSTOMER}'s burst in the last full hour"
    print(
        "\nNext, try:\n"
        f"  costspan report --by feature,route --every day --since 7d --store {quoted}\n"
        f"  costspan alerts --by customer_id --store {quoted}{burst}\n"
        f"  costspan dashboard --out spend.html --store {quoted}   # then open spend.html in a browser\n"
        "Then instrument your own app: install costspan into its environment from this checkout,\n"
        f"  pip install -e {checkout}\n"
        f"  (or build a wheel to copy: python -m pip wheel --no-deps -w dist {checkout})\n"
        "and run the app under\n"
        "  opentelemetry-instrument --traces_exporter costspan python app.py\n"
        "Its spans go to your own store, which `costspan report` reads without --store. Compare it with your\n"
        "OpenAI bill with an organization admin key: OPENAI_ADMIN_KEY=<your sk-admin-... key> costspan reconcile\n"
        "or your Anthropic bill with an Admin API key:\n"
        "  ANTHROPIC_ADMIN_KEY=<your sk-ant-admin... key> costspan reconcile --provider anthropic"
    )
    return 0
