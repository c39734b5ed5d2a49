"""Settings: environment over YAML over defaults, unknown keys refused, placeholders refused."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from gateway.settings import GatewaySettings, load_settings


def test_defaults_serve_the_demo_models():
    settings = GatewaySettings()
    assert settings.student.kind == "local" and settings.student.model_dir.name == "student"
    assert settings.teacher.kind == "local" and settings.routing.policy == "student_only"


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
