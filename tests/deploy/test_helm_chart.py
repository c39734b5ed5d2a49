"""helm/kdgate, rendered offline by Helm's own Go SDK (helm_python) with the default values and the production
example, checked the way a cluster would: Kubernetes' JSON schemas (strict), the Prometheus Operator CRDs, promtool,
amtool, and the gateway's and trainer's own settings classes loading the rendered environment."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlparse

import pytest
import sqlalchemy
import yaml

from tests import needs
from tests.conftest import free_port
from tests.deploy.helm_render import (
    CHART,
    NAMESPACE,
    ROOT,
    notes,
    one,
    production_values,
    render,
    selects,
    setting_variables,
    two_pairs_values,
)

helm_python = needs.module("helm_python", install=needs.DEV_EXTRA)

LAUNCH = ROOT / "deploy" / "vllm" / "launch.yaml"
RULES = ROOT / "deploy" / "prometheus" / "rules" / "kdgate.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "kdgate.json"
CRDS = ROOT / "deploy" / "kubernetes" / "crds"
CUSTOM_KINDS = {"ServiceMonitor": "monitoring.coreos.com_servicemonitors.yaml",
                "PrometheusRule": "monitoring.coreos.com_prometheusrules.yaml",
                "TrainJob": "trainer.kubeflow.org_trainjobs.yaml"}
RENDERS = ["default", "production", "two-pairs"]
VALUES = {"default": lambda: None, "production": production_values, "two-pairs": two_pairs_values}


@pytest.fixture(scope="module")
def renders() -> dict[str, list[dict]]:
    return {"default": render(), "production": render(production_values()), "two-pairs": render(two_pairs_values())}


@pytest.fixture(params=RENDERS)
def name(request) -> str:
    return request.param


@pytest.fixture
def objects(name, renders) -> list[dict]:
    return renders[name]


def values_of(name: str) -> dict:
    """The values a render used: the chart's defaults, overridden by the production example (and the two-pair one)."""
    with helm_python.Chart.load(CHART) as chart:
        return chart.merge_values(VALUES[name]())


def model_server(objects: list[dict], role: str, prefix: str = "kdgate") -> dict:
    (workload,) = [item for item in objects if item["kind"] in ("Deployment", "StatefulSet")
                   and item["metadata"]["name"] == f"{prefix}-{role}"]
    return workload


def pair_prefixes(name: str) -> dict[str, str]:
    """Each pair's served model and its objects' prefix: kdgate for the first, kdgate-<name> for each of `pairs`."""
    values = values_of(name)
    return {values["gateway"]["settings"]["KDGATE_SERVED_MODEL"]: "kdgate",
            **{pair["servedModel"]: f"kdgate-{pair['name']}" for pair in values.get("pairs") or []}}


def pod_labels(objects: list[dict]) -> dict[str, dict]:
    return {item["metadata"]["name"]: item["spec"]["template"]["metadata"]["labels"] for item in objects
            if item["kind"] in ("Deployment", "StatefulSet")}


def container(workload: dict) -> dict:
    (only,) = workload["spec"]["template"]["spec"]["containers"]
    return only


def flag(args: list[str], name: str) -> str:
    (value,) = [arg.split("=", 1)[1] for arg in args if arg.startswith(f"--{name}=")]
    return value


# --- the chart as Helm sees it ------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", RENDERS)
def test_lint_is_clean(name):
    values = VALUES[name]()
    report = helm_python.lint(CHART, values, strict=True, namespace=NAMESPACE, kube_version="v1.30.0")
    problems = [message for message in report["messages"] if message["severity"] >= 2]
    assert not report["errors"] and not problems, report


def test_the_shared_files_are_links_helm_follows(tmp_path):
    """One source of truth: files/ links to deploy/; Helm's loader reads the targets, and a packaged chart carries
    their contents."""
    links = {"vllm-launch.yaml": LAUNCH, "prometheus-rules.yml": RULES, "grafana-dashboard.json": DASHBOARD}
    with helm_python.Chart.load(CHART) as chart:
        archive = chart.save(tmp_path)
    with helm_python.Chart.load(archive) as packaged:
        loaded = {item["name"]: item["data"] for item in packaged.files}
    for name, target in links.items():
        link = CHART / "files" / name
        assert link.is_symlink() and not Path(link.readlink()).is_absolute(), f"{link} must be a relative link"
        assert link.resolve() == target.resolve()
        assert loaded[f"files/{name}"] == target.read_text()


@pytest.mark.parametrize(("values", "message"), [
    ({"models": {"student": {"replicaCount": -1}}}, "at '/models/student/replicaCount': minimum: got -1, want 1"),
    ({"models": {"teacher": {"modelURL": None}}}, "at '/models/teacher': missing property 'modelURL'"),
    ({"postgresql": {"existingSecret": None}}, "at '/postgresql': missing property 'existingSecret'"),
    ({"models": {"teacher": {"extraArgs": ["--tensor-parallel-size=2"]}}}, "at '/models/teacher/extraArgs/0'"),
    ({"gateway": {"settings": {"KDGATE_STUDENT__BASE_URL": "http://x/v1"}}},
     "at '/gateway/settings/KDGATE_STUDENT__BASE_URL'"),
    ({"gateway": {"settings": {"kdgate_port": 1}}}, "'kdgate_port' does not match pattern"),
    ({"trainer": {"runner": "slurm"}}, "at '/trainer/runner'"),
    ({"models": {"teacher": {"autoscaling": {"minReplicas": 0}}}}, "at '/models/teacher/autoscaling/minReplicas'"),
    ({"pairs": [{"name": "billing", "servedModel": "b", "postgresql": {"existingSecret": "s"},
                 "student": {"replicaCount": 0}}]}, "at '/pairs/0/student/replicaCount'"),
])
def test_the_schema_refuses_bad_values_by_name(values, message):
    with pytest.raises(helm_python.HelmValuesError) as raised:
        render(values)
    assert message in str(raised.value)


def test_tensor_parallel_flags_in_the_launch_file_are_refused(tmp_path):
    """The chart owns --tensor-parallel-size (= the GPUs it requests): a copy of the chart whose launch file sets it
    does not render."""
    copy = with_launch(tmp_path, lambda launch: launch["services"]["vllm-teacher"]["command"].append(
        "--tensor-parallel-size=2"))
    with pytest.raises(helm_python.HelmError, match="--tensor-parallel-size=2 for vllm-teacher"):
        render(chart_dir=copy)


def test_trainjobs_without_a_shared_claim_are_refused():
    """A TrainJob's pods write the new student where the trainer and the student servers read it: with an emptyDir
    work volume (the default) nothing a job trains would be seen, so `runner: kubernetes` needs the claim."""
    with pytest.raises(helm_python.HelmError, match="trainer.runner kubernetes needs sharedStorage.existingClaim"):
        render({"trainer": {"runner": "kubernetes"}})


@pytest.mark.parametrize("path", ["values.yaml", "examples/production.yaml", "examples/two-pairs.yaml",
                                  "examples/alertmanager-receiver.yaml"])
def test_values_files_pass_yamllint(path):
    linter = needs.module("yamllint.linter", install=needs.DEV_EXTRA)
    from yamllint.config import YamlLintConfig

    config = YamlLintConfig("{extends: default, rules: {line-length: {max: 120}, document-start: disable, "
                            "braces: {max-spaces-inside: 1}}}")
    problems = list(linter.run((CHART / path).read_text(), config))
    assert not problems, "\n".join(f"{path}:{p.line}:{p.column} {p.message}" for p in problems)


# --- every object is valid where it will be applied ---------------------------------------------------------------

