"""Keys as data over two standalone fronts: two ``aiml serve`` processes (their own
AIML_HOMEs) sharing one sqlite file as aiml's database, one MLflow registry and one admin
key from the environment, serving the Ollama stand-in.

A key made through one front works on the other with the first request after the answer
that made it, and a key revoked through one front stops there at once and on the other
within AIML_KEYS_REFRESH_S; a key limited to ``chat-*@production`` is refused the rest,
naming the rule, and sees only what it may use; 60 requests a minute hold over both fronts;
a daily token budget stops a key within one request; and after a SIGTERM of both fronts,
aiml's usage table holds exactly what the module sent, per key (the last test: it stops
the fronts). Usage is flushed every 60 s here, so what the module sent is still in the
fronts' memory when the signal comes.
"""

from __future__ import annotations

import hashlib
import json
import signal
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from tests.conftest import fresh_sqlite_registry, standard_stand_in
from tests.fakes.processes import Process, aiml_serve
from tests.fakes.servers import ServerThread

pytestmark = pytest.mark.slow

ADMIN = "aiml-test-admin-secret"
ADMIN_NAME = "key-" + hashlib.sha256(ADMIN.encode()).hexdigest()[:12]
REFRESH_S = 0.3
FLUSH_S = 60
HI = [{"role": "user", "content": "hi there"}]
_COUNTS = ("requests", "errors", "input_tokens", "output_tokens")


@dataclass
class Fronts:
    """The two fronts, and what the module sent through them: per key, the requests, the
    errors and the tokens the answers reported (what aiml's usage must count)."""

    processes: list[Process]
    database: str
    names: dict[str, str] = field(default_factory=lambda: {ADMIN: ADMIN_NAME})
    sent: dict[str, Counter[str]] = field(default_factory=dict)
    clients: list[httpx.Client] = field(default_factory=list)

    def url(self, front: int) -> str:
        return self.processes[front].health_url.removesuffix("/health/live")

    def call(
        self, front: int, secret: str, method: str, path: str, body: Any = None
    ) -> httpx.Response:
        headers = {"authorization": f"Bearer {secret}"}
        answer = self.clients[front].request(method, path, json=body, headers=headers)
        if answer.status_code != 401:  # refused before its key is known: not the key's usage
            counts = self.sent.setdefault(self.names[secret], Counter())
            counts["requests"] += 1
            counts["errors"] += answer.status_code >= 400
            tokens = _tokens(answer)
            counts["input_tokens"] += tokens[0]
            counts["output_tokens"] += tokens[1]
        return answer

    def create_key(self, front: int, name: str, **fields: Any) -> str:
        made = self.call(front, ADMIN, "POST", "/admin/keys", {"name": name, **fields})
        assert made.status_code == 201, made.text
        secret: str = made.json()["key"]
        self.names[secret] = name
        return secret

    def chat(self, front: int, secret: str, model: str, **extra: Any) -> httpx.Response:
        body = {"model": model, "messages": HI, "max_tokens": 4, **extra}
        return self.call(front, secret, "POST", "/v1/chat/completions", body)


def _tokens(answer: httpx.Response) -> tuple[int, int]:
    """Input and output tokens an answer reports (OpenAI's usage, Ollama's counts, or the
    usage chunk of a stream)."""
    if answer.status_code != 200:
        return 0, 0
    if answer.headers["content-type"].startswith("text/event-stream"):
        chunks = [line.removeprefix("data: ") for line in answer.text.splitlines()]
        usage = [json.loads(c)["usage"] for c in chunks if c.startswith("{") and '"usage"' in c]
        found = [u for u in usage if u]
        return (found[-1]["prompt_tokens"], found[-1]["completion_tokens"]) if found else (0, 0)
    body = answer.json()
    if isinstance(body.get("usage"), dict):
        return body["usage"]["prompt_tokens"], body["usage"]["completion_tokens"]
    return body.get("prompt_eval_count", 0), body.get("eval_count", 0)


@pytest.fixture(scope="module")
def fronts(tmp_path_factory: pytest.TempPathFactory, sqlite_template: Path) -> Iterator[Fronts]:
    root = tmp_path_factory.mktemp("keys-fronts")
    registry = fresh_sqlite_registry(root, sqlite_template)
    for name, aliases in (("chat-a", ["production", "staging"]), ("chat-b", ["production"]),
                          ("other", ["production"])):  # fmt: skip
        for alias in aliases:  # chat-a: version 1 is production, version 2 staging
            registry.register(name, "llama2:7b", task="chat", alias=alias)
    stand_in = ServerThread(standard_stand_in().app(), lifespan="off").start()
    database = f"sqlite:///{root / 'aiml.db'}"
    env = {
        "MLFLOW_TRACKING_URI": registry.uri,
        "OLLAMA_HOST": stand_in.url,
        "AIML_ENGINES": "ollama",
        "AIML_DATABASE_URL": database,
        "AIML_ADMIN_KEYS": ADMIN,
        "AIML_KEYS_REFRESH_S": str(REFRESH_S),
        "AIML_USAGE_FLUSH_S": str(FLUSH_S),
    }
    processes = [aiml_serve(root / f"front-{n}", env) for n in range(2)]
    fronts = Fronts(processes, database)
    try:
        with ThreadPoolExecutor(2) as pool:  # both start at once (and migrate one at a time)
            list(pool.map(lambda p: p.start(timeout_s=90), processes))
        fronts.clients = [httpx.Client(base_url=fronts.url(n), timeout=30) for n in range(2)]
        yield fronts
    finally:
        for client in fronts.clients:
            client.close()
        for process in processes:
            process.stop()
        stand_in.stop()


