"""Every command in README.md, docs/*.md and deploy/README.md works on a fresh clone, so the docs cannot drift from
the code unnoticed.

**Which blocks.** A fenced block whose language is `bash`, `sh`, `shell` or `console` holds commands and must be
classified by a one-line HTML comment right before its fence (a reader of the rendered page does not see it; the
README's length test counts what a reader sees):

    <!-- doc-test: run -->                                     run as written
    <!-- doc-test: run; small: "steps=300" -> "steps=3" -->    run with textual substitutions that shrink the work
                                                               (each must match the block; a stale one fails)
    <!-- doc-test: serve -->                                   run with the demo gateway up (`./dev serve`, started
                                                               by the runner unless an earlier block started it)
    <!-- doc-test: no, needs a GPU and vLLM -->                never run; the reason is required

A shell block without one fails, so a new command is run or says why not. In a `console` block the commands are the
`$ ` lines. A `python` block may carry `run` or `serve` (it is fed to `.venv/bin/python`). Other blocks (yaml, json,
mermaid, and untyped ones, which hold output) are examples and never run: a command goes in a `bash` block.

**Static checks, every shell block, run or not** (tests/doc_commands.py): every repository path a command names exists
(a word, or a piece of one split at `=` and `,`, whose first component is a top-level entry of the repository; the
script a `python` command runs, from the repository's root), unless an earlier command on the same page wrote it
(`--out`, `--output`, `--json-out`, `out=`, `>`). runs/, var/ and /tmp are no part of the repository: what a command
reads or writes there is left to the run. `kdgate <group> <command> --option` exists in typer's command tree and its
arguments parse (files they name may be written by a run, so their existence is the path check's); `./dev <verb>`
is a verb of the script; `python script.py --option` and `python -m module --option` of a repository script name
options its argparse declares. `NAME=value` alone on a line sets a variable for the page (`K=.venv/bin/kdgate`, then
`$K distill ...`). Commands written inline in the prose (`kdgate ...`, `./dev ...`, `python x.py`) get the same
checks by name, without parsing their arguments (prose names a command without its required options).

**Running** (tests/doc_runner.py; marked slow, one test per page so a failure names it): a page's runnable blocks run
in order as one `bash` script under `set -euo pipefail`, under a time limit, in a copy of the repository (the tracked
files as they are in the working tree: a fresh clone plus the edits at hand; `.venv` a link to the repository's),
with the copy first on PYTHONPATH, without the caller's KDGATE_* variables, and with HF_HUB_OFFLINE=1 (the demo needs
no download, and CI may have no network). A line that starts the gateway
(`./dev serve`, `kdgate serve`, with `&` or without: a reader runs a foreground one in another shell) is started in a
session of its own and waited for (`/v1/models` answers) before the next line; a later one on the same port stops it
first, and the page's end stops every server and background job. Each port a block names (`127.0.0.1:8000`,
`--port 8017`) becomes a free one, and 8000 is also given as KDGATE_PORT and KDGATE_GATEWAY_URL, so `./dev serve` and
`kdgate student` find it without a flag. A bare `wait` waits for the block's background jobs and fails with one that
failed. On a non-zero exit the failure names the page, the block's line and first line, and the output's tail and
the servers' logs. Blocks whose real size takes minutes are shrunk by their markers to seconds (3 training steps, 30
teacher answers, 10 evaluation tickets); the whole run is a few minutes on 2 cores.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests import doc_blocks, doc_runner, needs
from tests.conftest import ROOT, free_port
from tests.doc_blocks import blocks, parse_marker
from tests.doc_commands import Repository, problems, program, split_commands
from tests.doc_runner import run_page

PAGES = doc_blocks.pages()
IDS = [str(page.relative_to(ROOT)) for page in PAGES]

# Seconds a page's blocks may take at their small size on a 2-core CI box (the slowest pages train students).
PAGE_LIMIT_S = {"docs/student-versions.md": 420, "docs/distillation.md": 420}
DEFAULT_LIMIT_S = 240


@pytest.fixture(scope="module")
def repo() -> Repository:
    return Repository()


@pytest.mark.parametrize("page", PAGES, ids=IDS)
def test_every_shell_block_is_classified(page):
    """A shell block without a `<!-- doc-test: ... -->` line before it fails: a new command must be run, or say why
    not. Markers sit only on shell and python blocks, parse, and each small substitution matches its block."""
    wrong = doc_blocks.orphan_markers(page)
    for block in blocks(page):
        if block.marker_error:
            wrong.append(f"{block.where}: {block.marker_error}")
        elif block.is_shell and block.marker is None:
            wrong.append(f"{block.where}: no `<!-- doc-test: run -->` or `<!-- doc-test: no, <why> -->` before it")
        elif block.marker and not block.is_shell and block.language != "python":
            wrong.append(f"{block.where}: a doc-test marker on a `{block.language or 'untyped'}` block")
        elif block.marker and block.marker.runs:
            try:
                block.shrunk()
            except ValueError as error:
                wrong.append(str(error))
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize("page", PAGES, ids=IDS)
def test_every_command_names_what_exists(page, repo):
    """Run or not, each command's repository paths exist (or an earlier command on the page writes them), its
    `kdgate` command and options exist and parse, its `./dev` verb and its script's options exist."""
    found = problems(blocks(page), repo)
    assert not found, "\n".join(found)