def test_optional_parts_switch_off():
    """Without trainer, NetworkPolicies, monitoring objects, HPA, PDB and the migrations' hook Job the rest still
    renders valid objects."""
    kubernetes_validate = needs.module("kubernetes_validate", install=needs.DEV_EXTRA)
    objects = render({"trainer": {"enabled": False}, "networkPolicy": {"enabled": False},
                      "monitoring": {name: {"enabled": False}
                                     for name in ("serviceMonitors", "prometheusRule", "dashboard")},
                      "gateway": {"autoscaling": {"enabled": False}, "podDisruptionBudget": {"enabled": False}},
                      "postgresql": {"migrateJob": {"enabled": False}}})
    assert {item["kind"] for item in objects} == {"ConfigMap", "Deployment", "StatefulSet", "Service"}
    assert one(objects, "Deployment", "kdgate-gateway")["spec"]["replicas"] == 2
    for item in objects:
        kubernetes_validate.validate(item, "1.30.0", strict=True)


@pytest.mark.parametrize("version", ["1.30.0", "latest"])
def test_every_object_is_valid_kubernetes(objects, version):
    kubernetes_validate = needs.module("kubernetes_validate", install=needs.DEV_EXTRA)
    version = kubernetes_validate.latest_version() if version == "latest" else version
    for item in objects:
        if item["kind"] not in CUSTOM_KINDS:
            kubernetes_validate.validate(item, version, strict=True)


def test_strict_validation_catches_a_misspelt_field(renders):
    """The check above can fail: an unknown field in a pod spec is refused."""
    kubernetes_validate = needs.module("kubernetes_validate", install=needs.DEV_EXTRA)
    gateway = json.loads(json.dumps(one(renders["default"], "Deployment", "kdgate-gateway")))
    container(gateway)["imagePullPolcy"] = "Always"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(gateway, "1.30.0", strict=True)


@pytest.fixture(scope="module")
def crd_validators() -> dict:
    jsonschema_rs = needs.module("jsonschema_rs", install=needs.DEV_EXTRA)
    validators = {}
    for kind, filename in CUSTOM_KINDS.items():
        crd = next(document for document in yaml.safe_load_all((CRDS / filename).read_text()) if document)
        for version in crd["spec"]["versions"]:
            api_version = f"{crd['spec']['group']}/{version['name']}"
            validators[(api_version, kind)] = jsonschema_rs.validator_for(version["schema"]["openAPIV3Schema"])
    return validators


def test_custom_resources_match_their_crds(objects, crd_validators):
    custom = [item for item in objects if item["kind"] in CUSTOM_KINDS]
    assert {item["kind"] for item in custom} == {"ServiceMonitor", "PrometheusRule"}
    for item in custom:
        validator = crd_validators[(item["apiVersion"], item["kind"])]
        errors = [f"{'/'.join(map(str, error.instance_path))}: {error.message}"
                  for error in validator.iter_errors(item)]
        assert not errors, f"{item['kind']} {item['metadata']['name']}: {errors}"


def test_no_secret_is_rendered_and_secrets_come_by_reference(objects):
    assert not [item for item in objects if item["kind"] == "Secret"]
    secret_like = ("STORE_URL", "_SHA256", "API_KEY", "ADMIN_KEY", "HF_TOKEN")
    for workload in (item for item in objects if item["kind"] in ("Deployment", "StatefulSet", "Job")):
        for variable in container(workload).get("env", []):
            if variable["name"].endswith(secret_like):
                assert "secretKeyRef" in variable.get("valueFrom", {}), variable
    for data in (item["data"] for item in objects if item["kind"] == "ConfigMap"):
        assert not [key for key in data if key.endswith(secret_like)]


# --- model servers ------------------------------------------------------------------------------------------------

def test_the_student_runs_on_l40s_with_one_gpu(objects):
    student = model_server(objects, "student")
    spec = student["spec"]["template"]["spec"]
    assert spec["nodeSelector"]["nvidia.com/gpu.product"] == "NVIDIA-L40S"
    resources = container(student)["resources"]
    assert resources["requests"]["nvidia.com/gpu"] == resources["limits"]["nvidia.com/gpu"] == 1
    assert flag(container(student)["args"], "tensor-parallel-size") == "1"


@pytest.mark.parametrize(("name", "gpus"), [("default", 4), ("production", 8)])
def test_the_teacher_is_tensor_parallel_over_its_gpus(renders, name, gpus):
    teacher = model_server(renders[name], "teacher")
    resources = container(teacher)["resources"]
    assert resources["requests"]["nvidia.com/gpu"] == resources["limits"]["nvidia.com/gpu"] == gpus
    assert flag(container(teacher)["args"], "tensor-parallel-size") == str(gpus)
    spec = teacher["spec"]["template"]["spec"]
    assert spec["nodeSelector"]["nvidia.com/gpu.product"].startswith("NVIDIA-H100")
    (shm,) = [volume for volume in spec["volumes"] if volume["name"] == "dshm"]
    assert shm["emptyDir"]["medium"] == "Memory"
    assert {"name": "dshm", "mountPath": "/dev/shm"} in container(teacher)["volumeMounts"]


@pytest.mark.parametrize("gpus", [1, 2, 8])
def test_tensor_parallel_size_follows_the_gpu_request(gpus):
    teacher = model_server(render({"models": {"teacher": {"requestGPU": gpus}}}), "teacher")
    assert flag(container(teacher)["args"], "tensor-parallel-size") == str(gpus)
    assert container(teacher)["resources"]["limits"]["nvidia.com/gpu"] == gpus
    has_shm = any(volume["name"] == "dshm" for volume in teacher["spec"]["template"]["spec"].get("volumes", []))
    assert has_shm == (gpus > 1)


@pytest.mark.parametrize("role", ["student", "teacher"])
def test_vllm_flags_come_from_the_launch_file(objects, role):
    launch = yaml.safe_load(LAUNCH.read_text())["services"][f"vllm-{role}"]
    server = container(model_server(objects, role))
    assert server["image"] == launch["image"] and server["image"].startswith("vllm/vllm-openai:")
    args = server["args"]
    assert server["command"] == ["vllm", "serve"] and not args[0].startswith("--"), "vllm serve MODEL FLAGS"
    assert args[1:1 + len(launch["command"])] == launch["command"]
    env = {variable["name"]: variable.get("value") for variable in server.get("env", [])}
    assert {name: str(value) for name, value in launch.get("environment", {}).items()}.items() <= env.items()


