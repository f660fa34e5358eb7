"""MLflow's webhooks, both ends: the subscription aiml asks for, the deliveries it accepts.

MLflow (>= 3.3, SQL backends, sent by ``mlflow server``) signs each delivery as the
Standard Webhooks convention does (``mlflow/webhooks/delivery.py``): ``X-MLflow-Signature``
is ``v1,<base64 HMAC-SHA256>`` keyed by the webhook's secret over
``f"{delivery_id}.{timestamp}.{body}"``, ``X-MLflow-Timestamp`` the unix seconds it was
sent, ``X-MLflow-Delivery-Id`` a fresh UUID. :class:`DeliveryVerifier` checks all three:
the signature in constant time, the timestamp within ``max_age_s`` either way, and the id
not seen before within that window (a bounded memory that forgets an id once its
timestamp alone would refuse it). The payload names the registered model that changed.
"""

from __future__ import annotations

import base64
import hashlib
import heapq
import hmac
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from mlflow import MlflowClient
from mlflow.entities.webhook import WebhookEventStr
from mlflow.exceptions import MlflowException
from mlflow.webhooks.constants import (
    WEBHOOK_DELIVERY_ID_HEADER,
    WEBHOOK_SIGNATURE_HEADER,
    WEBHOOK_SIGNATURE_VERSION,
    WEBHOOK_TIMESTAMP_HEADER,
)

from aiml.errors import AimlError, InvalidRequest, Overloaded, RegistryError, Unauthorized
from aiml.settings import Settings

__all__ = [
    "WEBHOOK_EVENTS",
    "BadDelivery",
    "BadSignature",
    "Delivery",
    "DeliveryVerifier",
    "ReplayedDelivery",
    "Signed",
    "StaleDelivery",
    "subscribe",
]

#: The events that change what a registered model's references resolve to, or what the
#: listings hold. MLflow sends nothing when a version or model is deleted, or when a
#: registered model's own tags change (only a prompt's): those are still seen within the TTL.
WEBHOOK_EVENTS: tuple[WebhookEventStr, ...] = (
    "registered_model.created",
    "model_version.created",
    "model_version_tag.set",
    "model_version_tag.deleted",
    "model_version_alias.created",
    "model_version_alias.deleted",
)
#: Delivery ids remembered at most (MLflow's are UUIDs; ~200 bytes each): 33 deliveries a
#: second for the default 300 s, far past any registry's rate of changes.
_CAPACITY = 10_000
_MAX_ID = 128


class BadSignature(Unauthorized):
    """No signature, or none that the secret makes (forged, another secret, altered)."""

    code = "bad_signature"


class BadDelivery(AimlError):
    """The delivery's headers or body are not what MLflow sends."""

    status_code = 400
    code = "bad_delivery"


class StaleDelivery(BadDelivery):
    """The delivery's timestamp is further than the max age from now, either way."""

    code = "stale_delivery"


class ReplayedDelivery(AimlError):
    """A delivery id already accepted within the max age: nothing is done twice."""

    status_code = 409
    code = "replayed_delivery"


@dataclass(frozen=True, slots=True)
class Signed:
    """A delivery's signing headers, read before its body."""

    delivery_id: str
    stamp: str  # X-MLflow-Timestamp as sent: what was signed
    signatures: tuple[bytes, ...]

    @property
    def timestamp(self) -> int:
        return int(self.stamp)


@dataclass(frozen=True, slots=True)
class Delivery:
    """A verified delivery: its event (``entity.action``) and the registered model it
    changed (``None``: an event aiml has nothing to do for, acknowledged and ignored)."""

    delivery_id: str
    event: str
    name: str | None


