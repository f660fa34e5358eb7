"""The MLflow model registry, behind an async facade.

Every public method runs the blocking ``MlflowClient`` call in a worker thread
(:mod:`aiml.registry.calls`): lookups, listings and alias changes are answered within the
registry timeout, sqlite included, or fail with :class:`RegistryUnavailable`. MLflow's
exceptions become ours: "does not exist" is :class:`ModelNotFound` (or ``None`` where absence
is an answer), anything else :class:`RegistryError`. Nothing is swallowed into a guess.

One reference costs a constant number of MLflow calls: one by alias, one by version, or one
``search_model_versions`` ordered by version for "latest"; plus one ``get_registered_model``
only when the version lacks a tag that may live on the registered model instead.
"""

from __future__ import annotations

import contextlib
import json
import posixpath
import tempfile
import threading
from collections.abc import Callable, Collection, Mapping
from pathlib import Path
from typing import Any, TypeVar

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from aiml.errors import ModelNotFound
from aiml.settings import Settings
from aiml.types import ModelRef, RegistryVersion
from aiml.urls import redact

from .calls import RegistryCalls, apply_http_bounds, is_missing
from .entities import RegisteredModelInfo, model_info, registry_version

__all__ = ["MlflowRegistry", "apply_http_bounds"]

T = TypeVar("T")
REGISTRATION_EXPERIMENT = "aiml-registrations"
# Threads of one registry's bounded calls: lookups are rare once references are cached, so a
# few suffice, and they are all that a stalled registry (a locked sqlite file) can hold.
_THREADS = 4


