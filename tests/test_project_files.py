"""What a newcomer meets first: the README's two commands, its size and links, CI's command, and the lock files."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DEMO = "bash scripts/setup-python && .venv/bin/costspan demo"
TEST = "bash scripts/test"


def test_readme_opens_with_the_two_commands_and_reads_in_five_minutes() -> None:
    text = README.read_text(encoding="utf-8")
    assert len(text.encode()) <= 8 * 1024
    first_block = text.split("```")[1]
    commands = [line for line in first_block.splitlines()[1:] if line and not line.startswith("#")]
    assert commands == [DEMO, TEST]


def test_ci_runs_the_readme_test_command() -> None:
    lines = [line for line in (ROOT / ".ci" / "run").read_text().splitlines() if line and not line.startswith("#")]
    assert lines[-1] == TEST


def test_every_readme_link_into_the_repository_exists() -> None:
    links = re.findall(r"\]\((?!https?://)([^)#]+)", README.read_text(encoding="utf-8"))
    assert links
    assert [link for link in links if not (ROOT / link).exists()] == []


def test_license_is_an_spdx_expression() -> None:
    # setuptools stops building a project.license table after 2027-02-18.
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["license"] == "Apache-2.0"


def test_every_lock_pins_each_package_with_hashes() -> None:
    dependencies = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    wanted = {re.split(r"[<>=!~; \[]", spec, maxsplit=1)[0].lower() for spec in dependencies}
    locks = sorted((ROOT / "requirements").glob("*.lock"))
    assert {lock.name for lock in locks} >= {"instruments.lock", "dev.lock"}
    for lock in locks:
        # One block per requirement: its line, then its hashes (and uv's "# via" notes).
        blocks = re.split(r"\n(?=[A-Za-z0-9])", lock.read_text().split("\n", 2)[2])
        unpinned = [block.split()[0] for block in blocks if "==" not in block or "--hash=sha256:" not in block]
        assert unpinned == [], f"{lock.name}: not pinned with hashes"
        pinned = {block.split("==")[0].lower() for block in blocks}
        if not lock.name.startswith("peer-"):  # a peer's venv (benchmarks) does not install costspan
            assert wanted <= pinned, f"{lock.name} lacks {sorted(wanted - pinned)}"
