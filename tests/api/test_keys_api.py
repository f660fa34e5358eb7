"""Keys as data through the admin API, on one front: made, used, rotated, revoked; what a
key may use; its limits and budgets; its usage and the audit of admin actions."""

from __future__ import annotations

import csv
import io
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from aiml.server import safe_host
from aiml.settings import Settings
from aiml.teams.database import has_keys, open_database
from aiml.teams.key_store import KeyStore
from tests.conftest import Registry, RunningAiml, RunningOllama

ADMIN = {"authorization": "Bearer admin-key"}
CHAT = {"role": "user", "content": "hi there"}


@pytest.fixture
def aiml(start_aiml: Callable[..., RunningAiml], registry: Registry) -> RunningAiml:
    registry.register("chat-a", "llama2:7b", alias="production")
    registry.register("chat-a", "llama2:13b", alias="staging")
    registry.register("other", "llama2:7b", alias="production")
    return start_aiml(admin_keys="admin-key")


def admin(aiml: RunningAiml) -> httpx.Client:
    return httpx.Client(base_url=aiml.url, headers=ADMIN, timeout=30)


def make_key(aiml: RunningAiml, **body: Any) -> str:
    with admin(aiml) as client:
        made = client.post("/admin/keys", json=body)
    assert made.status_code == 201, made.text
    secret: str = made.json()["key"]
    return secret


def as_key(aiml: RunningAiml, secret: str) -> httpx.Client:
    return httpx.Client(
        base_url=aiml.url, headers={"authorization": f"Bearer {secret}"}, timeout=30
    )


def chat(client: httpx.Client, model: str = "chat-a@production") -> httpx.Response:
    return client.post("/v1/chat/completions", json={"model": model, "messages": [CHAT]})


def test_a_key_made_through_the_api_works_at_once_is_shown_once_and_stops_when_revoked(
    aiml: RunningAiml,
) -> None:
    secret = make_key(aiml, name="ci-bot", owner="ci@example.com", metadata={"repo": "x"})
    assert secret.startswith("aiml-")
    with as_key(aiml, secret) as client:
        assert chat(client).status_code == 200
    with admin(aiml) as client:
        listed = client.get("/admin/keys").json()["keys"]
        shown = client.get("/admin/keys/ci-bot").json()
    mine = next(k for k in listed if k["name"] == "ci-bot")
    assert secret not in str(listed) + str(shown)
    assert mine["prefix"] == secret[:9]
    assert mine["owner"] == "ci@example.com" and mine["metadata"] == {"repo": "x"}
    assert mine["status"] == "active" and mine["source"] == "database"
    assert any(k["source"] == "environment" and k["role"] == "admin" for k in listed)
    with admin(aiml) as client:
        assert client.delete("/admin/keys/ci-bot").json()["status"] == "revoked"
    with as_key(aiml, secret) as client:  # the very next request
        refused = chat(client)
    assert refused.status_code == 401
    assert "revoked" in refused.json()["error"]["message"]


def test_rotation_stops_the_old_secret_at_once_or_after_its_grace(aiml: RunningAiml) -> None:
    old = make_key(aiml, name="rotating")
    with admin(aiml) as client:
        new = client.post("/admin/keys/rotating/rotate", json={}).json()["key"]
    with as_key(aiml, old) as client:
        assert chat(client).status_code == 401
    with as_key(aiml, new) as client:
        assert chat(client).status_code == 200
        with admin(aiml) as adm:
            newer = adm.post("/admin/keys/rotating/rotate", json={"grace_s": 3600}).json()["key"]
        assert chat(client).status_code == 200  # the previous secret, within its grace
    with as_key(aiml, newer) as client:
        assert chat(client).status_code == 200


def test_an_expired_key_is_refused_by_name(aiml: RunningAiml) -> None:
    secret = make_key(aiml, name="short-lived", expires_in_s=3600)
    with as_key(aiml, secret) as client:
        assert chat(client).status_code == 200
        with admin(aiml) as adm:
            assert adm.patch("/admin/keys/short-lived", json={"expires_at": 1.0}).status_code == 200
        refused = chat(client)
    assert refused.status_code == 401 and "expired" in refused.json()["error"]["message"]


