"""A YAML settings file whose relative paths are read from the file's own folder, as whoever wrote the file meant them,
not from wherever the service happens to be started. A path given in the environment stays relative to the working
directory, like any command-line path.

A settings class opts a key in by naming it: `YamlFileSource(cls, file, relative_to_file=("auth.keys_file",))`.

A string in the file means what it means in the environment: JSON for a setting that takes a list, a mapping or a
section (`cors_allow_origins: '["https://a"]'` as KDGATE_CORS_ALLOW_ORIGINS='["https://a"]'), and the settings
class's `env_parse_none_str` ("null") for None. So a value written once in the environment's form (the chart's
`gateway.settings`, which with several pairs it writes into each pair's file) means the same in either.
"""

from __future__ import annotations

import json
import types
from collections.abc import Iterable
from pathlib import Path
from typing import Annotated, Any, Union, get_args, get_origin

from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, YamlConfigSettingsSource
from pydantic_settings.sources.utils import _annotation_is_complex, _union_is_complex


class YamlFileSource(YamlConfigSettingsSource):
    """pydantic-settings' YAML source, with the relative paths at the dotted keys `relative_to_file` resolved against
    the file's folder (symbolic links followed, as `kdgate serve --workers` passes the file on resolved)."""

    def __init__(self, settings_cls: type[BaseSettings], yaml_file: Path | str, relative_to_file: Iterable[str]):
        self.folder = Path(yaml_file).resolve().parent
        self.relative_to_file = tuple(relative_to_file)
        super().__init__(settings_cls, yaml_file=yaml_file)

    def __call__(self) -> dict[str, Any]:
        data = as_in_environment(super().__call__(), self.settings_cls, self.config.get("env_parse_none_str"))
        return from_folder(data, self.folder, self.relative_to_file)


def as_in_environment(data: dict, model: type[BaseModel], none_text: str | None) -> dict:
    """`data` with each string read as the environment reads it for its field: decoded as JSON where the field takes
    a list, a mapping or a section, None where it is `none_text`; sections are walked into, lists are not (a list in
    the environment is one JSON value too). Keys the model does not have are left for it to refuse."""
    read = {}
    for name, value in data.items():
        field = model.model_fields.get(name)
        if field is not None and isinstance(value, str):
            value = _as_in_environment(value, field, none_text)
        elif field is not None and isinstance(value, dict) and (section := _section(field.annotation)) is not None:
            value = as_in_environment(value, section, none_text)
        read[name] = value
    return read


def _as_in_environment(text: str, field: FieldInfo, none_text: str | None) -> Any:
    if none_text is not None and text == none_text:
        return None
    # the rules EnvSettingsSource decodes JSON by (a list, set, tuple, mapping, model or dataclass, alone or in a
    # union), called rather than copied, so that a file and the environment cannot disagree
    annotation, metadata = field.annotation, field.metadata
    if not (_annotation_is_complex(annotation, metadata) or _union_is_complex(annotation, metadata)):
        return text
    try:
        return json.loads(text)
    except ValueError:
        return text  # not JSON: the model refuses it, naming the field


def _members(annotation: Any) -> tuple[Any, ...]:
    """The types a field takes: a union's members, an Annotated's type."""
    origin = get_origin(annotation)
    if origin is Annotated:
        return _members(get_args(annotation)[0])
    if origin is Union or origin is types.UnionType:
        return tuple(member for arg in get_args(annotation) for member in _members(arg))
    return (annotation,)


def _section(annotation: Any) -> type[BaseModel] | None:
    return next((member for member in _members(annotation)
                 if isinstance(member, type) and issubclass(member, BaseModel)), None)


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
