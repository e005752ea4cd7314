"""Fresh-process time of `costspan` commands, as a ratio to a bare ``python -c pass`` (issue #17).

    PYTHONPATH=$PWD/src .venv/bin/python benchmarks/cli_startup.py [--rounds 21]

Each round starts every command once, back to back with the bare interpreter (interleaved, so that a machine
slowing down mid-run moves both); the report is the median over the rounds of the command's CPU seconds (user +
system, the operating system's accounting of the finished child) and of its ratio to the bare interpreter's
CPU in the same round. The report command reads a small store made here. Run it with bytecode caches written
(no PYTHONDONTWRITEBYTECODE), as an installed package has them.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

from costspan.store.schema import CostRow
from costspan.store.sqlite import Store, to_ns

BARE = [sys.executable, "-c", "pass"]


def commands(store: Path) -> dict[str, list[str]]:
    costspan = [sys.executable, "-m", "costspan.cli"]
    return {
        "costspan --version": [*costspan, "--version"],
        "costspan report --help": [*costspan, "report", "--help"],
        "costspan report (12-row store)": [*costspan, "report", "--store", str(store)],
    }


def small_store(path: Path) -> None:
    an_hour_ago = to_ns(datetime.now(UTC) - timedelta(hours=1))
    with Store(path) as store:
        store.insert(
            [
                CostRow(
                    span_id=f"{i:016x}",
                    trace_id=f"{i:032x}",
                    parent_span_id=None,
                    start_ns=an_hour_ago + i,
                    feature=f"feature-{i % 3}",
                    request_model="gpt-4o-mini",
                    input_tokens=1000,
                    output_tokens=100,
                    cost_usd=0.25 * i,
                    pricing_status="priced",
                )
                for i in range(1, 13)
            ]
        )


def cpu_seconds(command: list[str]) -> float:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, env=os.environ)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=21)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        store = Path(tmp) / "small.sqlite3"
        small_store(store)
        timed = commands(store)
        for command in [BARE, *timed.values()]:  # warm the page cache and the bytecode caches
            cpu_seconds(command)
        seconds: dict[str, list[float]] = {name: [] for name in timed}
        ratios: dict[str, list[float]] = {name: [] for name in timed}
        bare: list[float] = []
        for _ in range(args.rounds):
            for name, command in timed.items():
                reference = cpu_seconds(BARE)
                spent = cpu_seconds(command)
                bare.append(reference)
                seconds[name].append(spent)
                ratios[name].append(spent / reference)
    print(f"python -c pass: {statistics.median(bare) * 1000:.0f} ms CPU (median of {len(bare)})")
    for name in timed:
        ms = statistics.median(seconds[name]) * 1000
        print(f"{name:32} {ms:6.0f} ms CPU  {statistics.median(ratios[name]):5.1f}x python -c pass")


if __name__ == "__main__":
    main()