def test_a_key_limited_to_production_chat_models_is_refused_anything_else_by_rule(
    aiml: RunningAiml,
) -> None:
    secret = make_key(aiml, name="prod-only", models=["chat-*@production"])
    with as_key(aiml, secret) as client:
        assert chat(client, "chat-a@production").status_code == 200
        for model in ("chat-a@staging", "chat-a", "chat-a/1", "other@production"):
            refused = chat(client, model)
            assert refused.status_code == 403, model
            message = refused.json()["error"]["message"]
            assert "prod-only" in message and "chat-*@production" in message, message
        ollama = client.post("/api/chat", json={"model": "other:production", "messages": [CHAT]})
        assert ollama.status_code == 403
        listed = [m["id"] for m in client.get("/v1/models").json()["data"]]
        tags = [m["name"] for m in client.get("/api/tags").json()["models"]]
        own = client.post("/inference/infer", json={
            "task": "chat", "engine": "ollama", "model_name": "chat-a@staging",
            "data": {"messages": [CHAT]}})  # fmt: skip
    assert listed == ["chat-a@production"]
    assert tags == ["chat-a:production"]
    assert own.status_code == 403
    with admin(aiml) as client:  # an admin key sees everything
        everything = {m["id"] for m in client.get("/v1/models").json()["data"]}
    assert {"chat-a", "chat-a@staging", "other@production"} <= everything


def test_tasks_and_surfaces_rules(aiml: RunningAiml) -> None:
    secret = make_key(aiml, name="openai-chat", tasks=["chat"], surfaces=["openai"])
    with as_key(aiml, secret) as client:
        assert chat(client).status_code == 200
        completion = client.post("/v1/completions", json={"model": "chat-a", "prompt": "hi"})
        assert completion.status_code == 403
        assert "task 'text-generation'" in completion.json()["error"]["message"]
        ollama = client.post("/api/chat", json={"model": "chat-a", "messages": [CHAT]})
        assert ollama.status_code == 403 and "surface 'ollama'" in ollama.json()["error"]


def test_admin_is_a_role_of_a_key(aiml: RunningAiml) -> None:
    user = make_key(aiml, name="a-user")
    boss = make_key(aiml, name="a-boss", role="admin")
    with as_key(aiml, user) as client:
        refused = client.post("/admin/keys", json={"name": "sneaky"})
        assert refused.status_code == 403 and "a-user" in refused.json()["error"]["message"]
    with as_key(aiml, boss) as client:
        assert client.post("/admin/keys", json={"name": "made-by-boss"}).status_code == 201
        assert client.get("/admin/keys").status_code == 200


def test_requests_per_minute_refuse_with_retry_after_and_the_openai_headers(
    aiml: RunningAiml,
) -> None:
    secret = make_key(aiml, name="slow", limits={"rpm": 3})
    with as_key(aiml, secret) as client:
        answers = [chat(client) for _ in range(4)]
    assert [a.status_code for a in answers] == [200, 200, 200, 429]
    assert [a.headers["x-ratelimit-remaining-requests"] for a in answers[:3]] == ["2", "1", "0"]
    assert answers[0].headers["x-ratelimit-limit-requests"] == "3"
    assert answers[0].headers["x-ratelimit-reset-requests"].endswith("s")
    refused = answers[3]
    assert refused.json()["error"]["code"] == "rate_limited"
    assert 1 <= int(refused.headers["retry-after"]) <= 61
    assert refused.headers["x-ratelimit-remaining-requests"] == "0"
    assert refused.headers["connection"] == "close"  # its body was never read


