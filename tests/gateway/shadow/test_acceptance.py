"""`kdgate shadow draft-acceptance`: the student's top-1 agreement with the teacher, token-weighted over the
shadowed answers, and what speculative decoding would gain with it (Leviathan et al.'s expectation)."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime

import pytest

from gateway.shadow.acceptance import speedup, tokens_per_step
from runtime.store.records import ShadowStore
from tests.conftest import ROOT
from tests.runtime.store.test_records import record

SCORE = {"token": "a", "id": 1, "logprob": -0.1, "top": [["a", -0.1, 1]]}


def kdgate(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kdgate.cli", "shadow", "draft-acceptance", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=60, check=False,
                          env=os.environ | {"COLUMNS": "300"})


def test_the_expectation_of_tokens_per_step():
    assert tokens_per_step(0.0, 4) == 1.0 and tokens_per_step(1.0, 4) == 5.0
    assert tokens_per_step(0.8, 3) == pytest.approx(1 + 0.8 + 0.64 + 0.512)
    assert speedup(0.8, 3, 0.1) == pytest.approx(2.952 / 1.3)


def test_the_rate_is_weighted_by_tokens_and_printed_with_the_best_draft_length(tmp_path):
    url = f"sqlite:///{tmp_path}/shadow.sqlite3"
    store = ShadowStore(url)
    now = datetime.now(UTC)
    store.write(record("long", now, top1_agreement=0.9, teacher_scores=[SCORE] * 30))
    store.write(record("short", now, top1_agreement=0.5, teacher_scores=[SCORE] * 10))
    store.write(record("escalated", now, kind="escalation", teacher_answer="t"))
    store.close()
    done = kdgate("--store-url", url, "--draft-cost", "0.1")
    assert done.returncode == 0, done.stderr
    assert "0.800 over 40 tokens of 2 shadowed answers" in done.stdout  # (0.9·30 + 0.5·10) / 40
    best = next(line for line in done.stdout.splitlines() if "best" in line)
    assert best.startswith("| 6 |")  # α=0.8, c=0.1: 5 → 2.46×, 6 → 2.47×, 7 → 2.45×


def test_no_shadowed_answers_is_a_clear_error(tmp_path):
    url = f"sqlite:///{tmp_path}/shadow.sqlite3"
    ShadowStore(url).close()
    done = kdgate("--store-url", url)
    assert done.returncode == 2 and "turn shadow sampling on" in done.stderr
