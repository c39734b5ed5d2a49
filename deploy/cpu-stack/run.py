"""deploy/compose.yaml's services on one CPU machine, without Docker, all on loopback:

    student, teacher   two `kdgate engine` servers (the demo models by default) with the flags of
                       deploy/vllm/launch.yaml that the engine has, and its environment; or, with --vllm PYTHON
                       (the python of `./dev setup vllm`'s .venv-vllm), two real vLLM servers (its CPU build) with
                       launch.yaml's flags, less the GPU memory ones
    gateway            `kdgate serve` over HTTP to them: handoff and shadow on, API keys on
    trainer            `kdgate trainer serve` (Alertmanager's webhook, the jobs)
    alertmanager       Debian's, with deploy/alertmanager/alertmanager.yml aimed at the trainer
    prometheus         Debian's, with deploy/compose/prometheus.yml's jobs aimed at the servers above, and the
                       project's rules file as it is
    store              one SQLite file, or --store-url postgresql+psycopg://...

    .venv/bin/python deploy/cpu-stack/run.py [--out DIR] [--student DIR --teacher DIR] [--store-url URL]
        [--vllm .venv-vllm/bin/python]

Prints the URLs and keys (also in DIR/stack.json, private to you); Ctrl-C stops everything. No Grafana (Debian does
not ship it): point one at the printed Prometheus and import deploy/grafana/kdgate.json. The processes are started
and stopped by the drift demo's `Stack` (kdgate/drift/stack.py); each one's log is DIR/<name>.log.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import tempfile
import time
from pathlib import Path

import typer
import yaml

from gateway.threaded import free_port
from kdgate.cli import app as cli
from kdgate.drift.stack import ALERTMANAGER, RULES, MissingTool, Stack, tool
from runtime.credentials import new_key
from runtime.demo import DEMO_STUDENT_DIR, DEMO_TEACHER_DIR

DEPLOY = Path(__file__).resolve().parents[1]
LAUNCH = DEPLOY / "vllm" / "launch.yaml"
PROMETHEUS = DEPLOY / "compose" / "prometheus.yml"
KDGATE = [sys.executable, "-m", "kdgate.cli"]


def engine_flags(launch_command: list[str]) -> list[str]:
    """The launch flags `kdgate engine` also has (--served-model-name, --max-logprobs, --enable-lora); vLLM's
    memory and LoRA-slot flags mean nothing to it."""
    engine = typer.main.get_command(cli).commands["engine"]
    known = {option for param in engine.params for option in param.opts}
    return [flag for flag in launch_command if flag.split("=", 1)[0] in known]


def served_name(launch_command: list[str]) -> str:
    return next(flag.split("=", 1)[1] for flag in launch_command if flag.startswith("--served-model-name="))


def absolute(python: str | None) -> str | None:
    """The vLLM python as an absolute path: the servers run in the stack's folder, where `./dev serve-vllm`'s
    `.venv-vllm/bin/python` named nothing. Not resolved: a venv's python is a link out of the venv."""
    return os.path.abspath(python) if python else None


def vllm_command(python: str, model_dir: Path, port: int, launch_command: list[str]) -> list[str]:
    """vLLM's CPU build on `model_dir` with launch.yaml's flags, less what sizes GPU memory and the context (the
    demo models' is 512 tokens), in float32 (what the CPU build runs the demo checkpoints in)."""
    kept = [flag for flag in launch_command
            if flag.split("=", 1)[0] not in ("--gpu-memory-utilization", "--max-model-len")]
    return [python, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model_dir), "--host", "127.0.0.1",
            "--port", str(port), "--dtype", "float32", "--max-model-len", "512", *kept]


