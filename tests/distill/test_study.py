"""`kdgate distill study` at a tiny size on the demo models: every arm × seed trained and scored, the table with its
intervals, a rerun that trains nothing; the statistics against hand-worked values; on-policy rows that are the
student's own samples with the teacher's top-k at each token."""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from distill.config import load_config
from distill.data.cache import read_answers
from distill.on_policy import OnPolicy
from distill.precision import native_bf16
from distill.recipe import Row
from distill.study.arms import ARMS
from distill.study.settings import load_settings
from distill.study.soft_labels import OUTSIDE, fields_of
from distill.study.stats import gap_recovered, interval, paired_p
from runtime.demo import ARTIFACTS_DIR
from runtime.tokenizer_hash import tokenizer_hash
from tests.conftest import ROOT
from tests.doc_blocks import blocks

TEACHER, STUDENT = ARTIFACTS_DIR / "teacher", ARTIFACTS_DIR / "student"
TINY = ["train_tickets=40", "test_tickets=12", "seeds=[0,1]", "teacher.steps=2", "teacher.batch_size=4",
        "student.keep=2", "train.steps=2", "train.batch_size=4", "threads=1", f"base={TEACHER}",
        f"arms=[{','.join(ARMS)}]"]  # the on-policy arms the default leaves out too


def _study(out, *more):
    return subprocess.run([sys.executable, "-m", "kdgate.cli", "distill", "study", "--out", str(out), *TINY, *more],
                          capture_output=True, text=True, timeout=600)


def _table(evals, *more):
    """`kdgate distill study --table EVALS`: the table of recorded scores, nothing trained."""
    return subprocess.run([sys.executable, "-m", "kdgate.cli", "distill", "study", "--table", str(evals), *TINY,
                           *more], capture_output=True, text=True, timeout=120)


