"""MLflow's webhooks at ``POST /hooks/mlflow``: deliveries checked as MLflow signs them.

* Through the real route of one aiml (uvicorn, sqlite registry, the Ollama stand-in), signed
  with MLflow's own signing function (and once sent by MLflow's own delivery code): a valid
  delivery invalidates at once; forged, wrong-secret, unsigned, stale, future, replayed and
  malformed deliveries are refused (401, 400, 409) and change nothing: the old mapping is
  still served and the registry-call count does not move. Every subscribed event
  invalidates, others are acknowledged; with a change feed a delivery is published.
* The memory of delivery ids: bounded (full: 429, never forgotten early), expiring.

End to end, with a real ``mlflow server``: ``tests/test_webhooks_e2e.py``.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from mlflow.entities.webhook import Webhook, WebhookEvent
from mlflow.webhooks import delivery as mlflow_delivery
from mlflow.webhooks.delivery import _generate_hmac_signature

from aiml.errors import Overloaded
from aiml.registry.webhooks import (
    WEBHOOK_EVENTS,
    BadSignature,
    DeliveryVerifier,
    ReplayedDelivery,
    StaleDelivery,
)
from tests.conftest import (
    Registry,
    RunningAiml,
    RunningOllama,
    fresh_sqlite_registry,
    launch_aiml,
    standard_stand_in,
)
from tests.fakes.servers import ServerThread

SECRET = "webhook-secret-for-tests"
USER = {"authorization": "Bearer user-key"}
MODEL = "hooked"


def delivery(
    name: str = MODEL,
    *,
    entity: str = "model_version_alias",
    action: str = "created",
    secret: str = SECRET,
    at: float | None = None,
    delivery_id: str | None = None,
) -> tuple[dict[str, str], bytes]:
    """Headers and body as MLflow's ``_send_webhook_request`` builds them, signed with its
    own ``_generate_hmac_signature``."""
    payload = json.dumps({
        "entity": entity,
        "action": action,
        "timestamp": datetime.now(UTC).isoformat(),
        "data": {"name": name, "alias": "production", "version": "2"},
    })  # fmt: skip
    delivery_id = delivery_id or str(uuid.uuid4())
    stamp = str(int(time.time() if at is None else at))
    return {
        "content-type": "application/json",
        "x-mlflow-delivery-id": delivery_id,
        "x-mlflow-timestamp": stamp,
        "x-mlflow-signature": _generate_hmac_signature(secret, delivery_id, stamp, payload),
    }, payload.encode()


def serves(front: RunningAiml, reference: str = f"{MODEL}@production") -> str:
    """The engine model that answers ``reference`` on ``front`` (the key is ignored by a
    front without keys)."""
    with front.client(headers=USER) as client:
        body = {"task": "chat", "engine": "ollama", "model_name": reference,
                "data": {"messages": [{"role": "user", "content": "hi"}]}}  # fmt: skip
        answer = client.post("/inference/infer", json=body)
    assert answer.status_code == 200, answer.text
    engine_model: str = answer.json()["resolved"]["engine_model"]
    return engine_model


@dataclass
class Hooked:
    front: RunningAiml
    registry: Registry

    def send(self, headers: dict[str, str], body: bytes) -> httpx.Response:
        with httpx.Client(base_url=self.front.url, timeout=10) as client:
            return client.post("/hooks/mlflow", content=body, headers=headers)

    def move_unannounced(self, version: int) -> None:
        """Move @production in the registry itself: no server, so no webhook is sent."""
        self.registry.client.set_registered_model_alias(MODEL, "production", str(version))


@pytest.fixture(scope="module")
def hooked(tmp_path_factory: pytest.TempPathFactory, sqlite_template: Path) -> Iterator[Hooked]:
    """One front (keys configured, TTL 300 s) on a sqlite registry where ``hooked`` has two
    pointer versions on the stand-in, @production on the first."""
    folder = tmp_path_factory.mktemp("webhooks")
    registry = fresh_sqlite_registry(folder, sqlite_template)
    registry.register(MODEL, "llama2:7b", task="chat", alias="production")
    registry.register(MODEL, "llama2:13b", task="chat")
    stand_in = ServerThread(standard_stand_in().app(), lifespan="off").start()
    front = launch_aiml(
        folder, registry, RunningOllama(standard_stand_in(), stand_in),
        api_keys="user-key", admin_keys="admin-key", resolve_ttl_s=300.0,
        mlflow_webhook_secret=SECRET, webhook_max_age_s=300.0,
    )  # fmt: skip
    yield Hooked(front, registry)
    front.server.stop()
    stand_in.stop()


@pytest.fixture
def on_v1(hooked: Hooked) -> Hooked:
    """@production on version 1 and warm on the front (each test starts there)."""
    hooked.move_unannounced(1)
    assert hooked.send(*delivery()).status_code == 200
    assert serves(hooked.front) == "llama2:7b"
    return hooked


def test_a_signed_delivery_serves_the_move_at_once(on_v1: Hooked) -> None:
    on_v1.move_unannounced(2)
    assert serves(on_v1.front) == "llama2:7b"  # TTL 300 s: the move is not seen by itself
    answer = on_v1.send(*delivery())  # no API key: the signature is the authentication
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"success": True, "event": "model_version_alias.created",
                             "name": MODEL, "invalidated": True}  # fmt: skip
    assert serves(on_v1.front) == "llama2:13b"


def refused_and_nothing_changed(
    hooked: Hooked, headers: dict[str, str], body: bytes, status: int, code: str
) -> None:
    hooked.move_unannounced(2)
    calls = hooked.front.spy.total
    answer = hooked.send(headers, body)
    assert answer.status_code == status, answer.text
    assert answer.json()["success"] is False and answer.json()["error"]["code"] == code
    assert serves(hooked.front) == "llama2:7b"  # the old mapping, still
    assert hooked.front.spy.total == calls  # not one registry call


def test_forged_and_unsigned_deliveries_are_401(on_v1: Hooked) -> None:
    headers, body = delivery(secret="another-secret")
    refused_and_nothing_changed(on_v1, headers, body, 401, "bad_signature")
    headers, body = delivery()
    altered = body.replace(b'"version": "2"', b'"version": "3"')
    refused_and_nothing_changed(on_v1, headers, altered, 401, "bad_signature")
    other_id = {**headers, "x-mlflow-delivery-id": str(uuid.uuid4())}  # the id is signed too
    refused_and_nothing_changed(on_v1, other_id, body, 401, "bad_signature")
    unsigned = {k: v for k, v in headers.items() if k != "x-mlflow-signature"}
    refused_and_nothing_changed(on_v1, unsigned, body, 401, "bad_signature")
    other_version = {**headers, "x-mlflow-signature": headers["x-mlflow-signature"]
                     .replace("v1,", "v2,")}  # fmt: skip
    refused_and_nothing_changed(on_v1, other_version, body, 401, "bad_signature")
    garbage = {**headers, "x-mlflow-signature": "v1,not base64 at all!"}
    refused_and_nothing_changed(on_v1, garbage, body, 401, "bad_signature")
    # A key does not stand in for the signature.
    refused_and_nothing_changed(on_v1, {**unsigned, **USER}, body, 401, "bad_signature")


def test_stale_and_future_deliveries_are_400(on_v1: Hooked) -> None:
    # A minute past the 300 s allowed: the test's own time under load (seconds) must not
    # bring the future delivery back within bounds before its last send.
    old = delivery(at=time.time() - 360)
    refused_and_nothing_changed(on_v1, *old, 400, "stale_delivery")
    future = delivery(at=time.time() + 360)
    refused_and_nothing_changed(on_v1, *future, 400, "stale_delivery")
    assert "in the future" in on_v1.send(*future).json()["error"]["message"]
    on_v1.move_unannounced(2)
    within = delivery(at=time.time() - 250)  # clocks apart by minutes: still accepted
    assert on_v1.send(*within).status_code == 200
    assert serves(on_v1.front) == "llama2:13b"


def test_a_replayed_delivery_is_409(on_v1: Hooked) -> None:
    headers, body = delivery()
    on_v1.move_unannounced(2)
    assert on_v1.send(headers, body).status_code == 200
    assert serves(on_v1.front) == "llama2:13b"
    on_v1.move_unannounced(1)  # moved back behind aiml's back: the replay must not reveal it
    calls = on_v1.front.spy.total
    again = on_v1.send(headers, body)
    assert again.status_code == 409, again.text
    assert again.json()["error"]["code"] == "replayed_delivery"
    assert serves(on_v1.front) == "llama2:13b"
    assert on_v1.front.spy.total == calls
    # Re-signed with a fresh timestamp (all an attacker without the secret cannot do), still
    # the same delivery id: refused.
    fresh = delivery(delivery_id=headers["x-mlflow-delivery-id"], at=time.time() + 1)
    assert on_v1.send(*fresh).status_code == 409


def test_malformed_deliveries_are_400(on_v1: Hooked) -> None:
    headers, body = delivery()
    bad_headers = [("x-mlflow-delivery-id", ""), ("x-mlflow-delivery-id", "x" * 200),
                   ("x-mlflow-timestamp", "soon"), ("x-mlflow-timestamp", "-5")]  # fmt: skip
    for key, value in bad_headers:
        refused_and_nothing_changed(on_v1, {**headers, key: value}, body, 400, "bad_delivery")
    for key in ("x-mlflow-delivery-id", "x-mlflow-timestamp"):
        missing = {k: v for k, v in headers.items() if k != key}
        refused_and_nothing_changed(on_v1, missing, body, 400, "bad_delivery")
    nameless = b'{"entity": "model_version_alias", "action": "created", "data": {}}'
    for text in (b"not json", b"[1, 2]", b'{"entity": "model_version_alias"}', nameless):
        signed = resigned(headers, text)
        refused_and_nothing_changed(on_v1, signed, text, 400, "bad_delivery")
    huge = b'{"entity": "x", "action": "y", "data": {"pad": "' + b"x" * (1 << 20) + b'"}}'
    assert on_v1.send(resigned(headers, huge), huge).status_code == 413


def resigned(headers: dict[str, str], body: bytes) -> dict[str, str]:
    delivery_id, stamp = str(uuid.uuid4()), headers["x-mlflow-timestamp"]
    signature = _generate_hmac_signature(SECRET, delivery_id, stamp, body.decode())
    return {**headers, "x-mlflow-delivery-id": delivery_id, "x-mlflow-signature": signature}


def test_events_aiml_has_nothing_to_do_for_are_acknowledged(on_v1: Hooked) -> None:
    calls = on_v1.front.spy.total
    for entity, action in (("prompt_alias", "created"), ("budget_policy", "exceeded"),
                           ("something_new", "happened")):  # fmt: skip
        answer = on_v1.send(*delivery(entity=entity, action=action))
        assert answer.status_code == 200, answer.text
        assert answer.json()["invalidated"] is False
    assert serves(on_v1.front) == "llama2:7b" and on_v1.front.spy.total == calls


def test_every_event_subscribed_invalidates(on_v1: Hooked) -> None:
    for event in WEBHOOK_EVENTS:
        entity, action = event.split(".")
        on_v1.move_unannounced(2 if serves(on_v1.front) == "llama2:7b" else 1)
        before = serves(on_v1.front)
        assert on_v1.send(*delivery(entity=entity, action=action)).json()["invalidated"]
        assert serves(on_v1.front) != before, event


def test_in_a_cluster_a_delivery_is_published_to_every_front(on_v1: Hooked) -> None:
    """With a change feed (``aiml serve --ray``), a verified delivery is published, so every
    front forgets the name (as for a change made through aiml); a refused one is not."""
    published: list[str] = []

    class Feed:
        def publish(self, name: str) -> None:
            published.append(name)

    services = on_v1.front.services
    services.changes = Feed()  # type: ignore[assignment]
    try:
        assert on_v1.send(*delivery(secret="forged")).status_code == 401
        assert on_v1.send(*delivery(entity="prompt_alias")).status_code == 200
        assert published == []
        assert on_v1.send(*delivery()).status_code == 200
    finally:
        services.changes = None
    assert published == [MODEL]


def test_mlflows_own_sender_is_accepted(on_v1: Hooked, monkeypatch: pytest.MonkeyPatch) -> None:
    """MLflow's delivery code itself (its session, headers and signature) against the route."""
    monkeypatch.setenv("MLFLOW_WEBHOOK_ALLOWED_SCHEMES", "http,https")
    monkeypatch.setenv("MLFLOW_WEBHOOK_ALLOW_PRIVATE_IPS", "true")
    url = f"{on_v1.front.url}/hooks/mlflow"
    event = WebhookEvent.from_str("model_version_alias.created")
    hook = Webhook("wh-1", "aiml", url, [event], 0, 0, secret=SECRET)
    result = mlflow_delivery.test_webhook(hook)  # MLflow's example payload: model "example_model"
    assert result.success, result
    assert json.loads(result.response_body or "")["name"] == "example_model"
    wrong = Webhook("wh-2", "aiml", url, [event], 0, 0, secret="not-ours")
    assert mlflow_delivery.test_webhook(wrong).response_status == 401


