"""Records into training examples: on-policy from the active version's shadowed answers, off-policy from the
teacher's answers, a held-out slice of the newest records, the mix, duplicates, old teachers, records without ids,
the constraint each answer was generated under."""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import replace

import pyarrow.parquet as pq
import pytest
from transformers import AutoTokenizer

from distill.config import load_config
from distill.data.cache import Manifest, read_answers, shards
from distill.demo import task
from distill.online.dataset import build, check_replay_tokenizer, mix, off_policy, on_policy, write_cache
from distill.recipe import Recipe
from tests.distill.online.records import make_records


@pytest.fixture(scope="module")
def tokenizer(demo_dirs):
    return AutoTokenizer.from_pretrained(demo_dirs[0])


@pytest.fixture(scope="module")
def records(tokenizer):
    return make_records(tokenizer, task.take("train", 40, seed=5))


def test_on_policy_pairs_the_students_tokens_with_the_teachers_scores(records):
    example = on_policy(records[0], "initial")
    scores = records[0].teacher_scores
    assert example.policy == "on" and example.token_ids.tolist() == [token["id"] for token in scores]
    assert example.topk_ids[:, 0].tolist() == [token["top"][0][2] for token in scores]
    assert on_policy(records[0], "v2") is None  # another version's answer is not this student's policy
    assert on_policy(replace(records[0], kind="escalation"), "initial") is None


def test_off_policy_is_the_teachers_answer_with_its_end_token(records):
    example = off_policy(records[0])
    assert example.policy == "off" and len(example.token_ids) == len(records[0].teacher_tokens)
    assert example.text == records[0].teacher_answer


def test_the_newest_records_are_held_out_and_the_rest_mixed(records):
    shuffled = random.Random(0).sample(records, len(records))
    dataset = build(shuffled, "initial", on_policy_share=0.5, holdout_share=0.25, teacher_version=None)
    newest = sorted(records, key=lambda record: record.created_at)[-10:]
    assert [example.record_id for example in dataset.heldout] == [record.request_id for record in newest]
    assert not {example.record_id for example in dataset.train} & {r.request_id for r in newest}
    assert dataset.figures["train_on_policy"] == dataset.figures["train"] - dataset.figures["train_on_policy"] == 30


@pytest.mark.parametrize(("share", "on", "total"), [(0.0, 0, 30), (1.0, 30, 30), (0.75, 90, 120), (0.2, 30, 150)])
def test_the_mix_reaches_its_share_by_repeating_the_scarcer_kind(records, share, on, total):
    """30 on-policy and 30 off-policy examples: nothing is dropped; 75 % on-policy repeats each on-policy example
    three times beside the 30 off-policy ones, 20 % repeats the off-policy ones four times."""
    dataset = build(records, "initial", on_policy_share=share, holdout_share=0.25, teacher_version=None)
    assert (dataset.figures["train_on_policy"], dataset.figures["train"]) == (on, total)


def test_replay_adds_the_original_distillation_data_at_its_share(records, demo_dirs, tmp_path):
    original = build(records, "initial", 0.0, 0.25, None)
    write_cache(tmp_path / "original", original.train, "demo-teacher", demo_dirs[0], "test")
    fresh = build(records[:20], "initial", 0.0, 0.25, None, replay_cache=tmp_path / "original", replay_share=0.5)
    assert fresh.figures["train_replay"] == fresh.figures["train"] - fresh.figures["train_replay"]
    assert {example.policy for example in fresh.train} == {"off", "replay"}


def test_a_replay_cache_in_another_tokenizers_ids_is_refused(records, demo_dirs, tmp_path):
    """Its token ids would be trained on as if they were the student's: mixed in without an error before."""
    from runtime.demo import ARTIFACTS_DIR

    original = build(records, "initial", 0.0, 0.25, None)
    write_cache(tmp_path / "original", original.train, "demo-teacher", demo_dirs[0], "test")
    check_replay_tokenizer(tmp_path / "original", demo_dirs[0])
    with pytest.raises(ValueError, match=r"dataset.replay_cache .*original holds token ids of another tokenizer"):
        check_replay_tokenizer(tmp_path / "original", ARTIFACTS_DIR / "tools" / "student")


