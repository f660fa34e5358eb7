"""Request limits, checked on the typed input of every call, whichever API it came by."""

from __future__ import annotations

from dataclasses import dataclass

from aiml.errors import InvalidRequest, PayloadTooLarge

__all__ = ["Limits", "Measure"]


@dataclass(frozen=True, slots=True)
class Measure:
    """How big one task input is."""

    chars: int = 0
    items: int = 1
    image_bytes: tuple[int, ...] = ()
    max_tokens: int | None = None


@dataclass(frozen=True, slots=True)
class Limits:
    max_prompt_chars: int
    max_tokens: int
    max_embed_inputs: int
    max_image_bytes: int

    def check(self, measure: Measure) -> None:
        """413 for what is too large to take, 422 for a max_tokens beyond the limit."""
        if measure.chars > self.max_prompt_chars:
            raise PayloadTooLarge(
                f"the prompt is {measure.chars} characters; the limit is "
                f"{self.max_prompt_chars} (AIML_MAX_PROMPT_CHARS)",
                param="data",
            )
        if measure.items > self.max_embed_inputs:
            raise PayloadTooLarge(
                f"{measure.items} inputs in one request; the limit is {self.max_embed_inputs} "
                "(AIML_MAX_EMBED_INPUTS)",
                param="data.inputs",
            )
        for size in measure.image_bytes:
            if size > self.max_image_bytes:
                raise PayloadTooLarge(
                    f"an image of {size} bytes; the limit is {self.max_image_bytes} "
                    "(AIML_MAX_IMAGE_BYTES)",
                    param="data.image",
                )
        if measure.max_tokens is not None and measure.max_tokens > self.max_tokens:
            raise InvalidRequest(
                f"max_tokens {measure.max_tokens} is over the limit of {self.max_tokens} "
                "(AIML_MAX_TOKENS_LIMIT)",
                param="options.max_tokens",
            )