def test_without_a_secret_the_route_is_off(
    hooked: Hooked, tmp_path: Path, ollama: RunningOllama
) -> None:
    front = launch_aiml(tmp_path, hooked.registry, ollama)
    try:
        with httpx.Client(base_url=front.url) as client:
            answer = client.post("/hooks/mlflow", content=delivery()[1], headers=delivery()[0])
        assert answer.status_code == 404
        assert "AIML_MLFLOW_WEBHOOK_SECRET" in answer.json()["error"]["message"]
    finally:
        front.server.stop()


def test_the_memory_of_delivery_ids_is_bounded_and_expires() -> None:
    now = [1_000_000.0]
    verifier = DeliveryVerifier(SECRET, max_age_s=300, capacity=2, clock=lambda: now[0])

    def check(delivery_id: str, at: float) -> Any:
        headers, body = delivery(delivery_id=delivery_id, at=at)
        return verifier.verify(verifier.signed(_title_case(headers)), body)

    check("a", now[0])
    check("b", now[0] + 10)
    with pytest.raises(ReplayedDelivery):
        check("a", now[0])
    with pytest.raises(Overloaded):  # full: refused (MLflow retries a 429), never forgotten
        check("c", now[0])
    now[0] += 301  # "a" has expired: its timestamp alone refuses it now
    assert len(verifier) == 2
    check("c", now[0])
    assert len(verifier) == 2  # "a" forgotten, "b" kept (its timestamp is 10 s later)
    with pytest.raises(StaleDelivery):
        check("a", now[0] - 301)
    headers, body = delivery(delivery_id="d", at=now[0], secret="other")
    with pytest.raises(BadSignature):
        verifier.verify(verifier.signed(_title_case(headers)), body)
    assert (verifier.accepted, verifier.refused) == (3, 4)


def _title_case(headers: dict[str, str]) -> dict[str, str]:
    """As MLflow spells them (a plain dict is case-sensitive, unlike request headers)."""
    names = {"x-mlflow-delivery-id": "X-MLflow-Delivery-Id", "x-mlflow-timestamp":
             "X-MLflow-Timestamp", "x-mlflow-signature": "X-MLflow-Signature"}  # fmt: skip
    return {names.get(key, key): value for key, value in headers.items()}
