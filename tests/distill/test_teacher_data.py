"""Teacher data: generation through real backends into a resumable Parquet cache, and the filters."""

from __future__ import annotations

import json
from dataclasses import replace

import httpx
import numpy as np
import pytest
from transformers import AutoTokenizer

from distill.data.cache import CachedAnswer, Manifest, read_answers, shards
from distill.data.filters import (
    Dedup,
    JsonFields,
    MatchesReference,
    MaxEntropy,
    SampleAgreement,
    Truncated,
    apply_filters,
)
from distill.data.generate import GenerateSettings, Prompt, generate, load_prompts
from distill.demo import task
from gateway.settings import BackendSettings
from runtime.backends.http import HttpBackend
from runtime.backends.local import LocalBackend
from runtime.contract import BackendInfo
from runtime.tokenizer_hash import tokenizer_hash

K = 5


def demo_prompts(count: int) -> list[Prompt]:
    return [Prompt(f"p{index}", ticket.messages(), ticket.answer_json())
            for index, ticket in enumerate(task.take("train", count, seed=3))]


def manifest(teacher_dir, **extra) -> Manifest:
    return Manifest(**({"teacher": "demo-teacher", "tokenizer_hash": tokenizer_hash(teacher_dir), "top_k": K,
                        "temperature": 0.0, "samples_per_prompt": 1, "seed": 0, "prompts": "test"} | extra))


@pytest.fixture(scope="module")
def local_teacher(demo_dirs):
    backend = LocalBackend("teacher", BackendSettings(model_dir=demo_dirs[1], threads=1).engine_settings())
    yield backend
    backend.engine.shutdown()


class CountingBackend:
    """The teacher as it is, noting each request it is asked (a measuring instrument, not a stand-in)."""

    def __init__(self, backend):
        self.backend, self.info, self.asked = backend, backend.info, []

    def generate(self, request):
        self.asked.append(request.request_id)
        return self.backend.generate(request)


async def test_generate_caches_ids_and_top_k_and_resumes(local_teacher, demo_dirs, tmp_path):
    from transformers import AutoTokenizer

    prompts = demo_prompts(12)
    settings = GenerateSettings(top_k=K, shard_size=5, concurrency=8)
    result = await generate(local_teacher, prompts, tmp_path, settings, manifest(demo_dirs[1]),
                            [Truncated(), JsonFields(("queue", "priority", "reply"))])
    assert result.rows == 12 and len(shards(tmp_path)) == 3
    tokenizer = AutoTokenizer.from_pretrained(demo_dirs[1])
    answers = list(read_answers(tmp_path, K))
    for answer in answers:
        assert tokenizer.decode(answer.token_ids, skip_special_tokens=True) == answer.text
        assert (answer.topk_ids[:, 0] == answer.token_ids).all()  # greedy: the sampled token is listed first
        assert answer.topk_ids.shape == (len(answer.token_ids), K)
        assert (np.diff(answer.topk_logprobs[:, 1:].astype(np.float32), axis=1) <= 1e-3).all()  # then by rank
    # a crash that lost the last shard: the rerun redoes only its prompts (12 in shards of 5: p10 and p11)
    kept_shards = shards(tmp_path)[:-1]
    stamps = [shard.stat().st_mtime_ns for shard in kept_shards]
    shards(tmp_path)[-1].unlink()
    counting = CountingBackend(local_teacher)
    again = await generate(counting, prompts, tmp_path, settings, manifest(demo_dirs[1]))
    assert again.rows == 12 and len(shards(tmp_path)) == 3
    assert sorted(counting.asked) == ["distill-p10-0", "distill-p11-0"]
    assert [shard.stat().st_mtime_ns for shard in kept_shards] == stamps
    assert sorted(answer.prompt_id for answer in read_answers(tmp_path, K)) == sorted(p.id for p in prompts)
    with pytest.raises(ValueError, match="other settings .*top_k"):
        await generate(local_teacher, prompts, tmp_path, GenerateSettings(top_k=3), manifest(demo_dirs[1], top_k=3))


async def test_an_http_teacher_gives_the_same_cache(engine_server, local_teacher, demo_dirs, tmp_path):
    prompts = demo_prompts(4)
    async with httpx.AsyncClient(timeout=60) as client:
        remote = HttpBackend(BackendInfo("teacher", engine_server.model, "http"), engine_server.base_url, client)
        await generate(remote, prompts, tmp_path / "http", GenerateSettings(top_k=K), manifest(demo_dirs[1]))
    await generate(local_teacher, prompts, tmp_path / "local", GenerateSettings(top_k=K), manifest(demo_dirs[1]))
    for a, b in zip(read_answers(tmp_path / "http", K), read_answers(tmp_path / "local", K), strict=True):
        assert a.text == b.text and (a.token_ids == b.token_ids).all() and (a.topk_ids == b.topk_ids).all()
        assert np.allclose(a.topk_logprobs.astype(np.float32), b.topk_logprobs.astype(np.float32), atol=1e-2)


def answer(text: str, reference: str | None = None, finish: str = "stop", logprobs=None) -> CachedAnswer:
    logprobs = np.log(np.array(logprobs or [[0.99, 0.005]], dtype=np.float64)).astype(np.float16)
    ids = np.tile(np.arange(logprobs.shape[1], dtype=np.int32), (logprobs.shape[0], 1))
    return CachedAnswer("p", 0, [], text, finish, ids[:, 0], ids, logprobs, reference=reference)


