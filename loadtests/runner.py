"""Load shapes and the run loop.

Closed loop: `concurrency` workers, each sending its next request when the last one ends. Open loop: arrivals at
`rate` req/s, Poisson (exponential gaps), gamma (shape = burstiness: < 1 burstier than Poisson, > 1 smoother) or
constant, optionally capped at `max_concurrency` in flight (a request waiting for a slot counts queue time, not
latency). A linear ramp-up raises the rate (or starts the workers) over its first seconds. A run stops sending at
`requests` (warm-up excluded) or `duration`, whichever comes first; requests still running `grace` seconds after
that are cancelled and counted as failures, so a run always ends on time. Arrivals and prompt order are seeded.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from dataclasses import dataclass
from typing import Literal

import httpx

from loadtests.client import RequestRecord, measure
from loadtests.workload import BodySettings, Prompt, body


@dataclass(frozen=True)
class Shape:
    concurrency: int | None = None  # closed loop
    rate: float | None = None  # open loop, req/s
    arrivals: Literal["poisson", "gamma", "constant"] = "poisson"
    burstiness: float = 1.0
    max_concurrency: int | None = None
    ramp_up: float = 0.0

    def __post_init__(self):
        if (self.concurrency is None) == (self.rate is None):
            raise ValueError("give exactly one of --concurrency (closed loop) or --rate (open loop)")
        if self.concurrency is not None and self.concurrency < 1:
            raise ValueError(f"--concurrency must be ≥ 1, got {self.concurrency}")
        if self.rate is not None and not self.rate > 0:
            raise ValueError(f"--rate must be > 0 req/s, got {self.rate}")
        if self.burstiness <= 0:
            raise ValueError(f"--burstiness must be > 0, got {self.burstiness}")
        if self.ramp_up < 0:
            raise ValueError(f"--ramp-up must be ≥ 0 s, got {self.ramp_up}")

    @property
    def label(self) -> str:
        if self.concurrency is not None:
            return f"concurrency {self.concurrency}"
        cap = f", max {self.max_concurrency} in flight" if self.max_concurrency else ""
        return f"{self.rate:g} req/s {self.arrivals}{cap}"


@dataclass(frozen=True)
class Bounds:
    requests: int | None = None
    duration: float | None = None  # seconds of sending
    warmup: int = 0  # first requests, excluded from the statistics
    grace: float = 5.0  # seconds a running request may outlive the sending window
    timeout: float = 60.0  # per request

    def __post_init__(self):
        if self.requests is None and self.duration is None:
            raise ValueError("bound the run with --requests and/or --duration")
        if self.requests is not None and self.requests < 1:
            raise ValueError(f"--requests must be ≥ 1, got {self.requests}")
        if self.duration is not None and not self.duration > 0:
            raise ValueError(f"--duration must be > 0 s, got {self.duration}")


@dataclass(frozen=True)
class Target:
    url: str  # the endpoint: …/v1/chat/completions or …/v1/completions
    headers: dict[str, str]
    request: BodySettings


@dataclass
class RunResult:
    records: list[RequestRecord]
    started: float  # wall-clock epoch seconds
    elapsed: float  # seconds from the first send to the last end
    peak_concurrency: int
    shape: Shape
    bounds: Bounds


def arrival_times(shape: Shape, count: int, rng: random.Random) -> list[float]:
    """Seconds after the start for `count` open-loop arrivals, the ramp-up applied by rescaling time."""
    gaps = {"poisson": lambda: rng.expovariate(1.0),
            "gamma": lambda: rng.gammavariate(shape.burstiness, 1.0 / shape.burstiness),
            "constant": lambda: 1.0}[shape.arrivals]
    times, unit = [], 0.0  # `unit`: arrivals in a rate-1 process
    ramp, rate = shape.ramp_up, shape.rate
    for _ in range(count):
        unit += gaps()
        load = unit / rate  # the integral of rate(t) reaches `unit` here for a flat rate
        if ramp > 0:  # rate(t) = rate·t/ramp up to `ramp`: ∫ = rate·t²/(2·ramp)
            load = math.sqrt(2 * ramp * unit / rate) if unit < rate * ramp / 2 else ramp + unit / rate - ramp / 2
        times.append(load)
    return times


async def run(target: Target, prompts: list[Prompt], shape: Shape, bounds: Bounds, seed: int = 0,
              client: httpx.AsyncClient | None = None) -> RunResult:
    rng = random.Random(seed)  # arrivals
    chat = target.url.endswith("/chat/completions")
    bodies = list(enumerate(body(prompt, target.request, chat) for prompt in prompts))
    random.Random(seed + 1).shuffle(bodies)  # request i sends bodies[i % len]: the same prompts in every arm
    total = (bounds.requests + bounds.warmup) if bounds.requests is not None else None
    state = _State(bounds, total)
    own = client is None
    client = client or httpx.AsyncClient(limits=httpx.Limits(max_connections=None, max_keepalive_connections=None))
    origin, wall = time.perf_counter(), time.time()

    async def one(record: RequestRecord) -> None:
        state.in_flight += 1
        state.peak = max(state.peak, state.in_flight)
        try:
            record.prompt, sent = bodies[record.index % len(bodies)]
            await measure(client, target.url, sent, target.headers, record, origin, bounds.timeout)
        except asyncio.CancelledError:
            record.error = "cancelled: still running when the run's time was up"
            raise
        finally:
            state.in_flight -= 1

    try:
        sender = (_closed_loop(shape, state, one, origin) if shape.concurrency is not None
                  else _open_loop(shape, state, one, origin, rng))
        await _bounded(sender, state, bounds)
    finally:
        if own:
            await client.aclose()
    for record in state.records:
        record.warmup = record.index < bounds.warmup
    measured = [r for r in state.records if not r.warmup] or state.records
    first = min((r.sent for r in measured), default=0.0)
    last = max((r.sent + (r.e2e or 0.0) for r in measured), default=0.0)
    return RunResult(state.records, wall, max(last - first, 1e-9), state.peak, shape, bounds)


class _State:
    def __init__(self, bounds: Bounds, total: int | None):
        self.bounds, self.total = bounds, total
        self.records: list[RequestRecord] = []
        self.tasks: set[asyncio.Task] = set()
        self.in_flight = self.peak = 0
        self.stop_at: float | None = None  # perf_counter of the end of the sending window

    def next_record(self, scheduled: float) -> RequestRecord | None:
        if self.total is not None and len(self.records) >= self.total:
            return None
        if self.bounds.duration is not None and scheduled >= self.bounds.duration:
            # the window is kept on the plan's clock too: the timer that closes it starts a moment after the
            # origin, so on a busy box an arrival planned 4 ms after the window was still sent
            return None
        record = RequestRecord(index=len(self.records), scheduled=scheduled)
        self.records.append(record)
        return record


async def _closed_loop(shape: Shape, state: _State, one, origin: float) -> None:
    async def worker(number: int) -> None:
        await asyncio.sleep(shape.ramp_up * number / shape.concurrency)
        while (record := state.next_record(time.perf_counter() - origin)) is not None:
            await one(record)

    await asyncio.gather(*(worker(n) for n in range(shape.concurrency)))


async def _open_loop(shape: Shape, state: _State, one, origin: float, rng: random.Random) -> None:
    slots = asyncio.Semaphore(shape.max_concurrency) if shape.max_concurrency else None

    async def capped(record: RequestRecord) -> None:
        if slots is None:
            return await one(record)
        async with slots:
            await one(record)

    batch = 1024
    offset = 0.0
    while True:
        for arrival in arrival_times(shape, batch, rng):
            at = offset + arrival
            await asyncio.sleep(max(0.0, origin + at - time.perf_counter()))
            record = state.next_record(at)
            if record is None:
                await asyncio.gather(*state.tasks, return_exceptions=True)
                return
            task = asyncio.create_task(capped(record))
            state.tasks.add(task)
            task.add_done_callback(state.tasks.discard)
        offset = at
        shape = Shape(rate=shape.rate, arrivals=shape.arrivals, burstiness=shape.burstiness,
                      max_concurrency=shape.max_concurrency)  # the ramp is over after the first batch


async def _bounded(sender, state: _State, bounds: Bounds) -> None:
    """Run the sender within the duration (if any), then give running requests `grace` seconds."""
    task = asyncio.ensure_future(sender)
    if bounds.duration is None:
        await task
        return
    done, _ = await asyncio.wait({task}, timeout=bounds.duration)
    if task in done:
        task.result()
        return
    state.total = len(state.records)  # no new requests
    _, pending = await asyncio.wait({task, *state.tasks}, timeout=bounds.grace)
    for leftover in pending:
        leftover.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
