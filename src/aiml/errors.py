"""One error hierarchy for the whole service.

Every error that can reach a client is an :class:`AimlError`: it carries the HTTP status
that says what happened and a stable machine-readable ``code``. Third-party failures
(MLflow, Ollama, httpx) are wrapped into these at the boundary where they occur, so the
API layer never has to guess a status from an arbitrary exception.

    AimlError
    ├── InvalidRequest          422 invalid_request      (names the offending field)
    ├── ModelNotServable        422 model_not_servable   (exists, not for this task/engine)
    ├── ModelNotFound           404 model_not_found
    ├── RegistryUnavailable     503 registry_unavailable
    ├── RegistryError           502 registry_error
    ├── EngineUnavailable       503 engine_unavailable   (unreachable, or it answered 503)
    ├── EngineTimeout           504 engine_timeout
    ├── EngineError             502 engine_error         (an answer aiml cannot pass on)
    ├── EngineRejected          4xx engine_rejected      (the engine's own 4xx, passed on)
    ├── EngineOverloaded        429 engine_overloaded    (the engine's 429; its Retry-After)
    ├── ModelLoadFailed         500 model_load_failed
    ├── ModelBusy               409 model_in_use
    ├── UnsafeAliasMove         409 unsafe_alias_move    (the target lacks what the alias serves)
    ├── Conflict                409 conflict             (a key or team of that name exists)
    ├── Unauthorized            401 unauthorized         (no or malformed credentials)
    ├── Forbidden               403 forbidden            (credentials without the scope)
    ├── PoolExhausted           503 pool_exhausted       (no room to load; retry later)
    ├── PayloadTooLarge         413 payload_too_large    (body, prompt, batch or image)
    ├── Overloaded              429 overloaded           (queue full; Retry-After)
    ├── RateLimited             429 rate_limited         (a key's or team's limit; Retry-After)
    ├── BudgetExceeded          429 budget_exceeded      (a key's or team's budget; Retry-After)
    ├── Draining                503 draining             (shutting down; Retry-After)
    └── DeadlineExceeded        504 deadline_exceeded    (the request's deadline passed)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

__all__ = [
    "AimlError",
    "BudgetExceeded",
    "Conflict",
    "DeadlineExceeded",
    "Draining",
    "EngineError",
    "EngineOverloaded",
    "EngineRejected",
    "EngineTimeout",
    "EngineUnavailable",
    "Forbidden",
    "InvalidRequest",
    "ModelBusy",
    "ModelLoadFailed",
    "ModelNotFound",
    "ModelNotServable",
    "NotFound",
    "Overloaded",
    "PayloadTooLarge",
    "PoolExhausted",
    "RateLimited",
    "RegistryError",
    "RegistryUnavailable",
    "Unauthorized",
    "UnsafeAliasMove",
]


class AimlError(Exception):
    """Base of every error the service reports to a client."""

    status_code: int = 500
    code: str = "internal_error"

    #: Seconds after which a retry may succeed (sent as ``Retry-After``), where that is known.
    retry_after: int | None = None

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param

    def __reduce__(self) -> tuple[Any, ...]:
        # Subclasses take keyword-only arguments, which Exception's own pickling drops: an
        # error raised in a model replica (another process) must arrive whole at the front.
        return (_rebuild, (type(self), self.args, self.__dict__))

    @property
    def headers(self) -> dict[str, str]:
        return {"retry-after": str(self.retry_after)} if self.retry_after is not None else {}

    def to_dict(self) -> dict[str, str]:
        body = {"code": self.code, "message": self.message}
        if self.param is not None:
            body["param"] = self.param
        return body


def _rebuild(kind: type[AimlError], args: tuple[Any, ...], state: dict[str, Any]) -> AimlError:
    error = kind.__new__(kind)
    Exception.__init__(error, *args)
    error.__dict__.update(state)
    return error


class InvalidRequest(AimlError):
    """The request is malformed; ``param`` names the field (e.g. ``data.inputs``)."""

    status_code = 422
    code = "invalid_request"


class ModelNotServable(AimlError):
    """The model exists but cannot serve this task on this engine (tags say otherwise)."""

    status_code = 422
    code = "model_not_servable"


class ModelNotFound(AimlError):
    """Neither the registry nor the engine knows the model; the message says where we looked."""

    status_code = 404
    code = "model_not_found"


class NotFound(AimlError):
    """Something other than a model is not there (a stored response, ...)."""

    status_code = 404
    code = "not_found"


class RegistryUnavailable(AimlError):
    """The model registry cannot be reached (connection refused, timeout, database locked)."""

    status_code = 503
    code = "registry_unavailable"


class RegistryError(AimlError):
    """The registry answered with an error that is not "not found"."""

    status_code = 502
    code = "registry_error"


class EngineUnavailable(AimlError):
    """The engine cannot be reached, or it said it is unavailable (its 503)."""

    status_code = 503
    code = "engine_unavailable"

    def __init__(self, message: str, *, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class EngineTimeout(AimlError):
    """The engine did not answer within its configured timeout."""

    status_code = 504
    code = "engine_timeout"


class EngineError(AimlError):
    """The engine answered with an error we have no more specific mapping for."""

    status_code = 502
    code = "engine_error"


class EngineRejected(AimlError):
    """The engine refused the request as the client sent it (its 400, 413, 422, ...).

    The status is the engine's own, so a client learns that its request was at fault
    (a prompt past the context length is a 400, not a gateway failure).
    """

    code = "engine_rejected"

    def __init__(self, message: str, *, status_code: int) -> None:
        super().__init__(message)
        self.status_code = status_code


class EngineOverloaded(AimlError):
    """The engine answered 429; its ``Retry-After`` is passed on when it sent one."""

    status_code = 429
    code = "engine_overloaded"

    def __init__(self, message: str, *, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class ModelLoadFailed(AimlError):
    """A model's files could not be loaded; nothing of it stays in memory."""

    status_code = 500
    code = "model_load_failed"


