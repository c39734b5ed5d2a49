"""Admission: per-key rate limits, then a slot among the process's in-flight requests, or a clean refusal.

    request ── key's requests/tokens per minute spent? ── 429 + Retry-After
            └─ a free slot (max_in_flight)? ── wait in a bounded queue (max_queued, queue_timeout_s) ── 503 + Retry-After

Rate windows are sliding: the count of the current minute plus the previous minute's, weighted by how much of it
still lies within the last 60 s (the estimate Cloudflare and others use; it needs two counters per key, not a log
of timestamps). In memory for one process; in Redis (`limits.redis_url`) to hold across worker processes and
replicas, checked and counted in one Lua script so that concurrent gateways cannot both take the last request.
Windows are a pair's (its `served_model`), as each pair of a gateway keeps its own limits, in memory and in Redis
alike; in Redis under `limits.redis_prefix`, so that other deployments sharing the Redis count apart:

    {redis_prefix}:{served_model}:{key}:{minute}:r|t      (served_model and key %-escaped: no `:` of their own)

A Redis that fails lets requests in (counted in `kdgate_limit_errors_total`): a limiter outage must not become an
API outage.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Protocol
from urllib.parse import quote

from gateway.asgi import send_error
from gateway.auth import ANONYMOUS, Principal
from gateway.logs import Outage
from gateway.metrics import GatewayMetrics
from gateway.settings import LimitsSettings
from runtime.contract import Event
from runtime.errors import BackendBusy, Overloaded, RateLimited

WINDOW_S = 60.0
LIMITER_RETRY_S = 5.0  # a failing rate limiter (Redis) is asked again after this long
log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------------ sliding windows


@dataclass(frozen=True)
class Counts:
    """A key's two minutes: requests and tokens counted in the current minute and in the one before."""

    requests: int
    previous_requests: int
    tokens: int
    previous_tokens: int


def estimate(current: int, previous: int, into_minute: float) -> float:
    """Events in the last 60 s: the current minute's, plus the part of the previous one still inside the window."""
    return current + previous * (1.0 - into_minute / WINDOW_S)


def seconds_until_under(limit: int, current: int, previous: int, into_minute: float) -> float:
    """How long until the sliding estimate is below `limit` again (no new events assumed)."""
    if current >= limit:  # this minute alone is over: wait for it to become the previous one, then for its decay
        return (WINDOW_S - into_minute) + WINDOW_S * (1.0 - (limit - 0.5) / current) if current else WINDOW_S
    needed = 1.0 - (limit - current - 0.5) / previous if previous else 0.0  # previous weight must fall to this
    return max(0.0, needed * WINDOW_S - into_minute)


class Windows(Protocol):
    async def take(self, key: str, rpm: int | None, tpm: int | None, now: float) -> tuple[bool, Counts]:
        """Count one request for `key` if it is under both limits; (admitted?, the counts it was judged on)."""
        ...

    async def add_tokens(self, key: str, tokens: int, now: float) -> None: ...

    async def aclose(self) -> None: ...


