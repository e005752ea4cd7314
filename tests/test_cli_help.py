"""Every subcommand's --help renders (argparse formats help text with %, so one stray % breaks it)."""

from __future__ import annotations

import pytest

from costspan.cli import SUBCOMMANDS, main


@pytest.mark.parametrize("command", SUBCOMMANDS)
def test_help_renders_with_examples(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main([command, "--help"])
    assert exited.value.code == 0
    assert f"usage: costspan {command}" in capsys.readouterr().out
