"""Joining a Ray cluster: deploying the model replicas, and the handle fronts call them by.

aiml's HTTP fronts are its own uvicorn processes, not Ray Serve's proxy: measured on these
machines, Ray's proxy alone costs ~9 ms of CPU a request and tops out near 84 requests/s,
while a deployment handle called from a plain process costs ~4 ms (docs/architecture.md).
So the proxy is disabled and only local models (llama.cpp, transformers) go through Ray.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import ray
from ray import serve
from ray.serve.handle import DeploymentHandle

from aiml.settings import Settings

from .replica import DEPLOYMENT, model_app

__all__ = ["connect", "deploy", "model_handle"]

log = logging.getLogger("aiml.cluster")


def connect() -> None:
    """Join the cluster at ``RAY_ADDRESS`` (a running ``ray start --head``) once."""
    if not ray.is_initialized():
        ray.init(
            address=os.environ.get("RAY_ADDRESS", "auto"),
            log_to_driver=False,  # the replicas log on their nodes; the front keeps its own log
            logging_level=logging.WARNING,
        )


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
