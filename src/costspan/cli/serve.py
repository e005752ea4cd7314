"""``costspan serve``: receive OTLP/HTTP traces and write the LLM spans into the store."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import stat
import sys
from pathlib import Path
from typing import Any

from costspan import environment_variables as env
from costspan.cli._store_cli import add_store_option
from costspan.store.paths import default_store_path

COSTSPAN_SERVE_TOKEN = "COSTSPAN_SERVE_TOKEN"  # never a flag: a command line is visible to every user (ps)

EPILOG = """\
Point any OpenTelemetry app at it with the standard OTLP exporter:

  costspan serve &
  OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:4318 opentelemetry-instrument python app.py
  costspan report --by feature

Receive from other machines (a token is then required; put TLS in front, see docs/store.md):

  (umask 077; python -c 'import secrets; print(secrets.token_urlsafe(32))' > ~/.costspan-token)
  costspan serve --host 0.0.0.0 --token-file ~/.costspan-token
  # each app sends it (%20 is the space after Bearer):
  OTEL_EXPORTER_OTLP_HEADERS="authorization=Bearer%20$(cat ~/.costspan-token)" \\
  OTEL_EXPORTER_OTLP_ENDPOINT=http://costspan-host:4318 opentelemetry-instrument python app.py

It accepts POST /v1/traces as protobuf or JSON, gzip or not, keeps the LLM spans (those with
gen_ai.operation.name), ignores the rest, and answers /v1/metrics and /v1/logs with 200 so an app that
exports those too sees no errors. A span delivered twice is stored once.

Every LLM span is priced here, from its model and token counts, with the packaged prices under
--pricing-file; the cost the span claims is kept in claimed_cost_usd and never counted as spend.
Spans with negative, non-finite or impossible counts or costs are refused (partial_success says why).
Later, swap this for a real OpenTelemetry Collector without touching the app (see collector-config/).
"""


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "serve",
        help="receive OTLP/HTTP traces and write them into the store",
        description="Run an OTLP/HTTP receiver on this machine that prices LLM spans and writes them into the "
        "costspan store.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,  # `--token SECRET` must not pass for --token-file: a secret has no flag
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    parser.add_argument("--port", type=int, default=4318, help="port to listen on (default: %(default)s, OTLP/HTTP)")
    parser.add_argument(
        "--token-file",
        metavar="PATH",
        help=f"file holding the bearer token clients must send (default: ${COSTSPAN_SERVE_TOKEN}); "
        "required unless --host is a loopback address",
    )
    parser.add_argument(
        "--pricing-file", metavar="PATH", help=f"pricing overrides (default: ${env.OTEL_COSTSPAN_PRICING_FILE})"
    )
    add_store_option(parser)
    parser.set_defaults(run=run)


class _SetupError(Exception):
    """A reason not to start, for the user."""


def read_token(token_file: str | None) -> str | None:
    """The token from ``token_file``, else from ``$COSTSPAN_SERVE_TOKEN``; None when neither is set."""
    if token_file is None:
        return os.environ.get(COSTSPAN_SERVE_TOKEN, "").strip() or None
    path = Path(token_file).expanduser()
    try:
        token = path.read_text(encoding="utf-8").strip()
        mode = path.stat().st_mode
    except (OSError, UnicodeDecodeError) as exc:
        raise _SetupError(f"cannot read the token file {path}: {exc}") from None
    if not token:
        raise _SetupError(f"the token file {path} is empty")
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        print(f"costspan serve: warning: {path} is readable by other users; `chmod 600 {path}`", file=sys.stderr)
    return token


def _pricer(pricing_file: str | None) -> Any:
    """The receiver's Pricer; a bad pricing file stops the start rather than price with other rates for weeks."""
    from costspan.pricing.overrides import PricingFileError, load_pricing_file, price_layers
    from costspan.pricing.pricer import Pricer

    if pricing_file:
        try:
            load_pricing_file(pricing_file)
        except PricingFileError as exc:
            raise _SetupError(str(exc)) from None
    return Pricer(price_layers(pricing_file))


def run(args: argparse.Namespace) -> int:
    from costspan.store.exporter import CostspanSpanExporter
    from costspan.store.receiver import OTLPReceiver, TokenError
    from costspan.store.sqlite import Store, StoreError

    store = args.store or default_store_path()
    try:
        Store(store).close()  # a damaged or unwritable store is an error now, not a 503 per batch later
        token = read_token(args.token_file)
        pricer = _pricer(args.pricing_file or os.environ.get(env.OTEL_COSTSPAN_PRICING_FILE))
    except (StoreError, _SetupError) as exc:
        print(f"costspan serve: error: {exc}", file=sys.stderr)
        return 2
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s costspan serve: %(message)s", datefmt="%H:%M:%S %Z"))
    logging.getLogger("costspan").addHandler(handler)
    logging.getLogger("costspan").setLevel(logging.INFO)
    exporter = CostspanSpanExporter(store)
    try:
        receiver = OTLPReceiver(exporter, host=args.host, port=args.port, token=token, pricer=pricer)
    except TokenError as exc:
        print(f"costspan serve: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(
            f"costspan serve: cannot listen on {args.host}:{args.port}: {exc.strerror or exc}. "
            "Is another collector running there? Pick another port with --port.",
            file=sys.stderr,
        )
        return 2
    print(
        f"costspan serve: receiving OTLP/HTTP on {receiver.endpoint}/v1/traces, storing LLM spans in {store}\n"
        f"  point apps at it: OTEL_EXPORTER_OTLP_ENDPOINT={receiver.endpoint}"
        + ("\n  with the token: OTEL_EXPORTER_OTLP_HEADERS=authorization=Bearer%20<token>" if token else "")
        + "\n  stop with Ctrl-C",
        file=sys.stderr,
        flush=True,
    )
    signal.signal(signal.SIGTERM, _stop)
    try:
        receiver.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        receiver.close()  # writes what it accepted before the store is closed
        exporter.shutdown()
        counts = receiver.counts
        print(
            f"costspan serve: stopped; {counts.stored} LLM span(s) stored, {counts.duplicates} duplicate(s), "
            f"{counts.ignored} other span(s) ignored, {counts.rejected} rejected, "
            f"{counts.disputed} claiming another cost, {counts.unauthorized} unauthorized request(s), "
            f"{receiver.server.busy} connection(s) refused busy, {receiver.throttled} request(s) throttled, "
            f"{counts.failed_batches} batch(es) the store could not write",
            file=sys.stderr,
        )
    return 0


def _stop(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # SIGTERM (a service manager, a test) stops as cleanly as Ctrl-C
