"""Settings of what lies below the services: one backend (local engine or HTTP server) and the shared HTTP client.

The gateway's settings nest these (`student`, `teacher`, `http`); the trainer builds backends from them too, through
`runtime.backends.factory`. Every knob is documented where it is declared (and in docs/configuration.md).
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

PLACEHOLDER_SECRETS = {"changeme", "change-me", "placeholder", "xxx", "your-api-key"}


class CostSettings(BaseModel):
    """What this backend's work costs, for the gateway's `kdgate_cost_dollars_total`: either a price per million
    tokens, or the price of its GPU time with the throughput that time buys (turned into a price per token). A
    request is charged for the tokens this backend read and wrote for it, so the figure is what the request costs at
    the utilisation the prices or throughputs were measured at; idle capacity is not charged to anyone."""

    model_config = ConfigDict(extra="forbid")

    prompt_per_million: float | None = Field(
        default=None, ge=0, description="dollars per million prompt tokens the backend reads (for the teacher after "
        "a handoff, the prompt plus the student's text sent so far). Set with `completion_per_million`; 0: prompts "
        "are free")
    completion_per_million: float | None = Field(
        default=None, ge=0, description="dollars per million tokens the backend generates (those it generated and "
        "the client never saw, as an escalated student's held-back tokens, included)")
    gpu_hour: float | None = Field(
        default=None, gt=0, description="the cost-of-time form instead: dollars per GPU-hour, with `gpus` and "
        "`completion_tokens_per_s`. A completion token then costs gpu_hour × gpus / 3600 / "
        "completion_tokens_per_s")
    gpus: int = Field(default=1, ge=1, le=4096, description="GPU form: GPUs per replica (its tensor-parallel size)")
    completion_tokens_per_s: float | None = Field(
        default=None, gt=0, description="GPU form: completion tokens one replica generates per second at the load "
        "you run it at (e.g. `vllm bench serve`'s output token throughput on your traffic); a lower figure (an "
        "emptier replica) makes each token dearer")
    prompt_tokens_per_s: float | None = Field(
        default=None, gt=0, description="GPU form: prompt tokens one replica reads per second, when prompts are to "
        "be charged on their own (then `completion_tokens_per_s` is decode throughput alone). null: prompts are not "
        "charged separately; their prefill time is inside the completion throughput measured on your traffic")

    @model_validator(mode="after")
    def check_one_form(self) -> CostSettings:
        per_token = self.prompt_per_million is not None or self.completion_per_million is not None
        per_time = self.gpu_hour is not None or self.completion_tokens_per_s is not None or \
            self.prompt_tokens_per_s is not None or "gpus" in self.model_fields_set
        if per_token and per_time:
            raise ValueError("`cost` mixes a price per million tokens with a GPU-hour price; give one form: "
                             "`prompt_per_million` and `completion_per_million`, or `gpu_hour`, `gpus` and "
                             "`completion_tokens_per_s`")
        if per_token and (self.prompt_per_million is None or self.completion_per_million is None):
            raise ValueError("`cost` needs both `prompt_per_million` and `completion_per_million` (0 is allowed)")
        if per_time and (self.gpu_hour is None or self.completion_tokens_per_s is None):
            raise ValueError("`cost` in GPU time needs `gpu_hour` and `completion_tokens_per_s` (and `gpus` "
                             "when a replica has more than one)")
        if not per_token and not per_time:
            raise ValueError("`cost` is empty; set `prompt_per_million` and `completion_per_million`, or "
                             "`gpu_hour` and `completion_tokens_per_s`, or remove it")
        return self

    def per_million(self) -> tuple[float, float]:
        """(prompt, completion) dollars per million tokens, whichever form was given."""
        if self.gpu_hour is None:
            return self.prompt_per_million, self.completion_per_million
        dollars_per_second = self.gpu_hour * self.gpus / 3600
        prompt = dollars_per_second / self.prompt_tokens_per_s * 1e6 if self.prompt_tokens_per_s else 0.0
        return prompt, dollars_per_second / self.completion_tokens_per_s * 1e6


class BackendSettings(BaseModel):
    """One backend. `local`: an in-process engine on `model_dir`. `http`: an OpenAI-compatible server (vLLM)."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["local", "http"] = Field(default="local", description="local: the model runs in the gateway's "
                                           "process; http: a server speaking vLLM's OpenAI API (vLLM, `kdgate engine`)")
    model_dir: Path | None = Field(default=None, description="local: a Hugging Face model directory")
    base_url: str | None = Field(default=None, description="http: e.g. http://127.0.0.1:8001/v1")
    model: str | None = Field(default=None, description="model id sent upstream; local default: the dir name")
    api_key: SecretStr | None = Field(default=None, description="http: bearer token; none for an open server")
    device: str = Field(default="auto", description="local: auto (cuda if present, else cpu), cpu, cuda, cuda:1")
    dtype: str = Field(default="auto", description="local: auto (bf16 on CUDA, fp32 on CPU), float32, bfloat16")
    max_batch_size: int = Field(default=32, ge=1, le=1024, description="local: sequences decoded together")
    threads: int | None = Field(default=None, ge=1, description="local: torch CPU threads; unset = torch default")
    first_token_timeout_s: float | None = Field(
        default=10.0, gt=0, description="a backend that has sent nothing this long after the request is treated as "
        "failed, and its fallback serves (the teacher for a failed student; the student's own answer for a failed "
        "teacher). Separate from `http.read_timeout_s`, which bounds silences once it streams. null: no deadline")
    stall_timeout_s: float | None = Field(
        default=30.0, gt=0, description="once it has sent its first token, the longest this backend may go silent "
        "before the answer is failed as stalled (a paused or wedged server; mid-answer there is nothing to fall "
        "back to, and the client gets an error event instead of waiting out `http.read_timeout_s`). null: only "
        "`http.read_timeout_s`")
    max_in_flight: int | None = Field(default=None, ge=1, description="requests sent to this backend at once "
                                      "by one gateway process; one more waits within its first-token deadline, "
                                      "then is served by the fallback (the student's own answer when the teacher "
                                      "is saturated). null: no cap")
    version: str | None = Field(default=None, description="a label for these weights (training run, git sha), "
                                "stored with shadow records")
    adapter_version: str | None = Field(default=None, description="the LoRA adapter served on top, if any")
    replica_urls: list[str] = Field(default_factory=list, description="http: every replica behind `base_url` (each "
                                    "ending in /v1), when it is a load-balanced Service: a student version's LoRA "
                                    "adapter is loaded on each one before the switch (each vLLM keeps its own). "
                                    "Empty: `base_url` is the one server")
    replicas_from_dns: bool = Field(default=False, description="http: every address `base_url`'s host resolves to "
                                    "is a replica too (a Kubernetes headless Service), looked up again at each "
                                    "reconciliation (`students.reconcile_interval_s`), so a replica that joins or "
                                    "restarts gets the serving versions' adapters")
    cost: CostSettings | None = Field(default=None, description="Unset: this backend is not priced, and the "
                                      "gateway exports cost only when every backend it has is priced "
                                      "(docs/shadow-and-monitoring.md).")

    @field_validator("model_dir")
    @classmethod
    def check_model_dir(cls, path: Path | None) -> Path | None:
        problem = model_dir_problem(path) if path is not None else None
        if problem:
            raise ValueError(problem)
        return path

    @model_validator(mode="after")
    def check_kind_fields(self) -> BackendSettings:
        if self.kind == "local":
            if self.model_dir is None:
                raise ValueError("a `local` backend needs `model_dir` (a Hugging Face model directory)")
        else:
            if not self.base_url or not self.model:
                raise ValueError("an `http` backend needs `base_url` (ending in /v1) and `model` (the served id)")
            if self.api_key is not None and self.api_key.get_secret_value().lower() in PLACEHOLDER_SECRETS:
                raise ValueError("`api_key` is still a placeholder; set the real key or remove it")
        return self

    def engine_settings(self):
        from runtime.engine.engine import EngineSettings

        return EngineSettings(model_dir=Path(self.model_dir), device=self.device, dtype=self.dtype,
                              max_batch_size=self.max_batch_size, threads=self.threads)


