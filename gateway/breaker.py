"""Per-backend circuit breakers and the background health check that feeds them.

    closed ──(failure_threshold failures in a row, or a failed health check)──▶ open
    open ──(open_s passed, or a passing health check)──▶ half-open: one probe request goes through
    half-open ──probe answers──▶ closed          half-open ──probe fails──▶ open

While a backend's circuit is open its requests fail at once with `UpstreamUnavailable`, so the fallbacks
(`gateway.fallback`) serve them without waiting for a deadline: a dead teacher costs escalations nothing but the
student's answer. Only failures that are the backend's count (unreachable, timed out, broken protocol, engine
failure); a client's 4xx and a full in-flight cap (`BackendBusy`) do not, and neither does a missed deadline while
the backend's other streams are moving (events within the last `open_s`): that is load, not a fault, and opening
the circuit then would turn an overload into an outage (it opened both circuits under overload). A backend that
hangs moves no stream and fails its health check.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from enum import IntEnum

from gateway.fallback import is_client_error
from gateway.metrics import GatewayMetrics
from runtime.contract import Backend, Event
from runtime.errors import BackendBusy, GatewayError, UpstreamTimeout, UpstreamUnavailable

log = logging.getLogger(__name__)


class State(IntEnum):  # the value is the kdgate_circuit_state gauge's
    CLOSED = 0
    HALF_OPEN = 1
    OPEN = 2


class CircuitBreaker:
    def __init__(self, backend: str, metrics: GatewayMetrics | None = None, failure_threshold: int = 5,
                 open_s: float = 10.0, clock: Callable[[], float] = time.monotonic):
        self.backend = backend
        self.metrics = metrics
        self.failure_threshold = failure_threshold
        self.open_s = open_s
        self.clock = clock
        self.state = State.CLOSED
        self.failures = 0
        self.opened_at = 0.0
        self.probing = False
        self.progressed_at = float("-inf")  # the backend's last streamed event, on `clock`
        self._set(State.CLOSED)

    def busy_not_broken(self, error: GatewayError) -> bool:
        """A missed deadline while the backend's other streams moved recently: it is loaded, not failing."""
        return isinstance(error, UpstreamTimeout) and self.clock() - self.progressed_at < self.open_s

    def allow(self) -> bool:
        """May a request go to the backend now? In half-open, only one at a time (the probe)."""
        if self.state is State.OPEN and self.clock() - self.opened_at >= self.open_s:
            self._set(State.HALF_OPEN)
        if self.state is State.CLOSED:
            return True
        if self.state is State.HALF_OPEN and not self.probing:
            self.probing = True
            return True
        return False

    def retry_in(self) -> float:
        return max(0.0, self.opened_at + self.open_s - self.clock())

    def succeeded(self) -> None:
        self.failures = 0
        self.probing = False
        if self.state is not State.CLOSED:
            self._set(State.CLOSED)

    def failed(self, reason: str) -> None:
        self.failures += 1
        self.probing = False
        if self.state is State.HALF_OPEN or self.failures >= self.failure_threshold:
            self.trip(reason)

    def trip(self, reason: str) -> None:
        if self.state is not State.OPEN:
            log.warning("circuit of backend `%s` opened: %s", self.backend, reason)
        self.opened_at = self.clock()
        self._set(State.OPEN)

    def healthy(self) -> None:
        """A passing health check: an open circuit lets the next request probe."""
        if self.state is State.OPEN:
            self._set(State.HALF_OPEN)

    def _set(self, state: State) -> None:
        if state is not self.state and self.metrics is not None:
            self.metrics.circuit_transitions.labels(self.backend, state.name.lower()).inc()
        self.state = state
        if self.metrics is not None:
            self.metrics.circuit_state.labels(self.backend).set(int(state))


def counts_against(error: GatewayError) -> bool:
    """Whether a failure is the backend's (it opens the circuit), not the client's or a full cap's."""
    return not is_client_error(error) and not isinstance(error, BackendBusy)


async def guarded(breaker: CircuitBreaker, open_events: Callable[[], AsyncIterator[Event]]) -> AsyncIterator[Event]:
    """The backend's stream if its circuit allows; its outcome recorded (the first event is the success)."""
    if not breaker.allow():
        raise UpstreamUnavailable(f"backend `{breaker.backend}` is failing (its circuit is open after repeated "
                                  f"failures); it is tried again in {breaker.retry_in():.0f} s",
                                  backend=breaker.backend)
    events = open_events()
    started = False
    try:
        async for event in events:
            breaker.progressed_at = breaker.clock()
            if not started:
                started = True
                breaker.succeeded()
            yield event
    except GatewayError as error:
        if counts_against(error) and not breaker.busy_not_broken(error):
            breaker.failed(f"{type(error).__name__}: {error.message}")
        elif not started:
            breaker.probing = False
        raise
    except BaseException:
        if not started:
            breaker.probing = False  # cancelled before an answer: the probe tells nothing
        raise
    finally:
        await events.aclose()


class HealthChecker:
    """Every `interval_s`, each backend's readiness check: `kdgate_backend_up`, and the breakers' health."""

    def __init__(self, backends: dict[str, Backend], breakers: dict[str, CircuitBreaker], metrics: GatewayMetrics,
                 interval_s: float = 5.0, timeout_s: float = 5.0):
        self.backends = backends
        self.breakers = breakers
        self.metrics = metrics
        self.interval_s = interval_s
        self.timeout_s = timeout_s
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="kdgate-health")

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def check_once(self) -> dict[str, str | None]:
        """Check every backend now; role -> None when up, else why not."""
        results = await asyncio.gather(*(self._check(role, backend) for role, backend in self.backends.items()))
        return dict(zip(self.backends, results, strict=True))

    async def _check(self, role: str, backend: Backend) -> str | None:
        try:
            async with asyncio.timeout(self.timeout_s):
                await backend.check_ready()
        except GatewayError as error:
            problem = error.message
        except TimeoutError:
            problem = f"readiness check timed out after {self.timeout_s:g} s"
        else:
            problem = None
        self.metrics.backend_up.labels(role).set(0 if problem else 1)
        breaker = self.breakers.get(role)
        if breaker is not None:
            breaker.trip(f"health check: {problem}") if problem else breaker.healthy()
        return problem

    async def _run(self) -> None:
        while True:
            try:
                await self.check_once()
            except Exception:  # a bug here must not stop the checks
                log.exception("health check failed")
            await asyncio.sleep(self.interval_s)
