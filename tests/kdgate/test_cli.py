"""The command line explains itself: `kdgate --help` lists every command, each command's help has an example that
parses, and a wrong flag or value exits 2 naming it — checked for every command there is, so a new one cannot
skip it."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import typing

import pytest
import typer

from kdgate.cli import app
from tests.conftest import ROOT


def leaves(command=None, path=("kdgate",)):
    command = command if command is not None else typer.main.get_group(app)
    if hasattr(command, "commands"):
        for name, sub in command.commands.items():
            yield from leaves(sub, (*path, name))
    else:
        yield path, command


COMMANDS = list(leaves())
IDS = [" ".join(path[1:]) for path, _ in COMMANDS]


def kdgate(*args: str, columns: int = 200) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kdgate.cli", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=60, env=os.environ | {"COLUMNS": str(columns)})


def example_of(command) -> list[str]:
    """The arguments of the `Example:` line in the command's docstring, environment assignments dropped."""
    found = re.search(r"Example:\s+(.+)", command.help or "")
    assert found, "no `Example:` line in the docstring"
    words = shlex.split(found.group(1))
    while words and re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", words[0]):
        words.pop(0)
    for index, word in enumerate(words):  # a shell redirection or pipe ends the command's own arguments
        if word in ("<", ">", ">>", "|"):
            return words[:index]
    return words


def test_there_are_commands_to_check():
    assert {"serve", "engine", "config docs", "loadtest run", "distill train", "shadow export"} <= set(IDS)


def test_top_level_help_lists_every_command():
    done = kdgate("--help")
    assert done.returncode == 0
    for path, _ in COMMANDS:
        assert " ".join(path) in done.stdout


def test_top_level_help_shows_every_summary_whole_at_80_columns():
    """The list of every command cut each summary to the room left beside the longest command, ending it in `...`;
    now a summary wraps onto lines of its own, under its first."""
    done = kdgate("--help", columns=80)
    assert done.returncode == 0 and max(len(line) for line in done.stdout.splitlines()) <= 80, done.stdout
    shown = " ".join(done.stdout.split())
    for path, command in COMMANDS:
        assert f"{' '.join(path)} {command.get_short_help_str(limit=10_000)}" in shown


@pytest.mark.parametrize(("path", "command"), COMMANDS, ids=IDS)
def test_every_command_has_an_example_that_parses(path, command):
    words = example_of(command)
    assert tuple(words[:len(path)]) == path, f"the example runs {words[:len(path)]}, not {path}"
    try:
        command.make_context(" ".join(path), words[len(path):])
    except Exception as error:  # noqa: BLE001  (click's and typer's own exception classes differ)
        # the example may name files a run creates first (runs/...); anything else is a broken example
        assert "does not exist" in str(error), f"{' '.join(words)}: {error}"


@pytest.mark.parametrize(("path", "command"), COMMANDS, ids=IDS)
def test_a_wrong_flag_exits_2_naming_it(path, command):
    done = kdgate(*example_of(command)[1:], "--no-such-flag")  # the example's options make any required ones given
    assert done.returncode == 2
    assert "--no-such-flag" in done.stderr


def _numeric(annotation) -> bool:
    """int or float, alone, optional or repeated."""
    if annotation in (int, float):
        return True
    return any(_numeric(inner) for inner in typing.get_args(annotation))


def numeric_options(command) -> list[str]:
    return [param.opts[0] for param in command.params if param.opts and _numeric(param.type_descriptor.annotation)]


NUMERIC = [(path, numeric_options(command)[0]) for path, command in COMMANDS if numeric_options(command)]


def test_most_commands_have_a_numeric_option_to_check():
    assert len(NUMERIC) >= len(COMMANDS) // 2 and ("kdgate", "serve") in dict(NUMERIC)


@pytest.mark.parametrize(("path", "option"), NUMERIC, ids=[" ".join(path[1:]) for path, _ in NUMERIC])
def test_a_wrong_number_exits_2_naming_the_option(path, option):
    done = kdgate(*path[1:], option, "not-a-number")
    assert done.returncode == 2
    assert f"Invalid value for '{option}'" in done.stderr


def test_help_of_a_group_lists_its_commands():
    done = kdgate("loadtest", "--help")
    assert done.returncode == 0 and "zero-server" in done.stdout


