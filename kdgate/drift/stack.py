"""The real parts of the drift scenario, started as processes on loopback: the gateway (`kdgate serve`), Debian's
Prometheus with the project's rules and Alertmanager with the project's receiver, and the trainer service.

Only time is compressed: the rules' windows and `for:` durations become seconds-to-minutes (`compress_rules`), and
Alertmanager groups and repeats within seconds. Everything else (rule expressions, labels, the webhook route, the
bearer token) is the project's deployment configuration as committed.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from gateway.threaded import free_port, wait_until_up
from runtime.credentials import new_key

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy" / "prometheus" / "rules" / "kdgate.yml"
ALERTMANAGER = ROOT / "deploy" / "alertmanager" / "alertmanager.yml"
KDGATE = [sys.executable, "-m", "kdgate.cli"]


class MissingTool(RuntimeError):
    pass


def tool(*names: str) -> str:
    for name in names:
        found = shutil.which(name)
        if found:
            return found
    raise MissingTool(f"{names[0]} is not installed; on Debian: apt-get install "
                      f"{'prometheus' if names[0] == 'prometheus' else 'prometheus-alertmanager'}")


def compress_rules(text: str, window: str, hold: str) -> str:
    """The project's rules with their 15m/5m windows and `for:` durations shortened (expressions unchanged)."""
    text = re.sub(r"\[(15m|5m|10m)\]", f"[{window}]", text)
    text = re.sub(r"for: \d+m", f"for: {hold}", text)
    return re.sub(r"interval: \d+s", "interval: 2s", text)


@dataclass
class Stack:
    folder: Path
    processes: list[subprocess.Popen] = field(default_factory=list)
    urls: dict[str, str] = field(default_factory=dict)
    alerts_key: str = ""
    admin_key: str = ""
    on_start: Callable[[str, Path], None] | None = None  # told (name, log file) as each process starts

    @property
    def trainer_dir(self) -> Path:
        """The trainer's `work_dir`: job N writes `job-N/job.log` and its model under it."""
        return self.folder / "trainer"

    @property
    def admin_key_file(self) -> Path:
        return self.folder / "trainer-admin-key"

    def job_log(self, job_id: int) -> Path:
        return self.trainer_dir / f"job-{job_id}" / "job.log"

    def watch_command(self, what: str = "jobs") -> str:
        """What a user runs to watch the trainer (`jobs`, or `job N` for one in full): its admin key, read from
        its file (the token Alertmanager uses is refused there, 403)."""
        return (f"KDGATE_TRAINER_ADMIN_KEY=$(cat {shlex.quote(str(self.admin_key_file))}) kdgate trainer {what} "
                f"--url {self.urls['trainer']}")

    def start(self, name: str, command: list[str], ready: str, env: dict | None = None, timeout: float = 180.0
              ) -> str:
        if self.on_start is not None:
            self.on_start(name, self.folder / f"{name}.log")
        log = (self.folder / f"{name}.log").open("w")
        clean = {key: value for key, value in os.environ.items() if not key.startswith("KDGATE_")}
        process = subprocess.Popen(command, cwd=self.folder, env=clean | {"PYTHONUNBUFFERED": "1"} | (env or {}),
                                   stdout=log, stderr=subprocess.STDOUT)
        self.processes.append(process)
        wait_until_up(ready, process, timeout=timeout)
        return ready

    def stop(self, grace_s: float = 30.0) -> None:
        """SIGTERM to every process at once, one shared grace period (not one per process), then SIGKILL."""
        for process in reversed(self.processes):
            process.terminate()
        deadline = time.monotonic() + grace_s
        for process in reversed(self.processes):
            try:
                process.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


MARKER = ".kdgate-drift-stack"


def fresh_folder(folder: Path) -> Path:
    """An empty folder for one run: a previous run's store (its jobs, versions, records) and Prometheus data would
    otherwise leak into this one. Only a folder this code made (it holds MARKER) is ever emptied."""
    if folder.exists() and any(folder.iterdir()):
        if not (folder / MARKER).is_file():
            raise SystemExit(f"{folder} is not empty and was not made by `kdgate demo drift`; give another --out")
        shutil.rmtree(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / MARKER).touch()
    return folder


def start_stack(folder: Path, teacher_dir: Path, student_dir: Path, window: str, hold: str, sample_rate: float,
                handoff: dict, trainer_overrides: dict, threads: int | None = None,
                on_start: Callable[[str, Path], None] | None = None) -> Stack:
    """Gateway, trainer, Alertmanager, Prometheus, in that order (each one's target is up before it starts);
    `handoff`: the gateway's `routing.handoff` settings (on); `threads`: its torch CPU threads (None: torch's
    default)."""
    folder = fresh_folder(folder.resolve())  # the processes run inside it
    stack = Stack(folder, on_start=on_start)
    try:
        _start_all(stack, folder, teacher_dir, student_dir, window, hold, sample_rate, handoff, trainer_overrides,
                   threads)
    except BaseException:
        stack.stop()
        raise
    return stack


