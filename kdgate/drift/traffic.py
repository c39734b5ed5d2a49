"""Client traffic for the drift scenario: tickets at a steady Poisson rate, the launched-product share switched on
at the launch, every answer checked (status, route, version) so that a failed request anywhere in the loop shows."""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass, field

import httpx

from distill.demo import drift, task


@dataclass
class Served:
    at: float  # seconds since the scenario began
    launched: bool
    ok: bool
    route: str | None
    version: str | None
    correct: bool
    error: str | None = None


@dataclass
class Traffic:
    url: str
    rate: float  # requests per second
    seed: int = 0
    launched_share: float = 0.0  # set to the launch's share when the launch happens
    served: list[Served] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)

    def __post_init__(self) -> None:
        self._usual = drift.prelaunch("val", self.seed)
        self._launched = drift.launched("val", self.seed + 1)
        self._rng = random.Random(self.seed)

    async def run(self, stop: asyncio.Event) -> None:
        pending: set[asyncio.Task] = set()
        async with httpx.AsyncClient(timeout=120) as client:
            while not stop.is_set():
                launched = self._rng.random() < self.launched_share
                ticket = next(self._launched if launched else self._usual)
                task_ = asyncio.create_task(self._ask(client, ticket, launched))
                pending.add(task_)
                task_.add_done_callback(pending.discard)
                try:
                    async with asyncio.timeout(self._rng.expovariate(self.rate)):
                        await stop.wait()
                except TimeoutError:
                    pass
            if pending:
                await asyncio.wait(pending)

    async def _ask(self, client: httpx.AsyncClient, ticket: task.Ticket, launched: bool) -> None:
        at = time.monotonic() - self.started
        body = {"model": "kdgate-demo", "messages": ticket.messages(), "temperature": 0, "max_tokens": 96}
        try:
            reply = await client.post(f"{self.url}/v1/chat/completions", json=body)
        except httpx.HTTPError as error:
            self.served.append(Served(at, launched, False, None, None, False, f"{type(error).__name__}: {error}"))
            return
        if reply.status_code != 200:
            self.served.append(Served(at, launched, False, None, None, False, f"HTTP {reply.status_code}: "
                                                                              f"{reply.text[:200]}"))
            return
        answer = reply.json()["choices"][0]["message"]["content"]
        self.served.append(Served(at, launched, True, reply.headers.get("x-kdgate-route"),
                                  reply.headers.get("x-kdgate-student-version"), answer == ticket.answer_json()))

    def window(self, start: float, end: float, launched: bool | None = None) -> list[Served]:
        return [item for item in self.served if start <= item.at < end
                and (launched is None or item.launched == launched)]
