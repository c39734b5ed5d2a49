"""Gateway settings: environment variables with the `KDGATE_` prefix over an optional YAML file over defaults.

Nested keys use `__` in the environment (`KDGATE_STUDENT__BASE_URL`). The YAML file is `kdgate serve --config FILE`, or
the file named by `KDGATE_CONFIG`. Unknown keys are refused, so a typo fails loudly instead of being ignored.
With nothing set, the gateway serves the embedded demo: local student and teacher models from the repository.
"""

from __future__ import annotations

import difflib
import os
from contextvars import ContextVar
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from gateway.store_default import default_store_url
from runtime.config_file import YamlFileSource
from runtime.connections import ConnectionLimits
from runtime.demo import DEMO_STUDENT_DIR, DEMO_TEACHER_DIR, DEMO_TOOLS_DIR
from runtime.settings import BackendSettings, HttpClientSettings, is_loopback

DEMO_TOOLS_BACKENDS = {  # `kdgate serve --demo tools`
    "student": {"kind": "local", "model_dir": DEMO_TOOLS_DIR / "student", "model": "demo-tools-student"},
    "teacher": {"kind": "local", "model_dir": DEMO_TOOLS_DIR / "teacher", "model": "demo-tools-teacher"},
}
DEMO_BACKENDS = {
    "student": {"kind": "local", "model_dir": DEMO_STUDENT_DIR, "model": "demo-student"},
    "teacher": {"kind": "local", "model_dir": DEMO_TEACHER_DIR, "model": "demo-teacher"},
}
RELATIVE_TO_CONFIG = ("auth.keys_file",)  # relative paths in the YAML file that are read from its folder
OTHER_VARIABLES = {"KDGATE_CONFIG", "KDGATE_LOADTEST_API_KEY", "KDGATE_ADMIN_KEY", "KDGATE_GATEWAY_URL"}  # read by kdgate, but not gateway settings


class OnlineRecalibrationSettings(BaseModel):
    """Confidence policy only: nudge the threshold so the realised teacher fraction tracks a target."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(default=False, description="off: the calibrated threshold stays as the file says")
    target_teacher_fraction: float | None = Field(default=None, ge=0, le=1,
                                                  description="unset: the policy file's calibration target")
    window: int = Field(default=500, ge=10, le=100_000, description="live scores kept; larger is steadier, slower")
    min_samples: int = Field(default=100, ge=1, description="requests seen before the first adjustment")
    max_step: float = Field(default=0.01, gt=0, le=1, description="largest move per request, as a share of the "
                            "window's scores; 1 jumps straight to the window's quantile")

    @model_validator(mode="after")
    def check_window(self) -> OnlineRecalibrationSettings:
        if self.min_samples > self.window:
            raise ValueError("`min_samples` is larger than `window`; lower it or widen the window")
        return self


class HandoffSettings(BaseModel):
    """Mid-stream handoff: a student token less likely than `min_prob` is not sent; the teacher continues."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool | None = Field(default=None, description="needs a teacher; applies to every student-served "
                                 "request that does not force its route. Unset: on when both backends are the "
                                 "embedded demo models (where it measured best), off for any other models")
    min_prob: float = Field(default=0.9, gt=0, le=1, description="near 0: hands off almost never; 1: at the first "
                            "token that is not certain. 0.9 measured best on the demo task (99.7 % exact match "
                            "for 10.7 % of the teacher's tokens); tune it for your models with the handoff table "
                            "of `kdgate router eval`")
    target_teacher_fraction: float | None = Field(
        default=None, ge=0, le=1, description="the share of requests handoff sends to the teacher on healthy "
        "traffic, as measured for this student; exported as kdgate_teacher_fraction_target, so that the teacher "
        "share rising well above it (new traffic the student is unsure of) fires the drift alert "
        "KdgateTeacherShareHigh. null: no target, no such alert")


class RoutingSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    policy: Literal["student_only", "teacher_only", "random", "confidence"] = Field(
        default="student_only", description="which backend serves a request that does not force one; `random` "
        "and `confidence` need both backends")
    teacher_fraction: float = Field(default=0.2, ge=0, le=1, description="random: share of requests to the teacher")
    seed: int | None = Field(default=None, description="random: seed of the draw, for reproducible tests")
    policy_file: Path | None = Field(default=None, description="confidence: the file `kdgate router calibrate` "
                                     "wrote (prefix length, scorer, threshold)")
    online: OnlineRecalibrationSettings = Field(default_factory=OnlineRecalibrationSettings)
    handoff: HandoffSettings = Field(default_factory=HandoffSettings)

    @model_validator(mode="after")
    def check_policy_file(self) -> RoutingSettings:
        if self.policy == "confidence" and self.policy_file is None:
            raise ValueError("the `confidence` policy needs `policy_file`; write one with `kdgate router calibrate`")
        return self


class ShadowSettings(BaseModel):
    """Shadow comparisons: the teacher scores a sample of student answers off the request path (gateway.shadow)."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(default=True, description="needs a teacher; off: no shadow work, no store")
    sample_rate: float = Field(default=0.05, ge=0, le=1, description="share of requests drawn before routing for "
                               "the uniform drift sample: a student-served one is shadowed (its answer scored), an "
                               "escalated or handed-off one has the student's whole answer asked for and scored off "
                               "the request path; the drift metrics and alert read only this sample. 0: no sample, "
                               "no drift signal; 1: every request (teacher load roughly doubles, and the student "
                               "answers each escalation twice)")
    record_escalations: bool = Field(default=True, description="store every escalated or handed-off request (those "
                                     "in the drift sample are stored either way)")
    top_logprobs: int = Field(default=5, ge=1, le=20, description="alternatives per token on both sides; larger "
                              "tightens the KL lower bound")
    queue_size: int = Field(default=256, ge=1, description="jobs waiting, of each class (the drift sample's; the "
                            "others); beyond it a class's new jobs are dropped and counted")
    concurrency: int = Field(default=2, ge=1, le=64, description="shadow requests in flight toward the teacher")
    timeout_s: float = Field(default=60.0, gt=0, description="one try of a job (score + answer); a failed try is "
                             "retried after a backoff of 1 s doubling to 60 s")
    retry_for_s: float = Field(default=1800.0, gt=0, description="how long a stored job whose tries fail (teacher "
                               "down or restarting) is retried, counted from when it was made; then it is dropped "
                               "and counted (kdgate_shadow_dropped_total{reason=retries_exhausted}). Above the "
                               "teacher's restart time")
    drain_timeout_s: float = Field(default=10.0, ge=0, description="at shutdown (SIGTERM), how long the worker "
                                   "keeps working through its jobs; stored ones left over resume at the next start")
    window: int = Field(default=200, ge=1, description="shadowed answers in the rolling KL/agreement gauges")
    store_url: str | None = Field(default=None, description="SQLAlchemy URL: sqlite:///path (WAL) or "
                                  "postgresql+psycopg://user:pass@host/db; null: metrics only. Unset: this "
                                  "deployment's own file, var/kdgate-demo.sqlite3 for the embedded demo, else "
                                  "var/kdgate-<hash of the student backend>.sqlite3 (the banner names it)")
    max_age_days: float | None = Field(default=30.0, gt=0, description="records older than this are deleted")
    max_rows: int | None = Field(default=1_000_000, ge=1, description="oldest records beyond this are deleted")
    max_record_bytes: int = Field(default=1_000_000, ge=1024, description="larger records are rejected and counted")
    scrub_patterns: list[str] = Field(default_factory=list, description="extra regular expressions replaced by "
                                      "[REDACTED] in stored prompts (emails, phones, cards, keys always are)")


Permission = Literal["force_route", "prompt_logprobs"]
SHA256_HEX = r"^[0-9a-f]{64}$"
RESERVED_KEY_NAMES = frozenset({"admin", "metrics", "anonymous", "unknown"})  # the gateway's own principals


class KeySettings(BaseModel):
    """One API key of the chat API, stored as the SHA-256 of the key (`kdgate auth new-key` makes both)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$", description="who holds the key: in logs and in the "
                      "`key` label of kdgate_api_requests_total (letters, digits, `_.-`, at most 64)")
    sha256: str = Field(pattern=SHA256_HEX, description="hex SHA-256 of the key; the key itself is never stored")
    permissions: list[Permission] = Field(default_factory=list, description="what beyond plain chat it may do: "
                                          "force_route (the x-kdgate-force header: a teacher call on demand), "
                                          "prompt_logprobs (scores any text with the model)")
    requests_per_minute: int | None = Field(default=None, ge=1, description="this key's request rate limit; "
                                            "null: `limits.key_requests_per_minute`")
    tokens_per_minute: int | None = Field(default=None, ge=1, description="this key's prompt + completion token "
                                          "rate limit; null: `limits.key_tokens_per_minute`")

    @field_validator("name")
    @classmethod
    def check_not_reserved(cls, name: str) -> str:
        if name in RESERVED_KEY_NAMES:
            raise ValueError(f"the key name {name!r} is reserved for the gateway's own principals; choose another")
        return name


