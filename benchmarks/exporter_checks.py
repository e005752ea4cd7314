"""What the exporter's file check costs: ``CostspanSpanExporter.write_rows`` against ``Store.insert`` alone.

    .venv/bin/python benchmarks/exporter_checks.py [--batches 300]

The exporter checks, after each batch, that the file it wrote is still the one at its path (one ``stat``). Both
sides write the same batches into stores of their own, alternating batch by batch so that both see the same
machine; the ratio of their medians is printed for batches of 1 span (``SimpleSpanProcessor``, the worst case) and
512 spans (the ``BatchSpanProcessor`` default).
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from costspan.store.errors import file_identity
from costspan.store.exporter import CostspanSpanExporter
from costspan.store.schema import CostRow
from costspan.store.sqlite import Store


def synthetic_rows(count: int) -> Iterator[CostRow]:
    for i in range(count):
        yield CostRow(
            span_id=f"{i:016x}",
            trace_id=f"{i:032x}",
            parent_span_id=None,
            start_ns=time.time_ns(),
            feature="search",
            operation="chat",
            request_model="gpt-4o-mini",
            input_tokens=1000,
            output_tokens=100,
            cost_usd=0.00021,
            pricing_status="priced",
        )


def compare(directory: Path, batch_size: int, batches: int) -> tuple[float, float]:
    """Median seconds per batch: (Store.insert, exporter.write_rows)."""
    rows = synthetic_rows(batch_size * batches)
    reference, checked = [], []
    exporter = CostspanSpanExporter(directory / f"exporter-{batch_size}.sqlite3")
    with Store(directory / f"reference-{batch_size}.sqlite3") as store:
        while batch := list(itertools.islice(rows, batch_size)):
            started = time.perf_counter()
            store.insert(batch)
            reference.append(time.perf_counter() - started)
            started = time.perf_counter()
            exporter.write_rows(batch)
            checked.append(time.perf_counter() - started)
    exporter.shutdown()
    assert exporter.failed_spans == 0
    return statistics.median(reference), statistics.median(checked)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batches", type=int, default=300)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "probe"
        path.touch()
        started = time.perf_counter()
        for _ in range(10_000):
            file_identity(path)
        print(f"file_identity (one stat): {(time.perf_counter() - started) / 10_000 * 1e6:.1f} µs")
        for batch_size in (1, 512):
            reference, checked = compare(Path(directory), batch_size, args.batches)
            print(
                f"batches of {batch_size:>3}: Store.insert {reference * 1e3:.3f} ms, exporter {checked * 1e3:.3f} ms "
                f"(ratio {checked / reference:.3f})"
            )


if __name__ == "__main__":
    main()
