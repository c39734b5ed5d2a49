"""A SQLite store's file, watched: deleted or replaced while the gateway holds it open, it is put back.

An open SQLite database outlives its name: connections keep writing into the unlinked inode, and every record and
acknowledged job written after a `rm` (233 in the probe) vanished at the next start with no warning. `FileWatch`
keeps one connection of its own open on the file it found (an anchor: the inode cannot disappear under it) and
notes the file's identity; `moved()` says when the path no longer names that file, and `restore()` copies the whole
database, through the anchor, back to the path with SQLite's online backup (the WAL's content included), after
removing the old name's stale `-wal`/`-shm` so that they cannot be replayed into the copy. A path that names another
file is followed, never overwritten: the first store of the process to notice a deletion puts the file back, and the
others then find it there and switch to it.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from pathlib import Path

_RESTORING = threading.Lock()


class FileWatch:
    def __init__(self, path: Path):
        self.path = path
        self.anchor = _anchor(path)
        self.identity = _identity(path)

    def moved(self) -> bool:
        return _identity(self.path) != self.identity

    def restore(self) -> str:
        """Put the database back at its path if it was deleted; if another file is there (put back by another store
        of this process, or by an operator) follow it instead. Returns what happened, for the log."""
        with _RESTORING:  # two stores of one process noticing at once: one puts the file back, the other follows
            return self._restore()

    def _restore(self) -> str:
        if self.path.exists():
            self.anchor.close()
            self.anchor = _anchor(self.path)
            self.identity = _identity(self.path)
            return "replaced by another file, which is used from now on"
        copy = self.path.with_name(f"{self.path.name}.restoring")
        copy.unlink(missing_ok=True)
        target = sqlite3.connect(str(copy))  # read through the anchor while the old -wal/-shm still have their names
        try:
            self.anchor.backup(target)
        finally:
            target.close()
        self.anchor.close()
        for suffix in ("-wal", "-shm", "-journal"):  # the old file's: never to be replayed into the copy
            self.path.with_name(self.path.name + suffix).unlink(missing_ok=True)
        copy.rename(self.path)
        self.anchor = _anchor(self.path)
        self.identity = _identity(self.path)
        return "deleted, and put back with everything written to it"

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
