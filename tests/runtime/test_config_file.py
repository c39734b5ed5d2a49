"""Relative paths of a YAML settings file are read from its folder, for the keys that opt in, and only those; its
strings are read as the environment reads them."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel

from runtime.config_file import as_in_environment, from_folder


class Item(BaseModel):
    tags: list[str] = []


class Section(BaseModel):
    names: list[str] = []
    limit: int | None = 1
    items: list[Item] = []


class Settings(BaseModel):
    section: Section | None = None
    label: str = ""
    mapping: dict[str, str] = {}


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


def test_strings_are_decoded_by_their_fields_type_and_nothing_else_is_touched():
    data = {"section": {"names": '["a", "b"]', "limit": "null", "items": [{"tags": '["x"]'}]}, "label": '["c"]',
            "mapping": '{"k": "v"}', "unknown": '["d"]'}
    assert as_in_environment(data, Settings, "null") == {
        "section": {"names": ["a", "b"], "limit": None, "items": [{"tags": '["x"]'}]},  # a list is one value
        "label": '["c"]', "mapping": {"k": "v"}, "unknown": '["d"]'}
    assert data["section"]["names"] == '["a", "b"]'  # the file's own data is left as it was
    assert as_in_environment({"section": {"names": "a, b"}}, Settings, "null") == {"section": {"names": "a, b"}}
    # without a none text, "null" is JSON's null for a section, and a string for a string
    assert as_in_environment({"section": "null", "label": "null"}, Settings, None) == {"section": None,
                                                                                        "label": "null"}
