"""``POST /hooks/mlflow``: MLflow's webhooks, so a change made in MLflow is served at once.

No API key (MLflow cannot send one): the delivery's HMAC signature is its authentication,
checked before anything is done (:mod:`aiml.registry.webhooks`). A verified delivery for a
registered model drops that model's cached resolutions and the kept listings on this front
and, through the change feed, on every front of a cluster; the next request asks the
registry. Nothing here waits on the registry or blocks the loop. Without
``AIML_MLFLOW_WEBHOOK_SECRET`` the route is off (404).

Answers, as a sender reads them: 200 done (or acknowledged and ignored: an event aiml has
nothing to do for); 401 unsigned or forged (``bad_signature``); 400 malformed
(``bad_delivery``) or outside ``AIML_WEBHOOK_MAX_AGE_S`` (``stale_delivery``); 409 a
delivery id accepted before (``replayed_delivery``): refused rather than a 2xx so a replay
shows in the sender's log and ours, and MLflow retries neither (it retries 429 and 5xx
only), so a legitimate resend after a lost answer ends there too, its change applied once.
"""

from __future__ import annotations

import logging
from typing import Annotated

from fastapi import APIRouter, Header, Request

from aiml.errors import AimlError, NotFound, PayloadTooLarge

from ..deps import ServicesDep
from ..responses import JSONResponse

__all__ = ["router"]

log = logging.getLogger("aiml.hooks")

router = APIRouter(tags=["hooks"])

#: MLflow's payloads are a few hundred bytes (a version's tags at most some KB); a larger
#: body is not MLflow's, and is never read whole, nor hashed on the loop.
_MAX_BODY = 1 << 20

_DELIVERY_BODY = {
    "required": True,
    "content": {
        "application/json": {
            "schema": {
                "type": "object",
                "required": ["entity", "action", "data"],
                "properties": {
                    "entity": {"type": "string", "example": "model_version_alias"},
                    "action": {"type": "string", "example": "created"},
                    "timestamp": {"type": "string"},
                    "data": {"type": "object", "example": {"name": "m", "alias": "a"}},
                },
            }
        }
    },
}


@router.post("/hooks/mlflow", openapi_extra={"requestBody": _DELIVERY_BODY})
async def mlflow_webhook(
    request: Request,
    services: ServicesDep,
    # Declared for the schema; the verifier reads and checks them (a missing one: 401/400).
    x_mlflow_signature: Annotated[str | None, Header()] = None,
    x_mlflow_timestamp: Annotated[str | None, Header()] = None,
    x_mlflow_delivery_id: Annotated[str | None, Header()] = None,
) -> JSONResponse:
    """A delivery of MLflow's webhooks: signed by MLflow with AIML_MLFLOW_WEBHOOK_SECRET
    (X-MLflow-Signature, X-MLflow-Timestamp, X-MLflow-Delivery-Id). An alias created or
    deleted, a version created, a version tag set or deleted, or a model created makes every
    front ask the registry again at once; other events are acknowledged and ignored."""
    verifier = services.webhooks
    if verifier is None:
        raise NotFound("MLflow webhooks are off here: set AIML_MLFLOW_WEBHOOK_SECRET")
    try:
        signed = verifier.signed(request.headers)  # before a byte of the body is read
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > _MAX_BODY:
                raise PayloadTooLarge(f"a webhook delivery is at most {_MAX_BODY} bytes")
        delivery = verifier.verify(signed, bytes(body))
    except AimlError as exc:  # loudly: a forgery, a replay, or a misconfigured secret
        said = (x_mlflow_delivery_id or "")[:64]
        log.warning("webhook delivery %r refused: %s %s", said, exc.code, exc.message)
        raise
    if delivery.name is not None:
        services.registry_changed(delivery.name)
    log.info(
        "webhook delivery %s: %s %s",
        delivery.delivery_id,
        delivery.event,
        delivery.name if delivery.name is not None else "(ignored)",
    )
    return JSONResponse(
        {
            "success": True,
            "event": delivery.event,
            "name": delivery.name,
            "invalidated": delivery.name is not None,
        }
    )