def test_a_key_made_through_one_front_works_on_the_other_at_once_and_stops_when_revoked(
    fronts: Fronts,
) -> None:
    secret = fronts.create_key(0, "ci-bot")
    first = fronts.chat(1, secret, "chat-a@production")  # the first request after the answer
    assert first.status_code == 200, first.text
    assert fronts.chat(0, secret, "chat-a@production").status_code == 200

    revoked = fronts.call(0, ADMIN, "DELETE", "/admin/keys/ci-bot")
    assert revoked.status_code == 200 and revoked.json()["status"] == "revoked", revoked.text
    at = time.monotonic()
    refused = fronts.chat(0, secret, "chat-a@production")  # at once where it was revoked
    assert refused.status_code == 401, refused.text
    assert "revoked" in refused.json()["error"]["message"]
    # The other front reads the keys again when it sees the revision move (every
    # REFRESH_S): looked at until then, and for no longer than a few intervals.
    while (answer := fronts.chat(1, secret, "chat-a@production")).status_code == 200:
        assert time.monotonic() - at < 10 * REFRESH_S, "the other front still takes the key"
    took = time.monotonic() - at
    assert answer.status_code == 401 and "revoked" in answer.json()["error"]["message"]
    # The bound: one interval, the read of the keys and a request, on busy cores.
    assert took < REFRESH_S + 0.5, took


def test_a_key_for_chat_production_is_refused_the_rest_by_its_rule_and_lists_only_those(
    fronts: Fronts,
) -> None:
    secret = fronts.create_key(0, "prod-chat", models=["chat-*@production"])
    rule = "model {!r} is not among the key's models (chat-*@production)"
    for front in (1, 0):
        for model in ("chat-a@production", "chat-b@production"):
            allowed = fronts.chat(front, secret, model)
            assert allowed.status_code == 200, allowed.text
        for model in ("chat-a", "chat-a@staging", "chat-a/1", "other@production", "other"):
            refused = fronts.chat(front, secret, model)
            assert refused.status_code == 403, refused.text
            error = refused.json()["error"]
            assert error["code"] == "forbidden"
            assert error["message"] == "key 'prod-chat' may not: " + rule.format(model)
        # The Ollama surface: a tag is the alias.
        ollama = {"model": "chat-b:production", "messages": HI, "stream": False}
        assert fronts.call(front, secret, "POST", "/api/chat", ollama).status_code == 200
        for model, shown in (("chat-a:staging", "chat-a@staging"), ("chat-a:2", "chat-a/2"),
                             ("other:production", "other@production"), ("chat-a:latest",
                             "chat-a")):  # fmt: skip
            refused = fronts.call(front, secret, "POST", "/api/chat", {**ollama, "model": model})
            assert refused.status_code == 403, refused.text
            assert refused.json()["error"].endswith(rule.format(shown)), refused.text

        listed = fronts.call(front, secret, "GET", "/v1/models").json()["data"]
        assert sorted(m["id"] for m in listed) == ["chat-a@production", "chat-b@production"]
        tags = fronts.call(front, secret, "GET", "/api/tags").json()["models"]
        assert sorted(m["name"] for m in tags) == ["chat-a:production", "chat-b:production"]
        everything = fronts.call(front, ADMIN, "GET", "/v1/models").json()["data"]
        assert {"chat-a", "chat-a@staging", "other@production"} <= {m["id"] for m in everything}


def test_a_name_the_registry_lacks_is_refused_by_the_rule_too(fronts: Fronts) -> None:
    """A key's rules answer first: a 404 for what it may not use would tell it which names
    and aliases the registry holds outside its rules (and the registry's address)."""
    secret = fronts.create_key(0, "prod-only", models=["chat-*@production"])
    for model in ("chat-b@staging", "nothing@production"):
        refused = fronts.chat(1, secret, model)
        assert refused.status_code == 403, refused.text
    ollama = {"model": "chat-b:staging", "messages": HI, "stream": False}
    refused = fronts.call(1, secret, "POST", "/api/chat", ollama)
    assert refused.status_code == 403, refused.text


def seconds_left_in_minute() -> float:
    """Of the current UTC minute: the fronts' windows are fixed UTC minutes."""
    return 60 - time.time() % 60


