"""The MLflow model registry, behind an async facade.

Every public method runs the blocking ``MlflowClient`` call in a worker thread and turns
MLflow's exceptions into ours: "does not exist" becomes :class:`ModelNotFound` (or ``None``
where absence is an answer), an unreachable registry :class:`RegistryUnavailable`, anything
else :class:`RegistryError`. Nothing is ever swallowed into a guess.

One reference costs a constant number of MLflow calls: one by alias, one by version, or one
``search_model_versions`` ordered by version for "latest"; plus one ``get_registered_model``
only when the version lacks a tag that may live on the registered model instead.
"""

from __future__ import annotations

import os
import posixpath
import threading
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import anyio.to_thread
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from aiml.errors import (
    AimlError,
    InvalidRequest,
    ModelNotFound,
    RegistryError,
    RegistryUnavailable,
)
from aiml.settings import Settings
from aiml.types import ModelRef, RegistryVersion
from aiml.urls import redact

__all__ = ["MlflowRegistry", "RegisteredModelInfo", "apply_http_bounds"]

T = TypeVar("T")
REGISTRATION_EXPERIMENT = "aiml-registrations"
_UNAVAILABLE_CODES = {"TEMPORARILY_UNAVAILABLE", "REQUEST_LIMIT_EXCEEDED"}


@dataclass(frozen=True, slots=True)
class RegisteredModelInfo:
    """A registered model with its aliases, tags and (when asked for) its versions."""

    name: str
    description: str
    tags: Mapping[str, str]
    aliases: Mapping[str, int]
    latest_version: int | None
    versions: tuple[RegistryVersion, ...] = ()
    created_s: int = 0  # creation time, seconds since the epoch


def apply_http_bounds(settings: Settings) -> None:
    """Bound MLflow's REST client, whose defaults retry for minutes.

    MLflow reads these from the environment on every request and offers no per-client
    setting, so the only place to set them is the process environment. A value the operator
    set explicitly is kept.
    """
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", str(settings.registry_timeout_s))
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", str(settings.registry_max_retries))
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "0")
    # A download bar per model in the server log helps nobody; the CLI shows its own.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


