"""A SQLite store's file, watched: deleted or replaced while the gateway holds it open, it is put back.

An open SQLite database outlives its name: connections keep writing into the unlinked inode, and every record and
acknowledged job written after a `rm` (233 in the probe) vanished at the next start with no warning. `FileWatch`
keeps one connection of its own open on the file it found (an anchor: the inode cannot disappear under it) and
notes the file's identity; `moved()` says when the path no longer names that file, and `restore()` copies the whole
database, through the anchor, back to the path with SQLite's online backup (the WAL's content included), after
moving the old name's stale `-wal`/`-shm` aside so that they cannot be replayed into the copy.
"""

from __future__ import annotations

import os
import sqlite3
import time
from pathlib import Path


class FileWatch:
    def __init__(self, path: Path):
        self.path = path
        self.anchor = _anchor(path)
        self.identity = _identity(path)

    def moved(self) -> bool:
        return _identity(self.path) != self.identity

    def restore(self) -> str:
        """Put the database back at its path; returns what was found there, for the log."""
        found = "deleted" if not self.path.exists() else "replaced by another file"
        copy = self.path.with_name(f"{self.path.name}.restoring")
        copy.unlink(missing_ok=True)
        target = sqlite3.connect(str(copy))  # read through the anchor while the old -wal/-shm still have their names
        try:
            self.anchor.backup(target)
        finally:
            target.close()
        self.anchor.close()
        if self.path.exists():
            self.path.rename(self.path.with_name(f"{self.path.name}.replaced-{int(time.time())}"))
        for suffix in ("-wal", "-shm", "-journal"):  # the old file's: never to be replayed into the copy
            self.path.with_name(self.path.name + suffix).unlink(missing_ok=True)
        copy.rename(self.path)
        self.anchor = _anchor(self.path)
        self.identity = _identity(self.path)
        return found

    def close(self) -> None:
        self.anchor.close()


def _anchor(path: Path) -> sqlite3.Connection:
    """A connection that has read the database once: SQLite opens a file's WAL and shared memory on first use, and
    they must be this file's, opened while its name still points at it."""
    connection = sqlite3.connect(str(path), check_same_thread=False)
    connection.execute("SELECT count(*) FROM sqlite_master").fetchall()
    return connection


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        status = os.stat(path)
    except FileNotFoundError:
        return None
    return status.st_dev, status.st_ino
