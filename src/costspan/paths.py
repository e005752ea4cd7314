"""Where costspan keeps its local files."""

from __future__ import annotations

import os
from pathlib import Path

COSTSPAN_STORE_PATH = "COSTSPAN_STORE_PATH"


def default_store_path() -> Path:
    """The embedded store: ``$COSTSPAN_STORE_PATH``, else ``$XDG_DATA_HOME/costspan/costspan.sqlite3``."""
    explicit = os.environ.get(COSTSPAN_STORE_PATH)
    if explicit:
        return Path(explicit).expanduser()
    data_home = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(data_home) / "costspan" / "costspan.sqlite3"