class MlflowRegistry:
    """Async access to one MLflow model registry; counts the calls it makes."""

    def __init__(self, client: MlflowClient, *, uri: str, artifact_location: str | None) -> None:
        self._client = client
        self._uri = redact(uri)
        self._artifact_location = artifact_location
        self._lock = threading.Lock()
        self._calls = 0

    @classmethod
    def from_settings(cls, settings: Settings) -> MlflowRegistry:
        apply_http_bounds(settings)
        artifact_location = None
        if settings.embedded_registry:
            settings.home_dir.mkdir(parents=True, exist_ok=True)
            artifact_location = settings.artifact_dir.as_uri()
        client = MlflowClient(
            tracking_uri=settings.tracking_uri, registry_uri=settings.registry_uri
        )
        return cls(client, uri=settings.registry_uri, artifact_location=artifact_location)

    @property
    def uri(self) -> str:
        """The registry URI with any credentials removed, for messages."""
        return self._uri

    @property
    def calls(self) -> int:
        """MLflow client calls made so far (what reached the registry)."""
        return self._calls

    async def find_version(
        self, ref: ModelRef, *, model_tag_keys: Collection[str] = ()
    ) -> RegistryVersion | None:
        """The version ``ref`` names, or ``None`` when an unpinned name is not registered.

        A missing version or alias is :class:`ModelNotFound`: the caller asked the registry
        specifically. ``model_tag_keys`` are tags that may sit on the registered model
        instead of the version; the model is fetched only if the version lacks one.
        """
        return await self._run(self._find_version, ref, tuple(model_tag_keys))

    async def ping(self) -> None:
        """One cheap call that fails the way a lookup would when the registry is down."""
        await self._run(lambda: self._call(self._client.search_registered_models, max_results=1))

    async def list_models(
        self, *, max_results: int = 100, page_token: str | None = None
    ) -> tuple[list[RegisteredModelInfo], str | None]:
        def work() -> tuple[list[RegisteredModelInfo], str | None]:
            page = self._call(
                self._client.search_registered_models,
                max_results=max_results,
                page_token=page_token,
            )
            token = page.token.decode() if isinstance(page.token, bytes) else page.token
            return [_model_info(m) for m in page], token or None

        return await self._run(work, invalid="page_token")

    async def get_model(self, name: str) -> RegisteredModelInfo:
        """A registered model with all its versions; :class:`ModelNotFound` if absent."""

        def work() -> RegisteredModelInfo:
            model = self._call(self._client.get_registered_model, name)
            versions = self._call(
                self._client.search_model_versions,
                f"name='{name}'",
                order_by=["version_number DESC"],
            )
            info = _model_info(model)
            model_tags = dict(model.tags)
            by_version: dict[int, list[str]] = {}
            for alias, number in info.aliases.items():
                by_version.setdefault(number, []).append(alias)
            return RegisteredModelInfo(
                name=info.name,
                description=info.description,
                tags=info.tags,
                aliases=info.aliases,
                latest_version=info.latest_version,
                created_s=info.created_s,
                versions=tuple(
                    _version(v, model_tags, aliases=by_version.get(int(v.version), []))
                    for v in versions
                ),
            )

        return await self._run(work, not_found=f"no registered model {name!r} in {self._uri}")

    async def create_pointer_version(
        self,
        name: str,
        *,
        pointer: Mapping[str, Any],
        tags: Mapping[str, str],
        description: str | None = None,
    ) -> RegistryVersion:
        """Register a new version whose artifact is a small JSON pointer to an engine's model.

        The pointer is logged to a run (``runs:/<id>/model``) because ``mlflow server``
        refuses sources such as ``ollama://...`` or a bare ``models:/`` URI.
        """

        def log(run_id: str) -> None:
            self._call(self._client.log_dict, run_id, dict(pointer), "model/aiml_pointer.json")

        return await self._run(lambda: self._record(name, tags, description, log))

    async def create_files_version(
        self,
        name: str,
        *,
        files: Mapping[str, Path],
        manifest_json: str,
        tags: Mapping[str, str],
        description: str | None = None,
        progress: Callable[[str, int, int], None] | None = None,
    ) -> RegistryVersion:
        """Log model files (relpath -> local file) and their manifest as a new version."""

        def log(run_id: str) -> None:
            total = sum(path.stat().st_size for path in files.values())
            done = 0
            for rel, path in sorted(files.items()):
                folder = posixpath.dirname(rel)
                target = f"model/{folder}" if folder else "model"
                if path.name != posixpath.basename(rel):
                    raise ValueError(f"{path} must be logged under its own name, not {rel}")
                self._call(self._client.log_artifact, run_id, str(path), target)
                done += path.stat().st_size
                if progress is not None:
                    progress("uploading", done, total)
            self._call(self._client.log_text, run_id, manifest_json, "model/aiml_manifest.json")

        return await self._run(lambda: self._record(name, tags, description, log))

    def _record(
        self,
        name: str,
        tags: Mapping[str, str],
        description: str | None,
        log: Callable[[str], None],
    ) -> RegistryVersion:
        """A new version of ``name``: a finished run whose ``model/`` folder ``log`` filled."""
        experiment_id = self._registration_experiment()
        run = self._call(self._client.create_run, experiment_id, run_name=f"register-{name}")
        run_id = run.info.run_id
        log(run_id)
        self._call(self._client.set_terminated, run_id)
        self._ensure_registered_model(name)
        mv = self._call(
            self._client.create_model_version,
            name,
            f"runs:/{run_id}/model",
            run_id=run_id,
            tags=dict(tags),
            description=description,
            await_creation_for=0,
        )
        return _version(mv, {})

    async def find_version_with_tag(
        self, name: str, key: str, value: str
    ) -> RegistryVersion | None:
        """The newest version of ``name`` whose tag ``key`` equals ``value`` (one call)."""

        def work() -> RegistryVersion | None:
            found = self._call(
                self._client.search_model_versions,
                f"name='{name}' and tags.`{key}` = '{value}'",
                max_results=1,
                order_by=["version_number DESC"],
            )
            return _version(found[0], {}) if found else None

        return await self._run(work)

    async def download_version(self, name: str, version: int, destination: Path) -> Path:
        """Download a version's artifacts under ``destination``; returns the local folder."""

        def work() -> Path:
            import mlflow.artifacts

            uri = self._call(self._client.get_model_version_download_uri, name, str(version))
            local = self._call(
                mlflow.artifacts.download_artifacts,
                artifact_uri=uri,
                dst_path=str(destination),
                tracking_uri=self._client.tracking_uri,
            )
            return Path(local)

        return await self._run(
            work, not_found=f"registered model {name!r} has no version {version}"
        )

    async def set_alias(self, name: str, alias: str, version: int) -> None:
        await self._run(
            lambda: self._call(self._client.set_registered_model_alias, name, alias, str(version)),
            not_found=f"registered model {name!r} has no version {version} in {self._uri}",
        )

    async def delete_alias(self, name: str, alias: str) -> None:
        await self._run(
            lambda: self._call(self._client.delete_registered_model_alias, name, alias),
            not_found=f"registered model {name!r} has no alias {alias!r} in {self._uri}",
        )

    # -- blocking internals, run in worker threads -------------------------------------

    def _find_version(
        self, ref: ModelRef, model_tag_keys: tuple[str, ...]
    ) -> RegistryVersion | None:
        if ref.alias is not None:
            try:
                mv = self._call(self._client.get_model_version_by_alias, ref.name, ref.alias)
            except MlflowException as exc:
                # MLflow answers a missing alias with INVALID_PARAMETER_VALUE (HTTP 400).
                if _is_missing(exc) or (
                    exc.error_code == "INVALID_PARAMETER_VALUE" and "not found" in exc.message
                ):
                    raise ModelNotFound(
                        f"registered model {ref.name!r} has no alias {ref.alias!r} in {self._uri}"
                    ) from exc
                raise
        elif ref.version is not None:
            try:
                mv = self._call(self._client.get_model_version, ref.name, str(ref.version))
            except MlflowException as exc:
                if _is_missing(exc):
                    raise ModelNotFound(
                        f"registered model {ref.name!r} has no version {ref.version} in {self._uri}"
                    ) from exc
                raise
        else:
            found = self._call(
                self._client.search_model_versions,
                f"name='{ref.name}'",
                max_results=1,
                order_by=["version_number DESC"],
            )
            if not found:
                return None
            mv = found[0]
        model_tags: dict[str, str] = {}
        if any(key not in mv.tags for key in model_tag_keys):
            model_tags = dict(self._call(self._client.get_registered_model, ref.name).tags)
        return _version(mv, model_tags)

    def _ensure_registered_model(self, name: str) -> None:
        try:
            self._call(self._client.create_registered_model, name)
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                raise

    def _registration_experiment(self) -> str:
        experiment = self._call(self._client.get_experiment_by_name, REGISTRATION_EXPERIMENT)
        if experiment is not None:
            return str(experiment.experiment_id)
        location = None
        if self._artifact_location is not None:
            location = f"{self._artifact_location.rstrip('/')}/{REGISTRATION_EXPERIMENT}"
        try:
            return str(
                self._call(
                    self._client.create_experiment,
                    REGISTRATION_EXPERIMENT,
                    artifact_location=location,
                )
            )
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
            experiment = self._call(self._client.get_experiment_by_name, REGISTRATION_EXPERIMENT)
            if experiment is None:
                raise
            return str(experiment.experiment_id)

    def _call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        with self._lock:
            self._calls += 1
        return fn(*args, **kwargs)

    async def _run(
        self,
        fn: Callable[..., T],
        *args: Any,
        not_found: str | None = None,
        invalid: str | None = None,
    ) -> T:
        """Run ``fn`` in a worker thread; ``not_found``/``invalid`` say how to read refusals."""
        try:
            return await anyio.to_thread.run_sync(fn, *args)
        except AimlError:
            raise
        except Exception as exc:
            raise self._translate(exc, not_found, invalid) from exc

    def _translate(self, exc: Exception, not_found: str | None, invalid: str | None) -> AimlError:
        if _is_unreachable(exc):
            return RegistryUnavailable(
                f"model registry at {self._uri} is unavailable: {_short(exc)}"
            )
        if isinstance(exc, MlflowException) and _is_missing(exc) and not_found is not None:
            return ModelNotFound(not_found)
        refused = isinstance(exc, ValueError) or (
            isinstance(exc, MlflowException) and exc.error_code == "INVALID_PARAMETER_VALUE"
        )
        if refused and invalid is not None:
            return InvalidRequest(f"{invalid}: {_short(exc)}", param=invalid)
        return RegistryError(f"model registry at {self._uri} failed: {_short(exc)}")


