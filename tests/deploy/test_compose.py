"""deploy/vllm/launch.yaml (the vLLM flags, checked against the project's settings) and deploy/compose.yaml, resolved by
`docker-compose config` (Debian's 1.29; no daemon needed): the vLLM services take their flags from launch.yaml, the
gateway and the trainer get valid settings that point at the compose services, secrets are files that
make-secrets.py writes in matching pairs, and Prometheus, Alertmanager and Grafana mount the project's one rules
file, receiver configuration and dashboard."""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

from tests import needs
from tests.conftest import ROOT
from tests.deploy.test_dockerfiles import command_line

DEPLOY = ROOT / "deploy"
LAUNCH = yaml.safe_load((DEPLOY / "vllm" / "launch.yaml").read_text())["services"]
VLLM_PORT = 8000  # `vllm serve`'s default: launch.yaml sets no --port
VLLM_LORA_RANKS = {1, 8, 16, 32, 64, 128, 256, 320, 512}  # vLLM's vllm/config/lora.py MaxLoRARanks
TEACHER_CACHE_TOP_K = 20  # the trainer's cached top-k (`kdgate distill generate --top-k 20`)


def flags(command: list[str]) -> dict[str, str | None]:
    assert all(word.startswith("--") for word in command), f"flags only (the model is the consumer's): {command}"
    return dict((word.split("=", 1) + [None])[:2] for word in command)


def upper_bound(model, field: str) -> int:
    return next(rule.le for rule in model.model_fields[field].metadata if hasattr(rule, "le"))


# --- deploy/vllm/launch.yaml ------------------------------------------------------------------------------------

@pytest.mark.parametrize("role", ["student", "teacher"])
def test_launch_gives_flags_only_and_leaves_model_port_and_tp_to_its_consumers(role):
    service = LAUNCH[f"vllm-{role}"]
    assert set(service) <= {"image", "command", "environment", "shm_size"}
    assert service["image"].startswith("vllm/vllm-openai:v") and service["image"][-1].isdigit()  # pinned release
    given = flags(service["command"])
    assert not {"--model", "--port", "--host", "--tensor-parallel-size"} & set(given)
    assert given["--served-model-name"] == role


@pytest.mark.parametrize("role", ["student", "teacher"])
def test_max_logprobs_covers_what_the_gateway_and_the_trainer_ask(role):
    from gateway.settings import GatewaySettings, ShadowSettings

    needed = max(upper_bound(GatewaySettings, "max_top_logprobs"), upper_bound(ShadowSettings, "top_logprobs"),
                 TEACHER_CACHE_TOP_K)
    assert int(flags(LAUNCH[f"vllm-{role}"]["command"])["--max-logprobs"]) >= needed


