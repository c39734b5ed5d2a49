"""`auth.keys_file` as users make and point at it: entries from `kdgate auth new-key >> FILE`, files of the earlier
`keys:` format, and a relative path read from the settings file's folder (or, from the environment, from the working
directory), with a real gateway accepting the keys."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from gateway.app import create_app
from gateway.auth import load_credentials
from gateway.settings import GatewaySettings, load_settings
from runtime.credentials import new_key
from tests.conftest import ROOT, ThreadedServer, gateway_settings
from tests.gateway.test_auth import CHAT, call, digest


def new_keys_appended(keys_file: Path, *options: str) -> dict[str, str]:
    """`kdgate auth new-key OPTIONS >> keys_file` in a shell, once per OPTIONS; the keys shown once, by name."""
    shown = {}
    for option in options:
        command = f"{shlex.quote(sys.executable)} -m kdgate.cli auth new-key {option} >> {shlex.quote(str(keys_file))}"
        done = subprocess.run(command, shell=True, cwd=ROOT, capture_output=True, text=True, timeout=60, check=True)
        name, key = re.fullmatch(r"key \(give it to (\S+); it is not stored anywhere\): (\S+)\n", done.stderr).groups()
        shown[name] = key
    return shown


def test_two_new_key_outputs_appended_make_one_keys_file(tmp_path, demo_dirs, engine_server):
    """Each output was a whole `keys:` document: two appended named `keys:` twice, and YAML kept only the second."""
    keys_file = tmp_path / "keys.yaml"
    made = new_keys_appended(keys_file, "--name app-a", "--name app-b --permission force_route")
    settings = gateway_settings(demo_dirs, engine_server, auth={"keys_file": keys_file})
    with ThreadedServer(create_app(settings)) as server:
        for key in made.values():
            assert call(server, "/v1/chat/completions", key, "POST", json=CHAT).status_code == 200
        force = {"x-kdgate-force": "teacher"}
        assert call(server, "/v1/chat/completions", made["app-b"], "POST", json=CHAT, headers=force).status_code == 200
        assert call(server, "/v1/chat/completions", made["app-a"], "POST", json=CHAT, headers=force).status_code == 403


def test_a_keys_file_of_the_earlier_format_loads_and_takes_appended_entries(tmp_path):
    old_key = new_key()[0]
    keys_file = tmp_path / "keys.yaml"
    keys_file.write_text(yaml.safe_dump({"keys": [{"name": "old", "sha256": digest(old_key)}]}))
    made = new_keys_appended(keys_file, "--name new")
    credentials = load_credentials(GatewaySettings(auth={"keys_file": keys_file}))
    assert credentials.identify(old_key).name == "old" and credentials.identify(made["new"]).name == "new"


def test_two_keys_lists_in_one_file_are_refused_not_half_read(tmp_path):
    """What two outputs of the earlier `new-key` appended made: YAML kept the second list and dropped the first."""
    keys_file = tmp_path / "keys.yaml"
    keys_file.write_text("".join(yaml.safe_dump({"keys": [{"name": name, "sha256": digest(new_key()[0])}]})
                                 for name in ("first", "second")))
    with pytest.raises(ValueError, match=r"`keys:` appears twice in one mapping \(again on line 4\)"):
        load_credentials(GatewaySettings(auth={"keys_file": keys_file}))


@pytest.fixture
def config_elsewhere(tmp_path, monkeypatch) -> tuple[Path, str]:
    """A settings file naming `keys_file: keys.yaml` beside it, and the working directory another folder."""
    folder = tmp_path / "deploy"
    folder.mkdir()
    key = new_key()[0]
    (folder / "keys.yaml").write_text(yaml.safe_dump([{"name": "app", "sha256": digest(key)}]))
    (folder / "kdgate.yaml").write_text("auth:\n  keys_file: keys.yaml\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    return folder / "kdgate.yaml", key


def test_a_relative_keys_file_is_read_from_the_settings_files_folder(config_elsewhere, demo_dirs, engine_server):
    """It was read from the working directory: a gateway started anywhere but beside its settings file failed."""
    config, key = config_elsewhere
    auth = load_settings(config).auth
    assert auth.keys_file == config.parent / "keys.yaml"
    with ThreadedServer(create_app(gateway_settings(demo_dirs, engine_server, auth=auth))) as server:
        assert call(server, "/v1/chat/completions", key, "POST", json=CHAT).status_code == 200


def test_kdgate_run_elsewhere_shows_the_keys_file_beside_its_settings_file(config_elsewhere):
    config, _ = config_elsewhere
    environment = {name: value for name, value in os.environ.items() if not name.startswith("KDGATE_")}
    done = subprocess.run([sys.executable, "-m", "kdgate.cli", "config", "show", "--config", "../deploy/kdgate.yaml"],
                          capture_output=True, text=True, timeout=60, env=environment | {"PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr
    assert yaml.safe_load(done.stdout)["auth"]["keys_file"] == str(config.parent / "keys.yaml")


def test_a_relative_keys_file_from_the_environment_is_read_from_the_working_directory(config_elsewhere, monkeypatch):
    config, _ = config_elsewhere
    key = new_key()[0]
    Path("mine.yaml").write_text(yaml.safe_dump([{"name": "mine", "sha256": digest(key)}]))
    monkeypatch.setenv("KDGATE_AUTH__KEYS_FILE", "mine.yaml")  # the environment wins over the file, as given
    settings = load_settings(config)
    assert settings.auth.keys_file == Path("mine.yaml")
    assert load_credentials(settings).identify(key).name == "mine"