class DeliveryVerifier:
    """Checks MLflow's deliveries against one secret; remembers the ids it accepted."""

    def __init__(
        self,
        secret: str,
        *,
        max_age_s: float,
        capacity: int = _CAPACITY,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._key = secret.encode("utf-8")
        self._max_age_s = max_age_s
        self._capacity = capacity
        self._clock = clock
        self._seen: set[str] = set()
        self._expiry: list[tuple[float, str]] = []  # (when an id may be forgotten, id)
        self.accepted = 0
        self.refused = 0

    def signed(self, headers: Mapping[str, str]) -> Signed:
        """The signing headers, checked for shape (a body is read only after this)."""
        try:
            return _signed(headers)
        except AimlError:
            self.refused += 1
            raise

    def verify(self, signed: Signed, body: bytes) -> Delivery:
        """The delivery, if MLflow signed it with our secret, recently, and only once."""
        try:
            delivery = self._verify(signed, body)
        except AimlError:
            self.refused += 1
            raise
        self.accepted += 1
        return delivery

    def _verify(self, signed: Signed, body: bytes) -> Delivery:
        content = b".".join((signed.delivery_id.encode(), signed.stamp.encode(), body))
        expected = base64.b64encode(hmac.new(self._key, content, hashlib.sha256).digest())
        # Every candidate is compared, match or not: timing says nothing about which.
        matches = [hmac.compare_digest(expected, given) for given in signed.signatures]
        if not any(matches):
            raise BadSignature("the delivery's X-MLflow-Signature is not the secret's")
        now = self._clock()
        age = now - signed.timestamp
        if abs(age) > self._max_age_s:
            when = f"{age:.0f} s old" if age > 0 else f"{-age:.0f} s in the future"
            raise StaleDelivery(
                f"the delivery's X-MLflow-Timestamp is {when} "
                f"(AIML_WEBHOOK_MAX_AGE_S is {self._max_age_s:g})"
            )
        event, name = _event(body)
        self._forget_expired(now)
        if signed.delivery_id in self._seen:
            raise ReplayedDelivery(f"delivery {signed.delivery_id} was accepted already")
        if len(self._seen) >= self._capacity:  # never forget an id early: a replay would pass
            raise Overloaded("too many webhook deliveries within AIML_WEBHOOK_MAX_AGE_S")
        self._seen.add(signed.delivery_id)
        # Past its timestamp plus the max age the timestamp check refuses it on its own.
        heapq.heappush(self._expiry, (signed.timestamp + self._max_age_s, signed.delivery_id))
        return Delivery(signed.delivery_id, event, name)

    def _forget_expired(self, now: float) -> None:
        while self._expiry and self._expiry[0][0] < now:
            self._seen.discard(heapq.heappop(self._expiry)[1])

    def __len__(self) -> int:
        return len(self._seen)


def _signed(headers: Mapping[str, str]) -> Signed:
    signature = headers.get(WEBHOOK_SIGNATURE_HEADER)
    if not signature:
        raise BadSignature(f"the delivery has no {WEBHOOK_SIGNATURE_HEADER} (a webhook "
                           "registered without the secret?)")  # fmt: skip
    delivery_id = headers.get(WEBHOOK_DELIVERY_ID_HEADER, "")
    if not 0 < len(delivery_id) <= _MAX_ID or not delivery_id.isascii() or " " in delivery_id:
        raise BadDelivery(f"the delivery has no valid {WEBHOOK_DELIVERY_ID_HEADER}")
    stamp = headers.get(WEBHOOK_TIMESTAMP_HEADER, "")
    if not (0 < len(stamp) <= 12 and stamp.isascii() and stamp.isdigit()):
        raise BadDelivery(f"the delivery's {WEBHOOK_TIMESTAMP_HEADER} is not unix seconds")
    # Standard Webhooks allows several space-separated signatures (a secret being rotated).
    prefix = f"{WEBHOOK_SIGNATURE_VERSION},"
    signatures = tuple(
        part.removeprefix(prefix).encode("latin-1")
        for part in signature.split()
        if part.startswith(prefix)
    )
    if not signatures:
        raise BadSignature(f"the delivery has no {WEBHOOK_SIGNATURE_VERSION} signature")
    return Signed(delivery_id, stamp, signatures)


def _event(body: bytes) -> tuple[str, str | None]:
    """The event a (signed) body announces and the model it names, if aiml acts on it."""
    try:
        payload = json.loads(body)
    except ValueError:
        payload = None
    if not isinstance(payload, dict):
        raise BadDelivery("the delivery's body is not a JSON object")
    entity, action, data = payload.get("entity"), payload.get("action"), payload.get("data")
    if not isinstance(entity, str) or not isinstance(action, str):
        raise BadDelivery("the delivery names no entity and action")
    event = f"{entity}.{action}"
    if event not in WEBHOOK_EVENTS:
        return event, None
    name = data.get("name") if isinstance(data, dict) else None
    if not isinstance(name, str) or not name:
        raise BadDelivery(f"the {event} delivery names no registered model")
    return event, name


def subscribe(settings: Settings, url: str | None, *, name: str = "aiml") -> list[str]:
    """Subscribe an aiml's ``/hooks/mlflow`` (at ``url``, default ``AIML_HOST:AIML_PORT``)
    to :data:`WEBHOOK_EVENTS` in the settings' registry, signed with the settings' secret,
    then have MLflow send it a test delivery; returns what was done, as lines to print."""
    if not settings.mlflow_webhook_secret:
        raise InvalidRequest("set AIML_MLFLOW_WEBHOOK_SECRET (the service's own)")
    host = "127.0.0.1" if settings.host in ("0.0.0.0", "::") else settings.host
    base = (url or f"http://{host}:{settings.port}").rstrip("/").removesuffix("/hooks/mlflow")
    client = MlflowClient(tracking_uri=settings.tracking_uri, registry_uri=settings.registry_uri)
    try:
        hook = client.create_webhook(
            name=name,
            url=f"{base}/hooks/mlflow",
            events=list(WEBHOOK_EVENTS),
            description="aiml: registry changes served at once",
            secret=settings.mlflow_webhook_secret,
        )
    except MlflowException as exc:
        raise RegistryError(f"MLflow refused the webhook: {exc.message}") from None
    lines = [
        f"webhook {hook.webhook_id} ({hook.name}) -> {hook.url}",
        f"  events: {', '.join(str(event) for event in hook.events)}",
    ]
    try:
        test = client.test_webhook(hook.webhook_id)
    except (MlflowException, NotImplementedError):  # a database URI: no server to send it
        lines.append("  test delivery: not sent (only `mlflow server` sends deliveries)")
    else:
        said = "ok" if test.success else "failed"
        lines.append(f"  test delivery: {said} ({test.response_status or test.error_message})")
    return lines
