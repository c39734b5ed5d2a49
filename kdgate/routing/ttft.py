"""TTFT of each routing configuration, measured through real gateways with the official `openai` client.

One gateway per configuration (each with its own local engines), all up at once; requests go one at a time,
round-robin over the configurations, so machine noise hits every configuration alike. TTFT is the client's time
from sending the request to the first content token; a confidence policy's hold-back shows up in it.
"""

from __future__ import annotations

import statistics
import time
from contextlib import ExitStack
from dataclasses import dataclass, field

from openai import OpenAI
from tqdm import tqdm

from gateway.app import create_app
from gateway.settings import GatewaySettings, RoutingSettings
from gateway.threaded import ThreadedServer


@dataclass
class TtftSample:
    seconds: list[float] = field(default_factory=list)
    routes: list[str] = field(default_factory=list)

    def summary(self) -> dict:
        escalated = [s for s, route in zip(self.seconds, self.routes, strict=True) if route == "teacher"]
        return {"requests": len(self.seconds), "ttft_p50_s": statistics.median(self.seconds),
                "ttft_p90_s": statistics.quantiles(self.seconds, n=10)[-1] if len(self.seconds) > 1 else None,
                "teacher_fraction": len(escalated) / len(self.seconds),
                "ttft_p50_escalated_s": statistics.median(escalated) if escalated else None}


def first_token_seconds(client: OpenAI, model: str, messages: list[dict]) -> tuple[float, str]:
    started = time.perf_counter()
    response = client.chat.completions.with_raw_response.create(
        model=model, messages=messages, temperature=0, max_tokens=96, stream=True)
    first = None
    for chunk in response.parse():
        if first is None and chunk.choices and chunk.choices[0].delta.content:
            first = time.perf_counter() - started
    if first is None:
        raise RuntimeError("the gateway streamed no content")
    return first, response.headers["x-kdgate-route"]


def measure(configs: dict[str, RoutingSettings], conversations: list[list[dict]], base: GatewaySettings
            ) -> dict[str, dict]:
    samples = {name: TtftSample() for name in configs}
    with ExitStack() as stack:
        clients = {}
        for name, routing in configs.items():
            server = stack.enter_context(ThreadedServer(create_app(base.model_copy(update={"routing": routing}))))
            clients[name] = OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)
        for client in clients.values():  # warm-up: first requests pay one-off allocations
            first_token_seconds(client, base.served_model, conversations[0])
        for messages in tqdm(conversations, desc="TTFT", unit="round"):
            for name, client in clients.items():
                seconds, route = first_token_seconds(client, base.served_model, messages)
                samples[name].seconds.append(seconds)
                samples[name].routes.append(route)
    return {name: sample.summary() for name, sample in samples.items()}