class AuthSettings(BaseModel):
    """Who may call what (see SECURITY.md). Bearer tokens, compared as SHA-256 digests in constant time."""

    model_config = ConfigDict(extra="forbid")

    mode: Literal["keys", "none"] | None = Field(
        default=None, description="keys: every API call needs a key; none: open to anyone who can reach the port "
        "(the banner says so). Unset: keys when any are configured, else open on a loopback address only — the "
        "gateway refuses to listen elsewhere without keys")
    keys: list[KeySettings] = Field(default_factory=list, description="chat API keys (also from `keys_file`)")
    keys_file: Path | None = Field(default=None, description="a YAML list of the same entries (`kdgate auth "
                                   "new-key >> FILE` appends one; a `keys:` list is read too), for secrets mounted "
                                   "from a vault or a Kubernetes Secret. A relative path is read from the settings "
                                   "file's folder when set there, from the working directory when set in "
                                   "KDGATE_AUTH__KEYS_FILE")
    admin_sha256: str | None = Field(default=None, pattern=SHA256_HEX, description="SHA-256 of the admin "
                                     "credential: /admin endpoints, /metrics, and chat with every permission")
    metrics_sha256: str | None = Field(default=None, pattern=SHA256_HEX, description="SHA-256 of the bearer token "
                                       "Prometheus sends for /metrics (its `authorization` scrape setting); "
                                       "without it /metrics needs the admin credential")

    @model_validator(mode="after")
    def check_names(self) -> AuthSettings:
        names = [key.name for key in self.keys]
        if len(names) != len(set(names)):
            raise ValueError("two `auth.keys` entries share a name; give each key its own")
        return self


class ResilienceSettings(BaseModel):
    """How the gateway treats a failing backend: circuit breakers, health checks, retries (gateway.breaker)."""

    model_config = ConfigDict(extra="forbid")

    breaker_failures: int = Field(default=5, ge=1, description="failures in a row that open a backend's circuit; "
                                  "while open its requests fail at once and the fallback serves them")
    breaker_open_s: float = Field(default=10.0, gt=0, description="how long a circuit stays open before one probe "
                                  "request is let through")
    health_interval_s: float | None = Field(default=5.0, gt=0, description="seconds between background readiness "
                                            "checks of every backend (kdgate_backend_up; a failing check opens the "
                                            "circuit, a passing one lets a probe through). null: no checks")
    retry_budget: float = Field(default=0.1, ge=0, le=1, description="share of an HTTP backend's requests that may "
                                "be retried once when they failed before any response (connection refused, a "
                                "keep-alive connection closed under them); 0: never retry")


