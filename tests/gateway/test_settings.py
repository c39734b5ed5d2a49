"""Settings: environment over YAML over defaults, unknown keys refused, placeholders refused."""

from __future__ import annotations

import pytest
import yaml
from pydantic import ValidationError

from gateway.settings import GatewaySettings, load_settings


def test_defaults_serve_the_demo_models():
    settings = GatewaySettings()
    assert settings.student.kind == "local" and settings.student.model_dir.name == "student"
    assert settings.teacher.kind == "local" and settings.routing.policy == "student_only"


def test_the_demo_routes_with_handoff_by_default():
    handoff = GatewaySettings().routing.handoff
    assert handoff.enabled is True and handoff.min_prob == 0.9
    assert GatewaySettings(student={"threads": 1}).routing.handoff.enabled  # still the demo's model


def test_other_models_start_without_fallback_until_chosen(monkeypatch):
    vllm = {"kind": "http", "base_url": "http://vllm:8000/v1", "model": "m"}
    assert GatewaySettings(student=vllm, teacher=vllm).routing.handoff.enabled is False
    assert GatewaySettings(teacher=None).routing.handoff.enabled is False  # nothing to hand off to
    monkeypatch.setenv("KDGATE_ROUTING__HANDOFF__ENABLED", "true")
    assert GatewaySettings(student=vllm, teacher=vllm).routing.handoff.enabled is True


def test_handoff_can_be_switched_off_on_the_demo(monkeypatch):
    monkeypatch.setenv("KDGATE_ROUTING__HANDOFF__ENABLED", "false")
    assert GatewaySettings().routing.handoff.enabled is False


def test_resolving_the_default_leaves_a_passed_settings_object_as_it_was():
    from gateway.settings import RoutingSettings

    routing = RoutingSettings()
    assert GatewaySettings(routing=routing).routing.handoff.enabled is True
    assert routing.handoff.enabled is None


def test_yaml_file_and_environment(tmp_path, monkeypatch):
    config = tmp_path / "kdgate.yaml"
    config.write_text("port: 9000\nteacher:\n  kind: http\n  base_url: http://vllm-teacher:8000/v1\n"
                      "  model: meta-llama/Llama-3.1-70B-Instruct\n")
    monkeypatch.setenv("KDGATE_PORT", "9100")
    monkeypatch.setenv("KDGATE_STUDENT__MAX_BATCH_SIZE", "8")
    settings = load_settings(config)
    assert settings.port == 9100  # the environment wins over the file
    assert settings.teacher.base_url == "http://vllm-teacher:8000/v1" and settings.teacher.kind == "http"
    assert settings.student.max_batch_size == 8 and settings.student.model_dir.name == "student"


@pytest.mark.parametrize(("key", "text", "value"), [
    ("cors_allow_origins", '["https://app.example.com"]', ["https://app.example.com"]),  # a list
    ("shadow.scrub_patterns", '["acct-[0-9]+"]', ["acct-[0-9]+"]),  # a list in a section
    ("routing.handoff", '{"min_prob": 0.8}', {"enabled": True, "min_prob": 0.8}),  # a section
    ("teacher", "null", None),
    ("limits.max_connections", "null", None),
    ("served_model", '["support"]', '["support"]'),  # a string setting keeps what looks like JSON
    ("served_model", "2024", "2024"),
])
def test_a_string_in_a_settings_file_means_what_it_means_in_the_environment(key, text, value, tmp_path,
                                                                            monkeypatch):
    """The chart gives gateway.settings in the environment's form (KDGATE_CORS_ALLOW_ORIGINS='["https://a"]'), and
    with several pairs writes them into each pair's file as those strings: the file reads them as the environment
    does, by the field's type. A list given so in a pair's file was refused (`Input should be a valid list`)."""
    *sections, leaf = key.split(".")
    tree = {leaf: text}
    for section in reversed(sections):
        tree = {section: tree}
    config = tmp_path / "kdgate.yaml"
    config.write_text(yaml.safe_dump(tree))
    from_file = load_settings(config)
    monkeypatch.setenv(f"KDGATE_{key.upper().replace('.', '__')}", text)
    from_environment = GatewaySettings()
    for settings in (from_file, from_environment):
        read = settings
        for name in key.split("."):
            read = getattr(read, name)
        assert (read.model_dump(include=set(value)) if isinstance(value, dict) else read) == value
    assert from_file.model_dump() == from_environment.model_dump()


def test_teacher_can_be_switched_off(monkeypatch):
    monkeypatch.setenv("KDGATE_TEACHER", "null")
    assert GatewaySettings().teacher is None


def test_unknown_key_is_refused(tmp_path):
    config = tmp_path / "kdgate.yaml"
    config.write_text("prot: 9000\n")
    with pytest.raises(ValidationError, match="prot"):
        load_settings(config)


def test_http_backend_needs_url_and_model():
    with pytest.raises(ValidationError, match="base_url"):
        GatewaySettings(teacher={"kind": "http", "model": "m"})


def test_placeholder_api_key_is_refused():
    with pytest.raises(ValidationError, match="placeholder"):
        GatewaySettings(teacher={"kind": "http", "base_url": "http://x/v1", "model": "m", "api_key": "changeme"})


def test_missing_config_file_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("KDGATE_CONFIG", str(tmp_path / "nope.yaml"))
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        GatewaySettings()


def test_the_vllm_example_config_is_valid():
    from tests.conftest import ROOT

    settings = load_settings(ROOT / "deploy" / "kdgate-vllm.yaml")
    assert settings.student.kind == settings.teacher.kind == "http"
    assert settings.teacher.base_url.endswith("/v1")
    assert settings.routing.handoff.enabled is True  # it ships with teacher fallback on, spelled out


def test_an_unknown_top_level_variable_is_refused(monkeypatch):
    monkeypatch.setenv("KDGATE_MAX_BODY_BYTE", "5")  # a typo of KDGATE_MAX_BODY_BYTES
    with pytest.raises(ValueError, match="KDGATE_MAX_BODY_BYTE .*did you mean KDGATE_MAX_BODY_BYTES"):
        GatewaySettings()


def test_variables_of_other_kdgate_tools_are_not_settings(monkeypatch):
    monkeypatch.setenv("KDGATE_LOADTEST_API_KEY", "secret")
    assert GatewaySettings().port == 8000


def test_a_local_model_dir_must_be_a_model_folder(tmp_path):
    with pytest.raises(ValidationError, match="no config.json"):
        GatewaySettings(student={"model_dir": tmp_path})
    with pytest.raises(ValidationError, match="not a directory"):
        GatewaySettings(student={"model_dir": tmp_path / "missing"})


def test_cost_is_set_on_every_backend_or_on_none(monkeypatch):
    priced = {"prompt_per_million": 0.1, "completion_per_million": 0.4}
    with pytest.raises(ValidationError, match="`student.cost` is set but `teacher.cost` is not"):
        GatewaySettings(student={"cost": priced})
    monkeypatch.setenv("KDGATE_TEACHER__COST__GPU_HOUR", "2.5")
    monkeypatch.setenv("KDGATE_TEACHER__COST__GPUS", "8")
    monkeypatch.setenv("KDGATE_TEACHER__COST__COMPLETION_TOKENS_PER_S", "2000")
    settings = GatewaySettings(student={"cost": priced})
    assert settings.teacher.model_dir.name == "teacher"  # a partial backend keeps the demo model
    assert settings.teacher.cost.per_million() == pytest.approx((0.0, 2.5 * 8 / 3600 / 2000 * 1e6))
    assert GatewaySettings(teacher=None, student={"cost": priced}).student.cost is not None  # the only backend
