"""The trainer service's settings: `KDGATE_TRAINER_` environment variables over an optional YAML file over defaults.

Nested keys use `__` (`KDGATE_TRAINER_GATE__GOLDEN_TOLERANCE=0.02`); the file is `kdgate trainer serve --config
FILE`. Unknown keys are refused. With nothing set it serves the embedded demo's loop on loopback: the store and the
gateway of `./dev serve`.
"""

from __future__ import annotations

import os
from contextvars import ContextVar
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict, YamlConfigSettingsSource

from runtime.demo import ARTIFACTS_DIR
from runtime.settings import is_loopback

SHA256_HEX = r"^[0-9a-f]{64}$"
CONFIGS = Path(__file__).resolve().parent.parent / "configs"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TrainerAuthSettings(_Strict):
    alerts_sha256: str | None = Field(default=None, pattern=SHA256_HEX, description="SHA-256 of the bearer token "
                                      "Alertmanager sends to /v1/alerts (its `http_config.authorization`)")
    admin_sha256: str | None = Field(default=None, pattern=SHA256_HEX, description="SHA-256 of the token for the "
                                     "jobs API (/v1/jobs) and /metrics")
    mode: Literal["tokens", "none"] | None = Field(default=None, description="none: no tokens on purpose (refused "
                                                   "on a non-loopback address otherwise); unset: tokens when set")


class GatewayLink(_Strict):
    url: str = Field(default="http://127.0.0.1:8000", description="the gateway whose student the trainer replaces "
                     "(any replica: promotions go through its admin API)")
    admin_key: SecretStr | None = Field(default=None, description="the gateway's admin credential; none for an open "
                                        "local gateway")
    model: str | None = Field(default=None, description="this trainer's pair when the gateway serves several "
                              "(`kdgate serve --config A --config B`): its `served_model`, sent as the "
                              "x-kdgate-model header that picks the pair's admin API. null: a gateway of one pair")
    timeout_s: float = Field(default=600.0, gt=0, description="a promotion's longest wait (the new weights load "
                             "before it answers)")


class DatasetSettings(_Strict):
    min_records: int = Field(default=50, ge=1, description="fewer usable records since the active version was "
                             "promoted: the job waits (`gather_wait_s`), then is `skipped`, with the count")
    gather_wait_s: float = Field(default=0.0, ge=0, description="how long a job waits for `min_records` (an alert "
                                 "fires as soon as drift shows; the records to learn from keep coming). 0: no wait")
    on_policy_share: float = Field(default=0.5, ge=0, le=1, description="share of on-policy examples (the "
                                   "student's own answers with the teacher's top-k at each of its tokens) among the "
                                   "training examples, the scarcer kind repeated to reach it; the rest are "
                                   "off-policy (the teacher's own answers). 0: off-policy only; 1: on-policy only")
    holdout_share: float = Field(default=0.2, gt=0, lt=1, description="the newest records kept out of training to "
                                 "judge the candidate (time-ordered, never shuffled in)")
    max_records: int = Field(default=20_000, ge=1, description="most recent records read")
    replay_cache: Path | None = Field(default=None, description="the active student's original distillation "
                                      "cache (`kdgate distill generate`): some of its answers are rehearsed beside "
                                      "the live records. null: live records only")
    replay_share: float = Field(default=0.5, ge=0, lt=1, description="share of the training examples drawn from "
                                "`replay_cache`; 0: none")


class TrainSettings(_Strict):
    config: Path = Field(default=CONFIGS / "redistill.yaml", description="the recipe's YAML for a re-distillation")
    overrides: list[str] = Field(default_factory=list, description="`key=value` overrides of that config")
    threads: int | None = Field(default=None, ge=1, description="torch CPU threads of the job")
    register_as: Literal["model", "adapter"] = Field(default="model", description="model: the merged weights (a "
                                                     "local student); adapter: the LoRA adapter alone, for a vLLM "
                                                     "student's runtime LoRA (the recipe must train with LoRA)")


class GoldenSettings(_Strict):
    path: Path = Field(default=ARTIFACTS_DIR / "golden.jsonl", description="the fixed golden set: JSONL of "
                       "{messages, reference, slice}; every candidate is evaluated on it, slice by slice")
    examples: int | None = Field(default=None, ge=1, description="use N spread evenly over the file, every slice "
                                   "keeping its share (quicker, noisier)")


