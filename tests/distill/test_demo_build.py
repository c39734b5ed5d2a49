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


def test_tools_build_fine_tunes_the_teacher_and_distills_a_student_that_sees_the_tools(tmp_path):
    from distill.data.cache import Manifest, read_answers
    from distill.demo import tools
    from distill.demo.build_tools import ToolBuildSettings, build_tools
    from distill.demo.tokenizer import TOOL_CHAT_TEMPLATE

    settings = ToolBuildSettings(out=tmp_path, teacher_steps=2, teacher_batch_size=4, student_steps=2,
                                 label_examples=24, eval_examples=2, test_examples=6, batch_size=4, threads=1)
    report = build_tools(settings, **QUIET)
    for name in ("teacher", "student"):
        assert AutoTokenizer.from_pretrained(str(tmp_path / "tools" / name)).chat_template == TOOL_CHAT_TEMPLATE
        assert set(report["test"][name]) == {"plain", "call", "answer"} and report["test"][name]["call"]["n"] == 6
    assert report["teacher_training"][-1]["step"] == 2 and "call_exact_match" in report["teacher_training"][-1]
    assert json.loads((tmp_path / "tools" / "build_report.json").read_text())["teacher_cache"]["rows"] == 24
    # the cache's prompts carry their tools, and the student came out of the KD recipe from the committed student
    cache = tmp_path / "cache" / "tools-teacher-cache"
    offered = [answer.tools for answer in read_answers(cache, Manifest.load(cache).top_k, kept_only=False)]
    assert list(tools.TOOLS) in offered and None in offered
    assert "from_scratch: false" in (tmp_path / "tools" / "student" / "distill_config.yaml").read_text()


def test_a_tools_build_refuses_a_teacher_that_never_saw_a_tool(tmp_path):
    from distill.demo.build_tools import ToolBuildSettings, build_tools

    with pytest.raises(ValueError, match="no tools teacher"):
        build_tools(ToolBuildSettings(out=tmp_path, teacher_dir=DEMO_TEACHER_DIR), **QUIET)
