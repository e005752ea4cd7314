"""Where costspan keeps its local files."""

from __future__ import annotations

import os
import shlex
from pathlib import Path

COSTSPAN_STORE_PATH = "COSTSPAN_STORE_PATH"


def _data_dir() -> Path:
    data_home = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(data_home) / "costspan"


def default_store_path() -> Path:
    """The embedded store: ``$COSTSPAN_STORE_PATH``, else ``$XDG_DATA_HOME/costspan/costspan.sqlite3``."""
    explicit = os.environ.get(COSTSPAN_STORE_PATH)
    if explicit:
        return Path(explicit).expanduser()
    return _data_dir() / "costspan.sqlite3"


def demo_store_path() -> Path:
    """The demo's own store, beside the real one but never it: ``$XDG_DATA_HOME/costspan/demo.sqlite3``."""
    return _data_dir() / "demo.sqlite3"


def source_checkout() -> Path | None:
    """The source checkout costspan runs from (an editable install), if any: costspan is not on PyPI yet, so
    install hints name this directory."""
    root = Path(__file__).resolve().parents[3]  # src/costspan/store/paths.py -> the checkout
    return root if (root / "pyproject.toml").is_file() else None


def checkout_for_hints() -> str:
    """The checkout to name in an install command, shell-quoted; a placeholder when not run from one."""
    checkout = source_checkout()
    return shlex.quote(str(checkout)) if checkout else "/path/to/costspan-checkout"