def test_the_study_trains_every_arm_for_every_seed_tabulates_them_and_resumes(tmp_path):
    out = tmp_path / "study"
    done = _study(out)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((out / "study.json").read_text())
    assert list(summary["arms"]) == list(ARMS) and summary["seeds"] == [0, 1]
    for name, arm in summary["arms"].items():
        scored = [json.loads((out / "evals" / f"{name}-s{seed}.json").read_text())["exact_match"] for seed in (0, 1)]
        assert arm["exact_match"] == scored
        assert (out / "runs" / f"{name}-s0" / "model" / "config.json").is_file()
        assert not (out / "runs" / f"{name}-s0" / "checkpoint").exists()  # removed once the model is written
    # the arms start from one pruned student and learn from caches of the same prompts in the same order
    gold = [json.loads(line)["prompt_id"] for line in _prompt_ids(out / "gold-cache")]
    assert gold == [json.loads(line)["prompt_id"] for line in _prompt_ids(out / "teacher-cache")]
    assert json.loads((out / "student-init" / "config.json").read_text())["num_hidden_layers"] == 2
    # KD along the truth: the gold answers, each token with the teacher's top-k teacher-forced along them; where the
    # teacher's own answer is the truth, that is the teacher cache's top-k at the same token
    truth = list(read_answers(out / "truth-cache", 20))
    gold_answers = list(read_answers(out / "gold-cache", 1))
    teacher_answers = list(read_answers(out / "teacher-cache", 20))
    assert [answer.token_ids.tolist() for answer in truth] == [answer.token_ids.tolist() for answer in gold_answers]
    same = [(mine, theirs) for mine, theirs in zip(truth, teacher_answers, strict=True)
            if mine.token_ids.tolist() == theirs.token_ids.tolist()]
    assert len(same) >= len(truth) // 2
    for mine, theirs in same:
        assert (mine.topk_ids[:, 0] == theirs.topk_ids[:, 0]).all()
        assert np.allclose(mine.topk_logprobs[:, :5], theirs.topk_logprobs[:, :5], atol=0.05)
    for arm in ("on-policy", "on-policy-cold", "on-policy-mixed"):
        on_policy = json.loads((out / "runs" / f"{arm}-s0" / "model" / "training_log.json").read_text())
        assert on_policy[-1]["step"] == 2
    lines = (out / "study.md").read_text().splitlines()
    tables = _tables(lines)
    assert [len(rows) for rows in tables] == [1 + len(ARMS), 2 + len(ARMS), 1 + len(summary["soft_labels"])]
    assert [row[0] for row in tables[1][1:]] == ["teacher", *ARMS]  # each field's accuracy, model by model
    shares = [float(row[3].removesuffix(" %")) for row in tables[2][1:]]  # where the teacher's soft mass lies
    assert sum(shares) == pytest.approx(100, abs=0.1 * len(shares)) and shares == sorted(shares, reverse=True)
    assert "seeds 0, 1" in lines[0] and done.stdout.strip().endswith(lines[-1])
    assert f"seed 0 done: the table over seeds 0 is in {out / 'study.md'}" in done.stdout  # written as it goes
    for name, arm in summary["arms"].items():  # every model measured against the teacher on the same test tickets
        figures = [json.loads((out / "evals" / f"{name}-s{seed}-closeness.json").read_text()) for seed in (0, 1)]
        assert all(f["kl_to_teacher"] > 0 and 0 <= f["token_agreement"] <= 1 and f["truth_nll"] > 0 for f in figures)
        assert arm["kl_to_teacher"]["mean"] == pytest.approx(np.mean([f["kl_to_teacher"] for f in figures]))
    (answers,) = (out / "evals").glob("teacher-*/teacher-answers.json")  # filed under the teacher's key
    assert len(json.loads(answers.read_text())) == 12
    assert "| KL to teacher | token agreement |" in lines[2]
    # the same table from the scores alone, as docs/distillation.md prints the project's: what is missing is named
    printed = _table(out / "evals")
    assert printed.returncode == 0 and printed.stdout == (out / "study.md").read_text(), printed.stderr[-3000:]
    short = _table(out / "evals", "seeds=[0,1,2]")
    assert short.returncode == 2 and "has no score of sft-gold-s2, " in short.stderr, short.stderr[-3000:]
    assert "scores_from=" in short.stderr and not short.stdout
    other = _table(out / "evals", "teacher.steps=3", "top_k=5")
    assert other.returncode == 2 and "was scored by a study with other settings" in other.stderr
    assert "they differ in teacher.steps: 2 there, 3 here, top_k: 20 there, 5 here)" in other.stderr, other.stderr
    models = {path: path.stat().st_mtime_ns for path in out.glob("runs/*/model/model.safetensors")}
    again = _study(out)  # every stage is there: nothing is trained or scored again
    assert again.returncode == 0, again.stderr[-3000:]
    assert "seed 0:" not in again.stdout and "exact match" not in again.stdout.split("Teacher: ")[0]
    assert {path: path.stat().st_mtime_ns for path in models} == models
    # on a fresh machine: the teacher is trained again, comes out the same, and the recorded scores are taken
    elsewhere = _study(tmp_path / "elsewhere", f"scores_from={out / 'evals'}")
    assert elsewhere.returncode == 0, elsewhere.stderr[-3000:]
    assert not list((tmp_path / "elsewhere").glob("runs/*-s*")) and "seed 0:" not in elsewhere.stdout
    assert f"kd-t1-a1-s1: scored in {out / 'evals'}, not trained again" in elsewhere.stdout
    assert (tmp_path / "elsewhere" / "study.md").read_text() == (out / "study.md").read_text()
    # bf16 left unset is decided for the machine (emulated on an AVX2-only CPU, ~35x slower than fp32: a study that
    # always asked for it took 265 s a step there, 6 s where bf16 is native); it is in the teacher's key, not the
    # study's: another machine's teacher (here: the other choice) pools its seeds with these, a seed at a time
    native = native_bf16()
    assert f"bf16 autocast: {'on' if native else 'off'} (unset; " in done.stdout
    assert json.loads((out / "settings.json").read_text())["bf16"] is native
    begun = tmp_path / "begun"  # seed 1 begun but not finished by the first machine
    shutil.copytree(out / "evals", begun)
    for file in ("kd-t1-a1-s1.json", "kd-t1-a1-s1-closeness.json"):
        (begun / file).unlink()
    pair = (f"bf16={str(not native).lower()}", f"scores_from={begun}", "arms=[sft-gold,kd-t1-a1]")  # two arms:
    # bf16 may be emulated here. Training seed 1 again in full is only done when asked: said before any arm trains
    asked = _study(tmp_path / "other", *pair)
    assert asked.returncode == 2 and not list((tmp_path / "other").glob("runs/*-s*")), asked.stderr[-3000:]
    assert "seed 1 (sft-gold-s1 by teacher " in asked.stderr and "Leave them out (seeds=[0])" in asked.stderr
    assert "retrain_begun=true" in asked.stderr and not list((tmp_path / "other").glob("evals/*.other-teacher"))
    other = _study(tmp_path / "other", *pair, "retrain_begun=true")
    assert other.returncode == 0, other.stderr[-3000:]
    assert "bf16 autocast" not in other.stdout  # chosen, not decided
    assert not list((tmp_path / "other").glob("runs/*-s0")) and "seed 0:" not in other.stdout
    assert {path.name for path in (tmp_path / "other").glob("runs/*-s1")} == {"sft-gold-s1", "kd-t1-a1-s1"}
    assert "made with another teacher" in other.stdout and "the seed is trained here in full" in other.stdout
    pooled = json.loads((tmp_path / "other" / "study.json").read_text())
    assert [teacher["seeds"] for teacher in pooled["teachers"]] == [[0], [1]]
    assert [teacher["bf16"] for teacher in pooled["teachers"]] == [native, not native]
    assert pooled["teacher_per_seed"] == [teacher["exact_match"] for teacher in pooled["teachers"]]
    assert pooled["arms"]["sft-gold"]["exact_match"][0] == summary["arms"]["sft-gold"]["exact_match"][0]
    assert (tmp_path / "other" / "study.md").read_text().startswith("Teachers (one per machine")
    pooled_table = (tmp_path / "other" / "study.md").read_text()
    assert _table(tmp_path / "other" / "evals", pair[2]).stdout == pooled_table
    # the soft labels are a seed's teacher's, named: the first machine's, filed with its figures and copied with seed 0
    assert f"the cached top-k of teacher {pooled['teachers'][0]['key']}, which taught seed 0," in pooled_table
    # other settings are another study: refused before anything is trained
    refused = _study(tmp_path / "refused", "train.steps=3", f"scores_from={out / 'evals'}")
    assert refused.returncode == 2 and "scores_from: none of the" in refused.stderr, refused.stderr[-3000:]
    assert "they differ in train.steps: 2 there, 3 here;" in refused.stderr  # the setting to give, named
    assert not (tmp_path / "refused" / "teacher").exists()