def gateway_command(*args: str, **env: str) -> subprocess.CompletedProcess:
    clean = {key: value for key, value in os.environ.items() if not key.startswith("KDGATE_")}
    return subprocess.run([sys.executable, "-m", "kdgate.cli", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=60, env=clean | env)


def test_a_bad_setting_stops_serve_with_its_key_and_variable_named():
    done = gateway_command("serve", KDGATE_ROUTING__HANDOFF__MIN_PROB="2")
    assert done.returncode == 2, done.stderr
    assert "`routing.handoff.min_prob` (KDGATE_ROUTING__HANDOFF__MIN_PROB)" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_mistyped_variable_stops_serve_with_a_suggestion():
    done = gateway_command("serve", KDGATE_PROT="9000")
    assert done.returncode == 2 and "did you mean KDGATE_PORT" in done.stderr


def test_a_missing_policy_file_stops_serve_before_any_model_loads():
    done = gateway_command("serve", KDGATE_ROUTING__POLICY="confidence", KDGATE_ROUTING__POLICY_FILE="/nope.json")
    assert done.returncode == 2 and "/nope.json does not exist" in done.stderr


def test_config_show_prints_what_serve_would_use():
    import yaml

    done = gateway_command("config", "show", KDGATE_ROUTING__HANDOFF__MIN_PROB="0.8")
    assert done.returncode == 0, done.stderr
    shown = yaml.safe_load(done.stdout)
    assert shown["routing"]["handoff"]["enabled"] is True
    assert shown["routing"]["handoff"]["min_prob"] == 0.8
    vllm = yaml.safe_load(gateway_command("config", "show", "--config", "deploy/kdgate-vllm.yaml").stdout)
    assert vllm["student"]["kind"] == "http"


def test_a_fatal_signal_is_reported_with_a_traceback(tmp_path, demo_dirs):
    """A SIGBUS (what a SQLite `-shm` mapping that became unwritable raises) killed the gateway with nothing logged;
    now Python's faulthandler prints every thread's traceback first. Shown on `kdgate engine`, the same entry point."""
    import signal

    from tests.conftest import free_port, wait_until_up

    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "kdgate.cli", "engine", "--model", str(demo_dirs[0]), "--port",
                                str(port), "--threads", "1"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               text=True, cwd=ROOT)
    try:
        wait_until_up(f"http://127.0.0.1:{port}/health", process, timeout=120)
        process.send_signal(signal.SIGBUS)
        _, stderr = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == -signal.SIGBUS
    assert "Fatal Python error: Bus error" in stderr and "most recent call first" in stderr, stderr[-2000:]


def test_every_repository_file_a_help_text_names_exists():
    """A help text's example names files a user will look for (`--config deploy/trainer.yaml` named a file that did
    not exist); outputs of earlier commands (runs/, var/) are exempt."""
    named = {(" ".join(path), word) for path, command in COMMANDS for word in re.findall(
        r"(?<![\w/.])((?:deploy|distill|docs|helm|benchmarks|loadtests)/[\w./-]+\.\w+)", command.help or "")}
    missing = sorted((where, word) for where, word in named if not (ROOT / word).exists())
    assert named and not missing, missing


def test_no_flag_is_offered_doubly_negated():
    """`kdgate trainer start` offered `--no-no-promote` (typer's off switch of a flag named `no_promote`)."""
    doubled = [(" ".join(path), option) for path, command in COMMANDS for param in command.params
               for option in [*param.opts, *getattr(param, "secondary_opts", [])] if option.startswith("--no-no-")]
    assert not doubled, doubled


def test_dev_without_a_command_prints_its_usage_and_exits_2():
    done = subprocess.run(["bash", str(ROOT / "dev")], capture_output=True, text=True, timeout=30)
    assert done.returncode == 2
    assert done.stderr.startswith("usage: ./dev serve") and "./dev test" in done.stderr and "set -e" not in done.stderr


# Commands that run torch models in their own process, and how their threads are set instead of a --threads flag.
THREADS_ELSEWHERE = {
    ("kdgate", "serve"): "student.threads / teacher.threads settings (KDGATE_STUDENT__THREADS)",
    ("kdgate", "distill", "train"): "the config's `threads` key (threads=N override)",
    ("kdgate", "distill", "sweep"): "the base config's `threads` key",
    ("kdgate", "trainer", "run-job"): "the trainer settings' train.threads",
}
TORCH_COMMANDS = [("kdgate", "engine"), ("kdgate", "demo", "build"), ("kdgate", "demo", "eval"),
                  ("kdgate", "demo", "drift"), ("kdgate", "router", "collect"), ("kdgate", "distill", "generate"),
                  ("kdgate", "distill", "eval"), ("kdgate", "distill", "quantize"), ("kdgate", "distill", "prune"),
                  ("kdgate", "distill", "import")]


@pytest.mark.parametrize("path", TORCH_COMMANDS, ids=[" ".join(path[1:]) for path in TORCH_COMMANDS])
def test_every_command_that_runs_torch_takes_threads(path):
    """On a busy 2-core machine torch's default threads made `demo eval` 4× slower than one thread; every command
    that runs a model in its own process takes --threads (or, listed above, has its threads in its settings)."""
    command = dict(COMMANDS)[path]
    assert "--threads" in {opt for param in command.params for opt in param.opts}


def test_the_torch_command_lists_cover_every_command_that_imports_models():
    """A new command that loads models must be put in one of the two lists (read its source for the imports)."""
    import inspect

    for path, command in COMMANDS:
        source = inspect.getsource(command.callback)
        if re.search(r"import torch|from_pretrained|LocalBackend|collect_from_settings|run_recipe|quantize\(", source):
            assert path in TORCH_COMMANDS or path in THREADS_ELSEWHERE, " ".join(path)