def test_a_team_shares_its_limit_between_its_keys(aiml: RunningAiml) -> None:
    with admin(aiml) as client:
        assert client.put("/admin/teams/search", json={"limits": {"rpm": 2}}).status_code == 200
    first = make_key(aiml, name="search-1", team="search")
    second = make_key(aiml, name="search-2", team="search")
    with as_key(aiml, first) as one, as_key(aiml, second) as two:
        codes = [chat(one).status_code, chat(two).status_code, chat(one).status_code]
    assert codes == [200, 200, 429]


def test_a_token_budget_stops_a_key_within_one_request(aiml: RunningAiml) -> None:
    with as_key(aiml, make_key(aiml, name="measure")) as client:
        used = chat(client).json()["usage"]["total_tokens"]
    budget = used * 3 + 1  # the fourth request starts under the budget and ends over it
    secret = make_key(aiml, name="budgeted", limits={"daily_tokens": budget})
    with as_key(aiml, secret) as client:
        codes = [chat(client).status_code for _ in range(6)]
    assert codes == [200, 200, 200, 200, 429, 429]
    with as_key(aiml, secret) as client:
        refused = chat(client)
    assert refused.json()["error"]["code"] == "budget_exceeded"
    assert int(refused.headers["retry-after"]) <= 86400


def test_tokens_per_minute(aiml: RunningAiml) -> None:
    secret = make_key(aiml, name="tpm", limits={"tpm": 5})
    with as_key(aiml, secret) as client:
        first = chat(client)
        second = chat(client)
    assert first.status_code == 200 and first.json()["usage"]["total_tokens"] > 5
    assert second.status_code == 429 and "tokens per minute" in second.json()["error"]["message"]


def test_a_priced_version_counts_cost_and_a_money_budget_holds(
    aiml: RunningAiml, registry: Registry
) -> None:
    registry.register(
        "priced", "llama2:7b", alias="production",
        tags={"aiml.price.input_per_mtok": "1000000", "aiml.price.output_per_mtok": "2000000"},
    )  # fmt: skip
    secret = make_key(aiml, name="payer", limits={"daily_cost": 20})
    with as_key(aiml, secret) as client:
        answers = [chat(client, "priced@production") for _ in range(4)]
    usage = answers[0].json()["usage"]
    cost = usage["prompt_tokens"] * 1 + usage["completion_tokens"] * 2
    expected = [200 if n * cost < 20 else 429 for n in range(4)]
    assert [a.status_code for a in answers] == expected
    with admin(aiml) as client:
        rows = client.get("/admin/usage", params={"key": "payer"}).json()["usage"]
    assert sum(r["cost"] for r in rows) == pytest.approx(cost * expected.count(200))


def test_usage_counts_every_request_per_key_model_and_version_as_json_and_csv(
    aiml: RunningAiml,
) -> None:
    secret = make_key(aiml, name="counted")
    with as_key(aiml, secret) as client:
        answers = [chat(client) for _ in range(3)]
        assert chat(client, "missing-model").status_code == 404
    with admin(aiml) as client:
        rows = client.get("/admin/usage", params={"key": "counted"}).json()["usage"]
        text = client.get("/admin/usage", params={"key": "counted", "format": "csv"}).text
    served = next(r for r in rows if r["model"] == "chat-a")
    assert served["version"] == "1" and served["requests"] == 3 and served["errors"] == 0
    assert served["input_tokens"] == sum(a.json()["usage"]["prompt_tokens"] for a in answers)
    assert served["output_tokens"] == sum(a.json()["usage"]["completion_tokens"] for a in answers)
    # A model no registry or engine knows is counted as no model ("-"): names a client
    # makes up must not grow the usage table.
    missing = next(r for r in rows if r["model"] == "-")
    assert missing["requests"] == 1 and missing["errors"] == 1
    table = list(csv.DictReader(io.StringIO(text)))
    assert {r["model"]: int(r["requests"]) for r in table} == {"chat-a": 3, "-": 1}
    metrics = httpx.get(f"{aiml.url}/metrics").text
    assert 'aiml_key_requests_total{key="counted",team=""} 4.0' in metrics


