"""Store benchmark: ingest, bytes on disk, and every report as a fresh process, each against a reference.

    .venv/bin/python benchmarks/store.py [--rows 1000000] [--before SRC] [--markdown docs/store.md]

Synthetic rows as the issue describes them: 30 days, 20 features, 50 routes, 5,000 customers, 15 models, 3
environments (60% prod), log-normal prompt sizes, and random span and trace ids (real ids are random; sequential
ones flatter any index keyed by them).

- **Ingest** goes through ``CostspanSpanExporter.write_rows`` (what ``export`` and ``costspan serve`` call) in
  batches of 512, the BatchSpanProcessor's export size, with compactions starting in child processes as in an
  app. Reference: the same rows' columns inserted with ``executemany`` into a SQLite table (WAL, as the store)
  with no index at all: the floor of any SQLite write of these rows. Both in CPU seconds of this process (the
  machine is shared, and the compactions run in other processes). After ingest, one compaction in this process
  catches up (timed on its own, wall).
- **Bytes a row:** the store file plus its segments, over the rows.
- **Queries:** each command runs as a fresh process (``python -m costspan.cli ...``), the way a user runs it, and
  so does its reference, a fresh ``python -c "import duckdb; ..."`` running the same aggregation over the same
  rows (this store's own segment files) and writing the result rows out, as the command prints them (DuckDB's
  own CSV writer: the cheapest way to put rows on stdout). Median of ``--repeat`` runs each, interleaved.
- ``--before SRC`` builds a second store with the costspan source tree ``SRC`` (e.g. a checkout of an older
  commit) from the same rows, and times its commands too, in the same run.
"""

from __future__ import annotations

import argparse
import dataclasses
import operator
import os
import random
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import NamedTuple

NS_PER_S = 1_000_000_000
DAYS = 30
FEATURES = [f"feature-{i}" for i in range(20)]
ROUTES = [f"/api/v1/route-{i}" for i in range(50)]
CUSTOMERS = [f"cust-{i:04d}" for i in range(5000)]
ENVIRONMENTS = ["prod", "prod", "prod", "staging", "dev"]
MODELS = [f"gpt-model-{i}" for i in range(15)]
BATCH = 512

# (costspan command, the DuckDB reference: the same aggregation over the same rows)
COMMANDS = [
    (
        "report --by feature --since 30d",
        "SELECT feature, count(*), sum(cost_usd), sum(input_tokens), sum(output_tokens), sum(cached_tokens), "
        "avg(latency_ms), quantile_disc(input_tokens, 0.95) FROM {rows} WHERE start_ns >= {since30} GROUP BY 1",
    ),
    (
        "report --by feature,customer_id --since 30d",
        "SELECT feature, customer_id, count(*), sum(cost_usd), sum(input_tokens), sum(output_tokens), "
        "sum(cached_tokens), avg(latency_ms), quantile_disc(input_tokens, 0.95) FROM {rows} "
        "WHERE start_ns >= {since30} GROUP BY 1, 2",
    ),
    (
        "report --by customer_id --since 30d --top 20",
        "SELECT customer_id, count(*), sum(cost_usd), quantile_disc(input_tokens, 0.95) FROM {rows} "
        "WHERE start_ns >= {since30} GROUP BY 1 ORDER BY 3 DESC LIMIT 20",
    ),
    (
        "report --by feature --since 7d --env prod",
        "SELECT feature, count(*), sum(cost_usd), quantile_disc(input_tokens, 0.95) FROM {rows} "
        "WHERE start_ns >= {since7} AND environment = 'prod' GROUP BY 1",
    ),
    (
        "alerts --by feature",
        "SELECT feature, start_ns // 3600000000000, count(*), sum(cost_usd) FROM {rows} "
        "WHERE start_ns >= {since8} GROUP BY 1, 2",
    ),
    (
        "dashboard --since 30d --out {out}",
        # The page's six questions: per feature (with p95), per feature and day, the totals, the top customers,
        # routes and models.
        "SELECT feature, count(*), sum(cost_usd), quantile_disc(input_tokens, 0.95) FROM {rows} "
        "WHERE start_ns >= {since30} GROUP BY 1; "
        "SELECT feature, start_ns // 86400000000000, count(*), sum(cost_usd) FROM {rows} "
        "WHERE start_ns >= {since30} GROUP BY 1, 2; "
        "SELECT count(*), sum(cost_usd), sum(input_tokens) FROM {rows} WHERE start_ns >= {since30}; "
        "SELECT customer_id, sum(cost_usd) FROM {rows} WHERE start_ns >= {since30} GROUP BY 1 ORDER BY 2 DESC "
        "LIMIT 10; "
        "SELECT route, sum(cost_usd) FROM {rows} WHERE start_ns >= {since30} GROUP BY 1 ORDER BY 2 DESC LIMIT 10; "
        "SELECT response_model, sum(cost_usd) FROM {rows} WHERE start_ns >= {since30} GROUP BY 1 ORDER BY 2 DESC "
        "LIMIT 10",
    ),
]