def test_the_study_tables_in_the_docs_are_what_their_commands_print():
    """docs/distillation.md's study tables come from the committed scores by the command printed before each: the
    lines right after its block are exactly what it prints, on the current code."""
    page = ROOT / "docs" / "distillation.md"
    lines = page.read_text().splitlines()
    commands = [block for block in blocks(page) if "distill study --table" in block.text]
    assert commands, "docs/distillation.md prints no study table"
    for block in commands:
        printed = subprocess.run(["bash", "-c", block.text], cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert printed.returncode == 0, f"{block.where}: {printed.stderr[-2000:]}"
        after = lines[block.line + len(block.text.splitlines()) + 1:]  # past the block's closing fence
        expected = printed.stdout.splitlines()
        assert after[1:1 + len(expected)] == expected, f"{block.where}: the page's table is not what it prints"


def _tables(lines: list[str]) -> list[list[list[str]]]:
    """The Markdown tables in `lines`, each as rows of cells (the header's included, the |---| line not)."""
    tables, current = [], None
    for line in lines:
        if line.startswith("| "):
            if current is None:
                current = []
                tables.append(current)
            if "|---" not in line:
                current.append([cell.strip() for cell in line.strip("|").split("|")])
        elif not line.startswith("|"):
            current = None
    return tables


def test_scores_of_another_study_are_refused_not_tabulated(tmp_path):
    from distill.study.record import Record

    earlier = tmp_path / "earlier"
    _arm(Record(earlier, "a" * 64, None).with_teacher("t" * 64), "sft-gold-s0")
    assert Record(tmp_path / "again", "a" * 64, earlier).with_teacher("u" * 64).complete("sft-gold-s0")[
        "exact_match"] == 0.5
    with pytest.raises(ValueError, match=r"scores_from: none of the 1 scores in .*earlier were made by this study"):
        Record(tmp_path / "other", "b" * 64, earlier)  # other settings: refused before any teacher is trained
    with pytest.raises(ValueError, match=r"sft-gold-s0.json was scored by a study with other settings"):
        Record(earlier, "b" * 64, None).score("sft-gold-s0")  # its own out, rerun with other sizes
    with pytest.raises(ValueError, match="scores_from: .*nowhere is not a folder"):
        Record(tmp_path / "x", "a" * 64, tmp_path / "nowhere")


def test_a_seed_is_taken_whole_from_one_teacher_or_trained_here_in_full(tmp_path):
    """Seeds pool across machines, but a seed's arms pair: all learn from one teacher. A seed another teacher
    finished is taken with that teacher's own score; one it began but did not finish is trained again here, and its
    earlier arms are set aside, not tabulated beside this teacher's."""
    from distill.study.record import Record, teacher_folder

    earlier, here, there = tmp_path / "earlier", "h" * 64, "t" * 64
    made = Record(earlier, "a" * 64, None).with_teacher(there)
    made.write(made.own("teacher"), {"exact_match": 0.6})
    for name in ("sft-gold-s0", "kd-s0", "sft-gold-s1"):
        _arm(made, name)
    said = []
    record = Record(tmp_path / "evals", "a" * 64, earlier).with_teacher(here)
    _arm(record, "kd-s1")  # this machine had begun seed 1 too
    assert record.seed(["sft-gold-s0", "kd-s0"], said.append) == there and not said
    assert record.complete("kd-s0")["teacher"] == there
    assert record.teacher_score(there)["exact_match"] == 0.6  # copied with the seed it made
    assert (tmp_path / "evals" / teacher_folder(there) / "teacher.json").is_file()
    assert record.begun_elsewhere(["sft-gold-s0", "kd-s0"]) == {}
    assert record.begun_elsewhere(["sft-gold-s1", "kd-s1"]) == {"sft-gold-s1": there} and not said
    assert record.seed(["sft-gold-s1", "kd-s1"], said.append) == here
    assert said == [f"sft-gold-s1: made with another teacher ({there[:12]}) in a seed it did not finish; the seed "
                    "is trained here in full, so its arms all learn from one teacher"]
    assert record.complete("sft-gold-s1") is None and record.complete("kd-s1")["teacher"] == here
    with pytest.raises(ValueError, match=f"no score of teacher {here[:12]}"):
        record.teacher_score(here)


def _arm(record, name: str) -> None:
    record.write(name, {"exact_match": 0.5, "train_minutes": 1.0})
    (record.folder / f"{name}-closeness.json").write_text("{}")


def test_closeness_of_the_teacher_to_itself_is_zero_kl_and_full_agreement(tmp_path):
    """Teacher-forced along its own greedy answers, the teacher agrees with every token and has no KL to itself:
    the answers, the prompts and the positions line up."""
    from distill.demo import task
    from distill.study.closeness import Closeness

    measure = Closeness(tmp_path, "teacher-answers.json", TEACHER, task.take("test", 6, seed=0), threads=1, log=print)
    figures = measure.of("itself", TEACHER)
    assert figures["token_agreement"] == 1.0 and figures["kl_to_teacher"] == pytest.approx(0.0, abs=1e-6)
    student = measure.of("student", STUDENT)
    assert student["kl_to_teacher"] > 1e-4  # the demo student is close to its teacher, but not the teacher


def _prompt_ids(cache):
    import pyarrow.parquet as pq

    for shard in sorted(cache.glob("shard-*.parquet")):
        for row in pq.read_table(shard, columns=["prompt_id", "kept"]).to_pylist():
            if row["kept"]:
                yield json.dumps(row)


def test_bad_study_settings_are_refused_naming_the_setting(tmp_path):
    assert "on-policy" in load_settings([]).arms
    assert not {"on-policy-cold", "on-policy-mixed"} & set(load_settings([]).arms)
    with pytest.raises(ValueError, match=r"arms: .*unknown arm\(s\) nope"):
        load_settings(["arms=[sft-gold,nope]"])
    with pytest.raises(ValueError, match="must include sft-gold"):
        load_settings(["arms=[kd-t1-a1]"])
    with pytest.raises(ValueError, match="train.steps: .*greater than or equal to 1"):
        load_settings(["train.steps=0"])
    done = subprocess.run([sys.executable, "-m", "kdgate.cli", "distill", "study", "--out", str(tmp_path / "s"),
                           "seeds=[]"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "seeds" in done.stderr and "Traceback" not in done.stderr


def test_intervals_paired_tests_and_gap_shares_match_hand_worked_values():
    span = interval([0.1, 0.2, 0.3])  # sd 0.1, t(0.975, 2) = 4.3027
    assert span.mean == pytest.approx(0.2)
    assert (span.low, span.high) == pytest.approx((0.2 - 4.3027 * 0.1 / 3**0.5, 0.2 + 4.3027 * 0.1 / 3**0.5),
                                                  abs=1e-4)
    assert not span.excludes_zero() and interval([0.9, 1.0, 1.1]).excludes_zero()
    assert interval([0.5]).low is None and not interval([0.5]).excludes_zero()
    # differences 0.1, 0.2, 0.3: t = 0.2 / (0.1 / √3) = 3.464 on 2 degrees of freedom, two-sided p = 0.0742
    assert paired_p([0.7, 0.9, 1.1], [0.6, 0.7, 0.8]) == pytest.approx(0.0742, abs=1e-3)
    assert paired_p([0.7, 0.8], [0.6, 0.7]) is None  # every difference the same: no spread to test against
    gap = gap_recovered([0.8, 0.9], [0.6, 0.7], teacher=[1.0, 1.0])  # (0.8-0.6)/(1-0.6) = 0.5, (0.9-0.7)/(1-0.7)
    assert gap.mean == pytest.approx((0.5 + 2 / 3) / 2)
    # each seed against its own teacher: (0.8-0.6)/(0.8-0.6) = 1, (0.9-0.7)/(1.1-0.7) = 0.5
    assert gap_recovered([0.8, 0.9], [0.6, 0.7], teacher=[0.8, 1.1]).mean == pytest.approx(0.75)
    assert gap_recovered([0.8], [1.0], teacher=[1.0]) is None  # SFT at the teacher: no gap to recover


def test_on_policy_rows_are_the_students_samples_scored_by_the_teacher():
    tokenizer = AutoTokenizer.from_pretrained(STUDENT)
    student = AutoModelForCausalLM.from_pretrained(STUDENT, dtype=torch.float32)
    teacher = AutoModelForCausalLM.from_pretrained(TEACHER, dtype=torch.float32).eval()
    scorer = OnPolicy(TEACHER, tokenizer, tokenizer_hash(STUDENT), top_k=5, temperature=1.5, max_new_tokens=40,
                      device=torch.device("cpu"))
    from distill.demo import task

    prompts = [tokenizer.apply_chat_template(t.messages(), add_generation_prompt=True, tokenize=False)
               for t in task.take("train", 4, seed=3)]
    prompt_ids = [tokenizer(text, add_special_tokens=False)["input_ids"] for text in prompts]
    rows = [Row(ids + [tokenizer.eos_token_id], len(ids), np.zeros((1, 5), np.int32), np.zeros((1, 5), np.float16))
            for ids in prompt_ids]
    sampled = scorer.rows(student, rows, (0, 1), contextlib.nullcontext)
    again = scorer.rows(student, rows, (0, 1), contextlib.nullcontext)
    other = scorer.rows(student, rows, (0, 2), contextlib.nullcontext)
    assert [row.input_ids for row in sampled] == [row.input_ids for row in again]  # seeded
    assert [row.input_ids for row in sampled] != [row.input_ids for row in other]
    for before, row in zip(rows, sampled, strict=True):
        answer = row.input_ids[row.answer_start:]
        assert row.input_ids[:row.answer_start] == before.input_ids[:before.answer_start]
        assert answer[-1] == tokenizer.eos_token_id or len(answer) == 40
        assert row.topk_ids.shape == row.topk_logprobs.shape == (len(answer), 5)
        with torch.no_grad():
            logits = teacher(input_ids=torch.tensor([row.input_ids])).logits[0].log_softmax(-1)
        expected = logits[row.answer_start - 1:len(row.input_ids) - 1].topk(5, dim=-1)
        assert (row.topk_ids == expected.indices.numpy()).all()
        assert np.allclose(row.topk_logprobs.astype(np.float32), expected.values.numpy(), atol=2e-2)


def test_on_policy_needs_plain_top_k_kd():
    base = ["student.init=x", "cache=y", "out=z", f"loss.on_policy.teacher={TEACHER}"]
    with pytest.raises(ValueError, match="loss.on_policy .* needs loss.kind=kd and loss.estimator=topk"):
        load_config(None, [*base, "loss.estimator=sampled"])
    with pytest.raises(ValueError, match="loss.on_policy .* needs loss.kind=kd"):
        load_config(None, [*base, "loss.kind=sft"])
    assert load_config(None, [*base, "loss.divergence=reverse"]).loss.on_policy.teacher == TEACHER


def test_each_token_falls_under_the_field_whose_key_was_written_before_it():
    pieces = ['{"', 'queue', '":', ' "', 'repairs', '",', ' "', 'priority', '":', ' "P', '2', '"}']
    assert fields_of(pieces) == [OUTSIDE, OUTSIDE, "queue", "queue", "queue", "queue", "queue", "queue", "priority",
                                 "priority", "priority", "priority"]
