"""Stop strings in generated text: where one ends the answer, and how much of the text's
end must be held back because it could be the start of one."""

from __future__ import annotations

__all__ = ["partial_stop", "stop_at"]


def stop_at(text: str, stops: tuple[str, ...]) -> int | None:
    """Where the first stop string starts in ``text``, if any does."""
    found = [text.find(stop) for stop in stops if stop]
    hits = [i for i in found if i >= 0]
    return min(hits) if hits else None


def partial_stop(text: str, stops: tuple[str, ...]) -> int:
    """How many characters at the end of ``text`` could begin a stop string."""
    longest = 0
    for stop in stops:
        for size in range(min(len(stop) - 1, len(text)), longest, -1):
            if text.endswith(stop[:size]):
                longest = size
                break
    return longest
