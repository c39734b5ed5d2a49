"""A retry budget: retries may be at most a share of recent requests (plus a small floor), so that a backend that
is failing is not sent every request twice (the budget idea of Envoy and gRPC)."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable

WINDOW_S = 10.0
MIN_RETRIES = 3  # per window, whatever the traffic: a quiet gateway can still ride out a keep-alive race


class RetryBudget:
    def __init__(self, ratio: float, clock: Callable[[], float] = time.monotonic):
        self.ratio = ratio
        self.clock = clock
        self._requests: deque[float] = deque()
        self._retries: deque[float] = deque()

    def requested(self) -> None:
        self._requests.append(self.clock())

    def spend(self) -> bool:
        """Take one retry if the budget has one."""
        if self.ratio <= 0:
            return False
        now = self.clock()
        for times in (self._requests, self._retries):
            while times and now - times[0] > WINDOW_S:
                times.popleft()
        if len(self._retries) >= max(MIN_RETRIES, self.ratio * len(self._requests)):
            return False
        self._retries.append(now)
        return True