def test_filters_name_why_they_drop():
    good = '{"queue": "billing", "priority": "P2", "reply": "Hi"}'
    checks = [Truncated(), JsonFields(("queue", "priority", "reply")), MatchesReference(), MaxEntropy(0.5)]
    cases = {
        "truncated": answer(good, finish="length"),
        "invalid_json": answer('{"queue": "billing"'),
        "wrong_answer": answer(good, reference='{"queue": "repairs", "priority": "P2", "reply": "Hi"}'),
        "unsure_teacher": answer(good, logprobs=[[0.4, 0.3]]),
        None: answer(good, reference=json.dumps(json.loads(good), indent=2)),  # same JSON, other spacing
    }
    for reason, item in cases.items():
        (marked,) = apply_filters([item], checks, [])
        assert (marked.kept, marked.drop_reason) == (reason is None, reason)


def test_prompt_level_filters():
    a, b = '{"x": "1"}', '{"x": "2"}'
    marked = apply_filters([answer(a), answer(a), answer(b)], [], [SampleAgreement(0.5), Dedup()])
    assert [(item.kept, item.drop_reason) for item in marked] == \
        [(True, None), (False, "duplicate"), (False, "samples_disagree")]
    split = apply_filters([answer(a), answer(b)], [], [SampleAgreement(0.6)])
    assert [item.drop_reason for item in split] == ["samples_disagree", "samples_disagree"]


def test_bad_prompt_files_and_settings_are_refused(tmp_path):
    (tmp_path / "p.jsonl").write_text('{"prompt": "hi"}\n{"nothing": 1}\n')
    with pytest.raises(ValueError, match="p.jsonl:2"):
        load_prompts(tmp_path / "p.jsonl")
    (tmp_path / "dup.jsonl").write_text('{"id": "a", "prompt": "x"}\n{"id": "a", "prompt": "y"}\n')
    with pytest.raises(ValueError, match="unique"):
        load_prompts(tmp_path / "dup.jsonl")
    with pytest.raises(ValueError, match="temperature"):
        GenerateSettings(samples=3, temperature=0.0)


def test_tokenizer_hash_tells_tokenizers_apart(demo_dirs, tmp_path):
    assert tokenizer_hash(demo_dirs[0]) == tokenizer_hash(demo_dirs[1])  # the demo pair shares one tokenizer
    changed = tmp_path / "tok"
    changed.mkdir()
    original = json.loads((demo_dirs[1] / "tokenizer.json").read_text())
    original["added_tokens"] = original.get("added_tokens", []) + [{"id": 99999, "content": "<x>", "special": True,
                                                                    "single_word": False, "lstrip": False,
                                                                    "rstrip": False, "normalized": False}]
    (changed / "tokenizer.json").write_text(json.dumps(original))
    assert tokenizer_hash(changed) != tokenizer_hash(demo_dirs[1])
    # Re-saved by transformers (the trainer's output model does this), a tokenizer keeps its hash: the padding
    # section of tokenizer.json, which save_pretrained rewrites, decides no token ids.
    resaved = tmp_path / "resaved"
    tokenizer = AutoTokenizer.from_pretrained(str(demo_dirs[1]))
    tokenizer.save_pretrained(str(resaved))
    padded = json.loads((resaved / "tokenizer.json").read_text())
    padded["padding"] = {"strategy": "BatchLongest", "direction": "Right", "pad_to_multiple_of": 8, "pad_id": 0,
                         "pad_type_id": 0, "pad_token": "<|pad|>"}
    (resaved / "tokenizer.json").write_text(json.dumps(padded))
    assert tokenizer_hash(resaved) == tokenizer_hash(demo_dirs[1])
    with pytest.raises(ValueError, match="no tokenizer files"):
        tokenizer_hash(tmp_path)


def test_a_prompts_tools_are_cached_with_its_answer_and_older_shards_read_without_them(tmp_path):
    import pyarrow.parquet as pq

    from distill.data.cache import write_shard
    from distill.demo.tools import TOOLS

    offered = replace(answer('<tool_call>\n{"name": "lookup_order", "arguments": {"order_number": "36010"}}\n'
                             '</tool_call>'), tools=list(TOOLS))
    write_shard(tmp_path, 0, [offered, answer('{"x": "1"}')])
    assert [item.tools for item in read_answers(tmp_path, 2)] == [list(TOOLS), None]
    older = tmp_path / "older"
    older.mkdir()
    pq.write_table(pq.read_table(shards(tmp_path)[0]).drop_columns(["constraint", "tools"]),
                   older / "shard-00000.parquet")
    assert [(item.text, item.tools) for item in read_answers(older, 2)] == [(offered.text, None), ('{"x": "1"}', None)]
    (tmp_path / "p.jsonl").write_text(json.dumps({"messages": [{"role": "user", "content": "hi"}],
                                                  "tools": list(TOOLS)}) + '\n{"prompt": "plain"}\n')
    assert [prompt.tools for prompt in load_prompts(tmp_path / "p.jsonl")] == [list(TOOLS), None]