@pytest.mark.parametrize("role", ["student", "teacher"])
def test_vllm_probes_wait_for_the_weights(objects, role):
    server = container(model_server(objects, role))
    probes = ("startupProbe", "livenessProbe") if role == "student" else ("startupProbe", "readinessProbe",
                                                                          "livenessProbe")
    for probe in probes:
        assert server[probe]["httpGet"] == {"path": "/health", "port": "http"}
    startup = server["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 15 * 60


def test_a_lora_student_is_ready_once_it_lists_the_serving_adapters(objects, name):
    """A restarted or new student pod answers /health long before the gateway has loaded the serving versions'
    adapters onto it: its readiness runs files/student_ready.py (tests/gateway/students/test_lora_promotion.py runs
    it against a real gateway and engine), shipped byte for byte in a ConfigMap, asking this release's gateway; the
    headless Service lists not-ready pods so that the gateway finds them to load adapters onto."""
    student = model_server(objects, "student")
    server = container(student)
    command = server["readinessProbe"]["exec"]["command"]
    gateway = one(objects, "Service", "kdgate-gateway")
    several = name == "two-pairs"  # then the gateway answers for the pair the probe names (its served model)
    assert command == ["python3", "/etc/kdgate/probe/student_ready.py", "http://127.0.0.1:8000",
                       f"http://kdgate-gateway.{NAMESPACE}.svc:{gateway['spec']['ports'][0]['port']}",
                       *([values_of(name)["gateway"]["settings"]["KDGATE_SERVED_MODEL"]] if several else [])]
    if several:
        billing = model_server(objects, "student", "kdgate-billing")
        assert container(billing)["readinessProbe"]["exec"]["command"][4:] == ["billing-triage"]
    probe = one(objects, "ConfigMap", "kdgate-student-probe")
    assert probe["data"]["student_ready.py"] == (CHART / "files" / "student_ready.py").read_text()
    (volume,) = [item for item in student["spec"]["template"]["spec"]["volumes"] if item["name"] == "probe"]
    assert volume["configMap"]["name"] == "kdgate-student-probe"
    assert {"name": "probe", "mountPath": "/etc/kdgate/probe", "readOnly": True} in server["volumeMounts"]
    assert one(objects, "Service", student["spec"]["serviceName"])["spec"]["publishNotReadyAddresses"] is True
    assert "checksum/probe" in student["spec"]["template"]["metadata"]["annotations"]


@pytest.mark.parametrize("name", ["default", "production"])  # two-pairs: in each pair's settings file (below)
def test_every_student_replica_is_found_through_the_headless_service_for_lora(objects):
    """vLLM keeps runtime LoRA adapters per replica: the student (--enable-lora) has a headless Service, and the
    gateway finds every pod by resolving it at each reconciliation (a list fixed when the chart rendered never
    reached a replica added by scaling)."""
    student = one(objects, "StatefulSet", "kdgate-student")
    headless = one(objects, "Service", student["spec"]["serviceName"])
    assert headless["spec"]["clusterIP"] == "None"
    data = one(objects, "ConfigMap", "kdgate-gateway")["data"]
    assert json.loads(data["KDGATE_STUDENT__REPLICA_URLS"]) == [
        f"http://{headless['metadata']['name']}.{NAMESPACE}.svc:8000/v1"]
    assert data["KDGATE_STUDENT__REPLICAS_FROM_DNS"] == "true"


def autoscaled(values: dict, enabled_for: tuple[str, ...] = ("student", "teacher")) -> dict:
    for role in enabled_for:
        values.setdefault("models", {}).setdefault(role, {})["autoscaling"] = {
            "enabled": True, "minReplicas": 2, "maxReplicas": 6, "targetWaitingPerReplica": "3"}
    return values


def with_launch(tmp_path: Path, change) -> Path:
    """A copy of the chart whose launch file `change(launch)` edited (the chart reads vLLM's flags from it)."""
    copy = tmp_path / "kdgate"
    shutil.copytree(CHART, copy)  # links become files
    launch = yaml.safe_load(LAUNCH.read_text())
    change(launch)
    (copy / "files" / "vllm-launch.yaml").unlink()
    (copy / "files" / "vllm-launch.yaml").write_text(yaml.safe_dump(launch))
    return copy


def without_lora(tmp_path: Path) -> Path:
    """A copy of the chart whose student runs without --enable-lora (a Deployment, as the teacher)."""
    return with_launch(tmp_path, lambda launch: launch["services"]["vllm-student"]["command"].remove("--enable-lora"))


@pytest.mark.parametrize("lora", [True, False])
def test_model_servers_scale_on_vllms_queue(lora, tmp_path):
    """With `models.<role>.autoscaling` on, an HPA per server targets its workload (the student's StatefulSet
    under LoRA, else a Deployment) on the Pods metric prometheus-adapter serves from vllm:num_requests_waiting, by
    the rule docs/deploying.md gives; the workload leaves `replicas` to it, and a PDB keeps drains to one pod
    (with replicaCount 1, the default, there was none)."""
    kubernetes_validate = needs.module("kubernetes_validate", install=needs.DEV_EXTRA)
    objects = render(autoscaled({}), chart_dir=CHART if lora else without_lora(tmp_path))
    for item in objects:
        if item["kind"] not in CUSTOM_KINDS:
            kubernetes_validate.validate(item, kubernetes_validate.latest_version(), strict=True)
    blocks = re.findall(r"```yaml\n(.*?)```", (ROOT / "docs" / "deploying.md").read_text(), re.DOTALL)
    (rule,) = [rule for block in blocks for rule in yaml.safe_load(block) or []
               if "vllm:num_requests_waiting" in rule.get("seriesQuery", "")]
    for role in ("student", "teacher"):
        workload = model_server(objects, role)
        assert workload["kind"] == ("StatefulSet" if lora and role == "student" else "Deployment")
        assert "replicas" not in workload["spec"], "the HPA owns the replica count"
        hpa = one(objects, "HorizontalPodAutoscaler", f"kdgate-{role}")["spec"]
        assert hpa["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": workload["kind"], "name": f"kdgate-{role}"}
        assert (hpa["minReplicas"], hpa["maxReplicas"]) == (2, 6)
        assert hpa["metrics"] == [{"type": "Pods", "pods": {"metric": {"name": rule["name"]["as"]},
                                   "target": {"type": "AverageValue", "averageValue": "3"}}}]
        # one replica removed at a time after a long calm (Kubernetes' default drops many after 5 minutes)
        calm, period = {"student": (600, 300), "teacher": (1800, 900)}[role]
        assert hpa["behavior"] == {"scaleDown": {"stabilizationWindowSeconds": calm, "policies": [
            {"type": "Pods", "value": 1, "periodSeconds": period}]}}
        pdb = one(objects, "PodDisruptionBudget", f"kdgate-{role}")
        assert selects(pdb["spec"]["selector"], workload["spec"]["template"]["metadata"]["labels"])


@pytest.mark.parametrize("enabled_for", [(), ("teacher",)])
def test_a_model_server_without_autoscaling_has_no_hpa_and_keeps_its_replicas(enabled_for):
    objects = render(autoscaled(production_values(), enabled_for))
    scaled = {item["spec"]["scaleTargetRef"]["name"] for item in objects if item["kind"] == "HorizontalPodAutoscaler"}
    assert scaled == {"kdgate-gateway", *(f"kdgate-{role}" for role in enabled_for)}
    student = model_server(objects, "student")
    assert student["spec"]["replicas"] == production_values()["models"]["student"]["replicaCount"]
    printed = {line.split()[0]: line for line in notes(autoscaled(production_values(), enabled_for)).splitlines()
               if line.startswith("  ")}
    replicas = production_values()["models"]["student"]["replicaCount"]
    assert f" {replicas} x " in printed["student"] and "autoscaled" not in printed["student"]
    assert ("2-6 (autoscaled) x" in printed["teacher"]) == ("teacher" in enabled_for)


def rollout_pods(deployment: dict) -> tuple[int, int]:
    """The most pods a Deployment's rolling update runs at once and the fewest it keeps available, by Kubernetes'
    rules: a percentage of maxSurge rounds up, of maxUnavailable down; no strategy is RollingUpdate 25 %/25 %."""
    replicas = deployment["spec"].get("replicas", 1)
    strategy = deployment["spec"].get("strategy", {"type": "RollingUpdate"})
    if strategy["type"] == "Recreate":
        return replicas, 0
    rolling = {"maxSurge": "25%", "maxUnavailable": "25%", **strategy.get("rollingUpdate", {})}

    def resolve(value: int | str, round_up: bool) -> int:
        if isinstance(value, int):
            return value
        share = replicas * int(value.rstrip("%"))
        return -(-share // 100) if round_up else share // 100

    return replicas + resolve(rolling["maxSurge"], True), replicas - resolve(rolling["maxUnavailable"], False)


@pytest.mark.parametrize("name", RENDERS)
def test_a_model_server_rollout_needs_no_spare_gpu_node(renders, name, tmp_path):
    """The teacher holds whole GPU nodes: Kubernetes' default rolling update (25 % surge: one more 8-GPU pod for
    the production example's two) waited for a spare node and never finished on a full cluster. The model servers'
    Deployments stop one old replica before starting its replacement; a LoRA student (a StatefulSet) always did."""
    values = production_values() if name == "production" else {}
    for objects in (renders[name], render(values, chart_dir=without_lora(tmp_path))):
        for role in ("student", "teacher"):
            workload = model_server(objects, role)
            if workload["kind"] == "StatefulSet":
                assert "strategy" not in workload["spec"]
                assert workload["spec"].get("updateStrategy", {"type": "RollingUpdate"})["type"] == "RollingUpdate"
                continue
            assert workload["spec"]["strategy"] == {"type": "RollingUpdate",
                                                    "rollingUpdate": {"maxSurge": 0, "maxUnavailable": 1}}
            replicas = workload["spec"]["replicas"]
            assert rollout_pods(workload) == (replicas, replicas - 1)
    if name == "production":  # two 8-GPU teachers
        teacher = json.loads(json.dumps(model_server(renders[name], "teacher")))
        del teacher["spec"]["strategy"]
        assert rollout_pods(teacher)[0] == 3, "Kubernetes' default needs a third 8-GPU node"


@pytest.mark.parametrize(("strategy", "rendered"), [
    ({"rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
     {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}),
    ({"type": "Recreate"}, {"type": "Recreate"}),  # Kubernetes refuses rollingUpdate beside Recreate
])
def test_the_update_strategy_is_configurable(strategy, rendered):
    kubernetes_validate = needs.module("kubernetes_validate", install=needs.DEV_EXTRA)
    teacher = model_server(render({"models": {"teacher": {"updateStrategy": strategy}}}), "teacher")
    assert teacher["spec"]["strategy"] == rendered
    kubernetes_validate.validate(teacher, "1.30.0", strict=True)


# --- gateway and trainer settings -----------------------------------------------------------------------------------

def unknown_settings(objects: list[dict]) -> set[str]:
    """KDGATE_ names in the ConfigMaps and container env that no settings class reads."""
    names = set()
    for item in objects:
        if item["kind"] == "ConfigMap" and item["metadata"]["name"] in ("kdgate-gateway", "kdgate-trainer"):
            names |= set(item["data"])
        if item["kind"] in ("Deployment", "StatefulSet"):
            names |= {variable["name"] for variable in container(item).get("env", [])
                      if variable["name"].startswith("KDGATE_")}
    return names - setting_variables()


def test_every_configmap_key_is_a_real_setting(objects):
    assert not unknown_settings(objects)


def test_a_misspelt_setting_is_caught():
    assert unknown_settings(render({"gateway": {"settings": {"KDGATE_MAX_BODY_BYTE": 1}}})) == \
        {"KDGATE_MAX_BODY_BYTE"}


def environment_of(objects: list[dict], workload: dict) -> dict[str, str]:
    """What the container's environment would hold: its ConfigMap, then each env entry, a Secret's value being a
    stand-in of the right form."""
    stand_ins = {"url": "postgresql+psycopg://kdgate:pw@postgres:5432/kdgate", "gateway-admin-key": "admin-key"}
    env = {}
    for source in container(workload).get("envFrom", []):
        env |= one(objects, "ConfigMap", source["configMapRef"]["name"])["data"]
    for variable in container(workload).get("env", []):
        if "value" in variable:
            env[variable["name"]] = variable["value"]
        else:
            key = variable["valueFrom"]["secretKeyRef"]["key"]
            env[variable["name"]] = stand_ins.get(key) or hashlib.sha256(key.encode()).hexdigest()
    return env


@pytest.fixture
def clean_environment(monkeypatch):
    for name in [name for name in os.environ if name.startswith("KDGATE_")]:
        monkeypatch.delenv(name)
    return monkeypatch


def gateway_pairs(objects: list[dict], tmp_path: Path, environment: pytest.MonkeyPatch) -> dict:
    """Each pair's settings as the gateway pod loads them, by served model: from its environment alone, or, with
    several pairs, the settings file each `--config` names, written by the init container (files/pair_settings.py,
    run here on the ConfigMap with a stand-in value per Secret) and read under that environment, which reaches every
    pair alike. Two pairs sharing a model name or a store are refused as `kdgate serve` refuses them."""
    from gateway.pairs import check_pairs
    from gateway.settings import GatewaySettings, load_settings

    gateway = one(objects, "Deployment", "kdgate-gateway")
    pod = gateway["spec"]["template"]["spec"]
    for variable, value in environment_of(objects, gateway).items():
        environment.setenv(variable, value)
    args = container(gateway).get("args", [])
    if not args:
        settings = GatewaySettings()
        return {settings.served_model: settings}
    (init,) = pod["initContainers"]
    (source,) = [item["configMap"]["name"] for item in pod["volumes"] if item["name"] == "pairs-source"]
    folder, target = tmp_path / "pairs-source", tmp_path / "pairs"
    folder.mkdir()
    target.mkdir()
    for key, text in one(objects, "ConfigMap", source)["data"].items():
        (folder / key).write_text(text)
    secrets = {variable["name"]: "postgresql+psycopg://kdgate:pw@postgres:5432/{name}".format(
        **variable["valueFrom"]["secretKeyRef"]) for variable in init["env"]}
    clean = {key: value for key, value in os.environ.items() if not key.startswith("KDGATE_")}
    done = subprocess.run([sys.executable, str(folder / "pair_settings.py"), str(folder), str(target)],
                          env=clean | secrets, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    files = [target / Path(path).name for option, path in zip(args[::2], args[1::2], strict=True)
             if option == "--config"]
    assert len(files) == len(args) // 2 and container(gateway)["command"] == ["kdgate", "serve"]
    pairs = [load_settings(path) for path in files]
    check_pairs(pairs)
    return {settings.served_model: settings for settings in pairs}


@pytest.mark.parametrize("name", RENDERS)
def test_the_gateway_loads_the_rendered_settings(renders, name, clean_environment, tmp_path):
    """Production routing: student and teacher over HTTP to their Services, teacher fallback and shadow sampling on,
    shadow records in PostgreSQL from the Secret, API keys required. With several pairs, each pair's own servers
    (every replica of a LoRA student), store and routing, from its own settings file."""
    objects = renders[name]
    pairs = gateway_pairs(objects, tmp_path, clean_environment)
    prefixes = pair_prefixes(name)
    assert set(pairs) == set(prefixes)
    for served_model, settings in pairs.items():
        prefix = prefixes[served_model]
        for role in ("student", "teacher"):
            backend = getattr(settings, role)
            service = one(objects, "Service", f"{prefix}-{role}")
            assert backend.kind == "http"
            assert backend.base_url == f"http://{service['metadata']['name']}:{service['spec']['ports'][0]['port']}/v1"
            assert backend.model == flag(container(model_server(objects, role, prefix))["args"], "served-model-name")
        if model_server(objects, "student", prefix)["kind"] == "StatefulSet":  # a LoRA student: every replica
            assert settings.student.replica_urls == [f"http://{prefix}-student-headless.{NAMESPACE}.svc:8000/v1"]
        assert settings.routing.handoff.enabled and settings.shadow.enabled and settings.shadow.sample_rate > 0
        assert settings.shadow.store_url.startswith("postgresql")
        assert settings.auth_required() and str(settings.auth.keys_file).startswith("/etc/kdgate/auth/")
        gateway = container(one(objects, "Deployment", "kdgate-gateway"))
        assert str(settings.auth.keys_file.parent) in {mount["mountPath"] for mount in gateway["volumeMounts"]}
    values = values_of(name)
    models = {values["gateway"]["settings"]["KDGATE_SERVED_MODEL"]: values["models"],
              **{pair["servedModel"]: {role: values["models"][role] | pair.get(role, {})
                                       for role in ("student", "teacher")} for pair in values.get("pairs") or []}}
    for served_model, settings in pairs.items():
        for role in ("student", "teacher"):
            cost = getattr(settings, role).cost
            if name != "default":  # priced by GPU class, with the GPUs the pod requests
                assert cost.gpu_hour == models[served_model][role]["cost"]["gpuHour"]
                assert cost.gpus == models[served_model][role]["requestGPU"]
            else:
                assert cost is None or cost.gpu_hour is None
    if name == "two-pairs":  # each pair its own routing and store; what the environment holds is shared
        support, billing = pairs["support-triage"], pairs["billing-triage"]
        assert (support.routing.handoff.target_teacher_fraction, billing.routing.handoff.target_teacher_fraction) == \
            (0.11, 0.08)
        assert support.shadow.store_url.endswith("/kdgate-store")
        assert billing.shadow.store_url.endswith("/kdgate-billing-store")
        assert support.limits.redis_url == billing.limits.redis_url is not None
        # one release's windows, each pair's its own within them (PREFIX:SERVED_MODEL:KEY:MINUTE)
        assert support.limits.redis_prefix == billing.limits.redis_prefix == f"kdgate:limits:{NAMESPACE}:kdgate"


def test_a_json_string_in_gateway_settings_means_a_list_in_every_pair_as_in_the_environment(clean_environment,
                                                                                             tmp_path):
    """A list given in gateway.settings as the environment takes it (KDGATE_CORS_ALLOW_ORIGINS='["https://a"]'):
    with one pair it reaches the gateway as that variable, with several it is written into each pair's file, and
    both read it as the list (the file's loader reads such strings as the environment does). A pair's own setting
    too. The pairs' files refused it before (`cors_allow_origins: Input should be a valid list`)."""
    origins, patterns = ["https://app.example.com", "https://admin.example.com"], ["acct-[0-9]{8}"]
    read = {}
    for name, values in (("one pair", production_values()), ("two pairs", two_pairs_values())):
        values["gateway"]["settings"]["KDGATE_CORS_ALLOW_ORIGINS"] = json.dumps(origins)
        for pair in values.get("pairs") or []:
            pair["settings"]["KDGATE_SHADOW__SCRUB_PATTERNS"] = json.dumps(patterns)
        for variable in [variable for variable in os.environ if variable.startswith("KDGATE_")]:
            clean_environment.delenv(variable)
        folder = tmp_path / name.replace(" ", "-")
        folder.mkdir()
        read[name] = gateway_pairs(render(values), folder, clean_environment)
    assert {model: settings.cors_allow_origins for model, settings in read["one pair"].items()} == \
        {"support-triage": origins}
    assert {model: settings.cors_allow_origins for model, settings in read["two pairs"].items()} == \
        {"support-triage": origins, "billing-triage": origins}
    assert read["two pairs"]["billing-triage"].shadow.scrub_patterns == patterns


def test_each_pair_has_its_own_servers_store_and_trainer(renders, clean_environment):
    """examples/two-pairs.yaml: each pair its own student and teacher (their Services select only their own pods),
    its own `--config` on the one gateway, its own migrated store and its own trainer (a store holds one pair's
    versions and jobs), whose promotions name its pair to the gateway, which takes only its pair's alerts and whose
    job folders are its own."""
    from distill.online.settings import TrainerSettings

    objects = renders["two-pairs"]
    labels = pod_labels(objects)
    stores = {"kdgate": "kdgate-store", "kdgate-billing": "kdgate-billing-store"}
    assert container(one(objects, "Deployment", "kdgate-gateway"))["args"] == [
        "--config", "/etc/kdgate/pairs/primary.yaml", "--config", "/etc/kdgate/pairs/billing.yaml"]
    work_dirs = set()
    for served_model, prefix in pair_prefixes("two-pairs").items():
        for role in ("student", "teacher"):
            selector = one(objects, "Service", f"{prefix}-{role}")["spec"]["selector"]
            assert [pod for pod, pod_labels in labels.items() if selects({"matchLabels": selector}, pod_labels)] == \
                [f"{prefix}-{role}"]
        migrate = container(one(objects, "Job", f"{prefix}-migrate"))
        assert migrate["env"][0]["valueFrom"]["secretKeyRef"] == {"name": stores[prefix], "key": "url"}
        trainer = one(objects, "Deployment", f"{prefix}-trainer")
        assert selects({"matchLabels": one(objects, "Service", f"{prefix}-trainer")["spec"]["selector"]},
                       trainer["spec"]["template"]["metadata"]["labels"])
        for variable in [name for name in os.environ if name.startswith("KDGATE_")]:
            clean_environment.delenv(variable)
        for variable, value in environment_of(objects, trainer).items():
            clean_environment.setenv(variable, value)
        settings = TrainerSettings()
        assert settings.gateway.model == served_model and settings.kubernetes.store_secret == stores[prefix]
        # its own pair's drift alerts only: the rules keep served_model, the label the gateway gives each pair
        assert settings.selector == {"action": "redistill", "namespace": NAMESPACE, "kdgate_release": "kdgate",
                                     "served_model": served_model}
        assert {item["name"]: item["valueFrom"]["secretKeyRef"]["name"] for item in container(trainer)["env"]
                if item["name"].startswith("KDGATE_TRAINER_STORE")} == {"KDGATE_TRAINER_STORE_URL": stores[prefix]}
        work_dirs.add(settings.work_dir)
    assert len(work_dirs) == 2, "two trainers numbering their jobs from 1 need folders of their own"


@pytest.mark.parametrize(("name", "runner"), [("default", "local"), ("production", "kubernetes")])
def test_the_trainer_loads_the_rendered_settings(renders, name, runner, clean_environment, crd_validators):
    """The trainer's settings load, and the TrainJob it would create from them fits the TrainJob CRD and uses the
    chart's image, namespace and store Secret. With the student's weights on a claim, the trainer reads them there
    (a vLLM student's first version has no weights of its own in the store)."""
    from distill.online.kubernetes import trainjob_manifest
    from distill.online.settings import TrainerSettings

    objects = renders[name]
    trainer = one(objects, "Deployment", "kdgate-trainer")
    for variable, value in environment_of(objects, trainer).items():
        clean_environment.setenv(variable, value)
    settings = TrainerSettings()
    assert settings.runner == runner and settings.tokens_required()
    gateway = one(objects, "Service", "kdgate-gateway")
    assert settings.gateway.url == f"http://{gateway['metadata']['name']}:{gateway['spec']['ports'][0]['port']}"
    mounts = {mount["mountPath"]: mount for mount in container(trainer)["volumeMounts"]}
    assert str(settings.work_dir) in mounts
    student = values_of(name)["models"]["student"]
    if student["storage"]["existingClaim"]:  # production: the weights on a claim
        assert str(settings.student_base_dir) == student["modelURL"]
        assert mounts[student["storage"]["mountPath"]]["readOnly"] is True
    else:  # a Hugging Face id: nothing to read the weights from
        assert settings.student_base_dir is None
    if runner == "kubernetes":
        job = trainjob_manifest(7, settings)
        assert not list(crd_validators[(job["apiVersion"], "TrainJob")].iter_errors(job))
        assert job["metadata"]["namespace"] == NAMESPACE
        assert job["spec"]["trainer"]["image"] == container(trainer)["image"]
        assert settings.kubernetes.store_secret == values_of(name)["postgresql"]["existingSecret"]


def test_the_trainer_starts_jobs_for_its_own_releases_alerts_only(clean_environment):
    """One Alertmanager may deliver several releases' drift alerts to each trainer (they share the rules and the
    route): the trainer's selector names its namespace and release, the labels the ServiceMonitors attach and the
    rules keep, so another release's alert, or the same release name's in another namespace, starts nothing."""
    from distill.online.alerts import WebhookPayload, selected
    from distill.online.settings import TrainerSettings

    objects = render(production_values(), name="blue", namespace="team-a")
    for variable, value in environment_of(objects, one(objects, "Deployment", "blue-kdgate-trainer")).items():
        clean_environment.setenv(variable, value)
    selector = TrainerSettings().selector
    assert selector == {"action": "redistill", "namespace": "team-a", "kdgate_release": "blue"}
    alerts = [{"status": "firing", "startsAt": "2026-12-06T00:00:00Z", "fingerprint": f"f{index}",
               "labels": {"alertname": "KdgateStudentDivergenceHigh", "action": "redistill",
                          "namespace": namespace, "kdgate_release": release}}
              for index, (namespace, release) in enumerate([("team-a", "blue"), ("team-a", "green"),
                                                            ("team-b", "blue")])]
    payload = WebhookPayload(version="4", groupKey="{}", status="firing", receiver="kdgate-trainer", alerts=alerts)
    assert [alert.fingerprint for alert in selected(payload, selector)] == ["f0"]


@pytest.mark.parametrize(("name", "runner"), [("default", "local"), ("production", "kubernetes")])
def test_trainer_rbac_and_gpu_follow_the_runner(renders, name, runner):
    from distill.online.kubernetes import GROUP, PLURAL

    objects = renders[name]
    trainer = one(objects, "Deployment", "kdgate-trainer")
    spec = trainer["spec"]["template"]["spec"]
    gpus = container(trainer)["resources"].get("limits", {}).get("nvidia.com/gpu", 0)
    roles = [item for item in objects if item["kind"] == "Role"]
    if runner == "local":
        assert gpus == 1 and not roles and spec["automountServiceAccountToken"] is False
        return
    assert gpus == 0 and spec["automountServiceAccountToken"] is True
    (role,) = roles
    assert role["rules"] == [{"apiGroups": [GROUP], "resources": [PLURAL],
                              "verbs": ["create", "get", "watch", "delete"]}]
    binding = one(objects, "RoleBinding", role["metadata"]["name"])
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": spec["serviceAccountName"],
                                    "namespace": NAMESPACE}]


def test_the_store_is_migrated_once_before_the_releases_pods(objects, name, tmp_path):
    """A Helm hook Job runs the store's migrations before an install's or an upgrade's pods, with the gateway's
    image and the store URL from its Secret; the command it runs, given that environment, migrates a real store
    (tests/kdgate/test_store_cli.py covers an older store and PostgreSQL). Deleted once it succeeds, and before the
    next attempt, so a failed one stays for its logs."""
    job = one(objects, "Job", "kdgate-migrate")
    assert job["metadata"]["annotations"] == {"helm.sh/hook": "pre-install,pre-upgrade",
                                              "helm.sh/hook-delete-policy": "before-hook-creation,hook-succeeded"}
    assert job["spec"]["template"]["spec"]["restartPolicy"] == "Never"
    migrate = container(job)
    assert migrate["image"] == container(one(objects, "Deployment", "kdgate-gateway"))["image"]
    (store,) = migrate["env"]
    assert store["valueFrom"]["secretKeyRef"] == {"name": values_of(name)["postgresql"]["existingSecret"],
                                                  "key": "url"}
    url = f"sqlite:///{tmp_path}/store.sqlite3"
    clean = {key: value for key, value in os.environ.items() if not key.startswith("KDGATE_")}
    program, *arguments = migrate["command"]
    assert program == "kdgate"
    done = subprocess.run([sys.executable, "-m", "kdgate.cli", *arguments], cwd=ROOT, check=False, text=True,
                          capture_output=True, timeout=60, env=clean | {store["name"]: url})
    assert done.returncode == 0, done.stderr
    engine = sqlalchemy.create_engine(url)
    with engine.connect() as connection:
        assert "shadow_records" in sqlalchemy.inspect(connection).get_table_names()
    engine.dispose()


def test_the_gateway_scales_and_keeps_replicas(objects):
    hpa = one(objects, "HorizontalPodAutoscaler", "kdgate-gateway")
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "kdgate-gateway"}
    assert [metric["resource"]["name"] for metric in hpa["spec"]["metrics"]] == ["cpu"]
    assert "replicas" not in one(objects, "Deployment", "kdgate-gateway")["spec"], "the HPA owns the replica count"
    pdb = one(objects, "PodDisruptionBudget", "kdgate-gateway")
    assert selects(pdb["spec"]["selector"], pod_labels(objects)["kdgate-gateway"])
    gateway = container(one(objects, "Deployment", "kdgate-gateway"))
    assert gateway["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert gateway["startupProbe"]["httpGet"]["path"] == "/readyz"


@pytest.mark.parametrize("release", ["k", "a" * 47, "b" * 53])  # 53: Helm's longest release name
def test_every_name_is_valid_whatever_the_release_name(release):
    """Names within Kubernetes' limits (a Service's is a DNS label; a StatefulSet's pods add an 11-character
    revision hash to a 63-character label), and distinct: 47+ character releases rendered invalid ones. Each pair's
    objects too, two long pair names differing only at their end among them (cut, they keep a hash apart)."""
    values = two_pairs_values()
    billing = values["pairs"][0]
    values["pairs"] += [billing | {"name": f"{'x' * 38}-{end}", "servedModel": f"long-{end}",
                                   "postgresql": {"existingSecret": f"store-{end}"}} for end in "ab"]
    objects = render(values, name=release)
    names = [(item["kind"], item["metadata"]["name"]) for item in objects]
    assert len(set(names)) == len(names)
    for kind, name in names:
        assert len(name) <= (52 if kind == "StatefulSet" else 63), (kind, name)
        if kind == "Service":
            assert re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", name), name
    for item in objects:  # a pair's components (app.kubernetes.io/component <pair>-student-weights) are labels too
        labels = [item["metadata"].get("labels", {})] + ([item["spec"]["template"]["metadata"]["labels"]]
                                                         if "template" in item.get("spec", {}) else [])
        assert all(len(str(value)) <= 63 for pod in labels for value in pod.values()), item["metadata"]["name"]


@pytest.mark.parametrize("component", ["gateway", "trainer"])
def test_secret_bearing_settings_come_from_a_secret(component):
    """`settingsSecret` names a Secret of more settings, after the ConfigMap (a key in both takes the Secret's
    value); none by default, so nothing secret has to go into the ConfigMap."""
    values = production_values()
    values[component]["settingsSecret"] = f"{component}-secrets"
    sources = container(one(render(values), "Deployment", f"kdgate-{component}"))["envFrom"]
    assert sources == [{"configMapRef": {"name": f"kdgate-{component}"}},
                       {"secretRef": {"name": f"{component}-secrets"}}]
    plain = container(one(render(production_values()), "Deployment", f"kdgate-{component}"))["envFrom"]
    assert plain == [{"configMapRef": {"name": f"kdgate-{component}"}}]


def test_gateway_replicas_share_their_rate_limits_through_the_charts_redis(objects):
    """More than one gateway replica (the HPA's 2 to 10): one Redis, the gateways' limits pointed at it, only the
    gateway let in. Without it each replica counted its own windows (tests/gateway/test_limits.py shows the shared
    windows on a real Redis)."""
    redis = one(objects, "Deployment", "kdgate-redis")
    settings = one(objects, "ConfigMap", "kdgate-gateway")["data"]
    assert settings["KDGATE_LIMITS__REDIS_URL"] == "redis://kdgate-redis.kdgate.svc:6379/0"
    assert selects(one(objects, "Service", "kdgate-redis")["spec"]["selector"], pod_labels(objects)["kdgate-redis"])
    policy = one(objects, "NetworkPolicy", "kdgate-redis")["spec"]
    assert selects(policy["podSelector"], pod_labels(objects)["kdgate-redis"])
    [rule] = policy["ingress"]
    assert [selects(peer["podSelector"], pod_labels(objects)["kdgate-gateway"]) for peer in rule["from"]] == [True]
    assert container(redis)["securityContext"]["readOnlyRootFilesystem"]


@pytest.mark.parametrize(("changes", "deployed"), [
    ({"gateway": {"autoscaling": {"enabled": False}, "replicaCount": 1}}, False),
    ({"gateway": {"autoscaling": {"enabled": False}, "replicaCount": 3}}, True),
    ({"redis": {"deploy": "never"}}, False),
    ({"gateway": {"autoscaling": {"enabled": False}, "replicaCount": 1}, "redis": {"deploy": "always"}}, True),
])
def test_redis_runs_when_more_than_one_gateway_may(changes, deployed):
    values = production_values()
    for key, value in changes.items():
        values[key] = {**values.get(key, {}), **value}
        if "autoscaling" in value:
            values[key]["autoscaling"] = {**production_values()[key].get("autoscaling", {}), **value["autoscaling"]}
    objects = render(values)
    assert any(item["metadata"]["name"] == "kdgate-redis" for item in objects) is deployed
    assert ("KDGATE_LIMITS__REDIS_URL" in one(objects, "ConfigMap", "kdgate-gateway")["data"]) is deployed


def test_releases_sharing_a_redis_count_their_keys_apart(clean_environment):
    """Releases pointed at one Redis of yours (KDGATE_LIMITS__REDIS_URL in gateway.settingsSecret, `redis.deploy:
    never`) each load their own `limits.redis_prefix`, by namespace and release, so a key of the same name counts
    apart (tests/gateway/test_limits.py shows that on a real Redis); `redis.keyPrefix` names one instead, for
    releases meant to share their keys' limits."""
    from gateway.settings import GatewaySettings

    def prefix(release: str, namespace: str, **redis) -> str:
        values = production_values()
        values["redis"] = {**values.get("redis", {}), "deploy": "never", **redis}
        objects = render(values, name=release, namespace=namespace)
        gateway = one(objects, "Deployment", f"{release}-kdgate-gateway")
        environment = environment_of(objects, gateway) | {"KDGATE_LIMITS__REDIS_URL": "redis://redis.shared:6379/0"}
        for variable, value in environment.items():
            clean_environment.setenv(variable, value)
        return GatewaySettings().limits.redis_prefix

    releases = {(release, namespace): prefix(release, namespace)
                for release, namespace in (("blue", "team-a"), ("green", "team-a"), ("blue", "team-b"))}
    assert releases == {("blue", "team-a"): "kdgate:limits:team-a:blue",
                        ("green", "team-a"): "kdgate:limits:team-a:green",
                        ("blue", "team-b"): "kdgate:limits:team-b:blue"}
    assert prefix("green", "team-a", keyPrefix="kdgate:limits:shop") == "kdgate:limits:shop"


def test_a_gateway_pod_drains_its_streams_before_it_is_killed(objects, name):
    """The grace period covers the preStop sleep, the drain the gateway is told to give its answers in flight
    (tests/gateway/test_graceful_shutdown.py shows the drain on a real process) and 15 s to shut down."""
    drain = values_of(name)["gateway"]["drain"]
    deployment = one(objects, "Deployment", "kdgate-gateway")
    gateway = container(deployment)
    environment = {item["name"]: item.get("value") for item in gateway["env"]}
    assert environment["KDGATE_DRAIN_TIMEOUT_S"] == str(drain["seconds"])
    assert gateway["lifecycle"]["preStop"]["exec"]["command"] == ["sleep", str(drain["preStopSeconds"])]
    assert deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == \
        drain["preStopSeconds"] + drain["seconds"] + 15 > 300  # the longest stream the ingress allows


def test_in_flight_autoscaling_uses_the_gateway_gauge():
    source = (ROOT / "gateway" / "metrics.py").read_text()
    hpa = one(render({"gateway": {"autoscaling": {"inFlight": {"enabled": True}}}}), "HorizontalPodAutoscaler",
              "kdgate-gateway")
    (pods,) = [metric["pods"] for metric in hpa["spec"]["metrics"] if metric["type"] == "Pods"]
    assert f'"{pods["metric"]["name"]}"' in source


# --- who reaches what ---------------------------------------------------------------------------------------------

def same_namespace_pods(peer: dict, labels: dict[str, dict]) -> set[str]:
    return {name for name, pod in labels.items() if "podSelector" in peer and selects(peer["podSelector"], pod)}


def test_only_the_gateway_reaches_the_model_servers(objects, name):
    labels = pod_labels(objects)
    policy = one(objects, "NetworkPolicy", "kdgate-models")
    assert {pod for pod, pod_labels in labels.items() if selects(policy["spec"]["podSelector"], pod_labels)} == \
        {f"{prefix}-{role}" for prefix in pair_prefixes(name).values() for role in ("student", "teacher")}
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    peers = [peer for rule in policy["spec"]["ingress"] for peer in rule["from"]]
    in_namespace = [peer for peer in peers if "namespaceSelector" not in peer]
    assert [same_namespace_pods(peer, labels) for peer in in_namespace] == [{"kdgate-gateway"}]
    others = [peer for peer in peers if "namespaceSelector" in peer]
    assert others == [values_of("default")["networkPolicy"]["prometheus"]]


def test_only_alertmanager_admins_and_prometheus_reach_the_trainer(objects, name):
    values = values_of(name)["networkPolicy"]
    labels = pod_labels(objects)
    policy = one(objects, "NetworkPolicy", "kdgate-trainer")
    assert {pod for pod, pod_labels in labels.items() if selects(policy["spec"]["podSelector"], pod_labels)} == \
        {"kdgate-trainer"}
    (rule,) = policy["spec"]["ingress"]
    assert rule["ports"] == [{"protocol": "TCP", "port": 8010}]
    assert rule["from"] == [values["alertmanager"], *values["trainerAdmins"], values["prometheus"]]
    assert not set().union(*(same_namespace_pods(peer, labels) for peer in rule["from"])), \
        "no kdgate workload may call the trainer"


def test_the_admin_api_is_not_routed_publicly(renders):
    ingress = one(renders["production"], "Ingress", "kdgate-gateway")
    paths = [path["path"] for rule in ingress["spec"]["rules"] for path in rule["http"]["paths"]]
    assert paths == ["/v1"]
    assert not [item for item in renders["default"] if item["kind"] == "Ingress"], "no Ingress unless asked for"


# --- monitoring ---------------------------------------------------------------------------------------------------

def test_the_prometheus_rule_is_the_rules_file(objects):
    rule = one(objects, "PrometheusRule", "kdgate")
    assert rule["spec"]["groups"] == yaml.safe_load(RULES.read_text())["groups"]


def test_promtool_accepts_the_rendered_groups(renders, tmp_path):
    promtool = needs.tool("promtool")
    rules = tmp_path / "rules.yml"
    groups = one(renders["production"], "PrometheusRule", "kdgate")["spec"]["groups"]
    rules.write_text(yaml.safe_dump({"groups": groups}))
    result = subprocess.run([promtool, "check", "rules", str(rules)], check=False, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_dashboard_configmap_is_the_dashboard(objects):
    dashboard = one(objects, "ConfigMap", "kdgate-dashboard")
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert dashboard["data"]["kdgate.json"] == DASHBOARD.read_text()


def test_each_service_monitor_scrapes_one_service(objects, name):
    """One per Service: the gateway's, and each pair's student, teacher and trainer; with several pairs each pair's
    series carry its served_model, as the gateway's own do."""
    services = [item for item in objects if item["kind"] == "Service"]
    monitors = [item for item in objects if item["kind"] == "ServiceMonitor"]
    prefixes = pair_prefixes(name)
    assert {item["metadata"]["name"] for item in monitors} == {"kdgate-gateway"} | \
        {f"{prefix}-{role}" for prefix in prefixes.values() for role in ("student", "teacher", "trainer")}
    for served_model, prefix in prefixes.items():
        for role in ("student", "teacher", "trainer"):
            (endpoint,) = one(objects, "ServiceMonitor", f"{prefix}-{role}")["spec"]["endpoints"]
            labelled = {"action": "replace", "targetLabel": "served_model", "replacement": served_model}
            assert (labelled in endpoint["relabelings"]) is (len(prefixes) > 1)
    for monitor in monitors:
        (service,) = [item for item in services if selects(monitor["spec"]["selector"], item["metadata"]["labels"])]
        ports = {port["name"] for port in service["spec"]["ports"]}
        assert {endpoint["port"] for endpoint in monitor["spec"]["endpoints"]} <= ports


def test_every_series_is_labelled_with_its_release():
    """Each ServiceMonitor copies its Service's app.kubernetes.io/instance (the release name) into kdgate_release,
    the label (with the Operator's `namespace`) that the rules aggregate by; without it two releases scraped by
    one Prometheus mixed into one drift alert that started both trainers' jobs."""
    objects = render(production_values(), name="blue", namespace="team-a")
    services = [item for item in objects if item["kind"] == "Service"]
    monitors = [item for item in objects if item["kind"] == "ServiceMonitor"]
    assert monitors
    release_label = {"action": "replace", "targetLabel": "kdgate_release",
                     "sourceLabels": ["__meta_kubernetes_service_label_app_kubernetes_io_instance"]}
    for monitor in monitors:
        for service in (item for item in services if selects(monitor["spec"]["selector"], item["metadata"]["labels"])):
            assert service["metadata"]["labels"]["app.kubernetes.io/instance"] == "blue"
        for endpoint in monitor["spec"]["endpoints"]:
            assert release_label in endpoint.get("relabelings", []), monitor["metadata"]["name"]


def test_the_alertmanager_example_reaches_the_trainer(renders):
    example = CHART / "examples" / "alertmanager-receiver.yaml"
    config = yaml.safe_load(example.read_text())
    (route,) = config["route"]["routes"]
    (receiver,) = [item for item in config["receivers"] if item["name"] == route["receiver"]]
    url = urlparse(receiver["webhook_configs"][0]["url"])
    service = one(renders["default"], "Service", "kdgate-trainer")
    assert url.hostname == f"{service['metadata']['name']}.{NAMESPACE}.svc"
    assert url.port == service["spec"]["ports"][0]["port"] and url.path == "/v1/alerts"
    rules = [rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]]
    selector = json.loads(one(renders["default"], "ConfigMap", "kdgate-trainer")["data"]["KDGATE_TRAINER_SELECTOR"])
    assert sorted(route["matchers"]) == sorted(f'{label}="{value}"' for label, value in selector.items()), \
        "the route sends the trainer what its selector takes"
    assert [rule for rule in rules if rule.get("labels", {}).get("action") == "redistill"]
    amtool = needs.tool("amtool")
    result = subprocess.run([amtool, "check-config", str(example)], check=False, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


# --- weights downloaded once onto a claim ---------------------------------------------------------------------------

def download_values(revision: str = "") -> dict:
    values = production_values()
    ids = {"student": "Qwen/Qwen2.5-7B-Instruct", "teacher": "Qwen/Qwen2.5-72B-Instruct"}
    for role in ("student", "teacher"):
        values["models"][role]["modelURL"] = ids[role]
        values["models"][role]["storage"] = {"existingClaim": "", "mountPath": "/models", "download": {
            "enabled": True, "size": "80Gi", "storageClassName": "rwx", "accessModes": ["ReadWriteMany"],
            "revision": revision}}
        values["models"][role]["hf_token"] = {"secretName": "hf", "secretKey": "token"}
    return values


@pytest.mark.parametrize("role", ["student", "teacher"])
def test_weights_are_downloaded_once_onto_a_kept_claim_and_loaded_offline(role):
    """A Hugging Face id as modelURL was downloaded into the container layer on every start: with
    storage.download the chart makes a claim (kept on uninstall), a Job fills it once with files/download_weights.py,
    and the server waits for the Job's marker and loads the path offline; the trainer trains from the same path."""
    kubernetes_validate = needs.module("kubernetes_validate", install=needs.DEV_EXTRA)
    values = download_values()
    objects = render(values)
    for item in objects:
        if item["kind"] not in CUSTOM_KINDS:
            kubernetes_validate.validate(item, kubernetes_validate.latest_version(), strict=True)
    model = values["models"][role]["modelURL"]
    path = f"/models/{model}"
    claim = one(objects, "PersistentVolumeClaim", f"kdgate-{role}-weights")
    assert claim["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    assert claim["spec"]["resources"]["requests"]["storage"] == "80Gi" and claim["spec"]["storageClassName"] == "rwx"
    (job,) = [item for item in objects if item["kind"] == "Job" and item["metadata"]["name"].startswith(
        f"kdgate-{role}-weights-")]
    download = container(job)
    env = {item["name"]: item.get("value", item.get("valueFrom")) for item in download["env"]}
    assert env["MODEL"] == model and env["TARGET"] == path and env["REVISION"] == ""
    assert env["HF_TOKEN"] == {"secretKeyRef": {"name": "hf", "key": "token"}}
    assert job["spec"]["template"]["spec"]["volumes"][0]["persistentVolumeClaim"] == {"claimName": claim["metadata"]["name"]}
    script = one(objects, "ConfigMap", f"kdgate-{role}-download")["data"]["download_weights.py"]
    assert script == (CHART / "files" / "download_weights.py").read_text()
    server = model_server(objects, role)
    pod = server["spec"]["template"]["spec"]
    (wait,) = pod["initContainers"]
    assert {"name": "MARKER", "value": f"{path}/.kdgate-complete"} in wait["env"]
    vllm = container(server)
    assert vllm["args"][0] == path and {"name": "HF_HUB_OFFLINE", "value": "1"} in vllm["env"]
    (volume,) = [item for item in pod["volumes"] if item["name"] == "models"]
    assert volume["persistentVolumeClaim"] == {"claimName": f"kdgate-{role}-weights", "readOnly": True}
    if role == "student":
        trainer = one(objects, "ConfigMap", "kdgate-trainer")["data"]
        assert trainer["KDGATE_TRAINER_STUDENT_BASE_DIR"] == path
        trainer_pod = one(objects, "Deployment", "kdgate-trainer")["spec"]["template"]["spec"]
        assert {"name": "student-weights", "persistentVolumeClaim": {"claimName": "kdgate-student-weights",
                                                                      "readOnly": True}} in trainer_pod["volumes"]


def test_a_new_revision_is_a_new_download_job():
    """A Job's pod template cannot change: another revision renders a Job of another name (the old one leaves with
    the old manifest), the same revision the same name."""
    def names(revision: str) -> set[str]:
        return {item["metadata"]["name"] for item in render(download_values(revision)) if item["kind"] == "Job"
                and "-weights-" in item["metadata"]["name"]}
    assert names("") == names("") and names("") != names("v2")
    assert len(names("v2")) == 2


def test_a_download_needs_a_hub_id_not_a_path():
    values = download_values()
    values["models"]["student"]["modelURL"] = "/models/mine"
    with pytest.raises(helm_python.HelmError, match="models.student.storage.download needs a Hugging Face id"):
        render(values)


def test_the_download_script_runs_once(tmp_path):
    """Its marker, written last, makes a rerun (a retried Job, a rescheduled pod) download nothing; a download that
    fails (here: the hub does not answer) leaves no marker, so the servers keep waiting and the Job retries."""
    script = CHART / "files" / "download_weights.py"
    target = tmp_path / "org" / "model"
    env = {key: value for key, value in os.environ.items() if not key.startswith("HF_")} | {
        "MODEL": "org/model", "REVISION": "", "TARGET": str(target), "HF_HOME": str(tmp_path),
        "HF_ENDPOINT": f"http://127.0.0.1:{free_port()}"}  # a hub that does not answer
    failed = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=120)
    assert failed.returncode == 1 and "the download of org/model@main failed" in failed.stderr
    assert not (target / ".kdgate-complete").exists()
    target.mkdir(parents=True, exist_ok=True)
    (target / ".kdgate-complete").write_text("org/model@main")
    again = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0 and "nothing to download" in again.stdout
    other = subprocess.run([sys.executable, str(script)], env=env | {"REVISION": "v2"}, capture_output=True,
                           text=True, timeout=120)
    assert other.returncode == 1  # another revision is another download
