"""What an answer cost: token usage times a configurable price table, in US dollars.

Prices are USD per *million* tokens, input and output, per model as tasks name it:

- ``MODEL_PRICES="openai/gpt-4o-mini=0.15:0.60, openai/gpt-4o=2.50:10"``: ``model=in:out``
  entries separated by ``,``;
- ``MODEL_PRICES_FILE=/etc/orchestrator/prices.json``: a JSON object of the same, as
  ``{"openai/gpt-4o-mini": {"input": 0.15, "output": 0.60}, ...}``.

Both may be given; an entry of ``MODEL_PRICES`` wins over the file's. The answering route is
looked up as ``provider/model`` and then as ``provider`` alone, so ``echo=0:0`` prices the
echo provider and ``openai=1:2`` is a catch-all for OpenAI models not listed. A model
without a price, or an answer without usage, has no cost (``cost_usd`` None): unknown is
not free.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs
import orjson

from orchestrator_tasks.messages import Usage

from .errors import ConfigError

__all__ = ["Price", "PriceTable", "load_prices_file", "parse_prices"]

#: Decimal places kept in a cost (a millionth of a cent, and no float noise).
_DIGITS = 10


@attrs.frozen
class Price:
    """USD per million input and output tokens."""

    input: float
    output: float

    def cost(self, usage: Usage) -> float:
        total = usage.input_tokens * self.input + usage.output_tokens * self.output
        return round(total / 1_000_000, _DIGITS)


class PriceTable:
    """The prices of the models a worker knows; ``cost()`` of an answer."""

    def __init__(self, prices: Mapping[str, Price] | None = None) -> None:
        self._prices = dict(prices or {})

    def __len__(self) -> int:
        return len(self._prices)

    def price(self, provider: str, model: str) -> Price | None:
        """The price of ``provider/model``, else of ``provider``; None if neither is listed."""
        return self._prices.get(f"{provider}/{model}") or self._prices.get(provider)

    def cost(self, provider: str, model: str, usage: Usage | None) -> float | None:
        """The cost of ``usage`` on ``provider/model``; None without a price or usage."""
        if usage is None:
            return None
        price = self.price(provider, model)
        return None if price is None else price.cost(usage)


def _amount(variable: str, model: str, raw: Any) -> float:
    if isinstance(raw, bool) or not isinstance(raw, int | float | str):
        raise ConfigError(variable, f"price of {model!r}: {raw!r} is not a number")
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(variable, f"price of {model!r}: {raw!r} is not a number") from None
    if not math.isfinite(value) or value < 0:
        raise ConfigError(variable, f"price of {model!r}: {raw!r} must be zero or more")
    return value


def parse_prices(variable: str, raw: str) -> dict[str, Price]:
    """``model=in:out,...`` as a mapping; ``ConfigError`` naming ``variable``."""
    prices: dict[str, Price] = {}
    for entry in raw.split(","):
        entry = entry.strip()
        if not entry:
            continue
        model, equals, amounts = entry.partition("=")
        model = model.strip()
        in_text, colon, out_text = amounts.partition(":")
        if not equals or not colon or not model:
            raise ConfigError(
                variable, f"{entry!r} is not model=input:output (USD per million tokens)"
            )
        if model in prices:
            raise ConfigError(variable, f"{model!r} is priced twice")
        prices[model] = Price(
            input=_amount(variable, model, in_text.strip()),
            output=_amount(variable, model, out_text.strip()),
        )
    return prices


def load_prices_file(variable: str, path: str) -> dict[str, Price]:
    """The JSON price file at ``path`` (see the module docstring); ``ConfigError`` naming
    ``variable`` if it cannot be read or has the wrong shape."""
    try:
        data = orjson.loads(Path(path).read_bytes())
    except OSError as exc:
        raise ConfigError(variable, f"cannot read {path!r}: {exc.strerror or exc}") from None
    except orjson.JSONDecodeError as exc:
        raise ConfigError(variable, f"{path!r} is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(variable, f"{path!r} must hold a JSON object of model prices")
    prices: dict[str, Price] = {}
    for model, entry in data.items():
        if not isinstance(entry, dict) or set(entry) != {"input", "output"}:
            raise ConfigError(
                variable, f'price of {model!r} must be {{"input": <USD>, "output": <USD>}}'
            )
        prices[model] = Price(
            input=_amount(variable, model, entry["input"]),
            output=_amount(variable, model, entry["output"]),
        )
    return prices