@pytest.mark.parametrize("page", PAGES, ids=IDS)
def test_every_command_named_in_the_prose_names_what_exists(page, repo):
    """`kdgate ...`, `./dev ...`, `python script.py` written inline: the files, commands and options it names exist
    (its arguments are not parsed: prose often names a command without its required options)."""
    found = problems(doc_blocks.inline_commands(page), repo, parse=False)
    assert not found, "\n".join(found)


def runnable(page) -> bool:
    return any(block.marker and block.marker.runs for block in blocks(page))


RUNNABLE = [pytest.param(page, id=str(page.relative_to(ROOT)),
                         marks=pytest.mark.timeout(PAGE_LIMIT_S.get(str(page.relative_to(ROOT)), DEFAULT_LIMIT_S)
                                                   + 120))
            for page in PAGES if runnable(page)]


@pytest.mark.slow
@pytest.mark.parametrize("page", RUNNABLE)
def test_the_runnable_blocks_of_a_page_run(page, tmp_path):
    """The page's runnable blocks, in order, as one `set -euo pipefail` script in a copy of the repository."""
    if not (ROOT / ".venv" / "bin" / "kdgate").exists():
        pytest.fail("the docs run .venv/bin/kdgate: run ./dev setup dev first")
    if not doc_runner.venv_is_current(ROOT):
        pytest.fail(".venv was installed from another pyproject.toml: run ./dev setup dev (./dev in the copy would "
                    "otherwise install the copy into the shared .venv)")
    needs.binary("curl", install="apt-get install curl (the runner waits for servers with it)")
    page_blocks = blocks(page)
    for block in page_blocks:
        if block.marker and block.marker.runs and block.is_shell:
            for command in split_commands(block.text):
                name = program(command.words)[1][:1]
                if name and name[0] in needs.DEBIAN:
                    needs.tool(name[0])
    copy, work = tmp_path / "repo", tmp_path / "work"
    work.mkdir()
    doc_runner.copy_repository(ROOT, copy)
    name = str(page.relative_to(ROOT))
    result = run_page(page_blocks, copy, work, PAGE_LIMIT_S.get(name, DEFAULT_LIMIT_S), free_port)
    print(f"{name}: {result.seconds:.0f} s")
    assert result.returncode == 0, f"{name}: {result.report()}"


# --- the checker and the runner themselves -------------------------------------------------------------------------


def page_of(tmp_path, text: str):
    page = tmp_path / "page.md"
    page.write_text(text)
    return blocks(page, root=tmp_path)


def test_markers_parse_and_say_what_is_wrong():
    assert parse_marker(" run ") == doc_blocks.Marker("run")
    assert parse_marker(' serve; small: "a \\"b\\"" -> "c", "--demo 3000" -> "--demo 30" ').small == (
        ('a "b"', "c"), ("--demo 3000", "--demo 30"))
    assert parse_marker(" no, needs a GPU ").reason == "needs a GPU"
    for wrong in (" no ", " maybe ", ' run; "a" -> "b" ', " run; small: a -> b "):
        with pytest.raises(ValueError, match="doc-test"):
            parse_marker(wrong)


def test_blocks_keep_their_indentation_and_a_console_block_its_commands(tmp_path):
    found = page_of(tmp_path, """
- a list item
  <!-- doc-test: run -->
  ```python
  for n in range(2):
      print(n)
  ```
<!-- doc-test: no, output -->
```console
$ kdgate --help \\
    --help
Usage: kdgate
```
<!-- doc-test: run -->

```bash
echo the marker above is not right before this fence
```
""")
    assert [(block.line, block.language, block.text) for block in found] == [
        (4, "python", "for n in range(2):\n    print(n)\n"),
        (9, "console", "kdgate --help \\\n    --help\n"),
        (16, "bash", "echo the marker above is not right before this fence\n")]
    assert found[2].marker is None
    assert doc_blocks.orphan_markers(tmp_path / "page.md", tmp_path) == [
        "page.md:14: a doc-test marker not right before a ``` fence"]


def test_the_shell_reader_splits_commands_as_bash_does():
    commands = split_commands("A=1 ./dev serve &  # a comment\nx 'a b' \"c \\\"d\\\"\" \\\n  e 2>&1 | y > out; z\n")
    assert [(command.words, command.background) for command in commands] == [
        (["A=1", "./dev", "serve"], True), (["x", "a b", 'c "d"', "e"], False), (["y"], False), (["z"], False)]
    assert commands[1].redirects == [(">&", "1")] and commands[2].redirects == [(">", "out")]


