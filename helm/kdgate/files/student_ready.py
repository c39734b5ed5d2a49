"""A student replica is ready when vLLM is up and lists every LoRA adapter the gateway serves.

The chart runs this as the student container's readiness probe (exec: the vLLM image has python3; standard library
only). vLLM keeps runtime LoRA adapters in memory, so a replica that restarts or joins answers /health long before
the gateway's reconciliation (`students.reconcile_interval_s`) has loaded the serving versions' adapters onto it;
ready before that, the Service sends it requests for `<student>@<version>` that it answers with 404. The gateway
names the adapters at /readyz/adapters (open, names only) and finds not-ready pods through the headless Service
(`publishNotReadyAddresses`), so the two meet.

When the gateway cannot be asked (not up yet on a first install, or down), /health alone decides: a gateway pod
starts only once the student answers, so waiting for the gateway here would keep both down.

    python3 student_ready.py SELF_URL GATEWAY_URL [MODEL]  # http://127.0.0.1:8000 http://kdgate-gateway.ns.svc:8000

MODEL, when the gateway serves several pairs, is this student's pair (its served_model): the gateway answers
/readyz/adapters for the pair the x-kdgate-model header names.

Exit 0: ready. Exit 1: not ready, the reason on stderr (the kubelet shows it in the pod's events).
"""

from __future__ import annotations

import json
import os
import sys
import urllib.error
import urllib.request

TIMEOUT_S = 2.0


def fetch(url: str, key: str | None = None, model: str | None = None) -> bytes:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    if model:
        headers["x-kdgate-model"] = model
    request = urllib.request.Request(url, headers=headers)
    with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:  # noqa: S310 (http URLs from the chart)
        return response.read()


def missing_adapters(self_url: str, gateway_url: str, model: str | None = None) -> tuple[list[str], str]:
    """The adapters the gateway serves (for `model`'s pair) that this replica does not list, and a note on how that
    was decided."""
    try:
        wanted = json.loads(fetch(f"{gateway_url}/readyz/adapters", model=model))["adapters"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        return [], f"the gateway was not asked ({error}); /health alone decides"
    if not wanted:
        return [], "the gateway serves no LoRA version"
    models = json.loads(fetch(f"{self_url}/v1/models", os.environ.get("VLLM_API_KEY")))["data"]  # /health is open
    listed = {model.get("id") for model in models}
    return [name for name in wanted if name not in listed], f"the gateway serves {', '.join(wanted)}"


def main(argv: list[str]) -> int:
    if len(argv) not in (3, 4):
        print(__doc__, file=sys.stderr)
        return 2
    self_url, gateway_url = (url.rstrip("/") for url in argv[1:3])
    model = argv[3] if len(argv) == 4 else None
    try:
        fetch(f"{self_url}/health")
        missing, how = missing_adapters(self_url, gateway_url, model)
    except (OSError, ValueError, KeyError, TypeError) as error:
        print(f"not ready: the model server at {self_url} does not answer ({error})", file=sys.stderr)
        return 1
    if missing:
        print(f"not ready: {how}; this replica does not list {', '.join(missing)} yet (the gateway loads them "
              "within students.reconcile_interval_s)", file=sys.stderr)
        return 1
    print(f"ready: {how}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
