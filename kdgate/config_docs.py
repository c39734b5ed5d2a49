"""`docs/configuration.md`, generated from the settings classes: every key with its environment variable (or
`key=value` override), type, default, range and description, one table per section.

The page is rendered from the classes themselves, so it cannot drift from them: `tests/kdgate/test_config_docs.py`
fails when the committed page differs from what this renders, and when a setting has no description.
"""

from __future__ import annotations

import types
import typing
from dataclasses import dataclass
from pathlib import Path

import annotated_types
from pydantic import BaseModel, SecretStr
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

ROOT = Path(__file__).resolve().parent.parent
REGENERATE = ".venv/bin/kdgate config docs --out docs/configuration.md"


@dataclass(frozen=True)
class Row:
    key: str  # dotted: routing.handoff.min_prob
    type: str
    default: str
    range: str
    description: str


@dataclass(frozen=True)
class Section:
    key: str  # dotted path of the section; "" for the top level
    title: str
    description: str
    rows: list[Row]


def sections(model: type[BaseModel], defaults: BaseModel | None = None, prefix: str = "") -> list[Section]:
    """The model's own scalar settings as one section, then one section per nested settings model, depth first.

    `defaults` is an instance whose values are shown as defaults (a field's default factory may fill a nested
    model with values of its own, such as the embedded demo's backends)."""
    rows, nested = [], []
    for name, field in model.model_fields.items():
        key = f"{prefix}{name}"
        sub = _settings_model(field.annotation)
        value = getattr(defaults, name, None) if defaults is not None else _default(field)
        if sub is not None:
            nested.append((key, sub, value if isinstance(value, BaseModel) else None, field))
            continue
        rows.append(Row(key, _type(field.annotation), _show(value, field), _range(field), _description(field)))
        entry = _list_entry_model(field.annotation)
        if entry is not None:  # a list of settings objects: its entries' keys get a section of their own
            nested.append((f"{key}[]", entry, None, field))
    title = prefix.rstrip(".") or "top level"
    found = [Section(prefix.rstrip("."), title, _doc(model), rows)] if rows else []
    for key, sub, value, field in nested:
        inner = sections(sub, value, f"{key}.")
        if inner and inner[0].key == key:
            extra = _nested_note(field, value)
            inner[0] = Section(key, key, " ".join(part for part in (inner[0].description, extra) if part),
                               inner[0].rows)
        found += inner
    return found


def render(env_prefix: str | None, model: type[BaseModel], defaults: BaseModel | None = None) -> str:
    """Markdown tables; the key column names the environment variable when `env_prefix` is given, else the
    `key=value` override."""
    out = []
    for section in sections(model, defaults):
        out.append(f"### `{section.key}`" if section.key else "### Top level")
        out.append("")
        if section.description:
            out += [section.description, ""]
        how = "environment variable" if env_prefix is not None else "override"
        out.append(f"| key | {how} | type | default | range | what it does |")
        out.append("|---|---|---|---|---|---|")
        for row in section.rows:
            if "[]" in row.key:
                setter = "(a key of each entry)"
            elif env_prefix is not None:
                setter = f"`{env_prefix}{row.key.upper().replace('.', '__')}`"
            else:
                setter = f"`{row.key}=…`"
            out.append(f"| `{row.key}` | {setter} | {row.type} | {row.default} | {row.range} | "
                       f"{_cell(row.description)} |")
        out.append("")
    return "\n".join(out)


def missing_descriptions(model: type[BaseModel], prefix: str = "") -> list[str]:
    """Keys declared without a description (every knob is documented where it is declared)."""
    found = []
    for name, field in model.model_fields.items():
        sub = _settings_model(field.annotation)
        if sub is not None:
            found += missing_descriptions(sub, f"{prefix}{name}.")
        elif not field.description:
            found.append(f"{prefix}{name}")
        entry = _list_entry_model(field.annotation)
        if entry is not None:
            found += missing_descriptions(entry, f"{prefix}{name}[].")
    return found


# ------------------------------------------------------------------------------------------------------ pieces


def _settings_model(annotation) -> type[BaseModel] | None:
    """The settings model a field holds (`X` or `X | None`), or None for a plain value."""
    candidates = typing.get_args(annotation) if _is_union(annotation) else (annotation,)
    models = [c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)]
    return models[0] if len(models) == 1 else None


def _list_entry_model(annotation) -> type[BaseModel] | None:
    if typing.get_origin(annotation) is list:
        (entry,) = typing.get_args(annotation)
        return entry if isinstance(entry, type) and issubclass(entry, BaseModel) else None
    return None


def _is_union(annotation) -> bool:
    return typing.get_origin(annotation) in (typing.Union, types.UnionType)


def _default(field: FieldInfo):
    if field.default_factory is not None:
        return field.default_factory()
    return field.default