def model_dir_problem(path: Path) -> str | None:
    """Why `path` cannot be loaded as a Hugging Face model folder, or None when it can be tried."""
    path = Path(path)
    if not path.is_dir():
        return (f"{path} is not a directory; point it at a Hugging Face model folder (build the demo's with "
                "`kdgate demo build`)")
    if not (path / "config.json").is_file():
        return f"{path} has no config.json: it is not a Hugging Face model folder"
    return None


class HttpClientSettings(BaseModel):
    """The one shared `httpx.AsyncClient` toward HTTP backends."""

    model_config = ConfigDict(extra="forbid")

    connect_timeout_s: float = Field(default=5.0, gt=0, description="TCP+TLS connect; a down backend fails this fast")
    read_timeout_s: float = Field(default=120.0, gt=0, description="longest silence between two streamed bytes")
    write_timeout_s: float = Field(default=30.0, gt=0, description="sending a request body upstream")
    pool_timeout_s: float = Field(default=10.0, gt=0, description="wait for a free connection before failing")
    max_connections: int = Field(default=512, ge=1, description="per gateway process, across backends")
    max_keepalive_connections: int = Field(default=128, ge=0, description="idle connections kept open; 0 reconnects "
                                           "every request (adds a TCP handshake to TTFT)")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: only the machine's own counts
        return False
