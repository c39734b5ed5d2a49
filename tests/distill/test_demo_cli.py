"""`kdgate demo eval` as docs/demo.md writes it runs on a fresh clone (the committed models only), with the torch
thread count it is told."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys

from tests.conftest import ROOT


def documented_eval(tools: bool = False) -> list[str]:
    """The `kdgate demo eval` command of docs/demo.md (the one with `--tools`, or the one without), its arguments
    after `kdgate` (environment and comment off)."""
    blocks = re.findall(r"```bash\n(.*?)```", (ROOT / "docs" / "demo.md").read_text(), flags=re.DOTALL)
    commands = [line for block in blocks for line in block.replace("\\\n", " ").splitlines()
                if "kdgate demo eval" in line and ("--tools" in line) == tools]
    assert len(commands) == 1, commands
    words = shlex.split(commands[0], comments=True)
    words = words[next(index for index, word in enumerate(words) if word.endswith("kdgate")) + 1:]
    assert words[:2] == ["demo", "eval"], words
    return words


def test_the_documented_eval_runs_on_the_committed_models(tmp_path):
    arguments = documented_eval()
    assert "--threads" in arguments  # the measured time beside it is for one thread
    report = tmp_path / "eval.json"
    done = subprocess.run([sys.executable, "-m", "kdgate.cli", *arguments, "--examples", "20", "--json-out",
                           str(report)], cwd=ROOT, capture_output=True, text=True, timeout=240,
                          env=os.environ | {"COLUMNS": "200"})
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(report.read_text())
    assert sorted(results) == ["student", "teacher"]
    assert all(summary["n"] == 20 for summary in results.values())
    assert results["teacher"]["exact_match"] >= results["student"]["exact_match"]



def test_the_documented_tools_eval_runs_on_the_committed_tools_models(tmp_path):
    arguments = documented_eval(tools=True)
    assert "--threads" in arguments and "--tools" in arguments
    report = tmp_path / "eval.json"
    done = subprocess.run([sys.executable, "-m", "kdgate.cli", *arguments, "--examples", "12", "--json-out",
                           str(report)], cwd=ROOT, capture_output=True, text=True, timeout=240,
                          env=os.environ | {"COLUMNS": "200"})
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(report.read_text())
    assert sorted(results) == ["student", "teacher"]
    for summary in results.values():
        assert summary["call"]["n"] == summary["plain"]["n"] == summary["answer"]["n"] == 12
        assert summary["call"]["well_formed"] >= 0.9  # both models call the tool in its format
    assert "call exact" in done.stdout and "teacher" in done.stdout