def test_the_static_checks_catch_drift(tmp_path, repo):
    found = problems(page_of(tmp_path, """
<!-- doc-test: no, an example -->
```bash
K=.venv/bin/kdgate
$K distill train --config distill/configs/no_such.yaml
$K loadtest run --no-such-option 3 --url http://127.0.0.1:8000
.venv/bin/kdgate no-such-group
./dev no-such-verb
.venv/bin/python benchmarks/swap_prompts.py --version v2 --no-such-flag
.venv/bin/python -m loadtests.no_such_module
.venv/bin/kdgate demo eval --model runs/x --examples many
```
"""), repo)
    where = "page.md:3: K=.venv/bin/kdgate: "
    *found, unparsed = [problem.removeprefix(where) for problem in found]
    assert unparsed.startswith("`.venv/bin/kdgate demo eval --model runs/x --examples many`: Invalid value for "
                               "'--examples'")  # the arguments parse; a file a run would write is no error
    assert found == [
        "`distill/configs/no_such.yaml` does not exist",
        "`kdgate loadtest run` has no option --no-such-option",
        "`kdgate no-such-group`: no such command (kdgate has auth, config, demo, distill, engine, loadtest, router, "
        "serve, shadow, store, student, trainer)",
        "`./dev no-such-verb`: the verbs are serve, serve-vllm, setup, test",
        "`benchmarks/swap_prompts.py` has no option --no-such-flag",
        "`.venv/bin/python -m loadtests.no_such_module`: no module loadtests.no_such_module in the repository",
    ]


def test_inline_commands_are_checked_by_name(tmp_path, repo):
    page = tmp_path / "page.md"
    page.write_text("Regenerate it with `python grafana/build_dashboard.py`; `kdgate engine` serves a model, and\n"
                    "`KDGATE_X=1 kdgate serve --no-such-option` is refused. `kdgate trainer run-job <id>` runs one.\n"
                    "```bash\nkdgate `in a block` is not prose\n```\n")
    assert [problem.split(": ", 1)[1] for problem in problems(doc_blocks.inline_commands(page, tmp_path), repo,
                                                               parse=False)] == [
        "python grafana/build_dashboard.py: `grafana/build_dashboard.py` does not exist",
        "KDGATE_X=1 kdgate serve --no-such-option: `kdgate serve` has no option --no-such-option"]


def test_a_path_an_earlier_command_writes_is_not_missing(tmp_path, repo):
    assert problems(page_of(tmp_path, """
<!-- doc-test: run -->
```bash
.venv/bin/kdgate distill generate --demo 30 --out deploy/new-cache
.venv/bin/kdgate distill train --config distill/configs/demo_kd.yaml cache=deploy/new-cache/x out=deploy/new
cat deploy/new/model/config.json > deploy/copied.json && cat deploy/copied.json
```
"""), repo) == []


def fake_repository(tmp_path):
    """A folder whose `./dev serve` serves /v1/models on KDGATE_PORT with Python's http.server: the runner's
    server handling, measured without loading models."""
    copy = tmp_path / "copy"
    (copy / "v1").mkdir(parents=True)
    (copy / "v1" / "models").write_text('{"data": []}')
    (copy / "dev").write_text('#!/usr/bin/env bash\n[ "$1" = serve ] && exec python3 -m http.server "$KDGATE_PORT"\n')
    (copy / "dev").chmod(0o755)
    work = tmp_path / "work"
    work.mkdir()
    return copy, work


def test_the_runner_starts_the_gateway_and_leaves_nothing_running(tmp_path):
    copy, work = fake_repository(tmp_path)
    page = page_of(tmp_path, """
<!-- doc-test: run -->
```bash
./dev serve    # in the foreground, as a reader types it
curl -sf http://127.0.0.1:8000/v1/models > models.json
sleep 300 &
```
<!-- doc-test: serve -->
```bash
curl -sf http://127.0.0.1:8000/v1/models
```
""")
    result = run_page(page, copy, work, timeout=60, free_port=free_port)
    assert result.returncode == 0, result.report()
    assert (copy / "models.json").read_text() == '{"data": []}' and result.output.count("doc-test: starting") == 1
    assert not processes_in(copy) and not list(work.glob("server-*.pid"))


def processes_in(folder) -> list[str]:
    """The command lines of the processes whose working directory is `folder`."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and Path(os.readlink(proc / "cwd")) == folder:
                found.append((proc / "cmdline").read_text().replace("\0", " "))
        except OSError:
            continue
    return found


def test_a_failing_block_is_named_with_the_output_tail(tmp_path):
    copy, work = fake_repository(tmp_path)
    page = page_of(tmp_path, """
<!-- doc-test: run -->
```bash
echo first
```
<!-- doc-test: run; small: "false" -> "false --said-so" -->
```bash
(exit 3) &
echo second; wait
false
```
""")
    result = run_page(page, copy, work, timeout=60, free_port=free_port)
    assert result.returncode == 3 and result.failed_block == "page.md:7: (exit 3) &"
    assert "second" in result.output and "exit 3 in block page.md:7" in result.report()