def start(stack: Stack, student_dir: Path, teacher_dir: Path, store_url: str, threads: int,
          vllm: str | None = None, serving_only: bool = False, gateway_port: int | None = None) -> dict:
    """Every service, each one's dependencies first; returns what a client needs (also written to stack.json).
    `serving_only`: the two model servers and the gateway alone, open on loopback like `./dev serve` (no keys, no
    trainer, Alertmanager or Prometheus), so the README's examples run against it as written."""
    folder, launch = stack.folder, yaml.safe_load(LAUNCH.read_text())["services"]
    keys = {name: new_key() for name in ("chat", "admin", "metrics", "alerts", "trainer_admin")}
    addresses, models = {}, {}
    for role, model_dir in (("student", student_dir), ("teacher", teacher_dir)):
        service, port = launch[f"vllm-{role}"], free_port()
        models[role] = served_name(service["command"])
        addresses[f"vllm-{role}:8000"] = f"127.0.0.1:{port}"
        stack.urls[role] = f"http://127.0.0.1:{port}/v1"
        if vllm:  # cores 0 and 1 for the two servers' OpenMP threads (both bound themselves to core 0 otherwise)
            env = (service.get("environment") or {}) | {"VLLM_CPU_KVCACHE_SPACE": "1",
                                                        "VLLM_CPU_OMP_THREADS_BIND": "0" if role == "student" else "1"}
            stack.start(role, vllm_command(vllm, model_dir, port, service["command"]),
                        f"http://127.0.0.1:{port}/health", env=env, timeout=900)
            continue
        stack.start(role, KDGATE + ["engine", "--model", str(model_dir), "--port", str(port), "--threads",
                                    str(threads), *engine_flags(service["command"])],
                    f"http://127.0.0.1:{port}/health", env=service.get("environment"))

    port = gateway_port or free_port()
    addresses["kdgate:8000"] = f"127.0.0.1:{port}"
    stack.urls["gateway"] = f"http://127.0.0.1:{port}"
    gateway = {"served_model": "kdgate-demo", "log_level": "warning",  # the README's examples send it
               "student": {"kind": "http", "base_url": stack.urls["student"], "model": models["student"]},
               "teacher": {"kind": "http", "base_url": stack.urls["teacher"], "model": models["teacher"]},
               "routing": {"handoff": {"enabled": True}}, "shadow": {"enabled": True, "store_url": store_url},
               "auth": {"keys": [{"name": "app", "sha256": keys["chat"][1]}], "admin_sha256": keys["admin"][1],
                        "metrics_sha256": keys["metrics"][1]}}
    if serving_only:
        del gateway["auth"]
    write(folder / "gateway.yaml", yaml.safe_dump(gateway))
    stack.start("gateway", KDGATE + ["serve", "--port", str(port), "--config", str(folder / "gateway.yaml")],
                f"{stack.urls['gateway']}/readyz")
    if serving_only:
        return {"folder": str(folder), "urls": stack.urls, "served_model": gateway["served_model"], "keys": {},
                "pids": {name: process.pid for name, process in zip(["student", "teacher", "gateway"],
                                                                     stack.processes, strict=True)}}

    port = free_port()
    stack.urls["trainer"] = f"http://127.0.0.1:{port}"
    trainer = {"store_url": store_url, "work_dir": str(folder / "trainer"), "train": {"threads": threads},
               "auth": {"alerts_sha256": keys["alerts"][1], "admin_sha256": keys["trainer_admin"][1]},
               "gateway": {"url": stack.urls["gateway"], "admin_key": keys["admin"][0]}}
    write(folder / "trainer.yaml", yaml.safe_dump(trainer))
    stack.start("trainer", KDGATE + ["trainer", "serve", "--port", str(port), "--config",
                                     str(folder / "trainer.yaml")], f"{stack.urls['trainer']}/healthz")

    port = free_port()
    addresses["alertmanager:9093"] = f"127.0.0.1:{port}"
    stack.urls["alertmanager"] = f"http://127.0.0.1:{port}"
    write(folder / "trainer-alerts-token", keys["alerts"][0])
    config = yaml.safe_load(ALERTMANAGER.read_text())
    (hook,) = next(receiver for receiver in config["receivers"] if receiver["name"] == "kdgate-trainer")[
        "webhook_configs"]
    hook["url"] = f"{stack.urls['trainer']}/v1/alerts"
    hook["http_config"]["authorization"]["credentials_file"] = str(folder / "trainer-alerts-token")
    write(folder / "alertmanager.yml", yaml.safe_dump(config))
    stack.start("alertmanager", [tool("prometheus-alertmanager", "alertmanager"),
                                 f"--config.file={folder / 'alertmanager.yml'}",
                                 f"--storage.path={folder / 'alertmanager-data'}",
                                 f"--web.listen-address=127.0.0.1:{port}", "--cluster.listen-address="],
                f"{stack.urls['alertmanager']}/-/ready")

    port = free_port()
    stack.urls["prometheus"] = f"http://127.0.0.1:{port}"
    write(folder / "metrics-token", keys["metrics"][0])
    write(folder / "prometheus.yml", yaml.safe_dump(prometheus_config(addresses, folder / "metrics-token")))
    stack.start("prometheus", [tool("prometheus"), f"--config.file={folder / 'prometheus.yml'}",
                               f"--storage.tsdb.path={folder / 'prometheus-data'}",
                               f"--web.listen-address=127.0.0.1:{port}"], f"{stack.urls['prometheus']}/-/ready")
    return {"folder": str(folder), "urls": stack.urls, "served_model": gateway["served_model"],
            "keys": {"chat": keys["chat"][0], "admin": keys["admin"][0], "trainer_admin": keys["trainer_admin"][0]},
            "pids": {name: process.pid for name, process in zip(
                ["student", "teacher", "gateway", "trainer", "alertmanager", "prometheus"], stack.processes,
                strict=True)}}


