"""Real servers on loopback for tests and measurement harnesses: a uvicorn server in a background thread (its app
state stays reachable in the same process), and waiting for any server's URL to answer."""

from __future__ import annotations

import socket
import subprocess
import threading
import time

import httpx
import uvicorn

from runtime.connections import ConnectionLimits, uvicorn_config


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ThreadedServer:
    def __init__(self, app, startup_timeout: float = 60.0, limits: ConnectionLimits | None = None):
        self.app = app
        self.port = free_port()
        self.startup_timeout = startup_timeout
        self.server = uvicorn.Server(uvicorn_config(app, limits or ConnectionLimits(), host="127.0.0.1",
                                                    port=self.port, log_level="warning", timeout_graceful_shutdown=2))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> ThreadedServer:
        self.thread.start()
        deadline = time.monotonic() + self.startup_timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the server did not start (see the log above)")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=20)


def wait_until_up(url: str, process: subprocess.Popen | None = None, timeout: float = 90.0) -> None:
    """Return when `url` answers 200; fail early if `process` (the server) exits first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode} before answering {url}")
        try:
            if httpx.get(url, timeout=1.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{url} did not answer within {timeout} s")
