"""Which model replica holds which model, for operators (the console, ``/inference/loaded``).

Ray Serve's router knows where each multiplexed model is loaded but does not say so through
its public API, so each replica reports what its pool holds to a small named Ray actor: at
once after a load, and every few seconds after that. A report expires unless renewed, so a
replica that died (or was scaled down) drops out within ``_TTL_S`` without anyone having to
notice its death.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import ray

__all__ = ["REPORT_EVERY_S", "holdings_board", "model_holders"]

log = logging.getLogger("aiml.cluster")

#: How often a replica renews its report (seconds).
REPORT_EVERY_S = 5.0
#: A report not renewed within this is dropped (three missed renewals).
_TTL_S = 3 * REPORT_EVERY_S


@ray.remote(num_cpus=0)
class HoldingsBoard:
    """Replica name -> the model ids (``name/version``) its pool holds, while renewed."""

    def __init__(self) -> None:
        self._held: dict[str, tuple[list[str], float]] = {}

    async def report(self, replica: str, models: list[str]) -> None:
        self._held[replica] = (sorted(models), time.monotonic() + _TTL_S)

    async def holders(self) -> dict[str, list[str]]:
        """Model id -> the replicas that hold it, from reports still fresh."""
        now = time.monotonic()
        self._held = {r: held for r, held in self._held.items() if held[1] > now}
        by_model: dict[str, list[str]] = {}
        for replica, (models, _) in sorted(self._held.items()):
            for model in models:
                by_model.setdefault(model, []).append(replica)
        return by_model


def holdings_board(app: str) -> Any:
    """The cluster's board (created by whoever asks first; it outlives them)."""
    return HoldingsBoard.options(  # type: ignore[attr-defined]
        name=f"{app}-holdings", namespace="aiml", lifetime="detached", get_if_exists=True
    ).remote()


def model_holders(app: str) -> Callable[[], Awaitable[dict[str, list[str]] | None]]:
    """For a front: model id -> replicas holding it (``None`` while the board is away)."""
    board = holdings_board(app)

    async def holders() -> dict[str, list[str]] | None:
        try:
            found: dict[str, list[str]] = await board.holders.remote()
        except ray.exceptions.RayError as exc:
            log.warning("the replicas' holdings are unknown: %s", exc)
            return None
        return found

    return holders
