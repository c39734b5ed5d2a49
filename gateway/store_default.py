"""The record store a gateway uses when `shadow.store_url` is not set: this deployment's own SQLite file.

One shared default file used to trap the next gateway started from the same folder: after `./dev serve`, the store's
active student version named the demo's local model folder, and a gateway with HTTP backends read it and exited.
The default is now derived from what the gateway serves: the embedded demo gets `var/kdgate-demo.sqlite3` (the
trainer's default too, so `kdgate trainer serve` beside `./dev serve` shares it); any other student gets
`var/kdgate-<8 hex digits of the student backend>.sqlite3`, the same file at every restart of the same configuration
and another file for another student server. A deployment that must keep its store when its student moves sets
`shadow.store_url` (production does: PostgreSQL).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from runtime.settings import BackendSettings

DEMO_STORE_URL = "sqlite:///var/kdgate-demo.sqlite3"
BEFORE = Path("var/kdgate-shadow.sqlite3")  # the one shared default, until per-deployment defaults


def default_store_url(student: BackendSettings, serves_demo: bool) -> str:
    if serves_demo:
        return DEMO_STORE_URL
    where = student.base_url if student.kind == "http" else str(Path(student.model_dir).resolve())
    digest = hashlib.sha256(f"{student.kind} {where} {student.model}".encode()).hexdigest()[:8]
    return f"sqlite:///var/kdgate-{digest}.sqlite3"


def former_default_note(store_url: str | None, student: BackendSettings, serves_demo: bool) -> str | None:
    """A line for the banner when this gateway's store is the derived default and a store at the former shared
    default is left behind in this folder."""
    if store_url != default_store_url(student, serves_demo) or not BEFORE.is_file():
        return None
    return (f"note: {BEFORE} (the shared default store before each deployment had its own) is no longer used by "
            f"default; to keep its records and student versions, set shadow.store_url: sqlite:///{BEFORE}")
