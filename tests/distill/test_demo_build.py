"""`kdgate demo build` runs end to end (tiny sizes) and writes loadable models and a report."""

from __future__ import annotations

import json

import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

from distill.demo.build import BuildSettings, build
from distill.demo.models import DemoArchitecture

pytestmark = pytest.mark.slow
TINY = DemoArchitecture(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)


def test_build_pipeline_end_to_end(tmp_path):
    settings = BuildSettings(out=tmp_path, tokenizer_corpus=500, vocab_size=400, teacher_steps=3, student_steps=3,
                             label_examples=40, eval_examples=8, test_examples=16, batch_size=8,
                             teacher=TINY, student=TINY)
    report = build(settings, log=lambda line: None)
    for name in ("teacher", "student"):
        model = AutoModelForCausalLM.from_pretrained(str(tmp_path / name))
        tokenizer = AutoTokenizer.from_pretrained(str(tmp_path / name))
        assert tokenizer.chat_template and model.config.num_hidden_layers == 1
        assert report["test"][name]["n"] == 16
    saved = json.loads((tmp_path / "build_report.json").read_text())
    assert saved["parameters"]["teacher"] > 0 and len(saved["student_training"]) >= 1
    # A second student-only build on the same teacher reuses the cached teacher answers.
    cache = tmp_path / "cache" / "teacher_labels.jsonl"
    stamp = cache.stat().st_mtime_ns
    build(BuildSettings(out=tmp_path / "again", teacher_dir=tmp_path / "teacher", student_steps=2, label_examples=40,
                        eval_examples=4, test_examples=4, batch_size=8, student=TINY), log=lambda line: None)
    assert cache.stat().st_mtime_ns == stamp