def _type(annotation) -> str:
    if _is_union(annotation):
        parts = [a for a in typing.get_args(annotation) if a is not type(None)]
        nullable = len(parts) < len(typing.get_args(annotation))
        text = " or ".join(_type(part) for part in parts)
        return f"{text} or null" if nullable else text
    origin = typing.get_origin(annotation)
    if origin is typing.Literal:
        return " \\| ".join(f"`{choice}`" for choice in typing.get_args(annotation))
    if origin in (list, tuple):
        args = [a for a in typing.get_args(annotation) if a is not Ellipsis]
        inner = ", ".join(_type(a) for a in args)
        return f"list of {inner}" if origin is list else f"({inner})"
    names = {bool: "bool", int: "int", float: "float", str: "string", Path: "path", SecretStr: "secret string"}
    return names.get(annotation, getattr(annotation, "__name__", str(annotation)))


def _show(value, field: FieldInfo) -> str:
    if value is PydanticUndefined:
        return "required"
    if value is None:
        return "null"
    if isinstance(value, Path):
        return f"`{_relative(value)}`"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, (list, tuple)):
        return f"`{list(value)}`" if value else "`[]`"
    return f"`{value}`"


def _relative(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


def _range(field: FieldInfo) -> str:
    low = high = None
    for item in field.metadata:
        if isinstance(item, annotated_types.Ge):
            low = f"≥ {item.ge:,}" if isinstance(item.ge, int) else f"≥ {item.ge:g}"
        elif isinstance(item, annotated_types.Gt):
            low = f"> {item.gt:g}"
        elif isinstance(item, annotated_types.Le):
            high = f"≤ {item.le:,}" if isinstance(item.le, int) else f"≤ {item.le:g}"
        elif isinstance(item, annotated_types.Lt):
            high = f"< {item.lt:g}"
    if low and high and low.startswith("≥") and high.startswith("≤"):
        return f"{low[2:]} – {high[2:]}"
    return ", ".join(part for part in (low, high) if part)


def _description(field: FieldInfo) -> str:
    return field.description or ""


def _doc(model: type[BaseModel]) -> str:
    doc = model.__doc__ or ""
    if doc.startswith(f"{model.__name__}(") or "Usage docs:" in doc:  # pydantic's own, not ours
        return ""
    return " ".join(doc.split())


def _nested_note(field: FieldInfo, value: BaseModel | None) -> str:
    note = field.description or ""
    if value is None and field.annotation is not None and _is_union(field.annotation):
        return " ".join(part for part in (note, "Default: null.") if part)
    return note


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def page() -> str:
    """The whole of docs/configuration.md."""
    from distill.config import TrainConfig
    from distill.online.settings import TrainerSettings
    from gateway.settings import GatewaySettings

    gateway_prefix = GatewaySettings.model_config["env_prefix"]
    return "\n".join([
        "# Configuration",
        "",
        f"Generated from the settings classes; do not edit by hand. Regenerate with `{REGENERATE}`",
        "(a test fails when this page and the code disagree).",
        "",
        "## The gateway: `kdgate serve`",
        "",
        "Declared in `gateway/settings.py`. Each setting comes, highest first, from the command line (`--host`,",
        "`--port`, `--workers`), the environment (`KDGATE_` and the key, nested keys joined by `__`), the YAML file",
        "(`kdgate serve --config FILE` or `KDGATE_CONFIG=FILE`), then the default below. Unknown keys are refused.",
        "`null` in the environment is YAML's null (`KDGATE_TEACHER=null` serves the student alone). A string in the",
        "file means what it means in the environment: JSON for a list, a mapping or a section (`cors_allow_origins:",
        "'[\"https://a\"]'`), `null` for null; so the chart's `gateway.settings` read alike as variables and in each",
        "pair's file. With nothing set, the gateway serves the embedded demo models on 127.0.0.1:8000. `kdgate",
        "config show` prints the settings a `kdgate serve` with the same environment and file would use.",
        "",
        "A backend section left partial keeps the demo model (`KDGATE_STUDENT__THREADS=1` still serves the demo",
        "student); naming `kind: http` or another `model_dir` replaces it.",
        "",
        render(gateway_prefix, GatewaySettings),
        "## The trainer service: `kdgate trainer serve`",
        "",
        "Declared in `distill/online/settings.py`. From the environment (`KDGATE_TRAINER_` and the key, nested keys",
        "joined by `__`), the YAML file (`kdgate trainer serve --config FILE`), then the default below; unknown keys",
        "are refused. The job processes it starts read the same file and environment.",
        "",
        render(TrainerSettings.model_config["env_prefix"], TrainerSettings),
        "## The recipe: `kdgate distill train`",
        "",
        "Declared in `distill/config.py`. A YAML file (`--config FILE`, the committed ones are in `distill/configs/`)",
        "and `key=value` overrides after the command (`steps=400 loss.alpha=0.7`); unknown keys are refused, and the",
        "resolved config is saved in every checkpoint.",
        "",
        render(None, TrainConfig),
    ]).rstrip("\n") + "\n"