class CanarySettings(BaseModel):
    """How a canary student version is judged against the active one (gateway.students.canary)."""

    model_config = ConfigDict(extra="forbid")

    min_requests: int = Field(default=50, ge=1, description="requests the canary must serve before it is judged; "
                              "fewer: no automatic decision either way")
    max_error_rate_increase: float = Field(default=0.02, ge=0, le=1, description="the canary's error rate may "
                                           "exceed the active version's by this much (absolute); more: rolled back")
    max_teacher_share_increase: float = Field(default=0.10, ge=0, le=1, description="the share of the canary's "
                                              "requests escalated to the teacher may exceed the active version's "
                                              "by this much; more: rolled back")
    max_ttft_p99_ratio: float | None = Field(default=2.0, ge=1, description="the canary's p99 time to first token "
                                             "may be this multiple of the active version's (plus `ttft_slack_s`), "
                                             "both over at least `min_requests` answers; more: rolled back. null: "
                                             "not judged on latency")
    ttft_slack_s: float = Field(default=0.05, ge=0, description="absolute slack on the p99 TTFT comparison, so that "
                                "a few milliseconds on a fast student do not roll a canary back")
    max_kl_increase: float | None = Field(default=None, ge=0, description="drift-sample KL (nats/token) the "
                                          "canary may add over the active version (needs drift-sample answers of "
                                          "both); null: not judged on divergence")
    clean_window_s: float | None = Field(default=None, gt=0, description="a canary judged healthy for this long "
                                         "after its minimum sample is promoted to active automatically; null: only "
                                         "by `kdgate student promote`")


