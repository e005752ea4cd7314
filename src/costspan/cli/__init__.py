"""The ``costspan`` command. Each subcommand lives in its own module with a ``register(subparsers)`` function."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from typing import Any

# Subcommand modules under costspan.cli, in the order `costspan --help` lists them.
SUBCOMMANDS: tuple[str, ...] = (
    "demo",
    "report",
    "alerts",
    "budgets",
    "reconcile",
    "reprice",
    "price",
    "dashboard",
    "serve",
    "sql",
)

DESCRIPTION = """\
See which feature, route, customer and environment spent your LLM money.

Start with `costspan demo`: it runs an instrumented app against a local OpenAI stand-in and prints the
spend report. Every subcommand has its own --help with examples.
"""


class _VersionAction(argparse.Action):
    """``--version``: reads the installed version only when asked (importlib.metadata costs every command ~60 ms)."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, nargs=0, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, *_: Any) -> None:
        import costspan

        print(f"costspan {costspan.__version__}")
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="costspan", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--version", action=_VersionAction, help="show program's version number and exit")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in SUBCOMMANDS:
        importlib.import_module(f"costspan.cli.{name}").register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `costspan report | head`
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    sys.exit(main())