def write_gateway_config(folder: Path, teacher_dir: Path, student_dir: Path, sample_rate: float, handoff: dict,
                         threads: int | None) -> Path:
    """The gateway's settings file: the pair as local models (each served under its folder's name), handoff on with
    `handoff`'s settings (the teacher-share target, a floor), shadow sampling into the stack's SQLite store."""
    gateway = {"student": {"model_dir": str(Path(student_dir).resolve()), "threads": threads},
               "teacher": {"model_dir": str(Path(teacher_dir).resolve()), "threads": threads},
               "routing": {"handoff": {"enabled": True, **handoff}},
               "shadow": {"sample_rate": sample_rate, "store_url": store_url(folder), "concurrency": 2},
               "students": {"poll_interval_s": 1.0}, "log_level": "warning"}
    path = folder / "gateway.yaml"
    path.write_text(yaml.safe_dump(gateway))
    return path


def store_url(folder: Path) -> str:
    """The stack's record store: the gateway writes it, the trainer and the report read it."""
    return f"sqlite:///{folder / 'store.sqlite3'}"


def _start_all(stack: Stack, folder: Path, teacher_dir: Path, student_dir: Path, window: str, hold: str,
               sample_rate: float, handoff: dict, trainer_overrides: dict, threads: int | None) -> None:
    config = write_gateway_config(folder, teacher_dir, student_dir, sample_rate, handoff, threads)
    gateway_port = free_port()
    stack.urls["gateway"] = f"http://127.0.0.1:{gateway_port}"
    stack.start("gateway", KDGATE + ["serve", "--port", str(gateway_port), "--config", str(config)],
                f"{stack.urls['gateway']}/readyz")
    # the trainer's cool-down after a promotion (30 minutes: a 15-minute window and a 10-minute hold, with room)
    # compressed as the rules are: two windows
    cooldown = {"promotion_cooldown_s": 2 * _seconds(window)}
    start_trainer(stack, store_url(folder), stack.urls["gateway"], cooldown | trainer_overrides)
    _start_alerting(stack, folder, window, hold, gateway_port)


def start_trainer(stack: Stack, store: str, gateway_url: str, overrides: dict) -> None:
    """The trainer service with two fresh keys: Alertmanager's (the webhook only) and the admin key (the jobs API,
    written to `stack.admin_key_file` for `Stack.watch_command`)."""
    stack.alerts_key, alerts_digest = new_key()
    stack.admin_key, admin_digest = new_key()
    _secret(stack.admin_key_file, stack.admin_key)
    port = free_port()
    trainer = {"store_url": store, "work_dir": str(stack.trainer_dir), "poll_interval_s": 1.0,
               "auth": {"alerts_sha256": alerts_digest, "admin_sha256": admin_digest},
               "gateway": {"url": gateway_url}} | overrides
    (stack.folder / "trainer.yaml").write_text(yaml.safe_dump(trainer))
    stack.urls["trainer"] = f"http://127.0.0.1:{port}"
    stack.start("trainer", KDGATE + ["trainer", "serve", "--port", str(port), "--config",
                                     str(stack.folder / "trainer.yaml")], f"{stack.urls['trainer']}/healthz")


def _seconds(duration: str) -> float:
    """A Prometheus duration of one unit (`2m`, `20s`) in seconds."""
    return float(duration[:-1]) * {"s": 1, "m": 60, "h": 3600}[duration[-1]]


def _secret(path: Path, key: str) -> Path:
    """A key in a file only its owner reads."""
    path.touch(mode=0o600)
    path.chmod(0o600)
    path.write_text(key)
    return path


def _start_alerting(stack: Stack, folder: Path, window: str, hold: str, gateway_port: int) -> None:
    alert_port, prom_port = free_port(), free_port()
    token = _secret(folder / "trainer-token", stack.alerts_key)  # Alertmanager's: the webhook only
    config = yaml.safe_load(ALERTMANAGER.read_text())
    config["route"] |= {"group_wait": "1s", "group_interval": "5s", "repeat_interval": "1m"}
    (hook,) = next(receiver for receiver in config["receivers"] if receiver["name"] == "kdgate-trainer")[
        "webhook_configs"]
    hook["url"] = f"{stack.urls['trainer']}/v1/alerts"
    hook["http_config"]["authorization"]["credentials_file"] = str(token)
    (folder / "alertmanager.yml").write_text(yaml.safe_dump(config))
    stack.urls["alertmanager"] = f"http://127.0.0.1:{alert_port}"
    stack.start("alertmanager", [tool("prometheus-alertmanager", "alertmanager"),
                                 f"--config.file={folder / 'alertmanager.yml'}",
                                 f"--storage.path={folder / 'alertmanager-data'}",
                                 f"--web.listen-address=127.0.0.1:{alert_port}", "--cluster.listen-address="],
                f"{stack.urls['alertmanager']}/-/ready")

    (folder / "rules.yml").write_text(compress_rules(RULES.read_text(), window, hold))
    prometheus = {"global": {"scrape_interval": "2s", "evaluation_interval": "2s"},
                  "rule_files": [str(folder / "rules.yml")],
                  "alerting": {"alertmanagers": [{"static_configs": [{"targets": [f"127.0.0.1:{alert_port}"]}]}]},
                  "scrape_configs": [{"job_name": "kdgate-gateway",
                                      "static_configs": [{"targets": [f"127.0.0.1:{gateway_port}"]}]}]}
    (folder / "prometheus.yml").write_text(json.dumps(prometheus))
    stack.urls["prometheus"] = f"http://127.0.0.1:{prom_port}"
    stack.start("prometheus", [tool("prometheus"), f"--config.file={folder / 'prometheus.yml'}",
                               f"--storage.tsdb.path={folder / 'prometheus-data'}",
                               f"--web.listen-address=127.0.0.1:{prom_port}"], f"{stack.urls['prometheus']}/-/ready")
