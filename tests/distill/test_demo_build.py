"""`kdgate demo build` runs end to end at tiny sizes: tokenizer, teacher, teacher cache, distilled student, report."""

from __future__ import annotations

import json

import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

from distill.demo import CONFIGS_DIR, DEMO_TEACHER_DIR
from distill.demo.build import BuildSettings, build
from distill.demo.models import DemoArchitecture

pytestmark = pytest.mark.slow
TINY = DemoArchitecture(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)
QUIET = {"log": lambda line: None}


def test_a_teacher_that_cannot_do_the_task_yet_stops_the_build_with_the_reason(tmp_path):
    settings = BuildSettings(out=tmp_path, tokenizer_corpus=500, vocab_size=400, teacher_steps=3, student_steps=3,
                             label_examples=20, eval_examples=8, test_examples=16, batch_size=8,
                             teacher=TINY, student=TINY)
    with pytest.raises(ValueError, match=r"no kept answers \(of 20; dropped: (invalid_json|truncated)"):
        build(settings, **QUIET)
    teacher = AutoModelForCausalLM.from_pretrained(str(tmp_path / "teacher"))
    assert AutoTokenizer.from_pretrained(str(tmp_path / "teacher")).chat_template
    assert teacher.config.num_hidden_layers == 1


def test_student_build_distills_from_the_teacher_cache_and_reuses_it(tmp_path):
    report = build(BuildSettings(out=tmp_path / "kd", teacher_dir=DEMO_TEACHER_DIR, cache=tmp_path / "cache",
                                 student_steps=3, label_examples=40, eval_examples=4, test_examples=16, batch_size=8,
                                 student=TINY), **QUIET)
    student = AutoModelForCausalLM.from_pretrained(str(tmp_path / "kd" / "student"))
    assert student.config.num_hidden_layers == 1 and report["test"]["student"]["n"] == 16
    saved = json.loads((tmp_path / "kd" / "build_report.json").read_text())
    assert saved["teacher_cache"]["rows"] == 40 and saved["teacher_cache"]["kept"] >= 36  # the teacher is ~99 % right
    assert saved["student_training"][-1]["step"] == 3 and saved["parameters"]["teacher"] > 0
    # The student came out of the distillation recipe with the KD config, on the teacher's cached top-k.
    resolved = (tmp_path / "kd" / "student" / "distill_config.yaml").read_text()
    assert "kind: kd" in resolved and "estimator: sampled" in resolved
    # The hard-label baseline from the same cache: the teacher is not asked again.
    shards = sorted((tmp_path / "cache").glob("shard-*.parquet"))
    stamps = [shard.stat().st_mtime_ns for shard in shards]
    again = build(BuildSettings(out=tmp_path / "sft", teacher_dir=DEMO_TEACHER_DIR, cache=tmp_path / "cache",
                                student_steps=2, label_examples=40, eval_examples=4, test_examples=4, batch_size=8,
                                student=TINY, student_config=CONFIGS_DIR / "demo_sft.yaml"), **QUIET)
    assert [shard.stat().st_mtime_ns for shard in shards] == stamps and again["teacher_cache"]["kept"] >= 36
    assert "kind: sft" in (tmp_path / "sft" / "student" / "distill_config.yaml").read_text()