class ModelBusy(AimlError):
    """The model is serving requests and cannot be unloaded now."""

    status_code = 409
    code = "model_in_use"


class UnsafeAliasMove(AimlError):
    """An alias move refused: the target version cannot serve what the alias serves now.

    ``missing`` lists each lack as ``{"kind", "name", "reason"}`` (kinds: ``engine``,
    ``task``, ``files``, ``model``, ``tags``, ``capability``); a forced move skips the check.
    """

    status_code = 409
    code = "unsafe_alias_move"

    def __init__(self, message: str, *, missing: Sequence[Mapping[str, str]]) -> None:
        super().__init__(message, param="version")
        self.missing = [dict(item) for item in missing]


class PoolExhausted(AimlError):
    """No room to load a model within the budget while every loaded model is in use."""

    status_code = 503
    code = "pool_exhausted"


class Unauthorized(AimlError):
    """No credentials, or not a bearer token."""

    status_code = 401
    code = "unauthorized"


class Forbidden(AimlError):
    """Credentials that do not grant this route."""

    status_code = 403
    code = "forbidden"


class Conflict(AimlError):
    """Something of that name exists already (a key, a team)."""

    status_code = 409
    code = "conflict"


class RateLimited(AimlError):
    """A key's or its team's per-minute or concurrency limit: retry after ``retry_after``."""

    status_code = 429
    code = "rate_limited"

    def __init__(
        self, message: str, *, retry_after: int, headers: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.retry_after = max(1, retry_after)
        self.limit_headers = dict(headers or {})

    @property
    def headers(self) -> dict[str, str]:
        return {**self.limit_headers, "retry-after": str(self.retry_after)}


class BudgetExceeded(RateLimited):
    """A key's or its team's token or money budget for the day or month is spent."""

    code = "budget_exceeded"


class PayloadTooLarge(AimlError):
    """The body, a prompt, an embeddings batch or an image is over its configured limit."""

    status_code = 413
    code = "payload_too_large"


class Overloaded(AimlError):
    """Every slot of the engine and its queue are taken: retry later."""

    status_code = 429
    code = "overloaded"
    retry_after = 1


class Draining(AimlError):
    """The service is shutting down and takes no new requests."""

    status_code = 503
    code = "draining"
    retry_after = 5


class DeadlineExceeded(AimlError):
    """The request's deadline passed; the engine's work was cancelled."""

    status_code = 504
    code = "deadline_exceeded"
