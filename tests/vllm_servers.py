"""vLLM peers for the tests (a plugin, registered in tests/conftest.py).

- `packed_engine`: the project's engine (`kdgate engine`'s app, in this process) with vLLM's stream interval at 4,
  so every stream packs several tokens per chunk, as a busy vLLM does: the chunking regressions run here in seconds.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from gateway.threaded import ThreadedServer

PACKED_INTERVAL = 4  # tokens per chunk after the first


@pytest.fixture(scope="module")
def packed_engine(demo_dirs) -> Iterator[ThreadedServer]:
    """`kdgate engine` on the demo student, packing `PACKED_INTERVAL` tokens per chunk (vLLM's --stream-interval),
    with a `served` attribute: the model id it serves."""
    from gateway.app import create_engine_app
    from gateway.chat.serving import ServingLimits
    from runtime.backends.local import LocalBackend
    from runtime.engine.engine import EngineSettings

    settings = EngineSettings(model_dir=demo_dirs[0], threads=1, stream_interval=PACKED_INTERVAL)
    app = create_engine_app(lambda: LocalBackend("engine", settings, model_name="demo-student-packed"),
                            "demo-student-packed", ServingLimits(max_tokens_limit=512, default_max_tokens=256,
                                                                 max_top_logprobs=20))
    with ThreadedServer(app) as server:
        server.served = "demo-student-packed"
        yield server
