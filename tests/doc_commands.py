"""Static checks of the docs' commands, run or not: a small shell reader (enough of bash's word splitting for the
docs), and the files, `kdgate` commands and options, `./dev` verbs and script options each command names, checked
against the repository (the rules: tests/test_docs_run.py)."""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from tests.doc_blocks import ROOT, Block

OUTPUT_OPTIONS = {"--out", "--output", "--json-out", "-o"}


@dataclass
class Command:
    words: list[str] = field(default_factory=list)
    redirects: list[tuple[str, str]] = field(default_factory=list)  # (operator, target)
    background: bool = False


def split_commands(text: str) -> list[Command]:
    """Simple commands with quotes removed: split at newlines, `;`, `&&`, `||`, `|` and `&`; `#` comments, line
    continuations and redirections (`>`, `>>`, `<`, `2>&1`) understood. No substitutions, subshells or heredocs."""
    commands: list[Command] = []
    current = Command()
    word: str | None = None
    redirect: str | None = None

    def end_word() -> None:
        nonlocal word, redirect
        if word is None:
            return
        if redirect:
            current.redirects.append((redirect, word))
            redirect = None
        else:
            current.words.append(word)
        word = None

    def end_command(background: bool = False) -> None:
        nonlocal current
        end_word()
        if current.words or current.redirects:
            current.background = background
            commands.append(current)
        current = Command()

    index = 0
    while index < len(text):
        char, pair = text[index], text[index:index + 2]
        if char == "\\":
            if pair != "\\\n":
                word = (word or "") + text[index + 1:index + 2]
            index += 2
        elif char == "'":
            close = text.find("'", index + 1)
            if close < 0:
                raise ValueError("an unclosed ' quote")
            word, index = (word or "") + text[index + 1:close], close + 1
        elif char == '"':
            index += 1
            buffer = ""
            while index < len(text) and text[index] != '"':
                if text[index] == "\\" and text[index + 1:index + 2] in ('"', "\\", "$", "`", "\n"):
                    buffer += "" if text[index + 1] == "\n" else text[index + 1]
                    index += 2
                else:
                    buffer += text[index]
                    index += 1
            if index >= len(text):
                raise ValueError('an unclosed " quote')
            word, index = (word or "") + buffer, index + 1
        elif char == "#" and word is None:
            newline = text.find("\n", index)
            index = len(text) if newline < 0 else newline
        elif char in " \t":
            end_word()
            index += 1
        elif pair in ("&&", "||"):
            end_command()
            index += 2
        elif pair in (">>", ">&", "&>") or char in "<>":
            if word is not None and word.isdigit():
                word = None  # a file descriptor: `2>&1`
            end_word()
            redirect = pair if pair in (">>", ">&", "&>") else char
            index += len(redirect)
        elif char == "&":
            end_command(background=True)
            index += 1
        elif char in ";|\n":
            end_command()
            index += 1
        else:
            word = (word or "") + char
            index += 1
    end_command()
    return commands


ASSIGNMENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*=")
PREFIXES = {"time", "exec", "nohup", "sudo"}


def program(words: list[str]) -> tuple[list[str], list[str]]:
    """(environment assignments, the command's words) with `time`, `exec`, `nohup`, `sudo` dropped."""
    index = 0
    while index < len(words) and (ASSIGNMENT.match(words[index]) or words[index] in PREFIXES):
        index += 1
    env = [word for word in words[:index] if ASSIGNMENT.match(word)]
    return env, words[index:]


def expand(word: str, variables: dict[str, str]) -> str:
    return re.sub(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?",
                  lambda found: variables.get(found[1], found[0]), word)


def is_server(argv: list[str]) -> bool:
    """A command that starts the gateway: `./dev serve`, `kdgate serve`."""
    name = Path(argv[0]).name if argv else ""
    return (name == "dev" and argv[1:2] == ["serve"]) or (name == "kdgate" and argv[1:2] == ["serve"])


class Repository:
    """What the commands are checked against: the files, the `kdgate` command tree, the `./dev` verbs."""

    def __init__(self, root: Path = ROOT):
        self.root = root
        tracked = subprocess.run(["git", "ls-files", "-z"], cwd=root, capture_output=True, text=True, check=True)
        self.files = {name for name in tracked.stdout.split("\0") if name and (root / name).exists()}
        self.top = {name.split("/")[0] for name in self.files}
        self.directories = {str(Path(name).parent) for name in self.files} | {
            "/".join(name.split("/")[:depth]) for name in self.files for depth in range(1, name.count("/") + 1)}
        self.dev_verbs = set(re.findall(r"^\s{4}([a-z][a-z-]*)\)", (root / "dev").read_text(), flags=re.MULTILINE))
        self._kdgate = None
        self._options: dict[str, set[str] | None] = {}

    def exists(self, path: str) -> bool:
        path = path.rstrip("/")
        return path in self.files or path in self.directories

    def is_repository_path(self, piece: str) -> bool:
        piece = piece.removeprefix("./")
        if not piece or any(mark in piece for mark in "$*?<>") or piece.startswith("-"):
            return False
        return piece.split("/")[0] in self.top and ("/" in piece or piece in self.files)

    @property
    def kdgate(self):
        if self._kdgate is None:
            import typer

            from kdgate.cli import app
            self._kdgate = typer.main.get_group(app)
            # Arguments are parsed to check them; the files they name are the path check's (a run may write them).
            groups = [self._kdgate]
            while groups:
                group = groups.pop()
                for command in group.commands.values():
                    if hasattr(command, "commands"):
                        groups.append(command)
                    for param in command.params:  # typer keeps `exists` in its parameter info, click in the type
                        info = getattr(getattr(param, "type_descriptor", None), "parameter_info", None)
                        for holder in (info, getattr(param, "type", None)):
                            if getattr(holder, "exists", False) is True:
                                holder.exists = False
        return self._kdgate

    def script_options(self, source: Path) -> set[str] | None:
        """The options a repository script's argparse declares; None when it declares none (not argparse)."""
        key = str(source)
        if key not in self._options:
            text = source.read_text()
            declared = set(re.findall(r"add_argument\(\s*\"(-[-\w]+)\"(?:\s*,\s*\"(-[-\w]+)\")?", text))
            options = {name for pair in declared for name in pair if name}
            if "BooleanOptionalAction" in text:
                options |= {f"--no-{name[2:]}" for name in options if name.startswith("--")}
            self._options[key] = (options | {"-h", "--help"}) if options else None
        return self._options[key]


