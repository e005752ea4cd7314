"""`costspan` starts quickly (issue #17): parsing a command line, and a report from the store, import no price
data, no OpenTelemetry and no budgets. Checked in a fresh process, where nothing else has imported them yet."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

from costspan.store.sqlite import Store
from tests.test_store import T0, row

ENV = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}

# What the CLI must not load before a command needs it: each costs tens of milliseconds to import.
HEAVY = ("genai_prices", "opentelemetry", "costspan.budgets", "costspan.pricing", "costspan.instrumentation")

EVERY_HELP = """
import contextlib, io
for command in costspan.cli.SUBCOMMANDS:
    with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):
        costspan.cli.main([command, "--help"])
"""


def heavy_modules_after(code: str) -> list[str]:
    """The HEAVY modules loaded once a fresh interpreter has imported costspan.cli and run ``code``."""
    script = f"""
import json, sys
import costspan.cli
{code}
heavy = {HEAVY!r}
print(json.dumps(sorted(m for m in sys.modules if any(m == h or m.startswith(h + ".") for h in heavy))))
"""
    done = subprocess.run([sys.executable, "-c", script], env=ENV, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    loaded: list[str] = json.loads(done.stdout.splitlines()[-1])
    return loaded


def test_building_the_parser_imports_nothing_heavy() -> None:
    assert heavy_modules_after("costspan.cli.build_parser()") == []


def test_every_subcommands_help_imports_nothing_heavy() -> None:
    assert heavy_modules_after(EVERY_HELP) == []


def test_a_report_from_the_store_imports_nothing_heavy(tmp_path: Path) -> None:
    path = tmp_path / "small.sqlite3"
    with Store(path) as store:
        store.insert([row(1, feature="search", cost_usd=1.25), row(2, feature="chat", cost_usd=None)])
    report = f"costspan.cli.main(['report', '--store', {str(path)!r}, '--since', {T0.isoformat()!r}])"
    assert heavy_modules_after(report) == []


def test_version_in_a_fresh_process_is_the_installed_one() -> None:
    command = [sys.executable, "-m", "costspan.cli", "--version"]
    done = subprocess.run(command, env=ENV, capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stdout) == (0, f"costspan {version('costspan')}\n")