class StudentsSettings(BaseModel):
    """Student versions: one truth in the store, picked up by every gateway process (gateway.students)."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(default=True, description="serve the store's active student version (needs "
                          "`shadow.store_url`); off: the configured student always, and no admin student API")
    poll_interval_s: float = Field(default=1.0, gt=0, le=60, description="how often each gateway process reads the "
                                   "store's student slot; a promotion reaches every process within about this long "
                                   "(plus the new version's load time)")
    reconcile_interval_s: float = Field(default=5.0, gt=0, le=300, description="how often each gateway process "
                                        "checks that every student replica lists the serving versions' LoRA "
                                        "adapters (vLLM, runtime LoRA) and loads any that a restarted or new "
                                        "replica lacks; until then such a replica's requests fall back to the "
                                        "teacher")
    initial_version: str = Field(default="initial", pattern=r"^[A-Za-z0-9_.-]{1,64}$", description="the name the "
                                 "configured student gets in the store on the first start (when `student.version` "
                                 "is unset)")
    keep_policy: bool = Field(default=False, description="a version without its own calibrated policy file may be "
                              "promoted under a `confidence` policy fitted to another student (online "
                              "recalibration restarts its window either way). false: refused with 400")
    canary: CanarySettings = Field(default_factory=CanarySettings)


class LimitsSettings(BaseModel):
    """Admission and backpressure: what the gateway takes on before it sheds with 429 or 503 and `Retry-After`."""

    model_config = ConfigDict(extra="forbid")

    max_in_flight: int = Field(default=256, ge=1, description="chat requests served at once by one gateway "
                               "process; more wait in a queue")
    max_queued: int = Field(default=256, ge=0, description="requests waiting for a slot; beyond it a request gets "
                            "503 at once. 0: no queue")
    queue_timeout_s: float = Field(default=5.0, gt=0, description="longest wait for a slot, then 503 with "
                                   "Retry-After")
    key_requests_per_minute: int | None = Field(default=None, ge=1, description="requests per key per minute "
                                                "(sliding window); a key's own `requests_per_minute` wins. null: "
                                                "no limit")
    key_tokens_per_minute: int | None = Field(default=None, ge=1, description="prompt + completion tokens per key "
                                              "per minute (sliding window; a request is admitted while the key is "
                                              "under it, its tokens counted when it finishes). null: no limit")
    redis_url: str | None = Field(default=None, description="redis://host:6379/0 shares the per-key windows "
                                  "between worker processes and replicas; null: each process counts alone. If "
                                  "Redis fails, requests are admitted and kdgate_limit_errors_total counts it")
    redis_prefix: str = Field(default="kdgate:limits", min_length=1, description="the namespace of this "
                              "deployment's windows in Redis (keys PREFIX:SERVED_MODEL:KEY:MINUTE:r|t): gateways "
                              "with the same prefix count a key's requests to a pair together (the workers and "
                              "replicas of one deployment); give every other deployment that shares the Redis "
                              "its own, or the two count each other's requests for keys of the same name. The "
                              "chart sets kdgate:limits:NAMESPACE:RELEASE")
    max_connections: int | None = Field(default=2048, ge=1, description="open connections one process keeps; at "
                                        "the cap the longest-idle connection is closed for a new one, and only when "
                                        "none is idle does the newcomer get 503 with Retry-After. null: no cap")
    keep_alive_s: float = Field(default=75.0, gt=0, description="how long an idle client connection (before its "
                                "first request or between requests) is kept open. Keep it above every client's "
                                "and load balancer's own idle timeout (httpx and the openai SDK: 5 s; AWS ALB: 60 "
                                "s): when both sides time out alike, a client reuses a connection the gateway is "
                                "closing and its request fails")
    header_timeout_s: float = Field(default=10.0, gt=0, description="a request's line and headers must arrive "
                                    "within this long of its first byte, else 408 and the connection is closed (a "
                                    "client trickling headers holds nothing for long)")
    max_header_bytes: int = Field(default=65536, ge=1024, description="largest request line plus headers; larger "
                                  "gets 431 and the connection is closed before more is read")

    def connections(self) -> ConnectionLimits:
        return ConnectionLimits(idle_timeout_s=self.keep_alive_s, header_timeout_s=self.header_timeout_s,
                                max_header_bytes=self.max_header_bytes, max_connections=self.max_connections)


class GatewaySettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="KDGATE_", env_nested_delimiter="__", extra="forbid",
                                      env_parse_none_str="null")

    host: str = Field(default="127.0.0.1", description="listen address; 0.0.0.0 to accept outside connections")
    port: int = Field(default=8000, ge=0, le=65535, description="listen port; 0 picks a free one")
    drain_timeout_s: float = Field(default=30.0, ge=0, description="at SIGTERM (a rollout, a scale-in, a drain) "
                                   "the gateway stops accepting connections and lets the answers in flight, streams "
                                   "included, finish for up to this long; then it cuts what is left. Size it to the "
                                   "longest answer you allow (the chart's grace period is sized from it)")
    workers: int = Field(default=1, ge=1, le=64, description="worker processes on the one port (uvicorn workers); "
                         "above 1 the backends must be http, metrics switch to prometheus-client's multiprocess "
                         "mode, and each worker keeps its own routing and shadow state. About one per core")
    served_model: str = Field(default="kdgate-demo", description="the model id clients send and /v1/models lists")
    student: BackendSettings = Field(default_factory=lambda: BackendSettings(**DEMO_BACKENDS["student"]))
    teacher: BackendSettings | None = Field(default_factory=lambda: BackendSettings(**DEMO_BACKENDS["teacher"]),
                                            description="null serves the student alone.")
    routing: RoutingSettings = Field(default_factory=RoutingSettings)
    shadow: ShadowSettings = Field(default_factory=ShadowSettings)
    http: HttpClientSettings = Field(default_factory=HttpClientSettings)
    auth: AuthSettings = Field(default_factory=AuthSettings)
    limits: LimitsSettings = Field(default_factory=LimitsSettings)
    resilience: ResilienceSettings = Field(default_factory=ResilienceSettings)
    students: StudentsSettings = Field(default_factory=StudentsSettings)

    max_tokens_limit: int = Field(default=4096, ge=1, description="largest max_tokens a request may ask for")
    default_max_tokens: int = Field(default=256, ge=1, description="max_tokens when a request sets none; "
                                    "the local engine lowers it to fit the model's context")
    max_top_logprobs: int = Field(default=20, ge=0, le=20, description="largest top_logprobs (vLLM caps at 20 "
                                  "unless started with --max-logprobs)")
    max_body_bytes: int = Field(default=1_048_576, ge=1024, description="larger request bodies get HTTP 413")
    body_read_timeout_s: float = Field(default=30.0, gt=0, description="a request body not fully received this "
                                       "long after its headers gets HTTP 408 (a slow or stalled client is let go)")
    docs_enabled: bool = Field(default=False, description="serve the interactive API pages /docs and /redoc "
                               "(/openapi.json is always served)")
    cors_allow_origins: list[str] = Field(default_factory=list, description="browser origins allowed to call the "
                                          "API cross-origin (e.g. [\"https://app.example.com\"]); empty: no CORS "
                                          "headers, so browsers refuse cross-origin calls")
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        default="info", description="info logs one line per request and ignored request fields")
    log_format: Literal["text", "json"] = Field(default="text", description="text: one escaped line per record; "
                                                "json: one JSON object per line, for log pipelines")

    @model_validator(mode="before")
    @classmethod
    def fill_backend_defaults(cls, values: dict) -> dict:
        """A partial backend (`KDGATE_STUDENT__THREADS=1`) keeps the demo model unless it names another one."""
        for role, demo in DEMO_BACKENDS.items():
            given = values.get(role) if isinstance(values, dict) else None
            if isinstance(given, dict) and given.get("kind", "local") == "local" and "model_dir" not in given:
                values[role] = demo | given
        return values

    @model_validator(mode="after")
    def check_defaults_fit(self) -> GatewaySettings:
        if self.default_max_tokens > self.max_tokens_limit:
            raise ValueError("`default_max_tokens` is above `max_tokens_limit`; lower it or raise the limit")
        return self

    @model_validator(mode="after")
    def check_exposure(self) -> GatewaySettings:
        """No keys and an address others can reach: refuse, unless openness was chosen (`auth.mode: none`)."""
        auth = self.auth
        if auth.mode == "keys" and not (auth.keys or auth.keys_file or auth.admin_sha256):
            raise ValueError("`auth.mode` is keys but no key is configured; add `auth.keys`, `auth.keys_file` or "
                             "`auth.admin_sha256` (`kdgate auth new-key` makes one)")
        if auth.mode is None and not (auth.keys or auth.keys_file or auth.admin_sha256) and not is_loopback(self.host):
            raise ValueError(f"the gateway would listen on {self.host} with no API keys: anyone who reaches it "
                             "could call both models. Add keys (`kdgate auth new-key`, then `auth.keys` or "
                             "`auth.keys_file`), or set `auth.mode: none` to run it open on purpose")
        return self

    @model_validator(mode="after")
    def check_cost_on_every_backend(self) -> GatewaySettings:
        """Cost is exported only for a gateway whose every backend is priced: one priced side alone would show the
        other's work as free."""
        priced = {role: config.cost is not None for role, config in self.backends().items()}
        if any(priced.values()) and not all(priced.values()):
            given, missing = (sorted(role for role, on in priced.items() if on == state) for state in (True, False))
            raise ValueError(f"`{given[0]}.cost` is set but `{missing[0]}.cost` is not: the {missing[0]}'s work "
                             f"would count as free in kdgate_cost_dollars_total; price both backends or neither")
        return self

    def backends(self) -> dict[str, BackendSettings]:
        """The configured backends by role: `student`, and `teacher` unless it is null."""
        return {role: config for role, config in (("student", self.student), ("teacher", self.teacher))
                if config is not None}

    def auth_required(self) -> bool:
        auth = self.auth
        return auth.mode == "keys" or (auth.mode is None and bool(auth.keys or auth.keys_file or auth.admin_sha256))

    @model_validator(mode="after")
    def resolve_handoff(self) -> GatewaySettings:
        """Teacher fallback is on by default for the embedded demo, whose threshold was measured; other models
        start without it until someone chooses theirs."""
        handoff = self.routing.handoff
        if handoff.enabled is None:  # copies, so that a settings object passed in is left as it was
            handoff = handoff.model_copy(update={"enabled": self.serves_demo_models(tools=None)})
            self.routing = self.routing.model_copy(update={"handoff": handoff})
        return self

    @model_validator(mode="after")
    def store_per_deployment(self) -> GatewaySettings:
        """An unset `shadow.store_url` becomes this deployment's own file (gateway.store_default); an explicit
        null stays null (metrics only)."""
        if "store_url" not in self.shadow.model_fields_set:
            url = default_store_url(self.student, self.serves_demo_models())
            self.shadow = self.shadow.model_copy(update={"store_url": url})
        return self

    def serves_demo_models(self, tools: bool | None = False) -> bool:
        """Both backends are the embedded demo's local models (whatever else about them is set): its plain pair,
        with `tools` its tool-calling pair (`kdgate serve --demo tools`), with None either."""
        def is_demo(backend: BackendSettings | None, demo_dir: Path) -> bool:
            return (backend is not None and backend.kind == "local"
                    and Path(backend.model_dir).resolve() == Path(demo_dir).resolve())

        def pair(folder: Path) -> bool:
            return is_demo(self.student, folder / "student") and is_demo(self.teacher, folder / "teacher")
        return (tools is not True and pair(DEMO_STUDENT_DIR.parent)) or (tools is not False and pair(DEMO_TOOLS_DIR))

    @classmethod
    def settings_customise_sources(cls, settings_cls: type[BaseSettings], init_settings: PydanticBaseSettingsSource,
                                   env_settings: PydanticBaseSettingsSource, dotenv_settings, file_secret_settings):
        refuse_unknown_environment(cls)
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        config_file = _config_file.get() or os.environ.get("KDGATE_CONFIG")
        if config_file:
            if not Path(config_file).is_file():
                raise FileNotFoundError(f"the settings file {config_file} is not a file; fix --config or KDGATE_CONFIG")
            sources.append(YamlFileSource(settings_cls, config_file, relative_to_file=RELATIVE_TO_CONFIG))
        return tuple(sources)