def check_kdgate(repo: Repository, argv: list[str], parse: bool = True) -> list[str]:
    command, path, index = repo.kdgate, ["kdgate"], 1
    while hasattr(command, "commands"):
        if index >= len(argv) or argv[index].startswith("-"):
            return []  # `kdgate --help`, `kdgate loadtest`: the group's own help
        name = argv[index]
        if name not in command.commands:
            return [f"`{' '.join(path)} {name}`: no such command ({' '.join(path)} has "
                    f"{', '.join(sorted(command.commands))})"]
        command, path, index = command.commands[name], [*path, name], index + 1
    known = {opt for param in command.params for opt in (*param.opts, *param.secondary_opts)} | {"--help"}
    words = argv[index:]
    found = []
    for word in words:
        if word == "--":
            break
        if word.startswith("-") and not re.fullmatch(r"-\d+(\.\d+)?", word) and word.split("=")[0] not in known:
            found.append(f"`{' '.join(path)}` has no option {word.split('=')[0]}")
    if found or not parse or "--help" in words:
        return found
    try:
        command.make_context(" ".join(path), list(words))
    except Exception as error:  # noqa: BLE001  (typer vendors its own click: its exception classes differ)
        if type(error).__name__ != "Exit":  # --help exits
            return [f"`{' '.join(argv)}`: {getattr(error, 'format_message', lambda: str(error))()}"]
    return []


def check_python(repo: Repository, argv: list[str]) -> list[str]:
    """`python -m module ...` or `python script.py ...` of a repository script: its options exist."""
    rest = argv[1:]
    if rest[:1] == ["-m"] and len(rest) > 1:
        module = rest[1].replace(".", "/")
        if module.split("/")[0] not in repo.top:
            return []  # the standard library's or an installed package's
        source = next((repo.root / candidate for candidate in (f"{module}.py", f"{module}/__main__.py")
                       if repo.exists(candidate)), None)
        if source is None:
            return [f"`{' '.join(argv[:3])}`: no module {rest[1]} in the repository"]
        arguments = rest[2:]
    elif rest and rest[0].endswith(".py") and not rest[0].startswith(("/", "..", "$")):
        source = repo.root / rest[0].removeprefix("./")
        if not repo.exists(rest[0].removeprefix("./")):  # commands run from the repository's root
            return [] if repo.is_repository_path(rest[0]) else [f"`{rest[0]}` does not exist"]
        arguments = rest[1:]
    else:
        return []
    options = repo.script_options(source)
    if options is None:
        return []
    return [f"`{source.relative_to(repo.root)}` has no option {word.split('=')[0]}" for word in arguments
            if word.startswith("--") and word.split("=")[0] not in options]


def outputs(argv: list[str], redirects: list[tuple[str, str]]) -> list[str]:
    found = [target for operator, target in redirects if operator in (">", ">>", "&>")]
    for index, word in enumerate(argv):
        option, equals, value = word.partition("=")
        if option in OUTPUT_OPTIONS and index + 1 < len(argv) and not equals:
            found.append(argv[index + 1])
        elif option in OUTPUT_OPTIONS or option == "out":
            found.append(value)
    return [path.removeprefix("./").rstrip("/") for path in found]


def problems(page_blocks: list[Block], repo: Repository, parse: bool = True) -> list[str]:
    """What is wrong with the commands of one page's shell blocks, in order; [] when nothing. `parse=False` checks
    names (files, commands, options) without parsing the arguments, for commands named inline."""
    found: list[str] = []
    variables: dict[str, str] = {}
    created: list[str] = []
    for block in page_blocks:
        if not block.is_shell:
            continue
        try:
            commands = split_commands(block.text)
        except ValueError as error:
            found.append(f"{block.where}: {error}")
            continue
        for command in commands:
            words = [expand(word, variables) for word in command.words]
            env, argv = program(words)
            if not argv:
                variables.update(word.split("=", 1) for word in env)
                continue
            created += outputs(argv, command.redirects)
            pieces = [piece for word in [*env, *argv, *(target for _, target in command.redirects)]
                      for piece in re.split(r"[=,]", word)]
            for piece in pieces:
                piece = piece.removeprefix("./")
                if repo.is_repository_path(piece) and not repo.exists(piece) and not any(
                        piece == made or piece.startswith(f"{made}/") for made in created):
                    found.append(f"{block.where}: `{piece}` does not exist")
            name = Path(argv[0]).name
            if name == "kdgate":
                found += [f"{block.where}: {problem}" for problem in check_kdgate(repo, argv, parse)]
            elif argv[0] in ("./dev", "dev") and (len(argv) < 2 or argv[1] not in repo.dev_verbs):
                found.append(f"{block.where}: `./dev {' '.join(argv[1:2])}`: the verbs are "
                             f"{', '.join(sorted(repo.dev_verbs))}")
            elif re.fullmatch(r"python(3(\.\d+)?)?", name):
                found += [f"{block.where}: {problem}" for problem in check_python(repo, argv)]
    return found
