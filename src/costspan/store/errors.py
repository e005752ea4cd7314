"""What can go wrong with a store file, told with what to do; and what costspan reads of the file itself.

``explain`` turns a ``sqlite3.Error`` into a ``StoreError`` whose message gives advice: a lock held too long, a
full disk, a read-only filesystem (the store is intact), a damaged store (``StoreDamaged``), or a file that is no
costspan store. The file helpers read the header and the file's identity without SQLite, so that they work on a
file SQLite can no longer open.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path
from typing import Final, NamedTuple

SQLITE_MAGIC: Final = b"SQLite format 3\0"  # the first 16 bytes of every SQLite file
WRONG_PATH: Final = "Pass the right --store path (or set COSTSPAN_STORE_PATH)."

# SQLite's primary result codes (https://www.sqlite.org/rescode.html).
SQLITE_READONLY: Final = 8
SQLITE_IOERR: Final = 10
SQLITE_CORRUPT: Final = 11
SQLITE_FULL: Final = 13
SQLITE_CANTOPEN: Final = 14
SQLITE_NOTADB: Final = 26


class StoreError(Exception):
    """The store cannot be used; the message says why and what to do."""


class StoreDamaged(StoreError):
    """SQLite found the file damaged (SQLITE_CORRUPT or SQLITE_NOTADB) while reading or writing it.
    ``is_store``: its header still says a costspan store (another application's file is never moved aside)."""

    def __init__(self, message: str, *, is_store: bool) -> None:
        super().__init__(message)
        self.is_store = is_store


class FileIdentity(NamedTuple):
    """Which file a path names: a path deleted and created again, or replaced by a rename, names another."""

    device: int
    inode: int


def file_identity(path: Path) -> FileIdentity | None:
    """The identity of the file at ``path``; None when there is none. One ``stat``: cheap enough for every batch."""
    try:
        stat = path.stat()
    except OSError:
        return None
    return FileIdentity(stat.st_dev, stat.st_ino)


def header_user_version(path: Path) -> int | None:
    """The ``user_version`` a SQLite file's 100-byte header holds (bytes 60-63); None when the file is not SQLite.
    Read from the bytes, so that it works on a file SQLite itself can no longer open."""
    try:
        with path.open("rb") as file:
            header = file.read(100)
    except OSError:
        return None
    if len(header) < 100 or not header.startswith(SQLITE_MAGIC):
        return None
    return int.from_bytes(header[60:64], "big")


def is_store_header(path: Path, schema_version: int) -> bool:
    """Whether the header says a costspan store: costspan stamps its schema version in ``user_version``."""
    return 1 <= (header_user_version(path) or 0) <= schema_version


def refuse_foreign_file(path: Path) -> None:
    """Raise unless ``path`` is missing, empty or SQLite: costspan never writes into, nor calls damaged, a file
    that is not a store (``--store /etc/passwd``)."""
    try:
        empty = path.stat().st_size == 0
    except OSError:
        return  # missing (or unreadable): connecting says so
    if not empty and header_user_version(path) is None:
        raise StoreError(f"{path} is not a costspan store (it is not a SQLite file). {WRONG_PATH}")


def _filesystem(path: Path) -> os.statvfs_result | None:
    """The filesystem that holds, or would hold, ``path``."""
    for place in (path, *path.absolute().parents):
        try:
            return os.statvfs(place)
        except OSError:
            continue
    return None


def on_read_only_filesystem(path: Path) -> bool:
    stats = _filesystem(path)
    return stats is not None and bool(stats.f_flag & os.ST_RDONLY)


def _disk_full(path: Path) -> bool:
    stats = _filesystem(path)
    return stats is not None and stats.f_bavail == 0


def read_only_uri(path: Path) -> str | None:
    """The SQLite URI that reads a store in place on a read-only filesystem; None on a writable one.

    A store in WAL mode is read through its ``-shm`` file, which SQLite cannot create there. When no ``-wal`` is
    beside the file (a store whose writers all closed), every row is in the file itself and nothing can change it,
    which is what ``immutable=1`` promises SQLite: it then needs no ``-shm``. With a ``-wal``, which may hold
    committed rows, ``mode=ro`` reads it through an ``-shm`` that must already be there
    (https://www.sqlite.org/wal.html#readonly, https://www.sqlite.org/uri.html#uriimmutable).
    """
    if not on_read_only_filesystem(path):
        return None
    has_wal = Path(f"{path}-wal").exists()
    return f"{path.absolute().as_uri()}?mode=ro{'' if has_wal else '&immutable=1'}"


def explain_open(path: Path, error: OSError | sqlite3.Error) -> StoreError:
    """The ``StoreError`` for a store file (or its folder) that cannot be opened or created."""
    if on_read_only_filesystem(path):
        return StoreError(
            f"cannot create costspan store {path}: its filesystem is read-only ({error}). Point "
            "COSTSPAN_STORE_PATH (or --store) at a writable place."
        )
    if _disk_full(path):
        return StoreError(f"cannot create costspan store {path}: the disk is full ({error}). Free disk space.")
    return StoreError(f"cannot open costspan store {path}: {error}")


def read_only_store(path: Path, reason: str) -> StoreError:
    """The ``StoreError`` for an intact store that cannot be written."""
    return StoreError(
        f"costspan store {path} cannot be written ({reason}); the store is intact. Copy it (with any "
        f"`-wal` file and the `.segments` folder beside it) to a writable place and pass --store COPY (or set "
        "COSTSPAN_STORE_PATH), or make the filesystem writable. Reading in place on a read-only filesystem works; "
        "it needs the `-shm` file when a `-wal` file is there."
    )


def explain(path: Path, error: sqlite3.Error, schema_version: int) -> StoreError:
    """The ``StoreError`` for a SQLite error on the store at ``path``, saying what to do."""
    text = str(error)
    code = (getattr(error, "sqlite_errorcode", None) or 0) & 0xFF
    if isinstance(error, sqlite3.OperationalError) and "locked" in text:
        return StoreError(
            f"costspan store {path} stayed locked by another process ({text}). Retry; if it persists, look "
            "for a stuck process holding it (e.g. `fuser` on the file)."
        )
    if code == SQLITE_FULL or (code in (SQLITE_IOERR, SQLITE_CANTOPEN) and _disk_full(path)):
        return StoreError(
            f"costspan store {path}: the disk is full ({text}). Free disk space; nothing was written, and "
            "nothing stored before was lost."
        )
    if code == SQLITE_READONLY or (code in (SQLITE_IOERR, SQLITE_CANTOPEN) and on_read_only_filesystem(path)):
        return read_only_store(path, text)
    if code in (SQLITE_CORRUPT, SQLITE_NOTADB):
        if not is_store_header(path, schema_version):
            return StoreDamaged(
                f"{path} is a SQLite file that cannot be read ({text}) and not a costspan store. {WRONG_PATH}",
                is_store=False,
            )
        return StoreDamaged(
            f"costspan store {path} is damaged ({text}). Move it aside (`mv {path} {path}.damaged`): costspan "
            f"starts a new store there, and `sqlite3 {path}.damaged .recover` may save the old rows.",
            is_store=True,
        )
    return StoreError(f"costspan store {path}: {text}")
