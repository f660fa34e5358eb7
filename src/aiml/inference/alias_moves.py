"""Whether a version can take over an alias: checked before aiml moves one.

Moving ``name@production`` switches every request for it at once, so a move through aiml
(the admin API, the CLI, the console) first asks whether the target version serves what
the alias's current version serves:

* its engine: the target's tags name an engine configured here, and the same engine as
  today (``/inference/infer`` requests name their engine: another one refuses them);
* its tasks: every task the current version serves (its engine routes it, the task takes
  its ``inference_task``, it has the capability the task needs) the target's engine routes
  and its ``inference_task`` takes;
* its files or model: the target is made ready as serving would make it (the engine's
  ``model_for_version``: the artifact cache's download and sha256 check for local engines,
  the server's own lookup for Ollama or OpenAI pointer versions), and its details read
  (:class:`~.capabilities.CapabilityBook`, shared with serving when the catalog is given it);
* its capabilities: each one the current version has (chat template, tool calling,
  fill-in-the-middle, images, embeddings, ...) the target has too.

A new alias (no current version) checks only that the target can serve at all. A refusal
is a 409 (:class:`~aiml.errors.UnsafeAliasMove`) listing each lack; ``force`` skips it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Mapping
from dataclasses import dataclass

from aiml.engines.base import Engine
from aiml.errors import (
    AimlError,
    ModelLoadFailed,
    ModelNotFound,
    ModelNotServable,
    UnsafeAliasMove,
)
from aiml.types import ModelDetails, RegistryVersion, ResolvedModel, Source, Task

from .capabilities import CapabilityBook
from .engine_models import engine_of
from .tasks import TASK_SPECS

__all__ = ["AliasMoves", "Missing"]

log = logging.getLogger("aiml.catalog")

#: What each capability is, in a refusal's words.
_WORDS = {
    "chat": "chat template",
    "tools": "tool calling",
    "insert": "fill-in-the-middle tokens",
    "vision": "image input",
    "completion": "text completion",
    "embedding": "embeddings",
    "classification": "a classifier head",
}
#: The capability a task needs of a model to serve it (tasks not named need none).
_TASK_NEEDS = {
    Task.TEXT_GENERATION: "completion",
    Task.CHAT: "chat",
    Task.EMBEDDINGS: "embedding",
    Task.TEXT_CLASSIFICATION: "classification",
    Task.VLM: "vision",
    Task.IMAGE_CAPTIONING: "vision",
}


@dataclass(frozen=True, slots=True)
class Missing:
    """One thing the target lacks: ``kind`` (engine, task, files, model, tags, capability),
    what it is called (an engine, a task, a capability), and why, in words."""

    kind: str
    name: str
    reason: str

    def as_dict(self) -> dict[str, str]:
        return {"kind": self.kind, "name": self.name, "reason": self.reason}


@dataclass(frozen=True, slots=True)
class _Read:
    """One version as this process would serve it."""

    engine: Engine | None
    model: ResolvedModel  # engine_model is the engine's own name once ``ready``
    details: ModelDetails | None
    problems: tuple[Missing, ...] = ()

    @property
    def ready(self) -> bool:
        return not self.problems and self.details is not None


class AliasMoves:
    """The check before a move; engine calls only, on the event loop (their blocking work,
    downloads, hashing, reading a GGUF, runs on worker threads)."""

    def __init__(
        self,
        engines: Mapping[str, Engine],
        capabilities: CapabilityBook,
        *,
        unavailable: Mapping[str, str] | None = None,
    ) -> None:
        self._engines = engines
        self._capabilities = capabilities
        self._unavailable = dict(unavailable or {})

    async def check(
        self, alias: str, current: RegistryVersion | None, target: RegistryVersion
    ) -> None:
        """Refuse (409 :class:`UnsafeAliasMove`) a move of ``alias`` from ``current`` to
        ``target`` that would leave what it serves unserved."""
        missing = await self.missing(current, target)
        if not missing:
            return
        where = f"{target.name}@{alias}"
        start = (
            f"version {target.version} cannot serve what version {current.version} serves"
            if current is not None
            else f"version {target.version} cannot serve"
        )
        raise UnsafeAliasMove(
            f"{where} was not moved: {start}: {'; '.join(m.reason for m in missing)} "
            "(force moves it anyway)",
            missing=[m.as_dict() for m in missing],
        )

    async def missing(
        self, current: RegistryVersion | None, target: RegistryVersion
    ) -> list[Missing]:
        """What ``target`` lacks to serve what ``current`` serves (with no ``current``: to
        serve at all); empty when it can take over. Registry or engine outages (5xx other
        than a failed load) are raised: they say nothing about the version."""
        if current is not None and current.version == target.version:
            return []
        if current is None:
            return list((await self._read(target)).problems)
        # Both at once (the current version's files are usually cached, the target's may
        # be downloading); an outage met by either is raised once both are done.
        now, then = await asyncio.gather(
            self._read(current), self._read(target), return_exceptions=True
        )
        if isinstance(now, BaseException):
            raise now
        if isinstance(then, BaseException):
            raise then
        if not now.ready or now.engine is None:
            # It serves nothing today: any version that can serve at all may take over.
            log.info(
                "alias move from %s/%s, which cannot serve (%s): only the target is checked",
                current.name,
                current.version,
                "; ".join(m.reason for m in now.problems) or "no details",
            )
            return list(then.problems)
        missing = list(then.problems)
        if then.engine is not None and then.engine.name != now.engine.name:
            missing.append(
                Missing(
                    "engine",
                    now.engine.name,
                    f"version {current.version} is served by the {now.engine.name!r} engine, "
                    f"which /inference/infer requests for it name; version {target.version} "
                    f"is for {then.engine.name!r}",
                )
            )
        if then.engine is not None:
            missing += _tasks_missing(now, then)
        if now.details is not None and then.details is not None:
            has = then.details.capabilities
            missing += [
                Missing(
                    "capability",
                    capability,
                    f"version {target.version} has no {_WORDS.get(capability, capability)} "
                    f"(capability {capability!r})",
                )
                for capability in now.details.capabilities
                if capability not in has
            ]
            widths = (now.details.embedding_length, then.details.embedding_length)
            if None not in widths and widths[0] != widths[1]:
                missing.append(
                    Missing(
                        "capability",
                        "embedding dimensions",
                        f"version {target.version}'s embeddings have {widths[1]} dimensions, "
                        f"version {current.version}'s {widths[0]} dimensions: vectors stored "
                        "from one would not compare with the other's",
                    )
                )
        return missing

    async def _read(self, version: RegistryVersion) -> _Read:
        """The version made ready and described as serving would; what stops it, if any."""
        label = f"version {version.version}"
        declared = engine_of(version)
        model = ResolvedModel(
            engine=declared or "",
            engine_model=f"{version.name}/{version.version}",
            source=Source.REGISTRY,
            registry_name=version.name,
            registry_version=version.version,
            declared_task=version.tag("inference_task"),
            tags=version.merged_tags(),
            logged_model=version.logged_model,
        )
        if declared is None:
            reason = f"{label} has no inference_engine tag, so no engine can serve it"
            return _Read(None, model, None, (Missing("engine", "", reason),))
        engine = self._engines.get(declared)
        if engine is None:
            why = self._unavailable.get(declared)
            configured = ", ".join(sorted(self._engines)) or "none"
            reason = f"{label} is for the {declared!r} engine, " + (
                f"which cannot run here: {why}" if why else f"not configured here ({configured})"
            )
            return _Read(None, model, None, (Missing("engine", declared, reason),))
        try:
            engine_model = await engine.model_for_version(version)
            model = dataclasses.replace(model, engine_model=engine_model)
            details = await self._capabilities.details(engine, model)
        except AimlError as exc:
            if exc.status_code >= 502:  # unreachable, timed out: it tells nothing of the version
                raise
            kind = _kinds.get(type(exc), "tags")
            return _Read(engine, model, None, (Missing(kind, declared, f"{label}: {exc.message}"),))
        return _Read(engine, model, details)


_kinds: dict[type[AimlError], str] = {ModelLoadFailed: "files", ModelNotFound: "model"}


def _serves(read: _Read, *, with_details: bool) -> dict[Task, str | None]:
    """Each task of the version's engine -> ``None`` when the version serves it, else why
    not (the engine does not route it, its ``inference_task`` refuses it; with details,
    it lacks the capability the task needs)."""
    assert read.engine is not None
    answer: dict[Task, str | None] = {}
    for task, spec in TASK_SPECS.items():
        if task not in read.engine.tasks:
            answer[task] = f"the {read.engine.name!r} engine does not serve {task.value!r}"
            continue
        try:
            spec.handler_for(read.model)
        except ModelNotServable as exc:
            answer[task] = exc.message
            continue
        need = _TASK_NEEDS.get(task)
        has = read.details.capabilities if read.details is not None else ()
        answer[task] = (
            f"it lacks {need!r}" if with_details and need is not None and need not in has else None
        )
    return answer


def _tasks_missing(now: _Read, then: _Read) -> list[Missing]:
    """The tasks the current version serves that the target's engine or ``inference_task``
    refuses (a lacking capability is reported as such, not here)."""
    served = [task for task, why in _serves(now, with_details=True).items() if why is None]
    refused = _serves(then, with_details=False)
    return [
        Missing("task", task.value, f"task {task.value!r}: {why}")
        for task in served
        if (why := refused[task]) is not None
    ]