def test_duplicates_old_teachers_and_records_without_ids_are_left_out(records):
    twice = [replace(record, request_id=record.request_id + "-again") for record in records[:5]]
    stale = [replace(record, request_id=record.request_id + "-old", teacher_version="t1") for record in records[:5]]
    textual = [replace(record, request_id=record.request_id + "-text", token_ids=False) for record in records[:5]]
    dataset = build(records + twice + stale + textual, "initial", 0.0, 0.25, teacher_version="t2")
    assert dataset.figures["old_teacher"] == 5 and dataset.figures["without_ids"] == 5
    assert len({example.key() for example in dataset.train}) == len(dataset.train)
    assert len(mix([], [off_policy(records[0])] * 3, 0.0, random.Random(0))) == 1


def test_the_cache_is_one_the_recipe_reads(records, tokenizer, demo_dirs, tmp_path):
    dataset = build(records, "initial", 0.5, 0.25, None)
    manifest = write_cache(tmp_path / "cache", dataset.train, "demo-teacher", demo_dirs[0], "test")
    assert Manifest.load(tmp_path / "cache").tokenizer_hash == manifest.tokenizer_hash
    read = list(read_answers(tmp_path / "cache", manifest.top_k))
    assert len(read) == len(dataset.train) and read[0].token_ids.tolist() == dataset.train[0].token_ids.tolist()
    recipe = Recipe(load_config(None, [f"student.init={demo_dirs[0]}", f"cache={tmp_path / 'cache'}",
                                       f"out={tmp_path / 'out'}", "steps=1", "threads=1"]))
    recipe.setup()
    rows = recipe.eval_rows + recipe.train_rows
    assert (len(recipe.eval_rows), len(recipe.train_rows)) == (3, 57)  # eval_fraction 0.05 of the 60 examples
    # Every example reaches the recipe as the student's prompt followed by the example's own answer tokens.
    assert Counter(tuple(row.input_ids[row.answer_start:]) for row in rows) == \
        Counter(tuple(example.token_ids.tolist()) for example in dataset.train)
    assert sorted(row.input_ids[:row.answer_start] for row in rows) == sorted(
        tokenizer(tokenizer.apply_chat_template(example.messages, add_generation_prompt=True, tokenize=False),
                  add_special_tokens=False)["input_ids"] for example in dataset.train)


def test_examples_of_constrained_answers_say_so_through_the_cache(records, demo_dirs, tmp_path):
    """A record's constraint goes into both of its examples and comes back out of the cache the recipe reads; a
    free-text record's examples have none, and so does a shard written before the column existed."""
    spec = {"json": task.ANSWER_SCHEMA}
    constrained = [replace(record, constraint=spec, constraint_masked=True) for record in records[:10]]
    free = records[10:20]
    on, off = on_policy(constrained[0], "initial"), off_policy(constrained[0])
    assert on.constraint == off.constraint == spec and on_policy(free[0], "initial").constraint is None
    dataset = build(constrained + free, "initial", 0.5, 0.0, None)
    manifest = write_cache(tmp_path / "cache", dataset.train, "demo-teacher", demo_dirs[0], "test")
    read = {answer.prompt_id: answer.constraint for answer in read_answers(tmp_path / "cache", manifest.top_k)}
    assert read == {example.record_id: example.constraint for example in dataset.train}
    assert {record.request_id for record in constrained} == {key for key, value in read.items() if value == spec}

    (shard,) = shards(tmp_path / "cache")
    pq.write_table(pq.read_table(shard).drop_columns(["constraint"]), shard)  # as written before the column
    assert all(answer.constraint is None for answer in read_answers(tmp_path / "cache", manifest.top_k))


def test_escalated_tool_calls_train_with_their_tools(records, demo_dirs, tmp_path):
    """A tool call's record keeps its tools in its constraint: the cache the recipe reads carries them, so the
    prompt is rendered with the tools the student and the teacher answered behind."""
    from distill.demo.tools import TOOLS

    spec = {"tools": list(TOOLS), "tool_choice": "auto", "function": None, "parallel_tool_calls": True,
            "answer": None}
    called = [replace(record, constraint=spec, constraint_masked=True) for record in records[:6]]
    dataset = build(called + records[6:12], "initial", 0.5, 0.0, None)
    manifest = write_cache(tmp_path / "cache", dataset.train, "demo-teacher", demo_dirs[0], "test")
    read = {answer.prompt_id: answer.tools for answer in read_answers(tmp_path / "cache", manifest.top_k)}
    assert {key for key, tools in read.items() if tools == list(TOOLS)} == {record.request_id for record in called}
    assert all(tools is None for key, tools in read.items() if key not in {r.request_id for r in called})
