"""Token usage x price table -> an ``actual`` in USD_MICROCENTS, exactly.

A micro-cent is 10^-6 cent = 10^-8 USD. Prices are given per million tokens
in USD as strings or Decimals (``"2.50"``), never floats, and the arithmetic
is done in exact rationals (``fractions.Fraction``): the total is rounded
**up** to the next whole micro-cent once, at the end, so a sum of calls is
never under-charged by rounding.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from fractions import Fraction
from typing import Any

MICROCENTS_PER_USD = 100_000_000
TOKENS_PER_PRICE_UNIT = 1_000_000


def _exact(value: str | Decimal | int) -> Fraction:
    if isinstance(value, float):
        raise TypeError("prices must be str, Decimal or int (floats are not exact)")
    fraction = Fraction(Decimal(value)) if isinstance(value, str) else Fraction(value)
    if fraction < 0:
        raise ValueError("prices must not be negative")
    return fraction


@dataclass(frozen=True)
class ModelPrice:
    """USD per million input / output tokens (cached input optional)."""

    input_per_mtok: str | Decimal | int
    output_per_mtok: str | Decimal | int
    cached_input_per_mtok: str | Decimal | int | None = None


@dataclass(frozen=True)
class TokenUsage:
    input_tokens: int
    output_tokens: int
    cached_input_tokens: int = 0


def usage_from(usage: Any) -> TokenUsage:
    """Read an OpenAI-style (``prompt_tokens``/``completion_tokens``, or the
    Responses API's ``input_tokens``/``output_tokens``) or Anthropic-style
    (``input_tokens``/``output_tokens``, ``cache_read_input_tokens``) usage
    object or dict."""

    def field(name: str) -> int | None:
        value = usage.get(name) if isinstance(usage, dict) else getattr(usage, name, None)
        return value if isinstance(value, int) and not isinstance(value, bool) else None

    def cached() -> int:
        details = usage.get("prompt_tokens_details") if isinstance(usage, dict) \
            else getattr(usage, "prompt_tokens_details", None)
        if details is not None:
            value = details.get("cached_tokens") if isinstance(details, dict) else getattr(details, "cached_tokens", None)
            if isinstance(value, int):
                return value
        return field("cache_read_input_tokens") or 0

    prompt = field("prompt_tokens")
    if prompt is not None:
        hit = cached()
        return TokenUsage(prompt - hit, field("completion_tokens") or 0, hit)
    inputs = field("input_tokens")
    if inputs is None:
        raise ValueError("usage has neither prompt_tokens nor input_tokens")
    # Anthropic reports cache reads apart from input_tokens; OpenAI's
    # Responses API counts them inside input_tokens (input_tokens_details).
    return TokenUsage(inputs, field("output_tokens") or 0, field("cache_read_input_tokens") or 0)


def cost_microcents(usage: TokenUsage | Any, price: ModelPrice) -> int:
    """The exact cost in USD_MICROCENTS, rounded up to the next whole micro-cent."""
    tokens = usage if isinstance(usage, TokenUsage) else usage_from(usage)
    for count in (tokens.input_tokens, tokens.output_tokens, tokens.cached_input_tokens):
        if count < 0:
            raise ValueError("token counts must not be negative")
    cached_price = price.cached_input_per_mtok if price.cached_input_per_mtok is not None else price.input_per_mtok
    usd = (tokens.input_tokens * _exact(price.input_per_mtok)
           + tokens.output_tokens * _exact(price.output_per_mtok)
           + tokens.cached_input_tokens * _exact(cached_price)) / TOKENS_PER_PRICE_UNIT
    microcents = usd * MICROCENTS_PER_USD
    return -((-microcents.numerator) // microcents.denominator)  # ceiling


def cost_from_usage(usage: TokenUsage | Any, model: str, prices: dict[str, ModelPrice]) -> int:
    """``cost_microcents`` with the model's entry of a price table."""
    if model not in prices:
        raise KeyError(f"no price for model {model!r}")
    return cost_microcents(usage, prices[model])
