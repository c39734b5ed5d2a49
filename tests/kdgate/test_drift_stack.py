"""`kdgate demo drift` starts from an empty folder each run, and never empties one it did not make."""

from __future__ import annotations

import pytest

from kdgate.drift.stack import MARKER, fresh_folder


def test_a_previous_runs_store_does_not_leak_into_the_next(tmp_path):
    folder = fresh_folder(tmp_path / "stack")
    (folder / "store.sqlite3").write_text("the last run's jobs")
    again = fresh_folder(tmp_path / "stack")
    assert sorted(path.name for path in again.iterdir()) == [MARKER]


def test_a_folder_it_did_not_make_is_left_alone(tmp_path):
    folder = tmp_path / "stack"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    with pytest.raises(SystemExit, match="was not made by `kdgate demo drift`"):
        fresh_folder(folder)
    assert (folder / "notes.txt").read_text() == "mine"
