"""The composition root: everything the service needs, built once and passed in.

Both the HTTP app's lifespan and the CLI build their objects here; nothing is a module-level
singleton, so tests can build as many independent services as they like.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from aiml.engines.base import Engine
from aiml.engines.local import LocalEngine
from aiml.engines.pool import ModelPool
from aiml.engines.table import build_engines
from aiml.inference.admission import Admission
from aiml.inference.canary_rollouts import CanaryRollouts
from aiml.inference.catalog import ModelCatalog
from aiml.inference.guard import CanaryGuard, GuardLimits
from aiml.inference.limits import Limits
from aiml.inference.manager import InferenceManager
from aiml.inference.readiness import RequiredEngines
from aiml.inference.response_store import ResponseStore
from aiml.inference.rollout_plan import RolloutPlanner
from aiml.inference.router import TaskRouter
from aiml.observability.metrics import Metrics
from aiml.observability.stats import Stats
from aiml.observability.trace_export import TraceExporter
from aiml.registry.artifacts import ArtifactCache
from aiml.registry.feedback import TraceFeedback
from aiml.registry.mlflow import MlflowRegistry
from aiml.registry.trace_destinations import build_tracer
from aiml.registry.trace_records import TraceRecords
from aiml.registry.webhooks import DeliveryVerifier
from aiml.settings import Settings
from aiml.teams.directory import environment_keys
from aiml.teams.service import Teams, open_teams
from aiml.teams.usage import UsageRow

if TYPE_CHECKING:
    from aiml.cluster.changes import ChangeFeed

__all__ = ["Services", "build_services"]

log = logging.getLogger("aiml")

#: How long shutdown waits for generations it cancelled to leave their models (they stop
#: at their next token; a model still in use after this is left loaded, never closed).
_SHUTDOWN_WAIT_S = 30.0


@dataclass
class Services:
    settings: Settings
    registry: MlflowRegistry
    engines: Mapping[str, Engine]
    router: TaskRouter
    manager: InferenceManager
    catalog: ModelCatalog
    stats: Stats
    pool: ModelPool
    artifacts: ArtifactCache
    metrics: Metrics
    #: The Responses API's stored responses (the file is opened on first use).
    responses: ResponseStore
    #: Canaries started, stepped, stopped, promoted and tripped (registry writes).
    rollouts: CanaryRollouts
    #: Served requests' traces on their way to MLflow (``None``: none traced), and the
    #: feedback callers give on them (``None``: no MLflow server to record it in).
    traces: TraceExporter | None
    feedback: TraceFeedback | None
    #: Takes a canary's candidate out when it does worse than the alias's version; its
    #: rounds also step staged canaries (``planner``).
    guard: CanaryGuard
    planner: RolloutPlanner
    #: Keys, teams, limits, usage and the audit log (aiml's own database).
    teams: Teams
    unavailable: Mapping[str, str] = field(default_factory=dict)
    #: In cluster mode, the feed of registry changes made through other fronts.
    changes: ChangeFeed | None = None
    #: In cluster mode, which model replicas hold which model ids (``name/version``).
    holders: Callable[[], Awaitable[dict[str, list[str]] | None]] | None = None
    #: MLflow's webhook deliveries, checked with AIML_MLFLOW_WEBHOOK_SECRET (``None``: off).
    webhooks: DeliveryVerifier | None = None
    #: Served requests' traces read back from MLflow (``None``: none recorded there).
    trace_records: TraceRecords | None = None

    def registry_changed(self, name: str) -> None:
        """The registry changed for ``name``, through aiml or (a webhook says) elsewhere:
        forget what is kept of it here and, in cluster mode, on every other front."""
        self.forget(name)
        if self.changes is not None:
            self.changes.publish(name)

    def forget(self, name: str | None) -> None:
        """Drop this front's cached resolutions of ``name`` (``None``: of every model) and
        its kept listing, so the next request and listing ask the registry."""
        self.catalog.listing.invalidate()
        if name is None:
            self.router.clear()
        else:
            self.router.invalidate_name(name)

    def start(self) -> None:
        """Start background work (the idle-model reaper); needs a running event loop."""
        self.pool.start()
        if self.changes is not None:
            self.changes.start()
        self.guard.start()

    async def aclose(self) -> None:
        await self.teams.aclose()  # after the drain: the usage of every answer is written
        await self.guard.aclose()
        await self.manager.gate.shadow.aclose()
        if self.router.resolver.holds is not None:
            self.router.resolver.holds.close()
        self.router.resolver.candidates.close()
        if self.changes is not None:
            await self.changes.aclose()
        # By now the server has cancelled what was still running; the pool waits for the
        # worker threads of those requests to leave their models before closing them.
        await self.pool.aclose(wait_s=_SHUTDOWN_WAIT_S)
        for engine in self.engines.values():
            await engine.aclose()
        self.responses.close()
        if self.traces is not None:  # what is queued is posted, for a few seconds at most
            await asyncio.to_thread(self.traces.close)


def build_services(
    settings: Settings,
    *,
    registry: MlflowRegistry | None = None,
    engines: Mapping[str, Engine] | None = None,
) -> Services:
    registry = registry or MlflowRegistry.from_settings(settings)
    wrap_local = None
    if settings.ray:  # engines that load model files run them on the model replicas
        from aiml.cluster.deploy import model_handle
        from aiml.cluster.replica_client import on_ray

        models = model_handle(settings)

        def wrap_local(engine: Engine) -> Engine:
            assert isinstance(engine, LocalEngine)  # the engines that load model files
            return on_ray(engine, models)

    metrics = Metrics()
    pool = ModelPool(
        max_models=settings.max_loaded_models,
        max_bytes=settings.max_model_memory_bytes,
        idle_ttl_s=settings.model_idle_ttl_s,
        wait_s=settings.model_load_wait_s,
        on_load=lambda key, seconds: metrics.model_load_duration.labels(key[0]).observe(seconds),
    )
    artifacts = ArtifactCache(settings.model_cache_dir, registry)
    unavailable: dict[str, str] = {}
    if engines is None:
        engines, unavailable = build_engines(settings, artifacts, pool, wrap_local=wrap_local)
    stats = Stats()
    router = TaskRouter(
        engines,
        registry,
        ttl_s=settings.resolve_ttl_s,
        stale_s=settings.resolve_stale_s,
        wait_s=settings.resolve_wait_s,
        stats=stats,
        unavailable=unavailable,
        # A move made in MLflow is checked as aiml's own moves are (the catalog's, built
        # below); one that cannot serve is held off on the last good version.
        vet=lambda current, target: catalog.moves.missing(current, target),
    )
    admission = {
        name: Admission(name, limit=settings.max_in_flight, queue=settings.max_queue)
        for name in engines
    }
    limits = Limits(
        max_prompt_chars=settings.max_prompt_chars,
        max_tokens=settings.max_tokens_limit,
        max_embed_inputs=settings.max_embed_inputs,
        max_image_bytes=settings.max_image_bytes,
    )
    metrics.watch(stats, lambda: registry.calls, admission, pool)
    if router.resolver.holds is not None:
        metrics.watch_holds(router.resolver.holds.held)
    tracing = build_tracer(settings, settings.tracking_uri, replica=settings.replica_name)
    if tracing is not None:
        metrics.watch_traces(tracing[1])
    manager = InferenceManager(
        router,
        registry,
        stats,
        limits=limits,
        admission=admission,
        metrics=metrics,
        request_timeout_s=settings.request_timeout_s,
        required_engines=RequiredEngines(
            settings.required_engines, engines, registry, ttl_s=settings.resolve_ttl_s
        ),
        tracer=tracing[0] if tracing is not None else None,
    )
    # The catalog (aiml's own changes) and the change feed (other fronts') call into the
    # services, built below, through these: one path for "the registry changed for name".
    changes = None
    holders = None
    if settings.ray:
        from aiml.cluster.changes import ChangeFeed

        changes = ChangeFeed(
            settings.ray_app,
            on_change=lambda name: services.forget(name),
            on_keys=lambda: services.teams.directory.changed(),
        )
        from aiml.cluster.holdings import model_holders

        holders = model_holders(settings.ray_app)

    catalog = ModelCatalog(
        registry,
        engines,
        on_change=lambda name: services.registry_changed(name),
        listing_ttl_s=settings.resolve_ttl_s,
        capabilities=router.capabilities,  # a move's checks read what serving reads
        unavailable=unavailable,
    )
    webhooks = None
    if settings.mlflow_webhook_secret:
        webhooks = DeliveryVerifier(
            settings.mlflow_webhook_secret, max_age_s=settings.webhook_max_age_s
        )

    rollouts = CanaryRollouts(catalog, registry)
    guard = CanaryGuard(
        stats.versions,
        router.resolver.canaries,
        rollouts.trip,
        limits=GuardLimits(
            window_s=settings.guard_window_s,
            min_requests=settings.guard_min_requests,
            max_error_excess=settings.guard_max_error_excess,
            max_p99_ratio=settings.guard_max_p99_ratio,
        ),
        check_every_s=settings.guard_check_s,
    )
    planner = RolloutPlanner(stats.versions, guard, router.resolver.canaries, rollouts.advance)
    guard.then(planner.check)
    teams = open_teams(
        settings.database,
        environment=environment_keys(settings.api_keys, settings.admin_keys),
        refresh_s=settings.keys_refresh_s,
        flush_s=settings.usage_flush_s,
        on_record=lambda row: _count_usage(metrics, row),
    )
    if changes is not None:
        teams.on_change = changes.publish_keys

    services = Services(
        settings=settings,
        registry=registry,
        engines=engines,
        router=router,
        manager=manager,
        changes=changes,
        holders=holders,
        catalog=catalog,
        stats=stats,
        pool=pool,
        artifacts=artifacts,
        metrics=metrics,
        unavailable=unavailable,
        responses=ResponseStore(
            settings.home_dir / "responses.db", retention_s=settings.responses_retention_s
        ),
        webhooks=webhooks,
        traces=tracing[1] if tracing is not None else None,
        feedback=(
            TraceFeedback(settings.tracking_uri, tracing[1])
            if tracing is not None and settings.tracking_uri.startswith(("http://", "https://"))
            else None
        ),
        trace_records=(
            TraceRecords(
                settings.tracking_uri,
                settings.trace_experiment,
                timeout_s=settings.registry_timeout_s,
            )
            if tracing is not None and settings.tracking_uri.startswith(("http://", "https://"))
            else None
        ),
        rollouts=rollouts,
        guard=guard,
        planner=planner,
        teams=teams,
    )
    return services


def _count_usage(metrics: Metrics, row: UsageRow) -> None:
    metrics.key_usage.count(
        row.key, row.team, requests=row.requests, errors=row.errors,
        input_tokens=row.input_tokens, output_tokens=row.output_tokens, cost=row.cost,
    )  # fmt: skip
