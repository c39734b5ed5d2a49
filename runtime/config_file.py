"""A YAML settings file whose relative paths are read from the file's own folder, as whoever wrote the file meant them,
not from wherever the service happens to be started. A path given in the environment stays relative to the working
directory, like any command-line path.

A settings class opts a key in by naming it: `YamlFileSource(cls, file, relative_to_file=("auth.keys_file",))`.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from pydantic_settings import BaseSettings, YamlConfigSettingsSource


class YamlFileSource(YamlConfigSettingsSource):
    """pydantic-settings' YAML source, with the relative paths at the dotted keys `relative_to_file` resolved against
    the file's folder (symbolic links followed, as `kdgate serve --workers` passes the file on resolved)."""

    def __init__(self, settings_cls: type[BaseSettings], yaml_file: Path | str, relative_to_file: Iterable[str]):
        self.folder = Path(yaml_file).resolve().parent
        self.relative_to_file = tuple(relative_to_file)
        super().__init__(settings_cls, yaml_file=yaml_file)

    def __call__(self) -> dict[str, Any]:
        return from_folder(super().__call__(), self.folder, self.relative_to_file)


def from_folder(data: dict, folder: Path, keys: Iterable[str]) -> dict:
    """`data` with the relative path at each dotted key (`auth.keys_file`) joined to `folder`; others untouched."""
    for key in keys:
        *parents, name = key.split(".")
        section = data
        for parent in parents:
            section = section.get(parent) if isinstance(section, dict) else None
        value = section.get(name) if isinstance(section, dict) else None
        if isinstance(value, str | Path) and str(value) and not Path(value).is_absolute():
            section[name] = str(folder / value)
    return data