def test_60_requests_a_minute_hold_over_two_fronts(fronts: Fronts) -> None:
    secret = fronts.create_key(0, "rpm-60", limits={"rpm": 60})
    # 100 requests take under a second (0.7 s on 2 busy cores): all in one minute, or the
    # count would span two.
    while seconds_left_in_minute() < 10:
        time.sleep(0.1)  # the clock is the condition: the next minute starts soon
    minute = int(time.time() // 60)
    answers = [fronts.chat(n % 2, secret, "chat-a@production") for n in range(100)]
    assert int(time.time() // 60) == minute, "the requests spanned two minutes"

    statuses = Counter(a.status_code for a in answers)
    # Leases of limit // 50 = 1: no front holds allowance it does not use (no under-use),
    # and the shared counter never passes the limit (no overshoot).
    assert statuses == {200: 60, 429: 40}, statuses
    served = [a for a in answers if a.status_code == 200]
    # Sent in turn: the first 60 went through, 30 by each front.
    assert [a.status_code for a in answers[:60]] == [200] * 60
    assert [int(a.headers["x-ratelimit-remaining-requests"]) for a in served] == list(
        range(59, -1, -1)
    )  # one counter for both fronts, every 200 says what is left of it
    assert all(a.headers["x-ratelimit-limit-requests"] == "60" for a in served)
    for refused in (a for a in answers if a.status_code == 429):
        assert refused.json()["error"]["code"] == "rate_limited"
        assert 1 <= int(refused.headers["retry-after"]) <= 61
        assert refused.headers["x-ratelimit-limit-requests"] == "60"
        assert refused.headers["x-ratelimit-remaining-requests"] == "0"
        assert refused.headers["x-ratelimit-reset-requests"].endswith("s")


def test_a_daily_token_budget_stops_a_key_within_one_request_of_it(fronts: Fronts) -> None:
    budget = 50
    secret = fronts.create_key(0, "budgeted", limits={"daily_tokens": budget})
    spent = last = 0
    for _ in range(100):
        answer = fronts.chat(0, secret, "chat-a@production")
        if answer.status_code != 200:
            break
        last = sum(_tokens(answer))
        spent += last
    assert answer.status_code == 429, answer.text
    assert answer.json()["error"]["code"] == "budget_exceeded"
    assert "budget for the day (50 tokens)" in answer.json()["error"]["message"]
    assert int(answer.headers["retry-after"]) >= 1
    # Refused once the budget was reached, and the last request it took began below it.
    assert spent >= budget > spent - last > 0, (spent, last)

    # GET /admin/usage writes the front's counts first; the other front's first look at
    # the key's budget reads them.
    usage = fronts.call(0, ADMIN, "GET", "/admin/usage?key=budgeted").json()["usage"]
    assert sum(r["input_tokens"] + r["output_tokens"] for r in usage) == spent
    elsewhere = fronts.chat(1, secret, "chat-a@production")
    assert elsewhere.status_code == 429 and elsewhere.json()["error"]["code"] == "budget_exceeded"


def test_usage_after_a_sigterm_of_both_fronts_is_exactly_what_was_sent(fronts: Fronts) -> None:
    secret = fronts.create_key(1, "counted")
    expected: Counter[tuple[str, str]] = Counter()  # (model, version) -> requests
    for front in (0, 1):
        for model, version in (("chat-a@production", "1"), ("chat-a@staging", "2")):
            assert fronts.chat(front, secret, model).status_code == 200
            expected[(model.partition("@")[0], version)] += 1
        streamed = fronts.chat(
            front, secret, "chat-b", stream=True, stream_options={"include_usage": True}
        )
        assert streamed.status_code == 200 and sum(_tokens(streamed)) > 0
        expected[("chat-b", "1")] += 1
        missing = fronts.chat(front, secret, "no-such-model")
        assert missing.status_code == 404, missing.text
        expected[("-", "")] += 1  # a name the registry lacks is no row of its own
    engine = sa.create_engine(fronts.database)
    usage = sa.table("aiml_usage", *(sa.column(c) for c in ("key", "model", "version", *_COUNTS)))
    try:
        with engine.connect() as db:
            before = db.execute(sa.select(usage).where(usage.c.key == "counted")).all()
        # Nothing flushed it yet (every FLUSH_S, or GET /admin/usage): it is in memory.
        assert before == []
        for process in fronts.processes:
            assert process.stop(signal.SIGTERM, timeout_s=30) == 0
        with engine.connect() as db:
            rows = db.execute(sa.select(usage)).mappings().all()
    finally:
        engine.dispose()

    counted: dict[str, Counter[str]] = {}
    for row in rows:
        counts = counted.setdefault(row["key"], Counter())
        for column in _COUNTS:
            counts[column] += row[column]
    assert {k: +c for k, c in counted.items()} == {k: +c for k, c in fronts.sent.items()}
    mine = {(r["model"], r["version"]): r["requests"] for r in rows if r["key"] == "counted"}
    assert mine == dict(expected)
