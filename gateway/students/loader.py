"""From a student version to a served student: its backend and the routing policy calibrated for it.

| version kind | configured student `local`                     | configured student `http` (vLLM)                     |
|--------------|------------------------------------------------|------------------------------------------------------|
| `model`      | a new local engine on `model_dir`              | refused: register a LoRA adapter or an endpoint      |
| `lora`       | the configured model with the adapter merged   | the same servers, `model: <student>@<version>` (the  |
|              |                                                | adapter is loaded on every replica at promotion)     |
| `endpoint`   | an HTTP backend on the version's own server (blue/green full-weight students)                          |

The configured student itself is the first version (`initial`): `model` when local, `endpoint` when http.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path

import httpx

from gateway.breaker import CircuitBreaker
from gateway.metrics import GatewayMetrics
from gateway.routing import build_policy
from gateway.settings import GatewaySettings
from gateway.students.slot import ServedStudent
from router.online import OnlineSettings
from router.policy import RoutingPolicy
from router.policy_file import load_policy, policy_from_file
from runtime.backends.factory import build_backend
from runtime.contract import Backend
from runtime.settings import BackendSettings, model_dir_problem
from runtime.store.versions import StudentVersion


def adapter_name(student_model: str, version: str) -> str:
    """A new name per version (vLLM issue #42125: a same-name reload keeps stale prefix-cache entries)."""
    return f"{student_model}@{version}"


def initial_version(settings: GatewaySettings) -> StudentVersion:
    """The configured student, as the version a store starts with."""
    student = settings.student
    name = student.version or settings.students.initial_version
    policy = str(settings.routing.policy_file) if settings.routing.policy_file else None
    if student.kind == "local":
        return StudentVersion(name=name, kind="model", model_dir=str(student.model_dir), policy_file=policy,
                              tokenizer_hash=_hash_or_none(student.model_dir), notes="the configured student")
    return StudentVersion(name=name, kind="endpoint", base_url=student.base_url, served_model=student.model,
                          policy_file=policy, notes="the configured student")


def version_problem(version: StudentVersion, configured: BackendSettings) -> str | None:
    """Why this gateway, with `configured` as its student backend, cannot serve `version`, or None. Checked before
    anything loads (gateway.preflight) and again when a version is built."""
    if version.kind == "endpoint":
        return None
    if configured.kind == "http":
        if version.kind == "model":
            return (f"it is a model folder ({version.model_dir}), but the student is served by {configured.base_url}: "
                    "register a LoRA adapter (`--adapter`) or a server of its own (`--base-url`)")
        return None
    if version.kind == "model":
        return model_dir_problem(Path(version.model_dir))
    if not Path(version.adapter_path).is_dir():
        return f"its adapter folder {version.adapter_path} does not exist"
    return None


class StudentLoader:
    def __init__(self, settings: GatewaySettings, client: httpx.AsyncClient | None,
                 metrics: GatewayMetrics | None = None):
        self.settings = settings
        self.client = client
        self.metrics = metrics

    async def load(self, version: StudentVersion) -> ServedStudent:
        """Build the version's backend (a local one loads its weights in a thread), its policy, its breaker."""
        backend = await asyncio.to_thread(self._backend, version)
        resilience = self.settings.resilience
        breaker = CircuitBreaker("student", self.metrics, resilience.breaker_failures,
                                 resilience.breaker_open_s) if self.metrics is not None else None
        return ServedStudent(version.name, backend, self.policy(version), breaker,
                             handoff_min_prob=version.handoff_min_prob)

    def policy(self, version: StudentVersion) -> RoutingPolicy:
        """The version's own calibrated policy when it has one, else the configured policy, built afresh (so an
        online recalibration starts a new window for the new student)."""
        routing = self.settings.routing
        if version.policy_file and routing.policy == "confidence":
            online = routing.online
            policy_file = load_policy(Path(version.policy_file))
            if not online.enabled:
                return policy_from_file(policy_file)
            target = online.target_teacher_fraction or policy_file.calibration.target_teacher_fraction
            return policy_from_file(policy_file, OnlineSettings(target_teacher_fraction=target, window=online.window,
                                                                min_samples=online.min_samples,
                                                                max_step=online.max_step))
        return build_policy(routing)

    def _backend(self, version: StudentVersion) -> Backend:
        configured = self.settings.student
        if version.kind == "endpoint":
            config = BackendSettings(kind="http", base_url=version.base_url, model=version.served_model,
                                     api_key=configured.api_key if configured.kind == "http" else None)
            return self._http(config)
        if configured.kind == "http":
            if version.kind == "model":
                raise ValueError(f"version `{version.name}`: {version_problem(version, configured)}")
            return self._http(configured.model_copy(update={"model": adapter_name(configured.model, version.name)}))
        if version.kind == "model":
            same = Path(version.model_dir).resolve() == Path(configured.model_dir).resolve()
            model = configured.model if same else adapter_name(configured.model or "student", version.name)
            return build_backend("student", configured.model_copy(update={"model_dir": Path(version.model_dir),
                                                                          "model": model}), None)
        from runtime.backends.local import LocalBackend

        engine = replace(configured.engine_settings(), adapter_dir=Path(version.adapter_path))
        return LocalBackend("student", engine, model_name=adapter_name(configured.model or
                                                                       Path(configured.model_dir).name, version.name))

    def _http(self, config: BackendSettings) -> Backend:
        if self.client is None:
            raise ValueError("an http student version needs the gateway's HTTP client; none was opened")
        on_retry = (lambda: self.metrics.retries.labels("student").inc()) if self.metrics else (lambda: None)
        return build_backend("student", config, self.client, self.settings.resilience.retry_budget, on_retry)


def _hash_or_none(folder) -> str | None:
    from runtime.tokenizer_hash import tokenizer_hash

    try:
        return tokenizer_hash(Path(folder))
    except (OSError, ValueError):
        return None
