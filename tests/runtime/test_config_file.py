"""Relative paths of a YAML settings file are read from its folder, for the keys that opt in, and only those."""

from __future__ import annotations

from pathlib import Path

from runtime.config_file import from_folder


def test_only_relative_paths_at_the_named_keys_move_to_the_folder():
    data = {"auth": {"keys_file": "keys.yaml", "other": "x.yaml"}, "top": "../up.yaml", "absolute": "/etc/a.yaml"}
    moved = from_folder(data, Path("/deploy"), ["auth.keys_file", "top", "absolute", "missing.key", "auth.none"])
    assert moved == {"auth": {"keys_file": "/deploy/keys.yaml", "other": "x.yaml"}, "top": "/deploy/../up.yaml",
                     "absolute": "/etc/a.yaml"}


def test_null_empty_and_absent_sections_are_left_alone():
    assert from_folder({"auth": None}, Path("/deploy"), ["auth.keys_file"]) == {"auth": None}
    assert from_folder({"auth": {"keys_file": None}}, Path("/d"), ["auth.keys_file"]) == {"auth": {"keys_file": None}}
    assert from_folder({"auth": {"keys_file": ""}}, Path("/d"), ["auth.keys_file"]) == {"auth": {"keys_file": ""}}
    assert from_folder({}, Path("/deploy"), ["auth.keys_file"]) == {}