def _is_missing(exc: MlflowException) -> bool:
    return bool(exc.error_code == "RESOURCE_DOES_NOT_EXIST")


def _is_unreachable(exc: BaseException) -> bool:
    """True if the chain of causes shows a network failure, timeout or a locked database."""
    import requests
    import sqlalchemy.exc

    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(
            current,
            requests.exceptions.ConnectionError
            | requests.exceptions.Timeout
            | requests.exceptions.RetryError
            | sqlalchemy.exc.OperationalError
            | ConnectionError
            | TimeoutError,
        ):
            return True
        if isinstance(current, MlflowException) and (
            current.error_code in _UNAVAILABLE_CODES
            or "failed with exception" in current.message
            or "failed with timeout" in current.message
        ):
            return True
        current = current.__cause__ or current.__context__
    return False


def _version(
    mv: Any, model_tags: Mapping[str, str], aliases: Collection[str] | None = None
) -> RegistryVersion:
    return RegistryVersion(
        name=mv.name,
        version=int(mv.version),
        tags=dict(mv.tags or {}),
        model_tags=dict(model_tags),
        aliases=tuple(sorted(aliases if aliases is not None else (mv.aliases or ()))),
        source=mv.source,
    )


def _model_info(model: Any) -> RegisteredModelInfo:
    aliases = {alias: int(version) for alias, version in (model.aliases or {}).items()}
    latest = [int(v.version) for v in (model.latest_versions or [])]
    return RegisteredModelInfo(
        name=model.name,
        description=model.description or "",
        tags=dict(model.tags or {}),
        aliases=aliases,
        latest_version=max(latest) if latest else None,
        created_s=int(getattr(model, "creation_timestamp", 0) or 0) // 1000,
    )


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text[:300]