def test_every_admin_action_is_audited_with_who_what_and_from_where(aiml: RunningAiml) -> None:
    user = make_key(aiml, name="auditee")
    with as_key(aiml, user) as client:
        client.post("/admin/keys", json={"name": "nope"})  # refused: audited too
    with httpx.Client(base_url=aiml.url) as anonymous:
        anonymous.delete("/admin/keys/auditee", headers={"authorization": "Bearer wrong"})
    with admin(aiml) as client:
        client.put("/models/registered_in_mlflow/chat-a/aliases/canary", json={"version": 2})
        client.delete("/admin/keys/auditee")
        entries = client.get("/admin/audit").json()["entries"]
    seen = [(e["actor"], e["action"], e["target"], e["status"]) for e in reversed(entries)]
    admin_name = entries[0]["actor"]
    assert admin_name.startswith("key-")
    assert seen == [
        (admin_name, "POST /admin/keys", "auditee", 201),
        ("auditee", "POST /admin/keys", "/admin/keys", 403),
        ("unauthenticated", "DELETE /admin/keys/auditee", "/admin/keys/auditee", 401),
        (admin_name, "PUT /models/registered_in_mlflow/chat-a/aliases/canary",
         "/models/registered_in_mlflow/chat-a/aliases/canary", 200),
        (admin_name, "DELETE /admin/keys/auditee", "auditee", 200),
    ]  # fmt: skip
    assert {e["client"] for e in entries} == {"127.0.0.1"}


def test_keys_in_the_database_let_aiml_serve_bind_beyond_loopback(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'aiml.db'}"
    assert not has_keys(url)
    KeyStore(open_database(url)).create_key("someone")
    assert has_keys(url)
    assert safe_host(Settings(host="0.0.0.0"), stored_keys=has_keys(url)) == "0.0.0.0"


def test_concurrent_requests_past_a_keys_limit_are_refused_until_one_ends(
    aiml: RunningAiml, ollama: RunningOllama
) -> None:
    secret = make_key(aiml, name="one-at-a-time", limits={"concurrent": 1})
    ollama.state.delay_s = 1.5  # the stand-in answers the first request after this
    seen = ollama.state.counts["POST /api/chat"]
    with as_key(aiml, secret) as client, ThreadPoolExecutor(1) as pool:
        first = pool.submit(chat, client)
        deadline = time.monotonic() + 10
        while ollama.state.counts["POST /api/chat"] == seen:  # the first is at the engine
            assert time.monotonic() < deadline, "the first request never reached the engine"
            time.sleep(0.005)
        second = chat(client)
        assert first.result().status_code == 200
        ollama.state.delay_s = 0.0
        third = chat(client)
    assert second.status_code == 429, second.text
    assert "1 request(s) running" in second.json()["error"]["message"]
    assert second.headers["retry-after"] == "1"
    assert third.status_code == 200  # the first's slot came back as it ended


def test_ollamas_load_and_unload_requests_are_audited_as_admin_actions(
    aiml: RunningAiml,
) -> None:
    user = make_key(aiml, name="loader")
    load = {"model": "chat-a:production"}  # a generate without a prompt: a load
    with as_key(aiml, user) as client:
        assert client.post("/api/generate", json=load).status_code == 403
        assert chat(client).status_code == 200  # serving is no admin action: not audited
    with admin(aiml) as client:
        assert client.post("/api/generate", json=load).status_code == 200
        assert client.post("/api/generate", json={**load, "keep_alive": 0}).status_code == 200
        entries = client.get("/admin/audit", params={"action": "POST /api/"}).json()["entries"]
    seen = [(e["actor"], e["target"], e["detail"]["operation"], e["status"]) for e in entries]
    admin_name = entries[0]["actor"]
    assert list(reversed(seen)) == [
        ("loader", "chat-a:production", "load", 403),
        (admin_name, "chat-a:production", "load", 200),
        (admin_name, "chat-a:production", "unload", 200),
    ]
