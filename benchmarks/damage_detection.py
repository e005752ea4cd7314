"""How often damage is noticed: 4 KiB of garbage over one random page of a store, then writes and a report.

    .venv/bin/python benchmarks/damage_detection.py [--trials 40] [--seed 1]

SQLite notices a damaged page only when it reads it. A store of 10,240 rows (random span and trace ids, as real
spans have) is copied, one random page past the header is overwritten, and then:

- *closed*: the damage is done while no process has the store open; a new writer then writes 10 batches of 100;
- *open*: the damage is done under a writer that already wrote (its page cache is warm); it writes 10 more;
- *report*: after either, ``costspan report --by feature`` reads the store in a new connection.

Each line counts the trials in which SQLite reported the damage.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import random
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from costspan.cli import main as cli_main
from costspan.store.schema import CostRow
from costspan.store.sqlite import Store, StoreError

PAGE = 4096
HOUR_AGO_NS = time.time_ns() - 3600 * 10**9  # inside the report's default period


def random_rows(rng: random.Random, count: int, start_ns: int) -> Iterator[CostRow]:
    for i in range(count):
        yield CostRow(
            span_id=f"{rng.getrandbits(64):016x}",
            trace_id=f"{rng.getrandbits(128):032x}",
            parent_span_id=None,
            start_ns=HOUR_AGO_NS + start_ns + i,
            feature=rng.choice(("search", "chat", "summarize")),
            request_model="gpt-4o-mini",
            input_tokens=rng.randrange(10, 5000),
            cost_usd=0.001,
        )


def damage(path: Path, rng: random.Random) -> None:
    pages = path.stat().st_size // PAGE
    with path.open("r+b") as file:
        file.seek(rng.randrange(1, pages) * PAGE)
        file.write(rng.randbytes(PAGE))


def writes_notice(store: Store, rng: random.Random) -> bool:
    try:
        for batch in range(10):
            store.insert(list(random_rows(rng, 100, 10**7 + batch * 100)))
    except StoreError:
        return True
    return False


def report_notices(path: Path) -> bool:
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        return cli_main(["report", "--by", "feature", "--store", str(path)]) != 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, default=40)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    counts = {"closed: writes": 0, "closed: report": 0, "open: writes": 0, "open: report": 0}
    with tempfile.TemporaryDirectory() as directory:
        base = Path(directory) / "base.sqlite3"
        with Store(base) as store:
            for batch in range(20):
                store.insert(list(random_rows(rng, 512, batch * 1000)))
        for _ in range(args.trials):
            for case in ("closed", "open"):
                path = Path(directory) / f"{case}.sqlite3"
                shutil.copy(base, path)
                if case == "closed":
                    damage(path, rng)
                store = Store(path)
                if case == "open":
                    store.insert(list(random_rows(rng, 100, 10**6)))
                    store.query("PRAGMA wal_checkpoint(TRUNCATE)")  # every page in the file, none only in the -wal
                    damage(path, rng)
                counts[f"{case}: writes"] += writes_notice(store, rng)
                store.close()
                counts[f"{case}: report"] += report_notices(path)
                for leftover in Path(directory).glob(f"{case}.sqlite3*"):
                    os.remove(leftover)
        print(f"{base.stat().st_size // PAGE} pages, {args.trials} trials, seed {args.seed}")
    for name, count in counts.items():
        print(f"{name:>15}: noticed in {count}/{args.trials}")


if __name__ == "__main__":
    main()
