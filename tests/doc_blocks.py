"""The fenced blocks of README.md, docs/*.md and deploy/README.md, and the `<!-- doc-test: ... -->` line that
classifies each (the marker syntax and what each kind means: tests/test_docs_run.py); and the commands written inline
in their prose."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHELL = {"bash", "sh", "shell", "console"}
FENCE = re.compile(r"^(?P<indent>\s*)(?P<fence>```+|~~~+)(?P<language>[^`\s]*)\s*$")
MARKER = re.compile(r"^\s*<!--\s*doc-test:(?P<body>.*?)-->\s*$")
LITERAL = r'"(?:[^"\\]|\\.)*"'


def pages(root: Path = ROOT) -> list[Path]:
    return [root / "README.md", *sorted((root / "docs").glob("*.md")), root / "deploy" / "README.md"]


@dataclass(frozen=True)
class Marker:
    kind: str  # run | serve | no
    reason: str = ""
    small: tuple[tuple[str, str], ...] = ()

    @property
    def runs(self) -> bool:
        return self.kind in ("run", "serve")


def parse_marker(body: str) -> Marker:
    """The text between `doc-test:` and `-->`; ValueError says what is wrong."""
    body = body.strip()
    if body.startswith("no"):
        reason = body[2:].lstrip(" ,").strip()
        if not body[2:].startswith(",") or not reason:
            raise ValueError(f"`doc-test: {body}`: write `doc-test: no, <why it is not run>`")
        return Marker("no", reason=reason)
    kind, _, rest = body.partition(";")
    kind = kind.strip()
    if kind not in ("run", "serve"):
        raise ValueError(f"`doc-test: {body}`: the kind is run, serve or `no, <reason>`")
    rest = rest.strip()
    if not rest:
        return Marker(kind)
    found = re.fullmatch(rf"small:\s*((?:{LITERAL}\s*->\s*{LITERAL}\s*,?\s*)+)", rest)
    if not found:
        raise ValueError(f'`doc-test: {body}`: after `;` comes `small: "old" -> "new", ...`')
    pairs = re.findall(rf"({LITERAL})\s*->\s*({LITERAL})", found.group(1))
    return Marker(kind, small=tuple((json.loads(old), json.loads(new)) for old, new in pairs))


@dataclass(frozen=True)
class Block:
    page: str  # relative to the repository root, as the failures name it
    line: int  # the fence's line, 1-based
    language: str
    text: str
    marker: Marker | None
    marker_error: str | None = None

    @property
    def where(self) -> str:
        first = next((line for line in self.text.splitlines() if line.strip()), "")
        return f"{self.page}:{self.line}: {first.strip()[:100]}"

    @property
    def is_shell(self) -> bool:
        return self.language in SHELL

    def shrunk(self) -> str:
        """The text with the marker's small substitutions applied; each must match (a stale one is an error)."""
        text = self.text
        for old, new in self.marker.small if self.marker else ():
            if old not in text:
                raise ValueError(f"{self.where}: the small substitution {old!r} matches nothing in the block")
            text = text.replace(old, new)
        return text


def blocks(page: Path, root: Path = ROOT) -> list[Block]:
    found = []
    lines = page.read_text().splitlines()
    index = 0
    while index < len(lines):
        opening = FENCE.match(lines[index])
        if not opening:
            index += 1
            continue
        end = index + 1
        while end < len(lines) and not lines[end].strip().startswith(opening["fence"]):
            end += 1
        indent = len(opening["indent"])
        text = "".join(f"{line[min(indent, len(line) - len(line.lstrip())):]}\n" for line in lines[index + 1:end])
        if opening["language"].lower() == "console":
            text = console_commands(text)
        marker = error = None
        comment = MARKER.match(lines[index - 1]) if index > 0 else None
        if comment:
            try:
                marker = parse_marker(comment["body"])
            except ValueError as problem:
                error = str(problem)
        found.append(Block(str(page.relative_to(root)), index + 1, opening["language"].lower(), text, marker, error))
        index = end + 1
    return found


def console_commands(text: str) -> str:
    """A console block's commands: its `$ ` lines (and their continuation lines); the rest is output."""
    kept, continued = [], False
    for line in text.splitlines(keepends=True):
        if line.startswith("$ ") or continued:
            kept.append(line.removeprefix("$ ") if not continued else line)
            continued = line.rstrip("\n").endswith("\\")
    return "".join(kept)


def orphan_markers(page: Path, root: Path = ROOT) -> list[str]:
    """Marker lines not right before a fence: they classify nothing."""
    lines = page.read_text().splitlines()
    return [f"{page.relative_to(root)}:{number}: a doc-test marker not right before a ``` fence"
            for number, line in enumerate(lines, 1)
            if MARKER.match(line) and not (number < len(lines) and FENCE.match(lines[number]))]



INLINE = re.compile(r"`((?:[A-Z_][A-Z0-9_]*=\S+ )*(?:kdgate |\.venv/bin/|\./dev |python[\d.]* )[^`\n]*)`")


def inline_commands(page: Path, root: Path = ROOT) -> list[Block]:
    """The commands written inline in the prose (`kdgate ...`, `.venv/bin/...`, `./dev ...`, `python ...`), each as a
    block of its own: outside the fenced blocks, where a command is often named without its required options."""
    found = []
    inside = False
    for number, line in enumerate(page.read_text().splitlines(), 1):
        if FENCE.match(line):
            inside = not inside
            continue
        if not inside:
            found += [Block(str(page.relative_to(root)), number, "bash", f"{span}\n", None)
                      for span in INLINE.findall(line)]
    return found
