"""Backend settings: a backend's cost, in one of two forms, turned into prices per million tokens."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from runtime.settings import CostSettings


def test_prices_per_million_tokens_are_taken_as_given():
    assert CostSettings(prompt_per_million=0.5, completion_per_million=2.0).per_million() == (0.5, 2.0)
    assert CostSettings(prompt_per_million=0, completion_per_million=2.0).per_million() == (0, 2.0)


def test_gpu_time_is_spread_over_the_tokens_it_buys():
    # 8 GPUs at $2.50 an hour: $20 an hour; 2,000 completion tokens a second: 7.2 M tokens an hour
    cost = CostSettings(gpu_hour=2.5, gpus=8, completion_tokens_per_s=2000)
    assert cost.per_million() == pytest.approx((0.0, 20 / 7.2))
    # prompts charged on their own: each kind of work at its own throughput
    split = CostSettings(gpu_hour=2.5, gpus=8, completion_tokens_per_s=2000, prompt_tokens_per_s=40_000)
    assert split.per_million() == pytest.approx((20 / 144, 20 / 7.2))


@pytest.mark.parametrize("given, message", [
    ({}, "`cost` is empty"),
    ({"completion_per_million": 1.0}, "needs both `prompt_per_million` and `completion_per_million`"),
    ({"gpu_hour": 2.0}, "needs `gpu_hour` and `completion_tokens_per_s`"),
    ({"gpus": 4, "completion_tokens_per_s": 100}, "needs `gpu_hour` and `completion_tokens_per_s`"),
    ({"prompt_per_million": 1.0, "completion_per_million": 1.0, "gpu_hour": 2.0}, "give one form"),
    ({"prompt_per_million": 1.0, "completion_per_million": 1.0, "gpus": 2}, "give one form"),
    ({"prompt_per_million": -1.0, "completion_per_million": 1.0}, "greater than or equal to 0"),
    ({"gpu_hour": 2.0, "completion_tokens_per_s": 0}, "greater than 0"),
])
def test_a_cost_is_one_whole_form(given, message):
    with pytest.raises(ValidationError, match=message):
        CostSettings(**given)
