"""``costspan serve``: receive OTLP/HTTP traces and write the LLM spans into the store."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from typing import Any

from costspan.cli._store_cli import add_store_option
from costspan.store.paths import default_store_path

EPILOG = """\
Point any OpenTelemetry app at it with the standard OTLP exporter:

  costspan serve &
  OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:4318 opentelemetry-instrument python app.py
  costspan report --by feature

It accepts POST /v1/traces as protobuf or JSON, gzip or not, keeps the LLM spans (those with
gen_ai.operation.name), ignores the rest, and answers /v1/metrics and /v1/logs with 200 so an app that
exports those too sees no errors. A span delivered twice is stored once. Later, swap this for a real
OpenTelemetry Collector without touching the app (see collector-config/).
"""


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "serve",
        help="receive OTLP/HTTP traces and write them into the store",
        description="Run an OTLP/HTTP receiver on this machine that writes LLM spans into the costspan store.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    parser.add_argument("--port", type=int, default=4318, help="port to listen on (default: %(default)s, OTLP/HTTP)")
    add_store_option(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from costspan.store.exporter import CostspanSpanExporter
    from costspan.store.receiver import OTLPReceiver
    from costspan.store.sqlite import Store, StoreError

    store = args.store or default_store_path()
    try:
        Store(store).close()  # a damaged or unwritable store is an error now, not a 503 per batch later
    except StoreError as exc:
        print(f"costspan serve: error: {exc}", file=sys.stderr)
        return 2
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s costspan serve: %(message)s", datefmt="%H:%M:%S %Z"))
    logging.getLogger("costspan").addHandler(handler)
    logging.getLogger("costspan").setLevel(logging.INFO)
    exporter = CostspanSpanExporter(store)
    try:
        receiver = OTLPReceiver(exporter, host=args.host, port=args.port)
    except OSError as exc:
        print(
            f"costspan serve: cannot listen on {args.host}:{args.port}: {exc.strerror or exc}. "
            "Is another collector running there? Pick another port with --port.",
            file=sys.stderr,
        )
        return 2
    print(
        f"costspan serve: receiving OTLP/HTTP on {receiver.endpoint}/v1/traces, storing LLM spans in {store}\n"
        f"  point apps at it: OTEL_EXPORTER_OTLP_ENDPOINT={receiver.endpoint}\n"
        "  stop with Ctrl-C",
        file=sys.stderr,
        flush=True,
    )
    signal.signal(signal.SIGTERM, _stop)
    try:
        receiver.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        receiver.server.server_close()
        exporter.shutdown()
        counts = receiver.counts
        print(
            f"costspan serve: stopped; {counts.stored} LLM span(s) stored, {counts.duplicates} duplicate(s), "
            f"{counts.ignored} other span(s) ignored, {counts.rejected} rejected, "
            f"{counts.failed_batches} batch(es) the store could not write",
            file=sys.stderr,
        )
    return 0


def _stop(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # SIGTERM (a service manager, a test) stops as cleanly as Ctrl-C
