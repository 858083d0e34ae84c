"""Token usage to USD_MICROCENTS: exact, rounded up once, never via floats;
and the computed cost committed through the decorator."""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal
from fractions import Fraction
from types import SimpleNamespace
from typing import Any

import pytest
from cycles_sdk import (
    CyclesClient,
    CyclesConfig,
    ModelPrice,
    TokenUsage,
    cost_from_usage,
    cost_microcents,
    cycles,
)
from cycles_sdk.cost import usage_from

from tests.api.provision import budget, funded_tenant

PRICES = {
    "gpt-4o": ModelPrice(input_per_mtok="2.50", output_per_mtok="10.00", cached_input_per_mtok="1.25"),
    "claude-sonnet": ModelPrice(input_per_mtok=Decimal("3"), output_per_mtok=15),
    "odd": ModelPrice(input_per_mtok="0.000000007", output_per_mtok="0.1"),
}


def test_openai_usage_with_cached_tokens() -> None:
    usage = {"prompt_tokens": 1000, "completion_tokens": 500, "prompt_tokens_details": {"cached_tokens": 200}}
    assert usage_from(usage) == TokenUsage(800, 500, 200)
    # 800 x 2.50 + 200 x 1.25 + 500 x 10 = 7250 USD per 1e6 tokens -> 0.00725 USD = 725_000 micro-cents
    assert cost_from_usage(usage, "gpt-4o", PRICES) == 725_000


def test_anthropic_usage_object() -> None:
    usage = SimpleNamespace(input_tokens=2048, output_tokens=1024, cache_read_input_tokens=0)
    # 2048 x 3 + 1024 x 15 = 21504 / 1e6 USD = 2_150_400 micro-cents
    assert cost_from_usage(usage, "claude-sonnet", PRICES) == 2_150_400


def test_rounds_up_to_the_next_microcent_exactly_once() -> None:
    # 1 token x 0.000000007 USD / 1e6 = 7e-15 USD = 7e-7 micro-cents -> 1
    assert cost_microcents(TokenUsage(1, 0), PRICES["odd"]) == 1
    # Exactly representable totals are not rounded: 0.1 USD/Mtok x 10 tokens = 1e-6 USD = 100 micro-cents.
    assert cost_microcents(TokenUsage(0, 10), PRICES["odd"]) == 100
    # The sum is rounded, not each part: 2 x 7e-7 -> 1, where per-part rounding would give 2.
    assert cost_microcents(TokenUsage(2, 0), PRICES["odd"]) == 1


def test_large_counts_stay_exact() -> None:
    tokens = 10**15 + 1
    exact = Fraction(tokens) * Fraction("2.5") / 10**6 * 10**8
    assert cost_microcents(TokenUsage(tokens, 0), PRICES["gpt-4o"]) == -((-exact.numerator) // exact.denominator)


def test_floats_and_bad_input_are_refused() -> None:
    with pytest.raises(TypeError):
        cost_microcents(TokenUsage(1, 1), ModelPrice(input_per_mtok=2.5, output_per_mtok="1"))  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        cost_microcents(TokenUsage(-1, 0), PRICES["gpt-4o"])
    with pytest.raises(KeyError):
        cost_from_usage(TokenUsage(1, 1), "unknown-model", PRICES)
    with pytest.raises(ValueError):
        usage_from({"tokens": 3})


def test_decorator_commits_the_computed_cost(admin_conn: Any, make_config: Callable[..., CyclesConfig]) -> None:
    tenant = funded_tenant(admin_conn, tenant_total=10**9, workspace_total=10**9)
    with CyclesClient(make_config(tenant)) as client:

        @cycles(estimate=5_000_000, actual=lambda response: cost_from_usage(response["usage"], "gpt-4o", PRICES),
                action_kind="llm.completion", action_name="openai:gpt-4o", client=client)
        def complete(prompt: str) -> dict[str, Any]:
            return {"text": prompt.upper(), "usage": {"prompt_tokens": 321, "completion_tokens": 123}}

        for _ in range(3):
            complete("hi")
    one = cost_from_usage({"prompt_tokens": 321, "completion_tokens": 123}, "gpt-4o", PRICES)
    assert one == 203_250  # (321 x 2.5 + 123 x 10) / 1e6 USD
    row = budget(admin_conn, f"{tenant.scope}/workspace:w1")
    assert (row["spent"], row["reserved"]) == (3 * one, 0)