class Synthetic(NamedTuple):
    span_id: str
    trace_id: str
    parent_span_id: None
    start_ns: int
    feature: str
    route: str
    customer_id: str
    environment: str
    model: str
    input_tokens: int
    cached_tokens: int
    output_tokens: int
    latency_ms: float
    cost_usd: float


def synthetic_rows(count: int, end_ns: int, seed: int = 7) -> Iterator[Synthetic]:
    """One synthetic LLM call after another, in time order, ids random."""
    rng = random.Random(seed)
    span_ns = DAYS * 86400 * NS_PER_S
    start_ns = end_ns - span_ns
    for i in range(count):
        input_tokens = int(rng.lognormvariate(6.5, 1.0))
        output_tokens = int(rng.lognormvariate(5, 0.8))
        yield Synthetic(
            f"{rng.getrandbits(64):016x}",
            f"{rng.getrandbits(128):032x}",
            None,
            start_ns + i * (span_ns // count) + rng.randrange(1000),
            rng.choice(FEATURES),
            rng.choice(ROUTES),
            rng.choice(CUSTOMERS),
            rng.choice(ENVIRONMENTS),
            rng.choice(MODELS),
            input_tokens,
            rng.choice((0, 0, input_tokens // 2)),
            output_tokens,
            rng.uniform(200, 3000),
            (input_tokens * 0.15 + output_tokens * 0.6) / 1e6,
        )


@dataclass
class Built:
    ingest_rows_s: float
    floor_rows_s: float
    catch_up_s: float
    bytes_per_row: float
    export_spans_s: float


def export_rate(path: Path, count: int, end_ns: int) -> float:
    """Spans a CPU second through ``CostspanSpanExporter.export``: mapping finished SDK spans to rows, then
    ``write_rows``. The spans are made first, with the instrumentor's attribute names, and not timed."""
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from costspan import semconv
    from costspan.store.exporter import CostspanSpanExporter

    recorded = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(recorded))
    tracer = provider.get_tracer("bench")
    for call in synthetic_rows(count, end_ns, seed=11):
        attributes: dict[str, str | int | float] = {
            semconv.GEN_AI_OPERATION_NAME: "chat",
            semconv.GEN_AI_PROVIDER_NAME: "openai",
            semconv.GEN_AI_REQUEST_MODEL: call.model,
            semconv.GEN_AI_RESPONSE_MODEL: call.model,
            semconv.GEN_AI_USAGE_INPUT_TOKENS: call.input_tokens,
            semconv.GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS: call.cached_tokens,
            semconv.GEN_AI_USAGE_OUTPUT_TOKENS: call.output_tokens,
            semconv.GEN_AI_USAGE_COST_AMOUNT: call.cost_usd,
            semconv.COSTSPAN_PRICING_STATUS: "priced",
            "feature": call.feature,
            "route": call.route,
            "customer_id": call.customer_id,
            "environment": call.environment,
        }
        span = tracer.start_span(f"chat {call.model}", attributes=attributes, start_time=call.start_ns)
        span.end(end_time=call.start_ns + 10**9)
    spans = recorded.get_finished_spans()
    exporter = CostspanSpanExporter(path)
    spent = 0.0
    for first in range(0, len(spans), BATCH):
        started = time.process_time()
        exporter.export(spans[first : first + BATCH])
        spent += time.process_time() - started
    exporter.shutdown()
    return len(spans) / spent


def build(path: Path, rows: int, end_ns: int) -> Built:
    """Ingest ``rows`` through the exporter into ``path``; runs with whichever costspan is importable."""
    from costspan.store.exporter import CostspanSpanExporter

    try:
        from costspan.store.schema import CostRow
    except ImportError:  # a costspan before schema.py (--before)
        from costspan.store.sqlite import CostRow  # type: ignore[attr-defined]

    def cost_rows(chunk: Sequence[Synthetic]) -> list[CostRow]:
        return [
            CostRow(
                span_id=call.span_id,
                trace_id=call.trace_id,
                parent_span_id=call.parent_span_id,
                start_ns=call.start_ns,
                feature=call.feature,
                route=call.route,
                customer_id=call.customer_id,
                environment=call.environment,
                service="bench",
                provider="openai",
                operation="chat",
                request_model=call.model,
                response_model=call.model,
                input_tokens=call.input_tokens,
                cached_tokens=call.cached_tokens,
                cache_write_tokens=0,
                output_tokens=call.output_tokens,
                reasoning_tokens=0,
                latency_ms=call.latency_ms,
                cost_usd=call.cost_usd,
                pricing_status="priced",
                pricing_source="genai-prices",
                pricing_version="0.2.5",
            )
            for call in chunk
        ]

    exporter = CostspanSpanExporter(path)
    columns = [field.name for field in dataclasses.fields(CostRow)]
    values = operator.attrgetter(*columns)
    floor = sqlite3.connect(path.with_name("floor.sqlite3"), isolation_level=None)
    floor.execute("PRAGMA journal_mode = WAL")  # as the store, so that only the table's index differs
    floor.execute("PRAGMA synchronous = NORMAL")
    floor.execute(f"CREATE TABLE t ({', '.join(columns)})")
    generated = synthetic_rows(rows, end_ns)
    spent = floor_spent = 0.0
    done = 0
    while chunk := [row for _, row in zip(range(BATCH), generated, strict=False)]:
        batch = cost_rows(chunk)
        started = time.process_time()  # CPU time: the machine is shared, and compactions run beside
        exporter.write_rows(batch)
        spent += time.process_time() - started
        started = time.process_time()
        floor.execute("BEGIN")
        floor.executemany(f"INSERT INTO t VALUES ({', '.join('?' * len(columns))})", map(values, batch))
        floor.execute("COMMIT")
        floor_spent += time.process_time() - started
        done += len(chunk)
        if done % 500_000 < BATCH:
            print(f"  {done:,} rows", file=sys.stderr, flush=True)
    assert exporter.failed_spans == 0, exporter.failed_spans
    exporter.shutdown()
    floor.close()
    path.with_name("floor.sqlite3").unlink()
    started = time.perf_counter()
    try:
        from costspan.store.compaction import compact, compaction_lock
        from costspan.store.segments import segment_dir
        from costspan.store.sqlite import Store

        with compaction_lock(path, wait=True):  # a child compaction may still be running
            pass
        with Store(path) as store:
            compact(store)
            listed = [name for (name,) in store.query_landed("SELECT name FROM segments")]
        # Retired segments wait a minute for readers that listed them, then go: not counted.
        files = [path, Path(f"{path}-wal"), *(segment_dir(path) / name for name in listed)]
    except ImportError:  # a costspan before segments
        files = [path]
    catch_up = time.perf_counter() - started
    size = sum(f.stat().st_size for f in files if f.exists())
    exported = export_rate(path.with_name("export.sqlite3"), min(rows, 100_000), end_ns)
    return Built(rows / spent, rows / floor_spent, catch_up, size / rows, exported)


def fresh(argv: list[str], env: dict[str, str]) -> tuple[float, float]:
    """Wall and CPU seconds (user + system, all threads) of one process."""
    started = time.perf_counter()
    child = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode not in (0, 1):  # `costspan alerts` exits 1 when an alert fires
        raise subprocess.CalledProcessError(child.returncode, argv)
    return time.perf_counter() - started, usage.ru_utime + usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--before", type=Path, metavar="SRC", help="also time the costspan source tree SRC")
    parser.add_argument("--markdown", type=Path, help="write the table into this file between store-bench markers")
    parser.add_argument("--build-only", type=Path, help=argparse.SUPPRESS)  # internal: build with this PYTHONPATH
    parser.add_argument("--end-ns", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.build_only:
        one = build(args.build_only, args.rows, args.end_ns)
        print(one.ingest_rows_s, one.floor_rows_s, one.catch_up_s, one.bytes_per_row, one.export_spans_s)
        return
    end_ns = time.time_ns()
    here = Path(__file__).resolve()
    trees = {"after": here.parents[1] / "src"}
    if args.before:
        trees = {"before": args.before.resolve(), **trees}
    with tempfile.TemporaryDirectory() as tmp:
        stores: dict[str, Path] = {}
        built: dict[str, Built] = {}
        for name, src in trees.items():
            stores[name] = Path(tmp) / name / "bench.sqlite3"
            stores[name].parent.mkdir()
            print(f"building the {name} store ({args.rows:,} rows, {src})...", file=sys.stderr)
            env = {**os.environ, "PYTHONPATH": str(src)}
            out = subprocess.run(
                [
                    sys.executable,
                    str(here),
                    "--build-only",
                    str(stores[name]),
                    "--rows",
                    str(args.rows),
                    "--end-ns",
                    str(end_ns),
                ],
                env=env,
                check=True,
                stdout=subprocess.PIPE,
                text=True,
            ).stdout.split()
            built[name] = Built(*map(float, out))
        # The segments the store's catalog lists: the folder also holds retired ones for a minute after a merge.
        with sqlite3.connect(stores["after"]) as catalog:
            listed = [name for (name,) in catalog.execute("SELECT name FROM segments")]
        segment_files = [stores["after"].parent / "bench.sqlite3.segments" / name for name in listed]
        rows_sql = "read_parquet([" + ", ".join(f"'{f}'" for f in segment_files) + "])"
        day_ns = 86400 * NS_PER_S
        bounds = {"since30": end_ns - 30 * day_ns, "since7": end_ns - 7 * day_ns, "since8": end_ns - 8 * day_ns}
        timings: dict[str, dict[str, tuple[float, float]]] = {}
        for command, reference in COMMANDS:
            argv = command.format(out=Path(tmp) / "spend.html").split()
            runs: dict[str, list[tuple[float, float]]] = {name: [] for name in [*trees, "duckdb"]}
            sql = reference.format(rows=rows_sql, **bounds)
            for _ in range(args.repeat):
                for name, src in trees.items():
                    env = {**os.environ, "PYTHONPATH": str(src)}
                    runs[name].append(
                        fresh([sys.executable, "-m", "costspan.cli", *argv, "--store", str(stores[name])], env)
                    )
                runs["duckdb"].append(
                    fresh(
                        [
                            sys.executable,
                            "-c",
                            f"import duckdb\nfor q in {sql.split('; ')!r}: duckdb.sql(q).write_csv('/dev/stdout')",
                        ],
                        dict(os.environ),
                    )
                )
            label = command.split(" --out")[0]
            timings[label] = {
                name: (statistics.median(t[0] for t in times), statistics.median(t[1] for t in times))
                for name, times in runs.items()
            }
            print(
                label, {k: f"{w * 1000:.0f}/{c * 1000:.0f} ms" for k, (w, c) in timings[label].items()}, file=sys.stderr
            )
    table = render(args.rows, built, timings)
    print(table)
    if args.markdown:
        text = args.markdown.read_text()
        begin, end = "<!-- store-bench:begin -->", "<!-- store-bench:end -->"
        head, _, rest = text.partition(begin)
        _, _, tail = rest.partition(end)
        args.markdown.write_text(f"{head}{begin}\n{table}{end}{tail}")


def render(rows: int, built: dict[str, Built], timings: dict[str, dict[str, tuple[float, float]]]) -> str:
    names = list(built)
    lines = [
        f"Measured {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {rows:,} rows, {os.cpu_count()} cores "
        f"(`python benchmarks/store.py --rows {rows}{' --before SRC' if 'before' in built else ''}`).",
        "",
        "| | " + " | ".join(names) + " | reference | ratio (" + names[-1] + " / reference) |",
        "|---|" + "---:|" * (len(names) + 2),
    ]
    after = built[names[-1]]
    lines.append(
        "| ingest, rows/s (write_rows, random ids) | "
        + " | ".join(f"{built[n].ingest_rows_s:,.0f}" for n in names)
        + f" | {after.floor_rows_s:,.0f} (the same rows into SQLite, no index)"
        + f" | {after.ingest_rows_s / after.floor_rows_s:.2f} |"
    )
    lines.append(
        "| ingest, spans/s (export: SDK spans mapped to rows, then write_rows) | "
        + " | ".join(f"{built[n].export_spans_s:,.0f}" for n in names)
        + f" | {after.ingest_rows_s:,.0f} (write_rows alone) | {after.export_spans_s / after.ingest_rows_s:.2f} |"
    )
    lines.append(
        "| compaction catch-up after ingest, s | " + " | ".join(f"{built[n].catch_up_s:.1f}" for n in names) + " | | |"
    )
    lines.append(
        "| bytes on disk a row | " + " | ".join(f"{built[n].bytes_per_row:.0f}" for n in names) + " | 120 (target) | "
        f"{after.bytes_per_row / 120:.2f} |"
    )
    for command, times in timings.items():
        reference = times["duckdb"]
        lines.append(
            f"| `costspan {command}`, ms wall / CPU | "
            + " | ".join(f"{times[n][0] * 1000:,.0f} / {times[n][1] * 1000:,.0f}" for n in names)
            + f" | {reference[0] * 1000:,.0f} / {reference[1] * 1000:,.0f} (fresh DuckDB process)"
            + f" | {times[names[-1]][0] / reference[0]:.2f} / {times[names[-1]][1] / reference[1]:.2f} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
