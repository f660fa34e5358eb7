"""Which engines the service cannot serve without (readiness), and which are optional.

``AIML_REQUIRED_ENGINES=auto`` (the default) requires the engines that serve registered
models: the in-process engines, and each remote engine that some registry version is tagged
for. So the quickstart, whose models all run in process, is ready without an Ollama server,
while a team whose registry holds Ollama models is not ready while Ollama is down. Any other
engine that is down shows as degraded. The answer is kept for a while: readiness is probed
every few seconds, and the registry should not pay for it. While the registry fails (an
error, or no answer within the health probe's bound) the last answer is kept (asked again
once a second): the registry's outage is reported on its own, and must not change which
engines the service needs.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping

from aiml.engines.base import Engine
from aiml.errors import AimlError
from aiml.registry.calls import REGISTRY_RETRY_S
from aiml.registry.mlflow import MlflowRegistry

__all__ = ["RequiredEngines", "engines_needed"]


class RequiredEngines:
    """``await required()``: the names of the engines readiness depends on."""

    def __init__(
        self,
        setting: str,
        engines: Mapping[str, Engine],
        registry: MlflowRegistry,
        *,
        ttl_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        names = [name.strip() for name in setting.split(",") if name.strip()]
        self._fixed = None if names == ["auto"] else frozenset(names)
        self._engines = engines
        self._registry = registry
        self._ttl_s = max(ttl_s, 1.0)
        self._clock = clock
        self._cached: tuple[float, frozenset[str]] | None = None

    async def __call__(self) -> frozenset[str]:
        if self._fixed is not None:
            return self._fixed
        now = self._clock()
        if self._cached is not None and now < self._cached[0]:
            return self._cached[1]
        local = {name for name, engine in self._engines.items() if engine.in_process}
        remote = [name for name in self._engines if name not in local]
        try:
            used = await asyncio.gather(
                *(self._registry.any_version_tagged("inference_engine", name) for name in remote)
            )
        except AimlError:
            if self._cached is None:
                raise
            return self._ask_again_later(now)
        except asyncio.CancelledError:  # the probe's bound ran out: a hanging registry
            if self._cached is not None:
                self._ask_again_later(now)
            raise
        required = frozenset(local | {name for name, yes in zip(remote, used, strict=True) if yes})
        self._cached = (now + self._ttl_s, required)
        return required

    @property
    def last(self) -> frozenset[str] | None:
        """The registry's last answer (``None`` before its first), kept through failures."""
        return None if self._cached is None else self._cached[1]

    def _ask_again_later(self, now: float) -> frozenset[str]:
        assert self._cached is not None
        self._cached = (now + min(self._ttl_s, REGISTRY_RETRY_S), self._cached[1])
        return self._cached[1]


async def engines_needed(
    required: RequiredEngines | None, engines: Mapping[str, Engine], timeout_s: float
) -> tuple[frozenset[str], str | None]:
    """The engines readiness needs, within ``timeout_s``, and why the registry could not
    say, if it could not: then its last answer, or (never answered) every engine."""
    if required is None:  # without a policy: every engine
        return frozenset(engines), None
    try:
        return await asyncio.wait_for(required(), timeout_s), None
    except (AimlError, TimeoutError) as exc:
        why = str(exc) or f"no answer within {timeout_s:g}s"
        kept = required.last
        return kept if kept is not None else frozenset(engines), (
            f"cannot list the registered models: {why}"
        )