class GateSettings(_Strict):
    min_kl_drop: float = Field(default=0.05, ge=0, lt=1, description="held-out KL to the teacher must fall by at "
                               "least this share of the active version's")
    agreement_tolerance: float = Field(default=0.0, ge=0, le=1, description="held-out token agreement with the "
                                       "teacher may fall by at most this much")
    golden_tolerance: float = Field(default=0.01, ge=0, le=1, description="golden-set exact match may fall by at "
                                    "most this much on every slice (or by more, when a paired test does not find "
                                    "the drop significant)")
    significance: float = Field(default=0.05, gt=0, lt=1, description="a slice's drop beyond `golden_tolerance` "
                                "rejects the candidate when the one-sided exact McNemar test on the tickets the two "
                                "models answer differently gives p below this; larger: stricter")
    valid_tolerance: float = Field(default=0.0, ge=0, le=1, description="the share of valid answers (JSON for the "
                                   "demo) may fall by at most this much")
    ece_tolerance: float = Field(default=0.02, ge=0, le=1, description="calibration error (ECE on the golden "
                                 "references) may rise by at most this much")


class KubernetesSettings(_Strict):
    namespace: str = Field(default="kdgate", description="where TrainJobs are created")
    runtime_ref: str = Field(default="torch-distributed", description="the Kubeflow Trainer runtime "
                             "(ClusterTrainingRuntime) the TrainJob uses")
    image: str = Field(default="ghcr.io/kdgate/trainer:latest", description="the trainer image (the same entrypoint)")
    num_nodes: int = Field(default=1, ge=1, description="nodes the TrainJob spans (torchrun across them)")
    num_proc_per_node: int = Field(default=1, ge=1, description="processes per node (one per GPU)")
    resources_per_node: dict[str, str] = Field(default_factory=lambda: {"nvidia.com/gpu": "1"},
                                               description="limits per node, e.g. {\"nvidia.com/gpu\": \"8\"}")
    config_map: str = Field(default="kdgate-trainer", description="the ConfigMap holding this service's YAML")
    store_secret: str = Field(default="kdgate-store", description="the Secret whose `url` is the store URL")
    volumes: list[dict] = Field(default_factory=list, description="Kubernetes volumes every pod of a TrainJob gets "
                                "(the chart gives the trainer pod's own: the shared work volume, the student's "
                                "weights), patched into the runtime's pod template")
    volume_mounts: list[dict] = Field(default_factory=list, description="their mounts in the training container, at "
                                      "the paths the settings name (`work_dir`, `student_base_dir`)")
    runtime_job: str = Field(default="node", description="the runtime's replicated job and container that run the "
                             "trainer (`node` in Kubeflow's torch-distributed runtime); the patch targets them")


class TrainerSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="KDGATE_TRAINER_", env_nested_delimiter="__", extra="forbid",
                                      env_parse_none_str="null")

    host: str = Field(default="127.0.0.1", description="listen address")
    port: int = Field(default=8010, ge=0, le=65535, description="listen port (Alertmanager's webhook URL)")
    store_url: str = Field(default="sqlite:///var/kdgate-demo.sqlite3", description="the record store the "
                           "gateway writes (shadow and escalation records, versions, jobs); the default is the "
                           "embedded demo gateway's own; for any other gateway, the URL its banner names")
    work_dir: Path = Field(default=Path("var/trainer"), description="job folders: datasets, the trained student, "
                           "logs (a promoted student's weights stay here: keep it on durable storage)")
    auth: TrainerAuthSettings = Field(default_factory=TrainerAuthSettings)
    gateway: GatewayLink = Field(default_factory=GatewayLink)
    selector: dict[str, str] = Field(default_factory=lambda: {"action": "redistill"}, description="labels a firing "
                                     "alert must carry to start a job")
    runner: Literal["local", "kubernetes"] = Field(default="local", description="local: the job runs as a "
                                                   "subprocess here; kubernetes: as a Kubeflow TrainJob")
    job_timeout_s: float = Field(default=3600.0, gt=0, description="a job running longer is stopped and failed")
    requeue_on_restart: bool = Field(default=False, description="a job left running by a trainer that died is "
                                     "queued again (true) or failed with `trainer restarted` (false)")
    poll_interval_s: float = Field(default=1.0, gt=0, description="how often the runner and the schedules look")
    max_body_bytes: int = Field(default=1_048_576, ge=1024, description="largest request body (an Alertmanager "
                                "delivery is a few KiB per alert); larger gets 413 before it is read")
    schedule_interval_s: float | None = Field(default=None, gt=0, description="a job every this many seconds when "
                                              "`dataset.min_records` new records exist; null: no schedule")
    promotion_cooldown_s: float = Field(default=1800.0, ge=0, description="after a student version becomes "
                                        "active, drift alerts about it start no job for this long (one drift "
                                        "episode, one job): its windows fill with its own answers first, and "
                                        "re-distillations do not run back to back. Still drifting after it: a new "
                                        "episode")
    teacher_change: bool = Field(default=True, description="a new teacher version in the records starts a job "
                                 "(records scored by the old teacher are then not used)")
    canary_fraction: float | None = Field(default=None, gt=0, lt=1, description="promote an admitted student as "
                                          "a canary first (the gateway judges and completes or rolls it back); "
                                          "null: promote at once")
    student_base_dir: Path | None = Field(default=None, description="for a gateway whose student is served over "
                                          "HTTP (vLLM): its weights as a model folder readable here (the checkpoint "
                                          "vLLM loads, unquantized). Jobs train from it while that server is the "
                                          "active version, and merge LoRA versions over it. null: a local student's "
                                          "folder from the store")
    handoff_target_teacher_fraction: float | None = Field(default=None, gt=0, lt=1, description="with mid-stream "
                                                          "handoff: refit each admitted student's handoff floor "
                                                          "(`handoff_min_prob`) so that this share of the held-out "
                                                          "requests hands off (set it to the gateway's "
                                                          "`routing.handoff.target_teacher_fraction`); null: the new "
                                                          "student keeps the gateway's `min_prob`")
    dataset: DatasetSettings = Field(default_factory=DatasetSettings)
    train: TrainSettings = Field(default_factory=TrainSettings)
    golden: GoldenSettings = Field(default_factory=GoldenSettings)
    gate: GateSettings = Field(default_factory=GateSettings)
    kubernetes: KubernetesSettings = Field(default_factory=KubernetesSettings)

    @model_validator(mode="after")
    def check_exposure(self) -> TrainerSettings:
        """No tokens and an address others can reach: refused, unless openness was chosen (`auth.mode: none`)."""
        auth = self.auth
        has_tokens = bool(auth.alerts_sha256 or auth.admin_sha256)
        if auth.mode == "tokens" and not has_tokens:
            raise ValueError("`auth.mode` is tokens but none is set; set `auth.alerts_sha256` and "
                             "`auth.admin_sha256` (`kdgate auth new-key` makes a key and its digest)")
        if auth.mode is None and not has_tokens and not is_loopback(self.host):
            raise ValueError(f"the trainer would listen on {self.host} with no tokens: anyone could start jobs. Set "
                             "`auth.alerts_sha256` and `auth.admin_sha256`, or `auth.mode: none` on purpose")
        return self

    def tokens_required(self) -> bool:
        auth = self.auth
        return auth.mode == "tokens" or (auth.mode is None and bool(auth.alerts_sha256 or auth.admin_sha256))

    @classmethod
    def settings_customise_sources(cls, settings_cls: type[BaseSettings], init_settings: PydanticBaseSettingsSource,
                                   env_settings: PydanticBaseSettingsSource, dotenv_settings, file_secret_settings):
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        config_file = _config_file.get() or os.environ.get("KDGATE_TRAINER_CONFIG")
        if config_file:
            if not Path(config_file).is_file():
                raise FileNotFoundError(f"the trainer settings file {config_file} is not a file; fix --config")
            sources.append(YamlConfigSettingsSource(settings_cls, yaml_file=config_file))
        return tuple(sources)


_config_file: ContextVar[Path | None] = ContextVar("kdgate_trainer_config", default=None)


def load_trainer_settings(config_file: Path | None = None, **overrides) -> TrainerSettings:
    token = _config_file.set(config_file)
    try:
        return TrainerSettings(**overrides)
    finally:
        _config_file.reset(token)
