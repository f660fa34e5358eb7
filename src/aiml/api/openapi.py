"""The OpenAPI schema aiml serves: every answer each route can give, in its surface's body.

Drawn in one place rather than route by route, from what decides the answers:

* the edge every route sits behind: 401 (and 403 on admin routes) from the key table
  (:func:`aiml.api.auth.access_of`) where keys are configured, 413 from the body limit on
  every method that carries a body, and a malformed ``X-Request-Timeout``'s 422;
* the failures a route's work can raise (:data:`_RAISES`), as classes of the error
  hierarchy (:mod:`aiml.errors`), each with its status and code;
* the surface (``api/errors.py``'s ``render_error``): OpenAI's error body on ``/v1``,
  Ollama's ``{"error": "..."}`` on ``/api``, aiml's ``{"success": false, "error": {...}}``
  elsewhere; bad input is 400 on ``/v1`` and ``/api``, 422 elsewhere.

The connection guard in front of the app (:mod:`aiml.edge.connection_guard`) answers any route
itself, in aiml's body on every surface: 431 for headers past their cap, 408 (no body) for
headers or a body too slow, 400 for an upgrade or a body of tiny chunks, 503 for too many
connections from one address (:data:`_CONNECTION`).

Links from a response to the operations its values feed (a stored response's id to read
or delete it, a registered name to read it back) let a stateful client chain calls.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import TypeAdapter

from aiml import errors
from aiml.errors import AimlError
from aiml.registry import webhooks

from .auth import Access, access_of
from .errors import bad_input_status, surface_of
from .schemas import ErrorResponse

__all__ = ["build_openapi"]

_Failure = tuple[int, str]  # a status and the code it carries

#: Anything that passes the request gate (admission, the deadline, draining).
_GATE: tuple[type[AimlError], ...] = (errors.Overloaded, errors.Draining, errors.DeadlineExceeded)
#: Finding what a model name means: the registry, then the engine.
_RESOLVE = (
    *_GATE,
    errors.InvalidRequest,
    errors.ModelNotFound,
    errors.ModelNotServable,
    errors.RegistryUnavailable,
    errors.RegistryError,
)
#: Asking an engine: unreachable, slow, failing, refusing, full; a local one loads first.
_ENGINE = (
    errors.EngineUnavailable,
    errors.EngineTimeout,
    errors.EngineError,
    errors.EngineOverloaded,
    errors.PoolExhausted,
    errors.ModelLoadFailed,
)
#: A request served by a model: the input's limits (prompt, batch, image, audio) too.
_MODEL_CALL = (*_RESOLVE, *_ENGINE, errors.PayloadTooLarge)
#: The engine's own 4xx for a request it refuses (``EngineRejected`` passes its status on):
#: a remote engine's 400 (a prompt past the context length) is the one it answers.
_ENGINE_REJECTED: _Failure = (400, "engine_rejected")
_REGISTRY = (errors.InvalidRequest, errors.RegistryUnavailable, errors.RegistryError)

#: An alias move (or a canary's start or promotion): the target's checks ask its engine.
_MOVE = (
    *_REGISTRY,
    errors.ModelNotFound,
    errors.UnsafeAliasMove,  # error.missing: what the version lacks; ?force=true moves it
    errors.EngineUnavailable,
    errors.EngineTimeout,
    errors.EngineError,
)
#: What each operation's own work can raise, beyond the edge's answers.
_RAISES: dict[tuple[str, str], tuple[type[AimlError], ...]] = {
    ("POST", "/inference/infer"): _MODEL_CALL,
    ("POST", "/v1/chat/completions"): _MODEL_CALL,
    ("POST", "/v1/completions"): _MODEL_CALL,
    ("POST", "/v1/embeddings"): _MODEL_CALL,
    ("POST", "/v1/audio/transcriptions"): _MODEL_CALL,
    ("POST", "/v1/responses"): (*_MODEL_CALL, errors.NotFound),  # previous_response_id
    ("GET", "/v1/responses/{response_id}"): (errors.NotFound,),
    ("DELETE", "/v1/responses/{response_id}"): (errors.NotFound,),
    ("GET", "/v1/models"): _REGISTRY,
    ("GET", "/v1/models/{model}"): (*_RESOLVE, *_ENGINE),  # its details may ask the engine
    ("POST", "/api/generate"): (*_MODEL_CALL, errors.Forbidden, errors.ModelBusy),  # keep_alive
    ("POST", "/api/chat"): (*_MODEL_CALL, errors.Forbidden, errors.ModelBusy),
    ("POST", "/api/embed"): _MODEL_CALL,
    ("POST", "/api/embeddings"): _MODEL_CALL,
    ("POST", "/api/show"): (*_RESOLVE, *_ENGINE),
    ("POST", "/api/pull"): (*_RESOLVE, *_ENGINE),
    ("GET", "/api/tags"): _REGISTRY,
    ("POST", "/models/register_ollama"): (
        *_REGISTRY,
        errors.ModelNotFound,
        errors.EngineUnavailable,
        errors.EngineTimeout,
        errors.EngineError,
    ),
    ("GET", "/models/registered_in_mlflow"): _REGISTRY,
    ("GET", "/models/registered_in_mlflow/{name}"): (*_REGISTRY, errors.ModelNotFound),
    ("PUT", "/models/registered_in_mlflow/{name}/aliases/{alias}"): _MOVE,
    ("DELETE", "/models/registered_in_mlflow/{name}/aliases/{alias}"): (
        *_REGISTRY,
        errors.ModelNotFound,
    ),
    ("GET", "/models/registered_in_mlflow/{name}/aliases/{alias}/canary"): (
        *_REGISTRY,
        errors.ModelNotFound,
    ),
    ("PUT", "/models/registered_in_mlflow/{name}/aliases/{alias}/canary"): _MOVE,
    ("DELETE", "/models/registered_in_mlflow/{name}/aliases/{alias}/canary"): (
        *_REGISTRY,
        errors.ModelNotFound,
    ),
    ("POST", "/models/registered_in_mlflow/{name}/aliases/{alias}/canary/promote"): _MOVE,
    # 404: tracing off, or no such trace in MLflow; 503: MLflow did not take it.
    ("POST", "/v1/feedback"): (errors.NotFound, errors.RegistryUnavailable),
    ("GET", "/v1/evaluations"): (
        errors.InvalidRequest,
        errors.RegistryUnavailable,
        errors.RegistryError,
    ),
    ("GET", "/v1/traces"): (errors.NotFound, errors.RegistryUnavailable, errors.RegistryError),
    ("POST", "/hooks/mlflow"): (  # off (404) without AIML_MLFLOW_WEBHOOK_SECRET
        errors.NotFound,
        webhooks.BadSignature,
        webhooks.BadDelivery,
        webhooks.StaleDelivery,
        webhooks.ReplayedDelivery,
        errors.Overloaded,  # the delivery-id memory is full: MLflow retries
    ),
    ("POST", "/admin/keys"): (errors.Conflict, errors.InvalidRequest),
    ("GET", "/admin/keys/{name}"): (errors.NotFound,),
    ("PATCH", "/admin/keys/{name}"): (errors.NotFound, errors.InvalidRequest),
    ("DELETE", "/admin/keys/{name}"): (errors.NotFound,),
    ("POST", "/admin/keys/{name}/rotate"): (errors.NotFound, errors.Conflict),
    ("DELETE", "/admin/teams/{name}"): (errors.InvalidRequest, errors.Conflict),
    ("POST", "/admin/models/load"): (*_RESOLVE, *_ENGINE),
    ("POST", "/admin/models/unload"): (*_RESOLVE, errors.ModelBusy),
    ("POST", "/admin/models/register"): (
        *_REGISTRY,
        errors.PayloadTooLarge,
        errors.ModelNotServable,
    ),
}
_REJECTED_BY_ENGINE = {op for op, raises in _RAISES.items() if errors.EngineError in raises}
#: Answers a route gives itself, not as an error of the hierarchy.
_OWN_ANSWERS: dict[tuple[str, str], tuple[_Failure, ...]] = {
    ("GET", "/health/ready"): ((503, "not_ready"), (503, "draining")),
    ("GET", "/inference/health"): ((503, "unhealthy"),),
}

#: Success in other media types than JSON: streams (``"stream": true``) and plain text.
_NDJSON, _SSE, _TEXT = "application/x-ndjson", "text/event-stream", "text/plain"
_OTHER_MEDIA: dict[tuple[str, str], tuple[str, ...]] = {
    ("POST", "/inference/infer"): (_NDJSON,),
    ("POST", "/v1/chat/completions"): (_SSE,),
    ("POST", "/v1/completions"): (_SSE,),
    ("POST", "/v1/responses"): (_SSE,),
    ("POST", "/v1/audio/transcriptions"): (_SSE, _TEXT),  # text, srt and vtt are plain text
    ("POST", "/api/generate"): (_NDJSON,),
    ("POST", "/api/chat"): (_NDJSON,),
    ("POST", "/api/pull"): (_NDJSON,),
    ("GET", "/metrics"): (_TEXT,),  # Prometheus' text format
}

_DESCRIPTIONS = {
    400: "The request is malformed (error.param names the field), or the engine refused it",
    401: "No key, or not a valid one (Authorization: Bearer <key>)",
    403: "The key does not grant this (an admin key is needed, or the key's models, tasks "
    "or surfaces do not include it: error.message names the rule)",
    404: "Not there: the model, in the registry or on the engine, or the stored response",
    409: "A conflict: the model is in use, an alias move the version cannot serve "
    "(error.missing lists what it lacks; ?force=true moves it anyway), or a key or team "
    "of that name",
    413: "The body (AIML_MAX_BODY_BYTES), a prompt, a batch, an image or audio is too large",
    422: "The request is malformed; error.param names the field",
    429: "Too many requests now, or the key's (or its team's) limit or budget is reached: "
    "retry after Retry-After seconds",
    500: "The model's files could not be loaded",
    502: "The registry or the engine answered with an error",
    503: "The registry or the engine is unreachable, no room to load, or shutting down",
    504: "The deadline passed, or the engine did not answer in time",
}
#: Where a status means something else on one route than everywhere else.
_ROUTE_DESCRIPTIONS: dict[tuple[str, str], dict[int, str]] = {
    ("POST", "/hooks/mlflow"): {
        400: "The delivery is malformed, or its X-MLflow-Timestamp is further than "
        "AIML_WEBHOOK_MAX_AGE_S from now",
        401: "No valid X-MLflow-Signature for AIML_MLFLOW_WEBHOOK_SECRET (no key is asked for)",
        404: "Webhooks are off: AIML_MLFLOW_WEBHOOK_SECRET is not set",
        409: "A delivery id already accepted (a replay)",
        429: "Too many delivery ids remembered within AIML_WEBHOOK_MAX_AGE_S: retry",
    },
}
_BAD_INPUT: _Failure = (422, "invalid_request")
_AIML_BODY = "#/components/schemas/ErrorResponse"
#: What the connection guard answers on any route: (status, description, has aiml's body).
_CONNECTION = (
    (400, "A protocol upgrade, CONNECT, or a chunked body of tiny chunks (the connection "
          "closes)", True),
    (408, "The headers or the body came too slowly (AIML_HEADER_TIMEOUT_S, "
          "AIML_BODY_TIMEOUT_S, AIML_BODY_MIN_RATE); the connection closes", False),
    (431, "The headers are over AIML_MAX_HEADER_BYTES or AIML_MAX_HEADERS "
          "(request_header_fields_too_large); the connection closes", True),
    (503, "Too many open connections from this address (too_many_connections)", True),
)  # fmt: skip
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


def build_openapi(app: FastAPI, *, keyed: bool) -> dict[str, Any]:
    """The schema of ``app``'s routes with every answer documented; with ``keyed``, which
    operations need which key."""
    schema = get_openapi(
        title=app.title, version=app.version, summary=app.summary, routes=app.routes
    )
    components = schema.setdefault("components", {})
    components.setdefault("schemas", {}).update(_error_schemas())
    components["schemas"].pop("HTTPValidationError", None)  # FastAPI's, never sent
    components["schemas"].pop("ValidationError", None)
    if keyed:
        components["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            access = access_of(method.upper(), path)
            if keyed and access is not Access.OPEN:
                operation["security"] = [{"bearer": []}]
            failures = _failures(method.upper(), path, access if keyed else Access.OPEN)
            _document(
                operation, path, failures, _ROUTE_DESCRIPTIONS.get((method.upper(), path), {})
            )
            _document_connection(operation)
            _document_media(operation, _OTHER_MEDIA.get((method.upper(), path), ()))
    _add_links(schema["paths"])
    return schema


def _failures(method: str, path: str, access: Access) -> list[_Failure]:
    found: list[_Failure] = [_BAD_INPUT]  # X-Request-Timeout, and the route's own input
    if access is not Access.OPEN:  # a key's rules (403) and limits (429) hold on every route
        found += [(401, "unauthorized"), (403, "forbidden")]
        found += [(429, errors.RateLimited.code), (429, errors.BudgetExceeded.code)]
    if method in _BODY_METHODS:
        found.append((413, "payload_too_large"))
    found += [(kind.status_code, kind.code) for kind in _RAISES.get((method, path), ())]
    if (method, path) in _REJECTED_BY_ENGINE:
        found.append(_ENGINE_REJECTED)
    found += _OWN_ANSWERS.get((method, path), ())
    return found


def _document(
    operation: dict[str, Any],
    path: str,
    failures: Iterable[_Failure],
    described: dict[int, str],
) -> None:
    responses: dict[str, Any] = operation.setdefault("responses", {})
    for listed in [s for s in responses if s.startswith(("4", "5"))]:
        del responses[listed]  # FastAPI's 422 (a body aiml never sends) and the like
    body, bad_input = _surface(path)
    codes: dict[int, list[str]] = {}
    for status, code in failures:
        said = codes.setdefault(bad_input if status == 422 else status, [])
        if code not in said:
            said.append(code)
    for status, said in sorted(codes.items()):
        responses[str(status)] = {
            "description": f"{described.get(status) or _DESCRIPTIONS.get(status, '')} "
            f"({', '.join(said)})",
            "content": {"application/json": {"schema": {"$ref": body}}},
        }


def _document_connection(operation: dict[str, Any]) -> None:
    responses: dict[str, Any] = operation["responses"]
    for status, description, has_body in _CONNECTION:
        listed = responses.get(str(status))
        if not has_body:
            responses.setdefault(str(status), {"description": description})
        elif listed is None:
            responses[str(status)] = {
                "description": description,
                "content": {"application/json": {"schema": {"$ref": _AIML_BODY}}},
            }
        else:  # the route's own answer of that status, in its surface's body, or the guard's
            schema = listed["content"]["application/json"]["schema"]
            if schema.get("$ref") != _AIML_BODY:
                listed["content"]["application/json"]["schema"] = {
                    "anyOf": [schema, {"$ref": _AIML_BODY}]
                }
            listed["description"] += f"; or: {description}"


def _document_media(operation: dict[str, Any], media_types: tuple[str, ...]) -> None:
    success = next(
        (operation["responses"][s] for s in ("200", "201") if s in operation["responses"]), None
    )
    if success is None or not media_types:
        return
    content = success.setdefault("content", {})
    content.pop("", None)
    for media_type in media_types:
        # A stream's events and lines are each a JSON object of the route's own kind.
        content[media_type] = {"schema": {"type": "string"} if media_type == _TEXT else {}}


_BODIES = {
    "openai": "#/components/schemas/OpenAIError",
    "ollama": "#/components/schemas/OllamaError",
    "aiml": _AIML_BODY,
}


def _surface(path: str) -> tuple[str, int]:
    """The error body's schema and the status of bad input on ``path``'s surface."""
    surface = surface_of(path)
    return _BODIES[surface], bad_input_status(surface)


def _error_schemas() -> dict[str, Any]:
    aiml = TypeAdapter(ErrorResponse).json_schema(ref_template="#/components/schemas/{model}")
    found: dict[str, Any] = aiml.pop("$defs", {})
    found["ErrorResponse"] = aiml
    found["OpenAIError"] = {
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": {
                "type": "object",
                "required": ["message", "type", "param", "code"],
                "properties": {
                    "message": {"type": "string"},
                    "type": {"type": "string"},
                    "param": {"type": ["string", "null"]},
                    "code": {"type": "string"},
                },
            }
        },
    }
    found["OllamaError"] = {
        "type": "object",
        "required": ["error"],
        "properties": {"error": {"type": "string"}},
    }
    return found


#: Values one answer gives that another operation takes: (from, status, link name, to,
#: parameters as runtime expressions).
_LINKS = (
    ("POST /v1/responses", "200", "GetResponse", "GET /v1/responses/{response_id}",
     {"response_id": "$response.body#/id"}),
    ("POST /v1/responses", "200", "DeleteResponse", "DELETE /v1/responses/{response_id}",
     {"response_id": "$response.body#/id"}),
    ("PUT /models/registered_in_mlflow/{name}/aliases/{alias}", "200", "GetModel",
     "GET /models/registered_in_mlflow/{name}", {"name": "$request.path.name"}),
    ("PUT /models/registered_in_mlflow/{name}/aliases/{alias}", "200", "DeleteAlias",
     "DELETE /models/registered_in_mlflow/{name}/aliases/{alias}",
     {"name": "$request.path.name", "alias": "$request.path.alias"}),
    ("POST /models/register_ollama", "201", "GetModel", "GET /models/registered_in_mlflow/{name}",
     {"name": "$response.body#/registered_name"}),
    ("POST /admin/models/register", "201", "GetModel", "GET /models/registered_in_mlflow/{name}",
     {"name": "$response.body#/registered_name"}),
)  # fmt: skip


def _add_links(paths: dict[str, Any]) -> None:
    for source, status, name, target, parameters in _LINKS:
        method, path = source.split(" ", 1)
        target_method, target_path = target.split(" ", 1)
        if path not in paths or target_path not in paths:
            continue
        operation = paths[target_path][target_method.lower()]
        response = paths[path][method.lower()]["responses"].setdefault(
            status, {"description": "Success"}
        )
        response.setdefault("links", {})[name] = {
            "operationId": operation["operationId"],
            "parameters": parameters,
        }