@dataclass
class MemoryWindows:
    """One process's windows."""

    counts: dict[tuple[str, int, str], int] = field(default_factory=dict)  # (key, minute, "r"|"t") -> count

    async def take(self, key: str, rpm: int | None, tpm: int | None, now: float) -> tuple[bool, Counts]:
        minute, into = divmod(now, WINDOW_S)
        counts = self._counts(key, int(minute))
        if _over(counts, rpm, tpm, into):
            return False, counts
        self.counts[(key, int(minute), "r")] = counts.requests + 1
        self._prune(int(minute))
        return True, counts

    async def add_tokens(self, key: str, tokens: int, now: float) -> None:
        slot = (key, int(now // WINDOW_S), "t")
        self.counts[slot] = self.counts.get(slot, 0) + tokens

    async def aclose(self) -> None:
        self.counts.clear()

    def _counts(self, key: str, minute: int) -> Counts:
        get = self.counts.get
        return Counts(get((key, minute, "r"), 0), get((key, minute - 1, "r"), 0), get((key, minute, "t"), 0),
                      get((key, minute - 1, "t"), 0))

    def _prune(self, minute: int) -> None:
        if len(self.counts) > 4096:
            self.counts = {slot: count for slot, count in self.counts.items() if slot[1] >= minute - 1}


TAKE_SCRIPT = """
local r, pr, t, pt = tonumber(redis.call('GET', KEYS[1]) or '0'), tonumber(redis.call('GET', KEYS[2]) or '0'),
                     tonumber(redis.call('GET', KEYS[3]) or '0'), tonumber(redis.call('GET', KEYS[4]) or '0')
local rpm, tpm, weight = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
if (rpm >= 0 and r + pr * weight >= rpm) or (tpm >= 0 and t + pt * weight >= tpm) then
  return {0, r, pr, t, pt}
end
redis.call('INCR', KEYS[1])
redis.call('EXPIRE', KEYS[1], 180)
return {1, r, pr, t, pt}
"""


class RedisWindows:
    """The same windows in Redis, shared by every process that points at it with the same prefix and pair."""

    def __init__(self, url: str, prefix: str, served_model: str):
        import redis.asyncio as redis

        self.client = redis.from_url(url, socket_timeout=1.0, socket_connect_timeout=1.0)
        self.prefix = f"{prefix}:{quote(served_model, safe='')}"
        self._take = self.client.register_script(TAKE_SCRIPT)

    def _base(self, key: str) -> str:
        return f"{self.prefix}:{quote(key, safe='')}"

    def _keys(self, key: str, minute: int) -> list[str]:
        base = self._base(key)
        return [f"{base}:{minute}:r", f"{base}:{minute - 1}:r", f"{base}:{minute}:t", f"{base}:{minute - 1}:t"]

    async def take(self, key: str, rpm: int | None, tpm: int | None, now: float) -> tuple[bool, Counts]:
        minute, into = divmod(now, WINDOW_S)
        weight = 1.0 - into / WINDOW_S
        admitted, *counts = await self._take(keys=self._keys(key, int(minute)),
                                             args=[-1 if rpm is None else rpm, -1 if tpm is None else tpm, weight])
        return bool(admitted), Counts(*(int(count) for count in counts))

    async def add_tokens(self, key: str, tokens: int, now: float) -> None:
        slot = f"{self._base(key)}:{int(now // WINDOW_S)}:t"
        async with self.client.pipeline(transaction=True) as pipe:
            await pipe.incrby(slot, tokens).expire(slot, 180).execute()

    async def aclose(self) -> None:
        await self.client.aclose()


def _over(counts: Counts, rpm: int | None, tpm: int | None, into: float) -> bool:
    return (rpm is not None and estimate(counts.requests, counts.previous_requests, into) >= rpm) or \
        (tpm is not None and estimate(counts.tokens, counts.previous_tokens, into) >= tpm)


# ------------------------------------------------------------------------------------------------ admission


@dataclass
class Ticket:
    """A request's admission: release the slot when its answer is done; `spent` counts its tokens."""

    admission: Admission
    principal: Principal
    released: bool = False

    async def spent(self, tokens: int) -> None:
        await self.admission.add_tokens(self.principal, tokens)

    def release(self) -> None:
        if not self.released:
            self.released = True
            self.admission.free_slot()


class Admission:
    """One pair's admission: its keys' rate windows (`served_model`'s own) and its process's slots."""

    def __init__(self, settings: LimitsSettings, metrics: GatewayMetrics, served_model: str,
                 windows: Windows | None = None):
        self.settings = settings
        self.metrics = metrics
        self.windows = windows or (RedisWindows(settings.redis_url, settings.redis_prefix, served_model)
                                   if settings.redis_url else MemoryWindows())
        self.in_flight = 0
        self._waiters: list[asyncio.Future] = []
        self._limiter_down_until = 0.0  # a failing limiter is skipped until then (a breaker), then tried once again
        self._limiter_outage = Outage(log, "the rate limiter (limits.redis_url)")

    async def admit(self, principal: Principal) -> Ticket:
        await self._check_rates(principal)
        await self._take_slot()
        return Ticket(self, principal)

    async def add_tokens(self, principal: Principal, tokens: int) -> None:
        if self._tpm(principal) is None or tokens <= 0 or self._limiter_skipped():
            return
        try:
            await self.windows.add_tokens(principal.name, tokens, time.time())
        except Exception as error:  # noqa: BLE001  (Redis down or slow: counted, never fails the request)
            self._limiter_failed(error)

    async def aclose(self) -> None:
        await self.windows.aclose()

    # ------------------------------------------------------------------------------------------------ rates

    def _rpm(self, principal: Principal) -> int | None:
        return principal.requests_per_minute or self.settings.key_requests_per_minute

    def _tpm(self, principal: Principal) -> int | None:
        return principal.tokens_per_minute or self.settings.key_tokens_per_minute

    async def _check_rates(self, principal: Principal) -> None:
        rpm, tpm = self._rpm(principal), self._tpm(principal)
        if rpm is None and tpm is None or self._limiter_skipped():
            return
        now = time.time()
        try:
            admitted, counts = await self.windows.take(principal.name, rpm, tpm, now)
        except Exception as error:  # noqa: BLE001
            self._limiter_failed(error)
            return
        self._limiter_down_until = 0.0
        self._limiter_outage.recovered()
        if admitted:
            return
        into = now % WINDOW_S
        over_requests = rpm is not None and estimate(counts.requests, counts.previous_requests, into) >= rpm
        if over_requests:
            wait = seconds_until_under(rpm, counts.requests, counts.previous_requests, into)
            kind, what = "requests", f"{rpm} requests"
        else:
            wait = seconds_until_under(tpm, counts.tokens, counts.previous_tokens, into)
            kind, what = "tokens", f"{tpm} tokens"
        self.metrics.limited.labels(principal.name, kind).inc()
        raise RateLimited(f"rate limit reached for the key `{principal.name}`: {what} per minute; retry after "
                          f"{math.ceil(max(wait, 1))} s", retry_after=max(wait, 1.0), kind=kind)

    def _limiter_skipped(self) -> bool:
        """While the limiter's breaker is open, requests are admitted without asking it (counted)."""
        if time.monotonic() < self._limiter_down_until:
            self.metrics.limit_errors.inc()
            return True
        return False

    def _limiter_failed(self, error: Exception) -> None:
        """Admit without the limiter, and skip it for LIMITER_RETRY_S: a Redis that hangs costs one request its
        socket timeout per interval, not every request."""
        self.metrics.limit_errors.inc()
        self._limiter_down_until = time.monotonic() + LIMITER_RETRY_S
        self._limiter_outage.failed(error, f"admitting without it; asking again every {LIMITER_RETRY_S:g} s")

    # ------------------------------------------------------------------------------------------------ slots

    async def _take_slot(self) -> None:
        settings = self.settings
        if self.in_flight < settings.max_in_flight and not self._waiters:
            self._occupy()
            return
        if len(self._waiters) >= settings.max_queued:
            self.metrics.shed.labels("queue_full").inc()
            raise Overloaded(f"the gateway is at capacity ({settings.max_in_flight} requests in flight, "
                             f"{len(self._waiters)} waiting); retry shortly", retry_after=1.0)
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        self.metrics.queued.inc()
        try:
            async with asyncio.timeout(settings.queue_timeout_s):  # not wait_for: 3.11's can swallow a cancellation
                await asyncio.shield(waiter)
        except TimeoutError:
            if waiter.done() and not waiter.cancelled():  # the slot came just as the wait ran out: pass it on
                self.free_slot()
            self.metrics.shed.labels("queue_timeout").inc()
            raise Overloaded(f"no capacity within {settings.queue_timeout_s:g} s ({settings.max_in_flight} "
                             "requests in flight); retry shortly", retry_after=settings.queue_timeout_s) from None
        except BaseException:
            if waiter.done() and not waiter.cancelled():
                self.free_slot()
            raise
        finally:
            if waiter in self._waiters:
                self._waiters.remove(waiter)
            waiter.cancel()
            self.metrics.queued.dec()

    def _occupy(self) -> None:
        self.in_flight += 1
        self.metrics.admitted.inc()

    def free_slot(self) -> None:
        """A slot is free: hand it to the first waiter still waiting, or give it back."""
        self.in_flight -= 1
        self.metrics.admitted.dec()
        while self._waiters:
            waiter = self._waiters.pop(0)
            if not waiter.done():
                self._occupy()
                waiter.set_result(None)
                return


# ------------------------------------------------------------------------------------------------ the ASGI seam

GENERATING_PATHS = frozenset({"/v1/chat/completions", "/v1/completions", "/v1/responses"})  # what admission limits


class AdmissionMiddleware:
    """Admits generating requests (chat, completions, responses) before any body is read, and frees the slot when
    the ASGI call ends — after the last byte of a stream, or when the client is gone — so no path through a response
    can keep a slot."""

    def __init__(self, app, admission: Admission):
        self.app = app
        self.admission = admission

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"] not in GENERATING_PATHS or scope["method"] != "POST":
            return await self.app(scope, receive, send)
        state = scope.setdefault("state", {})
        try:
            ticket = await self.admission.admit(state.get("principal") or ANONYMOUS)
        except (RateLimited, Overloaded) as error:
            return await send_error(send, error)
        state["ticket"] = ticket
        try:
            await self.app(scope, receive, send)
        finally:
            ticket.release()


# ------------------------------------------------------------------------------------------------ per backend


async def capped(slots: asyncio.Semaphore, wait_s: float | None, backend: str,
                 open_events: Callable[[], AsyncIterator[Event]]) -> AsyncIterator[Event]:
    """A backend's stream once one of its in-flight slots is free; `BackendBusy` when none frees within `wait_s`
    (a 503 to the client, or the fallback's answer: a saturated teacher leaves the student's answer)."""
    try:
        async with asyncio.timeout(wait_s):  # not wait_for: 3.11's can swallow the client's cancellation
            await slots.acquire()
    except TimeoutError:
        raise BackendBusy(f"backend `{backend}` is at its in-flight cap and no slot freed within {wait_s:g} s; "
                          f"retry shortly or raise `{backend}.max_in_flight`", backend=backend) from None
    events = open_events()
    try:
        async for event in events:
            yield event
    finally:
        slots.release()
        await events.aclose()
