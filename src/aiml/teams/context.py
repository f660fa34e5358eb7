"""What the API's middleware knows of a request's key, for the layers below it (the request
gate checks the key's models; its usage note is filled as the request is served)."""

from __future__ import annotations

from collections.abc import Mapping
from contextvars import ContextVar
from dataclasses import dataclass

from .keys import ApiKey

__all__ = ["PRICE_TAGS", "UsageNote", "prices_of", "request_key", "request_usage"]

#: A registry version's prices, per million input and output tokens (version tags).
PRICE_TAGS = ("aiml.price.input_per_mtok", "aiml.price.output_per_mtok")


def prices_of(tags: Mapping[str, str]) -> tuple[float, float]:
    """A version's prices from its tags (0 where unpriced or not a number)."""
    found = []
    for tag in PRICE_TAGS:
        try:
            found.append(max(0.0, float(tags.get(tag, 0) or 0)))
        except ValueError:
            found.append(0.0)
    return found[0], found[1]


@dataclass(slots=True)
class UsageNote:
    """What the request used, noted by the gate as it learns it."""

    model: str = "-"
    version: str = ""
    input_tokens: int = 0
    output_tokens: int = 0
    #: Prices per million tokens (the version's :data:`PRICE_TAGS`).
    input_price: float = 0.0
    output_price: float = 0.0

    @property
    def tokens(self) -> int:
        return self.input_tokens + self.output_tokens

    @property
    def cost(self) -> float:
        return (self.input_tokens * self.input_price + self.output_tokens * self.output_price) / 1e6


#: The request's key (``None``: no keys configured, an open route, or an environment key
#: seen before keys were data: it may use every model).
request_key: ContextVar[ApiKey | None] = ContextVar("aiml_request_key", default=None)
request_usage: ContextVar[UsageNote | None] = ContextVar("aiml_request_usage", default=None)
