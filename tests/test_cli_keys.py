"""``aiml keys``, ``teams``, ``usage`` and ``audit`` on aiml's own database, with no service
running, and against a running front: a key made by the CLI works on the next request,
one revoked or rotated by it stops within the front's refresh interval."""

from __future__ import annotations

import csv
import io
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner, Result

from aiml.cli import app
from aiml.teams.audit import AuditEntry, AuditLog
from aiml.teams.database import open_database
from aiml.teams.key_store import KeyStore
from aiml.teams.keys import secret_digest
from aiml.teams.usage import UsageRow, UsageStore
from tests.conftest import Registry, RunningAiml

runner = CliRunner()
ADMIN = {"authorization": "Bearer admin-key"}
REFRESH_S = 0.3


@pytest.fixture(autouse=True)
def home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """AIML_HOME as the running front's (tests.conftest.make_settings): one aiml.db."""
    for name in ("AIML_DATABASE_URL", "AIML_API_KEYS", "AIML_ADMIN_KEYS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AIML_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("AIML_KEYS_REFRESH_S", str(REFRESH_S))
    monkeypatch.setenv("COLUMNS", "200")  # rich's tables: nothing folded
    return tmp_path / "home"


def aiml(*args: str, env: dict[str, str] | None = None) -> Result:
    result = runner.invoke(app, list(args), env=env)
    assert result.exit_code == 0, result.output
    return result


def refused(*args: str) -> Result:
    result = runner.invoke(app, list(args))
    assert result.exit_code != 0, result.output
    return result


def store(home: Path) -> KeyStore:
    return KeyStore(open_database(f"sqlite:///{home / 'aiml.db'}"))


def secret_of(result: Result) -> str:
    """The secret is stdout's one line; what it is, on stderr."""
    assert "shown once" in result.stderr
    secret = result.stdout.strip()
    assert secret.startswith("aiml-") and "\n" not in secret
    return secret


def audit_entries(home: Path) -> list[AuditEntry]:
    return AuditLog(open_database(f"sqlite:///{home / 'aiml.db'}")).entries()


@pytest.mark.parametrize(
    "command",
    [["keys"], ["keys", "create"], ["keys", "update"], ["keys", "rotate"], ["keys", "revoke"],
     ["keys", "list"], ["keys", "show"], ["teams"], ["teams", "create"], ["teams", "update"],
     ["teams", "list"], ["teams", "delete"], ["usage"], ["audit"]],
)  # fmt: skip
def test_every_command_has_help(command: list[str]) -> None:
    assert "Usage" in aiml(*command, "--help").output


def test_create_list_show_update_rotate_revoke(home: Path) -> None:
    aiml("teams", "create", "ml", "--rpm", "100")
    made = aiml(
        "keys", "create", "--name", "ci-bot", "--team", "ml", "--owner", "ci@example.com",
        "--models", "chat-*@production", "--models", "embed,llama2", "--tasks", "chat",
        "--surfaces", "openai,inference", "--rpm", "60", "--tpm", "1000", "--daily-cost", "2.5",
        "--expires-in", "30d", "--meta", "repo=x", "--meta", "ci=yes",
    )  # fmt: skip
    secret = secret_of(made)
    key = store(home).key("ci-bot")
    assert key.digest == secret_digest(secret) and secret not in repr(key)
    assert key.team == "ml" and key.owner == "ci@example.com" and str(key.role) == "user"
    assert key.rules.models == ("chat-*@production", "embed", "llama2")
    assert (key.rules.tasks, key.rules.surfaces) == (("chat",), ("openai", "inference"))
    assert (key.limits.rpm, key.limits.tpm, key.limits.daily_cost) == (60, 1000, 2.5)
    assert key.expires_at is not None and abs(key.expires_at - time.time() - 30 * 86400) < 60
    assert dict(key.meta) == {"repo": "x", "ci": "yes"}

    listing = aiml("keys", "list").stdout
    row = next(line for line in listing.splitlines() if "ci-bot" in line)
    for shown in (key.prefix, "user", "ml", "chat-*@production", "rpm 60", "active"):
        assert shown in row, (shown, row)
    assert secret not in listing
    shown = json.loads(aiml("keys", "show", "ci-bot").stdout)
    assert shown["limits"]["tpm"] == 1000 and shown["status"] == "active"
    assert secret not in json.dumps(shown) and key.digest not in json.dumps(shown)

    # Limits change one by one, lists as a whole, metadata merges; --unset clears.
    aiml("keys", "update", "ci-bot", "--rpm", "30", "--models", "chat-*", "--meta", "ci=no",
         "--unset", "tpm", "--unset", "expiry", "--role", "admin")  # fmt: skip
    key = store(home).key("ci-bot")
    assert (key.limits.rpm, key.limits.tpm, key.limits.daily_cost) == (30, None, 2.5)
    assert key.rules.models == ("chat-*",) and key.rules.tasks == ("chat",)
    assert dict(key.meta) == {"repo": "x", "ci": "no"} and key.expires_at is None
    assert key.admin

    new = secret_of(aiml("keys", "rotate", "ci-bot", "--grace", "1h"))
    key = store(home).key("ci-bot")
    assert key.digest == secret_digest(new) and key.previous_digest == secret_digest(secret)
    assert key.previous_until is not None and abs(key.previous_until - time.time() - 3600) < 60
    assert "revoked key ci-bot" in aiml("keys", "revoke", "ci-bot").output
    assert store(home).key("ci-bot").status(time.time()) == "revoked"
    assert "revoked" in aiml("keys", "list").stdout

    # Refusals: plainly said, exit 1, nothing changed.
    assert "409 conflict" in refused("keys", "create", "--name", "ci-bot").output
    assert (
        "no team named 'nope'" in refused("keys", "create", "--name", "x", "--team", "nope").output
    )
    assert "404 not_found" in refused("keys", "show", "nope").output
    assert "revoked" in refused("keys", "rotate", "ci-bot").output
    for bad in (["--name", "bad name"], ["--name", "x", "--surfaces", "web"],
                ["--name", "x", "--expires-in", "soon"], ["--name", "x", "--rpm", "0"],
                ["--name", "x", "--meta", "novalue"]):  # fmt: skip
        refused("keys", "create", *bad)
    refused("keys", "update", "ci-bot", "--unset", "colour")
    assert [k.name for k in store(home).snapshot()[1]] == ["ci-bot"]


def test_every_change_is_audited_as_the_cli_with_the_apis_statuses(home: Path) -> None:
    secret_of(aiml("keys", "create", "--name", "a", "--role", "admin"))
    refused("keys", "create", "--name", "a")
    aiml("keys", "update", "a", "--rpm", "5")
    aiml("keys", "rotate", "a")
    aiml("keys", "revoke", "a")
    aiml("teams", "create", "t")
    aiml("teams", "update", "t", "--tpm", "9")
    aiml("teams", "delete", "t")
    aiml("keys", "list")  # reads are not audited
    entries = list(reversed(audit_entries(home)))
    assert [(e.action, e.target, e.status) for e in entries] == [
        ("keys create", "a", 201), ("keys create", "a", 409), ("keys update", "a", 200),
        ("keys rotate", "a", 200), ("keys revoke", "a", 200), ("teams create", "t", 201),
        ("teams update", "t", 200), ("teams delete", "t", 200),
    ]  # fmt: skip
    assert {e.client for e in entries} == {"cli"}
    assert all(e.actor.startswith("cli:") and "@" in e.actor for e in entries)
    assert entries[0].detail == {"role": "admin", "team": None}
    assert "exists" in entries[1].detail["error"]
    assert entries[2].detail == {"changed": ["rpm"], "unset": []}
    listing = aiml("audit", "--limit", "3").stdout
    assert "teams delete" in listing and "keys create" not in listing
    assert "keys create" in aiml("audit", "--action", "keys c").stdout


def test_teams(home: Path) -> None:
    aiml("teams", "create", "ml", "--rpm", "100", "--daily-tokens", "5000", "--meta", "cc=42")
    assert "409 conflict" in refused("teams", "create", "ml").output
    assert "404 not_found" in refused("teams", "update", "nope", "--rpm", "1").output
    aiml("teams", "update", "ml", "--tpm", "900", "--unset", "rpm")
    team = store(home).teams()[0]
    assert (team.limits.rpm, team.limits.tpm, team.limits.daily_tokens) == (None, 900, 5000)
    assert dict(team.meta) == {"cc": "42"}
    secret_of(aiml("keys", "create", "--name", "member", "--team", "ml"))
    row = next(line for line in aiml("teams", "list").stdout.splitlines() if "ml" in line)
    assert "tpm 900" in row and " 1 " in row  # its one key
    assert "409" in refused("teams", "delete", "ml").output  # a key is in it
    aiml("keys", "revoke", "member")
    aiml("teams", "delete", "ml")
    assert store(home).teams() == []


def test_usage_by_key_team_and_day_as_a_table_and_csv(home: Path) -> None:
    store(home)  # the tables
    UsageStore(open_database(f"sqlite:///{home / 'aiml.db'}")).add([
        UsageRow("2027-01-14", "a", "ml", "chat", "1", 3, 1, 30, 12, 0.5),
        UsageRow("2027-01-15", "a", "ml", "chat", "2", 2, 0, 20, 8, 0.25),
        UsageRow("2027-01-15", "b", "", "embed", "1", 7, 0, 70, 0, 0.0),
    ])  # fmt: skip
    table = aiml("usage").stdout
    total = next(line for line in table.splitlines() if "total" in line)
    assert [cell for cell in total.replace("│", " ").split()] == [
        "total",
        "12",
        "1",
        "120",
        "20",
        "0.75",
    ]
    rows = list(csv.DictReader(io.StringIO(aiml("usage", "--team", "ml", "--csv").stdout)))
    assert [(r["day"], r["version"], r["requests"]) for r in rows] == [
        ("2027-01-14", "1", "3"), ("2027-01-15", "2", "2"),
    ]  # fmt: skip
    since = list(
        csv.DictReader(io.StringIO(aiml("usage", "--since", "2027-01-15", "--csv").stdout))
    )
    assert {r["key"] for r in since} == {"a", "b"} and len(since) == 2
    assert "no usage" in aiml("usage", "--key", "nobody").stdout
    refused("usage", "--since", "yesterday")


def until(deadline_s: float, check: Callable[[], Any]) -> Any:
    """Poll ``check`` until it gives something truthy; fail past the deadline."""
    deadline = time.monotonic() + deadline_s
    while True:
        found = check()
        if found or time.monotonic() > deadline:
            assert found, f"not within {deadline_s} s"
            return found
        time.sleep(0.02)  # between polls of a condition, not in place of one


def test_a_key_from_the_cli_works_on_a_running_front_at_once_and_stops_when_revoked(
    start_aiml: Callable[..., RunningAiml], registry: Registry, home: Path
) -> None:
    registry.register("chat-a", "llama2:7b", alias="production")
    registry.register("other", "llama2:7b")
    running = start_aiml(admin_keys="admin-key", keys_refresh_s=REFRESH_S, usage_flush_s=0.2)
    assert running.services.settings.database == f"sqlite:///{home / 'aiml.db'}"

    def chat(secret: str, model: str = "chat-a@production") -> int:
        body = {"model": model, "messages": [{"role": "user", "content": "hi"}]}
        headers = {"authorization": f"Bearer {secret}"}
        with httpx.Client(base_url=running.url, headers=headers, timeout=30) as client:
            return client.post("/v1/chat/completions", json=body).status_code

    secret = secret_of(aiml("keys", "create", "--name", "ci-bot", "--models", "chat-*@production"))
    assert [chat(secret) for _ in range(3)] == [200, 200, 200]  # the next request: no wait
    assert chat(secret, "other") == 403  # the CLI's rule holds on the front

    # Usage reaches the database within a flush: the CLI reads it with no API call.
    def counted() -> list[dict[str, str]]:
        rows = csv.DictReader(io.StringIO(aiml("usage", "--key", "ci-bot", "--csv").stdout))
        mine = [r for r in rows if r["model"] == "chat-a"]
        return mine if sum(int(r["requests"]) for r in mine) == 3 else []

    rows = until(10, counted)
    assert [(r["version"], r["errors"]) for r in rows] == [("1", "0")]

    # Rotated: the new secret works at once, the old stops within the refresh interval.
    new = secret_of(aiml("keys", "rotate", "ci-bot"))
    assert chat(new) == 200
    rotated = time.monotonic()
    until(10, lambda: chat(secret) == 401)
    assert time.monotonic() - rotated < REFRESH_S + 2.0
    # Revoked: refused within the refresh interval.
    aiml("keys", "revoke", "ci-bot")
    revoked = time.monotonic()
    until(10, lambda: chat(new) == 401)
    assert time.monotonic() - revoked < REFRESH_S + 2.0

    # The front's audit log and the CLI's are one.
    with httpx.Client(base_url=running.url, headers=ADMIN, timeout=30) as client:
        entries = client.get("/admin/audit", params={"action": "keys"}).json()["entries"]
    assert [(e["action"], e["client"]) for e in entries] == [
        ("keys revoke", "cli"), ("keys rotate", "cli"), ("keys create", "cli"),
    ]  # fmt: skip
    listed = aiml("keys", "list", "--json", env={"AIML_ADMIN_KEYS": "admin-key"})
    assert {(k["name"], k["source"]) for k in json.loads(listed.stdout)} == {
        ("ci-bot", "database"), (f"key-{secret_digest('admin-key')[:12]}", "environment"),
    }  # fmt: skip