def refuse_unknown_environment(cls: type[BaseSettings]) -> None:
    """pydantic-settings drops unknown top-level variables silently (nested ones it refuses); refuse them too, so a
    typo such as KDGATE_MAX_BODY_BYTE fails at start instead of leaving the default in place."""
    prefix = cls.model_config["env_prefix"]
    known = {f"{prefix}{name}".upper() for name in cls.model_fields}
    for variable in sorted(os.environ):
        if not variable.upper().startswith(prefix) or variable.upper() in OTHER_VARIABLES or \
                variable.upper().startswith("KDGATE_TRAINER_"):  # the trainer service's own settings
            continue
        if variable.upper().split("__")[0] not in known:
            close = difflib.get_close_matches(variable.upper().split("__")[0], known, n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise ValueError(f"unknown setting {variable} in the environment{hint}; unset it, or see "
                             "docs/configuration.md for every key")


_config_file: ContextVar[Path | None] = ContextVar("kdgate_config_file", default=None)


def load_settings(config_file: Path | None = None, **overrides) -> GatewaySettings:
    """Settings from the environment and a YAML file (`config_file`, else `KDGATE_CONFIG`); the environment wins."""
    token = _config_file.set(config_file)
    try:
        return GatewaySettings(**overrides)
    finally:
        _config_file.reset(token)
