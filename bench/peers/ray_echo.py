"""A trivial JSON echo for bench.ray_designs, served three ways.

``python -m bench.peers.ray_echo deploy ADDRESS PORT`` deploys two Ray Serve applications on
the cluster at ADDRESS: ``proxied`` (a FastAPI ingress at ``/echo`` behind Ray's HTTP proxy
on PORT) and ``handled`` (a plain deployment, no route). ``app`` is the FastAPI app a plain
uvicorn process runs: with ``ECHO_MODE=handle`` its ``/echo`` calls ``handled`` through a
deployment handle, with ``ECHO_MODE=bare`` it answers itself.
"""

from __future__ import annotations

import os
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI

_ingress = FastAPI()


@_ingress.post("/echo")
async def _proxied_echo(body: dict[str, Any]) -> dict[str, Any]:
    return body


def deploy(address: str, port: int) -> None:
    import ray
    from ray import serve

    ray.init(address=address, log_to_driver=False)
    serve.start(http_options={"host": "127.0.0.1", "port": port})

    @serve.deployment(ray_actor_options={"num_cpus": 0.5})
    @serve.ingress(_ingress)
    class Proxied:
        pass

    @serve.deployment(ray_actor_options={"num_cpus": 0.5})
    class Handled:
        async def echo(self, body: dict[str, Any]) -> dict[str, Any]:
            return body

    serve.run(Proxied.bind(), name="proxied", route_prefix="/")
    serve.run(Handled.bind(), name="handled", route_prefix=None)


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    if os.environ.get("ECHO_MODE") == "handle":
        import ray
        from ray import serve

        ray.init(address=os.environ["RAY_ADDRESS"], log_to_driver=False)
        app.state.handle = serve.get_deployment_handle("Handled", app_name="handled")
    yield


app = FastAPI(lifespan=_lifespan)


@app.get("/health")
async def health() -> str:
    return "ok"


@app.post("/echo")
async def echo(body: dict[str, Any]) -> dict[str, Any]:
    if os.environ.get("ECHO_MODE") == "handle":
        answer: dict[str, Any] = await app.state.handle.echo.remote(body)
        return answer
    return body


if __name__ == "__main__" and sys.argv[1:2] == ["deploy"]:
    deploy(sys.argv[2], int(sys.argv[3]))
