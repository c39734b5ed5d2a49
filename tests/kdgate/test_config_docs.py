"""docs/configuration.md is generated from the settings classes: it must match them, and every key must be
documented where it is declared."""

from __future__ import annotations

import subprocess
import sys

import pytest

from distill.config import TrainConfig
from distill.online.settings import TrainerSettings
from gateway.settings import GatewaySettings
from kdgate.config_docs import REGENERATE, missing_descriptions, page, sections
from tests.conftest import ROOT

PAGE = ROOT / "docs" / "configuration.md"


def test_the_committed_page_matches_the_settings_classes():
    assert PAGE.read_text() == page(), f"docs/configuration.md is out of date; regenerate it with `{REGENERATE}`"


@pytest.mark.parametrize("model", [GatewaySettings, TrainConfig, TrainerSettings],
                         ids=["gateway", "recipe", "trainer service"])
def test_every_setting_has_a_description(model):
    assert missing_descriptions(model) == []


def test_every_gateway_key_is_on_the_page_with_its_variable():
    text = PAGE.read_text()
    keys = [row.key for section in sections(GatewaySettings) for row in section.rows]
    assert "routing.handoff.min_prob" in keys and "shadow.store_url" in keys and "student.model_dir" in keys
    for key in (key for key in keys if "[]" not in key):
        assert f"`KDGATE_{key.upper().replace('.', '__')}`" in text, key


def test_defaults_and_ranges_are_read_from_the_declarations():
    rows = {row.key: row for section in sections(GatewaySettings) for row in section.rows}
    assert rows["routing.handoff.min_prob"].default == "`0.9`"
    assert rows["routing.handoff.min_prob"].range == "> 0, ≤ 1"
    assert rows["port"].range == "0 – 65,535"
    assert rows["student.model_dir"].default == "`distill/demo/artifacts/student`"  # not this machine's path
    assert rows["routing.policy"].type.count("`") == 8  # the four choices


def test_the_check_flag_fails_on_a_stale_page(tmp_path):
    stale = tmp_path / "configuration.md"
    stale.write_text("# Configuration\n")
    command = [sys.executable, "-m", "kdgate.cli", "config", "docs", "--out", str(stale), "--check"]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and "out of date" in done.stderr
    subprocess.run(command[:-1], cwd=ROOT, check=True, capture_output=True, timeout=60)
    assert subprocess.run(command, cwd=ROOT, capture_output=True, timeout=60).returncode == 0