def test_the_student_serves_runtime_lora_for_every_recipe_rank():
    from distill.config import LoraConfig

    student = LAUNCH["vllm-student"]
    given = flags(student["command"])
    assert "--enable-lora" in given and student["environment"]["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] == "1"
    assert int(given["--max-loras"]) >= 2  # the old and the new version side by side while requests drain
    rank = int(given["--max-lora-rank"])
    assert rank in VLLM_LORA_RANKS
    recipes = sorted((ROOT / "distill" / "configs").glob("*.yaml"))
    assert recipes
    for recipe in recipes:
        lora = (yaml.safe_load(recipe.read_text()) or {}).get("lora") or {}
        assert LoraConfig(**lora).r <= rank, f"{recipe.name}: lora.r above --max-lora-rank"


def test_the_teacher_has_shared_memory_for_tensor_parallel_workers():
    assert LAUNCH["vllm-teacher"]["shm_size"].lower().endswith(("gb", "g"))


def test_the_speculative_decoding_example_is_valid_json_with_the_student_as_draft():
    lines = (DEPLOY / "vllm" / "launch.yaml").read_text().splitlines()
    (example,) = [line.split("#", 1)[1].strip() for line in lines if "--speculative-config=" in line]
    (flag,) = yaml.safe_load(example)
    config = json.loads(flag.split("=", 1)[1])
    assert config["method"] == "draft_model" and config["num_speculative_tokens"] >= 1
    assert config["model"] == "/models/student"  # where compose mounts the student (entrypoint below)


# --- deploy/compose.yaml ----------------------------------------------------------------------------------------

def compose_config(env: dict) -> subprocess.CompletedProcess:
    clean = {"PATH": os.environ.get("PATH", ""), "HOME": os.environ.get("HOME", "/root")}
    return subprocess.run([needs.tool("docker-compose"), "-f", str(DEPLOY / "compose.yaml"), "config"], check=False,
                          capture_output=True, text=True, timeout=120, env=clean | env, cwd=ROOT)


@pytest.fixture(scope="module")
def resolved() -> dict:
    done = compose_config({"MODELS_DIR": "/srv/models"})
    assert done.returncode == 0, done.stderr
    return yaml.safe_load(done.stdout)


@pytest.fixture(scope="module")
def made_secrets(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("secrets")
    done = subprocess.run([sys.executable, str(DEPLOY / "compose" / "make-secrets.py"), "--out", str(out)],
                          check=False, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return out


def mounts(service: dict) -> dict[str, str]:
    """target -> source, for volumes and secrets (secrets by their secret name)."""
    found = {}
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2]
        found[target] = source
    for secret in service.get("secrets", []):
        found[secret.get("target") or f"/run/secrets/{secret['source']}"] = f"secret:{secret['source']}"
    return found


def secret_target(service: dict, name: str) -> str:
    (target,) = [target for target, source in mounts(service).items() if source == f"secret:{name}"]
    return target


def test_config_requires_the_models_folder():
    done = compose_config({})
    assert done.returncode != 0 and "MODELS_DIR" in done.stderr


@pytest.mark.parametrize("role", ["student", "teacher"])
def test_vllm_services_take_image_flags_and_environment_from_launch_yaml(resolved, role):
    service, launch = resolved["services"][f"vllm-{role}"], LAUNCH[f"vllm-{role}"]
    assert service["image"] == launch["image"] and service["command"] == launch["command"]
    assert launch.get("environment", {}).items() <= service["environment"].items()
    assert service.get("shm_size") == launch.get("shm_size")
    assert service["entrypoint"][:2] == ["vllm", "serve"] and service["entrypoint"][2] == f"/models/{role}"
    assert mounts(service)["/models"] == "/srv/models"
    assert "ports" not in service  # vLLM has no auth: only the compose network reaches it
    if role == "teacher":
        assert service["entrypoint"][3].startswith("--tensor-parallel-size=")


def test_each_gpu_service_gets_its_own_gpus(resolved):
    """Docker's `count: 1` gives every container the first GPU: reservations name their devices."""
    seen = []
    for name in ("vllm-student", "vllm-teacher", "kdgate-trainer"):
        (device,) = resolved["services"][name]["deploy"]["resources"]["reservations"]["devices"]
        assert device["driver"] == "nvidia" and "gpu" in device["capabilities"] and "count" not in device
        seen += device["device_ids"]
    assert len(seen) == len(set(seen))


@pytest.mark.parametrize("role", ["student", "teacher"])
def test_the_gateway_points_at_the_vllm_services(resolved, role):
    environment = resolved["services"]["kdgate"]["environment"]
    url = urlsplit(environment[f"KDGATE_{role.upper()}__BASE_URL"])
    assert (url.hostname, url.port, url.path) == (f"vllm-{role}", VLLM_PORT, "/v1")
    assert url.hostname in resolved["services"]
    assert environment[f"KDGATE_{role.upper()}__KIND"] == "http"
    assert environment[f"KDGATE_{role.upper()}__MODEL"] == flags(LAUNCH[f"vllm-{role}"]["command"])[
        "--served-model-name"]


def with_environment(monkeypatch, environment: dict) -> None:
    for variable in [name for name in os.environ if name.startswith("KDGATE_")]:
        monkeypatch.delenv(variable)
    for variable, value in environment.items():
        monkeypatch.setenv(variable, str(value))


def test_the_gateway_gets_valid_settings_with_fallback_shadow_and_keys(resolved, made_secrets, monkeypatch):
    from gateway.settings import load_settings

    service = resolved["services"]["kdgate"]
    config = secret_target(service, "gateway-settings")
    assert command_line("gateway")[-2:] == ["--config", config]  # the image reads the mounted file
    with_environment(monkeypatch, service["environment"])
    settings = load_settings(made_secrets / "gateway.yaml")
    assert settings.routing.handoff.enabled is True and settings.shadow.enabled is True
    assert settings.auth_required() and settings.auth.keys and settings.auth.metrics_sha256
    store = urlsplit(settings.shadow.store_url)
    postgres = resolved["services"]["postgres"]["environment"]
    assert store.scheme == "postgresql+psycopg" and store.hostname == "postgres" in resolved["services"]
    assert (store.username, store.path) == (postgres["POSTGRES_USER"], "/" + postgres["POSTGRES_DB"])
    assert (made_secrets / "postgres-password").read_text() == store.password
    (port,) = service["ports"]  # 1.29 writes "host:container/tcp" or {published, target}
    assert (port["target"] if isinstance(port, dict) else int(port.split(":")[-1].split("/")[0])) == settings.port


def test_the_trainer_gets_valid_settings_that_reach_the_gateway_and_vllm(resolved, made_secrets, monkeypatch):
    from distill.online.settings import load_trainer_settings
    from gateway.settings import load_settings

    service = resolved["services"]["kdgate-trainer"]
    assert command_line("trainer")[-2:] == ["--config", secret_target(service, "trainer-settings")]
    with_environment(monkeypatch, resolved["services"]["kdgate"]["environment"])
    gateway = load_settings(made_secrets / "gateway.yaml")
    with_environment(monkeypatch, service["environment"])
    trainer = load_trainer_settings(made_secrets / "trainer.yaml")
    link = urlsplit(trainer.gateway.url)
    assert (link.hostname, link.port) == ("kdgate", gateway.port)
    assert trainer.tokens_required() and trainer.store_url == gateway.shadow.store_url
    assert digest(trainer.gateway.admin_key.get_secret_value()) == gateway.auth.admin_sha256
    assert trainer.handoff_target_teacher_fraction == gateway.routing.handoff.target_teacher_fraction
    # new student versions are LoRA adapters that vLLM reads where the trainer wrote them
    assert trainer.train.register_as == "adapter"
    rank = int(dict(item.split("=", 1) for item in trainer.train.overrides)["lora.r"])
    assert rank <= int(flags(LAUNCH["vllm-student"]["command"])["--max-lora-rank"])
    volume = mounts(service)[str(trainer.work_dir)]
    assert mounts(resolved["services"]["vllm-student"])[str(trainer.work_dir)] == volume
    assert volume in resolved["volumes"]


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def test_secrets_are_the_files_make_secrets_writes_in_matching_pairs(resolved, made_secrets):
    written = {path.name for path in made_secrets.iterdir()}
    assert {Path(secret["file"]).name for secret in resolved["secrets"].values()} == written
    assert all(Path(secret["file"]).parent == DEPLOY / "compose" / "secrets" for secret in resolved["secrets"].values())
    gateway = yaml.safe_load((made_secrets / "gateway.yaml").read_text())
    trainer = yaml.safe_load((made_secrets / "trainer.yaml").read_text())
    assert digest((made_secrets / "metrics-token").read_text()) == gateway["auth"]["metrics_sha256"]
    assert digest((made_secrets / "trainer-alerts-token").read_text()) == trainer["auth"]["alerts_sha256"]
    again = subprocess.run([sys.executable, str(DEPLOY / "compose" / "make-secrets.py"), "--out", str(made_secrets)],
                           check=False, capture_output=True, text=True, timeout=60)
    assert again.returncode != 0 and gateway == yaml.safe_load((made_secrets / "gateway.yaml").read_text())
    assert (DEPLOY / "compose" / "secrets" / ".gitignore").read_text().splitlines()[1:] == ["*", "!.gitignore"]


def test_no_service_has_a_credential_in_its_environment(resolved):
    for name, service in resolved["services"].items():
        for variable, value in (service.get("environment") or {}).items():
            assert not variable.endswith(("PASSWORD", "_KEY", "TOKEN", "STORE_URL", "SHA256")), f"{name}: {variable}"
            assert "@" not in str(value), f"{name}: {variable} looks like a URL with credentials"


def test_prometheus_mounts_the_one_rules_file_and_scrapes_the_compose_services(resolved):
    service = resolved["services"]["prometheus"]
    found = mounts(service)
    config_source = found["/etc/prometheus/prometheus.yml"]
    assert Path(config_source) == DEPLOY / "compose" / "prometheus.yml"
    rules = [target for target, source in found.items() if source == str(DEPLOY / "prometheus/rules/kdgate.yml")]
    assert len(rules) == 1 and not [source for source in found.values() if source.endswith((".yml", ".yaml"))
                                    and source not in (config_source, str(DEPLOY / "prometheus/rules/kdgate.yml"))]
    config = yaml.safe_load(Path(config_source).read_text())
    assert any(fnmatch.fnmatch(rules[0], f"/etc/prometheus/{pattern}") for pattern in config["rule_files"])
    project = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    assert [job["job_name"] for job in config["scrape_configs"]] == [job["job_name"] for job in
                                                                     project["scrape_configs"]]
    listening = {"kdgate": 8000, "vllm-student": VLLM_PORT, "vllm-teacher": VLLM_PORT, "alertmanager": 9093}
    targets = [target for job in config["scrape_configs"] for group in job["static_configs"]
               for target in group["targets"]]
    targets += config["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"]
    for target in targets:
        host, port = target.split(":")
        assert host in resolved["services"] and listening[host] == int(port), target
    (gateway_job,) = [job for job in config["scrape_configs"] if job["job_name"] == "kdgate-gateway"]
    assert gateway_job["authorization"]["credentials_file"] == secret_target(service, "metrics-token")


def test_promtool_accepts_the_compose_prometheus_config(tmp_path):
    token = tmp_path / "token"
    token.write_text("kdg-example")
    (tmp_path / "rules").mkdir()
    shutil.copy(DEPLOY / "prometheus" / "rules" / "kdgate.yml", tmp_path / "rules" / "kdgate.yml")
    text = (DEPLOY / "compose" / "prometheus.yml").read_text()
    (tmp_path / "prometheus.yml").write_text(text.replace("/etc/prometheus/kdgate-metrics-token", str(token)))
    done = subprocess.run([needs.tool("promtool"), "check", "config", str(tmp_path / "prometheus.yml")], check=False,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


def test_alertmanager_sends_the_drift_alert_to_the_trainer_service(resolved):
    from distill.online.settings import TrainerSettings

    service = resolved["services"]["alertmanager"]
    source = mounts(service)["/etc/alertmanager/alertmanager.yml"]
    assert Path(source) == DEPLOY / "alertmanager" / "alertmanager.yml"  # the project's file, as committed
    config = yaml.safe_load(Path(source).read_text())
    (receiver,) = [receiver for receiver in config["receivers"] if receiver["name"] == "kdgate-trainer"]
    (hook,) = receiver["webhook_configs"]
    url = urlsplit(hook["url"])
    assert url.hostname in resolved["services"] and "build" in resolved["services"][url.hostname]
    assert url.hostname == "kdgate-trainer" and url.path == "/v1/alerts"
    assert url.port == TrainerSettings.model_fields["port"].default
    assert hook["http_config"]["authorization"]["credentials_file"] == secret_target(service, "trainer-alerts-token")


def test_grafana_provisions_the_one_dashboard_and_the_prometheus_datasource(resolved):
    found = mounts(resolved["services"]["grafana"])
    (dashboard,) = [target for target, source in found.items() if source == str(DEPLOY / "grafana" / "kdgate.json")]
    provisioning = Path(found["/etc/grafana/provisioning"])
    assert provisioning == DEPLOY / "compose" / "grafana" / "provisioning"
    (provider,) = yaml.safe_load((provisioning / "dashboards" / "kdgate.yml").read_text())["providers"]
    assert Path(dashboard).parent == Path(provider["options"]["path"])
    (source,) = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())["datasources"]
    assert source["type"] == "prometheus" and source["isDefault"] is True
    assert urlsplit(source["url"]).hostname == "prometheus" in resolved["services"]


def test_monitoring_uis_are_published_on_loopback_only(resolved):
    for name in ("prometheus", "alertmanager", "grafana"):
        (port,) = resolved["services"][name]["ports"]
        assert str(port).startswith("127.0.0.1:"), f"{name}: {port}"


@pytest.mark.parametrize("path", ["compose.yaml", "vllm/launch.yaml", "compose/prometheus.yml",
                                  "compose/grafana/provisioning/datasources/prometheus.yml",
                                  "compose/grafana/provisioning/dashboards/kdgate.yml"])
def test_yaml_files_pass_yamllint(path):
    linter = needs.module("yamllint.linter", install=needs.DEV_EXTRA)
    from yamllint.config import YamlLintConfig

    config = YamlLintConfig("{extends: default, rules: {line-length: {max: 120}, document-start: disable, "
                            "braces: {max-spaces-inside: 1}, brackets: {max-spaces-inside: 1}, "
                            "comments: {min-spaces-from-content: 1}}}")
    problems = list(linter.run((DEPLOY / path).read_text(), config))
    assert not problems, "\n".join(f"{path}:{p.line}:{p.column} {p.message}" for p in problems)


def test_the_sample_trainer_settings_load_and_say_what_to_revisit():
    """deploy/trainer.yaml (named by `kdgate trainer serve --help`) loads into the trainer's settings as written."""
    from distill.online.settings import load_trainer_settings

    settings = load_trainer_settings(ROOT / "deploy" / "trainer.yaml")
    assert settings.selector == {"action": "redistill"} and settings.port == 8010
    assert "REVISIT" in (ROOT / "deploy" / "trainer.yaml").read_text()
