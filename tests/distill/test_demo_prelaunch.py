"""`kdgate demo prelaunch-student` at a tiny size: the given teacher's cache on pre-launch tickets, the recipe from
the given init, and a model folder that the local engine serves."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys

import torch
import yaml
from safetensors.torch import load_file

from distill.data.cache import Manifest
from distill.demo import drift
from runtime.contract import Delta, GenerationRequest, SamplingParams
from runtime.demo import DEMO_STUDENT_DIR, DEMO_TEACHER_DIR
from runtime.engine.engine import EngineSettings, LocalEngine
from tests.conftest import ROOT


def test_a_tiny_prelaunch_student_is_a_model_the_engine_serves(tmp_path):
    out, work = tmp_path / "student-prelaunch", tmp_path / "work"
    done = subprocess.run([sys.executable, "-m", "kdgate.cli", "demo", "prelaunch-student", "--teacher",
                           str(DEMO_TEACHER_DIR), "--init", str(DEMO_STUDENT_DIR), "--out", str(out), "--work",
                           str(work), "--prompts", "40", "--steps", "2", "--threads", "1", "batch_size=8"],
                          cwd=ROOT, capture_output=True, text=True, timeout=240,
                          env=os.environ | {"COLUMNS": "200"})
    assert done.returncode == 0, done.stderr[-3000:]
    assert str(out) in done.stdout

    manifest = Manifest.load(work / "cache")
    assert manifest.teacher == str(DEMO_TEACHER_DIR.resolve()) and manifest.rows == 40 and manifest.top_k == 20
    prompts = (work / "prelaunch-prompts.jsonl").read_text().lower()
    assert not any(name in prompts for name in drift.LAUNCHED_NAMES)  # pre-launch: no launched product
    config = yaml.safe_load((out / "distill_config.yaml").read_text())
    assert config["student"] == {"init": str(DEMO_STUDENT_DIR), "from_scratch": False}
    assert (config["steps"], config["batch_size"], config["loss"]["kind"]) == (2, 8, "kd")
    # trained from the init's weights (2 warm-up steps move them by ~1e-5), not from a fresh start
    trained, start = (load_file(folder / "model.safetensors") for folder in (out, DEMO_STUDENT_DIR))
    assert trained.keys() == start.keys()
    assert all(torch.allclose(trained[name], start[name], atol=1e-3) for name in start)

    engine = LocalEngine(EngineSettings(model_dir=out, threads=1))
    try:
        request = GenerationRequest("prelaunch", ({"role": "user", "content": "My Aero keeps freezing."},),
                                    SamplingParams(max_tokens=8, temperature=0.0))
        text = asyncio.run(_answer(engine, request))
    finally:
        engine.shutdown()
    assert text


async def _answer(engine: LocalEngine, request: GenerationRequest) -> str:
    text = ""
    async for event in engine.generate(request):
        if isinstance(event, Delta):
            text += event.text
    return text


def test_an_init_with_another_tokenizer_than_the_teacher_is_refused_before_the_cache(tmp_path):
    done = subprocess.run([sys.executable, "-m", "kdgate.cli", "demo", "prelaunch-student", "--init",
                           str(DEMO_STUDENT_DIR.parent / "tools" / "student"), "--out", str(tmp_path / "out"),
                           "--work", str(tmp_path / "work")], cwd=ROOT, capture_output=True, text=True,
                          timeout=60, env=os.environ | {"COLUMNS": "200"})
    assert done.returncode == 2 and "another tokenizer" in done.stderr, done.stderr
    assert not (tmp_path / "work").exists()