class MlflowRegistry:
    """Async access to one MLflow model registry; counts the calls it makes."""

    def __init__(
        self,
        client: MlflowClient,
        *,
        uri: str,
        artifact_location: str | None,
        timeout_s: float = 5.0,
        threads: int = _THREADS,
    ) -> None:
        self._client = client
        self._uri = redact(uri)
        self._artifact_location = artifact_location
        self._runner = RegistryCalls(self._uri, timeout_s=timeout_s, threads=threads)
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
        return cls(
            client,
            uri=settings.registry_uri,
            artifact_location=artifact_location,
            timeout_s=settings.registry_timeout_s,
        )

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
        return await self._runner.run(self._find_version, ref, tuple(model_tag_keys))

    async def ping(self) -> None:
        """One cheap call that fails the way a lookup would when the registry is down."""
        await self._runner.run(
            lambda: self._call(self._client.search_registered_models, max_results=1)
        )

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
            return [model_info(m) for m in page], token or None

        return await self._runner.run(work, invalid="page_token")

    async def get_model(self, name: str) -> RegisteredModelInfo:
        """A registered model with all its versions; :class:`ModelNotFound` if absent."""

        def work() -> RegisteredModelInfo:
            model = self._call(self._client.get_registered_model, name)
            versions = self._call(
                self._client.search_model_versions,
                f"name='{name}'",
                order_by=["version_number DESC"],
            )
            info = model_info(model)
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
                    registry_version(v, model_tags, aliases=by_version.get(int(v.version), []))
                    for v in versions
                ),
            )

        return await self._runner.run(
            work, not_found=f"no registered model {name!r} in {self._uri}"
        )

    async def create_pointer_version(
        self,
        name: str,
        *,
        pointer: Mapping[str, Any],
        tags: Mapping[str, str],
        description: str | None = None,
    ) -> RegistryVersion:
        """Register a new version whose artifact is a small JSON pointer to an engine's model.

        The pointer is a logged model's file because ``mlflow server`` refuses sources such
        as ``ollama://...``.
        """

        def log(model_id: str) -> None:
            self._log_text(model_id, json.dumps(dict(pointer), indent=2), "aiml_pointer.json")

        return await self._runner.run(
            lambda: self._record(name, tags, description, log), bounded=False
        )

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

        def log(model_id: str) -> None:
            total = sum(path.stat().st_size for path in files.values())
            done = 0
            for rel, path in sorted(files.items()):
                folder = posixpath.dirname(rel) or None
                if path.name != posixpath.basename(rel):
                    raise ValueError(f"{path} must be logged under its own name, not {rel}")
                self._call(self._client.log_model_artifact, model_id, str(path), folder)
                done += path.stat().st_size
                if progress is not None:
                    progress("uploading", done, total)
            self._log_text(model_id, manifest_json, "aiml_manifest.json")

        return await self._runner.run(
            lambda: self._record(name, tags, description, log), bounded=False
        )

    def _record(
        self,
        name: str,
        tags: Mapping[str, str],
        description: str | None,
        log: Callable[[str], None],
    ) -> RegistryVersion:
        """A new version of ``name``: an MLflow 3 logged model (made by a finished run)
        whose files ``log`` wrote. On a server its source is ``models:/<id>``, MLflow's link
        to the model (traces link to it too); a local store gets the model's folder: its SQL
        registry looks ``models:/`` up through the process-wide tracking URI, not the
        client's (MLflow's TODO), and traces need a server anyway."""
        experiment_id = self._registration_experiment()
        run = self._call(self._client.create_run, experiment_id, run_name=f"register-{name}")
        run_id = run.info.run_id
        model = self._call(
            self._client.create_logged_model, experiment_id, name=name, source_run_id=run_id
        )
        try:
            log(model.model_id)
        except BaseException:
            with contextlib.suppress(Exception):  # the upload's own error is the one to say
                self._call(self._client.finalize_logged_model, model.model_id, "FAILED")
                self._call(self._client.set_terminated, run_id, "FAILED")
            raise
        self._call(self._client.finalize_logged_model, model.model_id, "READY")
        self._call(self._client.set_terminated, run_id)
        self._ensure_registered_model(name)
        on_server = self._client.tracking_uri.startswith(("http://", "https://"))
        mv = self._call(
            self._client.create_model_version,
            name,
            f"models:/{model.model_id}" if on_server else model.artifact_location,
            run_id=run_id,
            tags=dict(tags),
            description=description,
            await_creation_for=0,
            model_id=model.model_id,
        )
        return registry_version(mv, {})

    def _log_text(self, model_id: str, text: str, file_name: str) -> None:
        """``text`` as the logged model's file ``file_name`` (MLflow's client has no
        ``log_text`` for logged models)."""
        with tempfile.TemporaryDirectory(prefix="aiml-log-") as folder:
            path = Path(folder) / file_name
            path.write_text(text, encoding="utf-8")
            self._call(self._client.log_model_artifact, model_id, str(path))

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
            return registry_version(found[0], {}) if found else None

        return await self._runner.run(work)

    async def any_version_tagged(self, key: str, value: str) -> bool:
        """Whether any version of any model has tag ``key`` = ``value`` (one call)."""

        def work() -> bool:
            found = self._call(
                self._client.search_model_versions, f"tags.`{key}` = '{value}'", max_results=1
            )
            return bool(found)

        return await self._runner.run(work)

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

        return await self._runner.run(
            work, bounded=False, not_found=f"registered model {name!r} has no version {version}"
        )

    async def set_alias(self, name: str, alias: str, version: int) -> None:
        await self._runner.run(
            lambda: self._call(self._client.set_registered_model_alias, name, alias, str(version)),
            not_found=f"registered model {name!r} has no version {version} in {self._uri}",
        )

    async def set_version_tag(self, name: str, version: int, key: str, value: str) -> None:
        await self._runner.run(
            lambda: self._call(self._client.set_model_version_tag, name, str(version), key, value),
            not_found=f"registered model {name!r} has no version {version} in {self._uri}",
        )

    async def delete_version_tag(self, name: str, version: int, key: str) -> None:
        await self._runner.run(
            lambda: self._call(self._client.delete_model_version_tag, name, str(version), key),
            not_found=f"registered model {name!r} version {version} has no tag {key!r}",
        )

    async def delete_alias(self, name: str, alias: str) -> None:
        await self._runner.run(
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
                if is_missing(exc) or (
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
                if is_missing(exc):
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
        return registry_version(mv, model_tags)

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