def prometheus_config(addresses: dict[str, str], metrics_token: Path) -> dict:
    """deploy/compose/prometheus.yml with each compose address replaced by its loopback one (an address it does
    not know fails here: a job added there needs its process here), the token file and the rules file local."""
    config = yaml.safe_load(PROMETHEUS.read_text())
    config["rule_files"] = [str(RULES)]
    for manager in config["alerting"]["alertmanagers"]:
        for group in manager["static_configs"]:
            group["targets"] = [addresses[target] for target in group["targets"]]
    for job in config["scrape_configs"]:
        if "authorization" in job:
            job["authorization"]["credentials_file"] = str(metrics_token)
        for group in job["static_configs"]:
            group["targets"] = [addresses[target] for target in group["targets"]]
    return config


def write(path: Path, text: str) -> None:
    path.write_text(text)
    path.chmod(0o600)  # keys and tokens


def main() -> int:
    parser = argparse.ArgumentParser(description="kdgate's compose services on one CPU machine, without Docker")
    parser.add_argument("--out", type=Path, help="an empty or new folder for logs, settings, the store "
                        "(default: a fresh temporary one)")
    parser.add_argument("--student", type=Path, default=DEMO_STUDENT_DIR, help="the student's model folder")
    parser.add_argument("--teacher", type=Path, default=DEMO_TEACHER_DIR, help="the teacher's model folder")
    parser.add_argument("--store-url", help="SQLAlchemy URL of the record store (default: SQLite in --out)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads per engine and per job")
    parser.add_argument("--serving-only", action="store_true", help="the model servers and the gateway alone, "
                        "open on loopback as `./dev serve` is (no keys, trainer, Alertmanager or Prometheus)")
    parser.add_argument("--port", type=int, help="the gateway's port (default: a free one)")
    parser.add_argument("--vllm", help="serve the models with real vLLM servers: the python of vLLM's CPU build "
                        "(`./dev setup vllm` makes .venv-vllm/bin/python); about 2 minutes to start, 3 GB each")
    args = parser.parse_args()
    if args.out is not None and args.out.exists() and any(args.out.iterdir()):
        parser.error(f"{args.out} is not empty; give a new or empty folder")
    folder = (args.out or Path(tempfile.mkdtemp(prefix="kdgate-cpu-stack-"))).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))  # stops the stack like Ctrl-C
    # Ctrl-C stops it even when it was started with SIGINT ignored (a background job of a script: `... &`), where
    # Python would install no handler of its own
    signal.signal(signal.SIGINT, signal.default_int_handler)
    stack = Stack(folder, on_start=lambda name, log: print(f"starting {name} (log: {log}) ...", flush=True))
    try:
        info = start(stack, args.student.resolve(), args.teacher.resolve(),
                     args.store_url or f"sqlite:///{folder / 'store.sqlite3'}", args.threads, absolute(args.vllm),
                     args.serving_only, args.port)
        write(folder / "stack.json", json.dumps(info, indent=2))
        for name, url in stack.urls.items():
            print(f"{name:<13} {url}")
        if info["keys"]:
            print(f"chat key      {info['keys']['chat']}   (model `{info['served_model']}`)\n"
                  f"admin keys    in {folder / 'stack.json'}", flush=True)
        else:
            print(f"model `{info['served_model']}`, no API key (loopback only)", flush=True)
        print(f"logs in {folder}\nCtrl-C stops everything.", flush=True)
        while all(process.poll() is None for process in stack.processes):
            time.sleep(1)
        print("a service stopped on its own; see its log in " + str(folder), file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    except MissingTool as error:
        print(f"cpu-stack: {error}", file=sys.stderr)
        return 2
    except (RuntimeError, TimeoutError) as error:  # a service exited or never answered while starting
        print(f"cpu-stack: {error}; see the logs in {folder}", file=sys.stderr)
        return 1
    finally:
        stack.stop()


if __name__ == "__main__":
    sys.exit(main())
