"""Which engines the service cannot serve without (readiness), and which are optional.

``AIML_REQUIRED_ENGINES=auto`` (the default) requires the engines that serve registered
models: the in-process engines, and each remote engine that some registry version is tagged
for. So the quickstart, whose models all run in process, is ready without an Ollama server,
while a team whose registry holds Ollama models is not ready while Ollama is down. Any other
engine that is down shows as degraded. The answer is kept for a while: readiness is probed
every few seconds, and the registry should not pay for it. While the registry is down the
last answer is kept (asked again once a second): the registry's outage is reported on its
own, and must not change which engines the service needs.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping

from aiml.engines.base import Engine
from aiml.errors import RegistryUnavailable
from aiml.registry.mlflow import MlflowRegistry

__all__ = ["RequiredEngines"]

_RETRY_S = 1.0  # how soon the registry is asked again after it failed to answer


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
        except RegistryUnavailable:
            if self._cached is None:
                raise
            self._cached = (now + min(self._ttl_s, _RETRY_S), self._cached[1])
            return self._cached[1]
        required = frozenset(local | {name for name, yes in zip(remote, used, strict=True) if yes})
        self._cached = (now + self._ttl_s, required)
        return required
