"""Every subcommand's --help renders (argparse formats help text with %, so one stray % breaks it)."""

from __future__ import annotations

import importlib.metadata

import pytest

from costspan.cli import SUBCOMMANDS, main


@pytest.mark.parametrize("command", SUBCOMMANDS)
def test_help_renders_with_examples(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main([command, "--help"])
    assert exited.value.code == 0
    out = capsys.readouterr().out
    assert f"usage: costspan {command}" in out
    # A `%%` escape in text argparse does not %-expand (a description, an epilog) shows up doubled.
    assert "%%" not in out


def test_top_level_help_shows_percent_signs_once(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--help"])
    assert exited.value.code == 0
    out = capsys.readouterr().out
    assert "%%" not in out and "(80% / 100% marks)" in out


def test_version_comes_from_the_package_metadata(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0
    assert capsys.readouterr().out == f"costspan {importlib.metadata.version('costspan')}\n"
