"""Joining a Ray cluster: deploying the model replicas, and the handle fronts call them by.

aiml's HTTP fronts are its own uvicorn processes, not Ray Serve's proxy: measured on these
machines, Ray's proxy alone costs ~9 ms of CPU a request and tops out near 84 requests/s,
while a deployment handle called from a plain process costs ~4 ms (docs/architecture.md).
So the proxy is disabled and only local models (llama.cpp, transformers) go through Ray.
"""

from __future__ import annotations

import logging
import logging.handlers
import os
from pathlib import Path
from typing import Any

import ray
from ray import serve
from ray.serve.handle import DeploymentHandle

from aiml.settings import Settings

from .replica import DEPLOYMENT, model_app

__all__ = ["connect", "deploy", "model_handle"]

log = logging.getLogger("aiml.cluster")


#: Ray's own loggers in a driver: on import Ray gives each a handler writing plain text to
#: stderr, where the front's log is one JSON object per line.
RAY_LOGGERS = ("ray", "ray.serve")


def connect() -> None:
    """Join the cluster at ``RAY_ADDRESS`` (a running ``ray start --head``) once.

    Ray's own log records go to Ray's log files on this node, not to the front's stderr:
    held in memory while joining (the logs folder is known only then), then written to
    ``<session>/logs/aiml-front-<pid>.log``. If joining fails, what Ray said is handed to
    the front's log instead, since it explains why.
    """
    if ray.is_initialized():
        return
    joining = logging.handlers.MemoryHandler(capacity=10_000, flushLevel=logging.CRITICAL + 1)
    _route_ray_logs(joining)
    try:
        # ray.init keeps the "ray" logger's handlers (it sets their format and level);
        # configure_logging=False would remove them, and Python print to stderr instead.
        context = ray.init(
            address=os.environ.get("RAY_ADDRESS", "auto"),
            log_to_driver=False,  # the replicas log on their nodes; the front keeps its own log
        )
    except BaseException:
        _hand_over(joining, _ToRoot())
        raise
    # Ray's log files are in its session folder on this node (unknown over a ray:// client)
    session_dir = getattr(context, "address_info", {}).get("session_dir")
    if session_dir is None:
        _hand_over(joining, _ToRoot())
        return
    ray_log = logging.FileHandler(
        Path(session_dir) / "logs" / f"aiml-front-{os.getpid()}.log", encoding="utf-8"
    )
    ray_log.setFormatter(
        logging.Formatter("%(asctime)s %(levelname)s %(name)s %(filename)s:%(lineno)s %(message)s")
    )
    _hand_over(joining, ray_log)


def _hand_over(held: logging.handlers.MemoryHandler, handler: logging.Handler) -> None:
    """Ray's loggers write to ``handler`` from now on, after what ``held`` holds."""
    held.setTarget(handler)
    _route_ray_logs(handler)
    held.close()  # writes what it held to its target


def _route_ray_logs(handler: logging.Handler) -> None:
    for name in RAY_LOGGERS:
        logger = logging.getLogger(name)
        logger.handlers[:] = [handler]
        logger.propagate = False


class _ToRoot(logging.Handler):
    """Hands records to the root logger's handlers (the front's own log)."""

    def emit(self, record: logging.LogRecord) -> None:
        logging.getLogger().handle(record)


def deploy(settings: Settings) -> None:
    """Deploy the model replicas, unless the application already runs: a second front
    joining the cluster must not roll the replicas the first one is using."""
    connect()
    serve.start(proxy_location="Disabled")
    running = serve.status().applications.get(settings.ray_app)
    if running is not None and running.status in ("RUNNING", "DEPLOYING"):
        log.info("model replicas: application %r already %s", settings.ray_app, running.status)
        return
    serve.run(model_app(settings), name=settings.ray_app, route_prefix=None)
    log.info("model replicas: application %r deployed", settings.ray_app)


def model_handle(settings: Settings) -> DeploymentHandle[Any]:
    """The handle through which this front calls the model replicas."""
    connect()
    return serve.get_deployment_handle(DEPLOYMENT, app_name=settings.ray_app)
