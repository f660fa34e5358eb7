"""The console's Keys and Usage pages in a real browser: an admin makes a key through the
form (its secret shown once, copied), the key works at once and its rules hold, it is
rotated and revoked from the page; the Usage page totals the requests sent per key and per
team, with their rows per model and version, and downloads them as CSV; a user key sees a
plain message; axe finds nothing."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import RunningAiml
from tests.console.conftest import (
    BROWSER_TESTS,
    USER_KEY,
    WIDE,
    api,
    keep,
    open_console,
    screenshot,
)

pytestmark = BROWSER_TESTS
sync_api = pytest.importorskip("playwright.sync_api", reason="needs playwright (dev extra)")
axe_sync = pytest.importorskip("axe_playwright_python.sync_playwright")
expect = sync_api.expect

NAME, TEAM = "console-bot", "console-team"
SENT = 3


def chat(aiml: RunningAiml, secret: str, model: str = "llama2-7b-chat@prod") -> int:
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}]}
    headers = {"authorization": f"Bearer {secret}"}
    with httpx.Client(base_url=aiml.url, headers=headers, timeout=60) as client:
        return client.post("/v1/chat/completions", json=body).status_code


def no_axe_violation(page: Any, artifacts: Path, name: str) -> None:
    found = axe_sync.Axe().run(page).response["violations"]
    summary = [f"{v['id']}: {v['help']} ({len(v['nodes'])})" for v in found]
    keep(artifacts, f"console-axe-{name}.json", json.dumps(summary, indent=2).encode())
    assert summary == [], name


def test_an_admin_makes_uses_rotates_and_revokes_a_key_and_reads_its_usage(
    browser: Any, aiml: RunningAiml, artifacts: Path
) -> None:
    with api(aiml) as client:  # a team for the form to offer
        assert client.put(f"/admin/teams/{TEAM}", json={"limits": {"rpm": 1000}}).status_code == 200
    console = open_console(browser, aiml, "keys")
    page = console.page
    page.context.grant_permissions(["clipboard-read", "clipboard-write"], origin=aiml.url)
    expect(page.locator("table.keys tr[data-key]").first).to_be_visible()  # the environment's

    page.get_by_label("Name", exact=True).fill(NAME)
    page.get_by_label("Team").select_option(TEAM)
    page.get_by_label("Models it may use").fill("llama2-7b-chat@prod")
    page.get_by_label("Requests per minute").fill("100")
    page.get_by_label("Tokens per day").fill("100000")
    page.get_by_label("Expires in (days)").fill("30")
    page.get_by_role("button", name="Make key").click()
    box = page.locator(f"section[data-secret-of='{NAME}']")
    expect(box).to_contain_text("Shown this once")
    secret = box.locator("[data-secret]").inner_text()
    assert secret.startswith("aiml-")
    box.get_by_role("button", name="Copy secret").click()
    expect(box.get_by_role("status")).to_have_text("Copied to the clipboard.")
    assert page.evaluate("navigator.clipboard.readText()") == secret

    row = page.locator(f"table.keys tr[data-key='{NAME}']")
    expect(row).to_have_attribute("data-status", "active")
    for shown in ("user", TEAM, "llama2-7b-chat@prod", "rpm 100", "tokens/day 100000"):
        expect(row).to_contain_text(shown)
    expect(row.locator("code")).to_have_text(secret[:9] + "…")
    no_axe_violation(page, artifacts, "keys")
    screenshot(page, artifacts, "keys")

    # Works at once, within its rules.
    assert [chat(aiml, secret) for _ in range(SENT)] == [200] * SENT
    assert chat(aiml, secret, "smol") == 403
    box.get_by_role("button", name="Done, hide it").click()
    expect(box).to_have_count(0)
    page.reload()
    expect(row).to_be_visible()
    assert secret not in page.content()  # shown once: nowhere after

    # Usage: what was sent, per key and per team, per model and version.
    page.get_by_role("link", name="Usage").click()
    by_key = page.locator(f"table[data-by=key] tbody[data-group='{NAME}']")
    by_team = page.locator(f"table[data-by=team] tbody[data-group='{TEAM}']")
    expect(by_key.locator("tr.total [data-count=requests]")).to_have_text(str(SENT + 1))
    expect(by_key.locator("tr.total [data-count=errors]")).to_have_text("1")  # the refusal
    served = by_key.locator("tr[data-model='llama2-7b-chat'][data-version='1']")
    expect(served.locator("[data-count=requests]")).to_have_text(str(SENT))
    expect(served.locator("[data-count=errors]")).to_have_text("0")
    expect(by_team.locator("tr.total [data-count=requests]")).to_have_text(str(SENT + 1))
    with api(aiml) as client:
        rows = client.get("/admin/usage", params={"key": NAME}).json()["usage"]
    tokens = sum(r["input_tokens"] for r in rows if r["model"] == "llama2-7b-chat")
    assert tokens > 0
    expect(served.locator("[data-count=input_tokens]")).to_have_text(f"{tokens:,}")
    page.get_by_label("Key", exact=True).select_option(NAME)
    expect(page.locator("table[data-by=key] tbody")).to_have_count(1)
    with page.expect_download() as download:
        page.get_by_role("button", name="Download CSV").click()
    saved = Path(download.value.path()).read_text()
    lines = list(csv.DictReader(io.StringIO(saved)))
    assert {r["key"] for r in lines} == {NAME}
    assert sum(int(r["requests"]) for r in lines) == SENT + 1
    no_axe_violation(page, artifacts, "usage")
    screenshot(page, artifacts, "usage")

    # Rotated: a new secret, shown once; the old one stops at once on this front.
    page.get_by_role("link", name="Keys").click()
    page.get_by_role("button", name=f"Rotate {NAME}").click()
    dialog = page.get_by_role("dialog", name=f"Rotate {NAME}?")
    expect(dialog.get_by_label("Old secret still works for (hours)")).to_have_value("0")
    dialog.get_by_role("button", name="Rotate").click()
    rotated = page.locator(f"section[data-secret-of='{NAME}'] [data-secret]")
    expect(rotated).to_contain_text("aiml-")
    new = rotated.inner_text()
    assert new != secret
    assert chat(aiml, secret) == 401
    assert chat(aiml, new) == 200

    # Revoked, once confirmed: the row says so, the secret is refused.
    page.get_by_role("button", name=f"Revoke {NAME}").click()
    dialog = page.get_by_role("dialog", name=f"Revoke {NAME}?")
    dialog.get_by_role("button", name="Cancel").click()
    expect(row).to_have_attribute("data-status", "active")
    page.get_by_role("button", name=f"Revoke {NAME}").click()
    page.get_by_role("dialog", name=f"Revoke {NAME}?").get_by_role("button", name="Revoke").click()
    expect(page.get_by_text(f"Key {NAME} revoked")).to_be_visible()
    expect(row).to_have_attribute("data-status", "revoked")
    expect(row.get_by_role("button")).to_have_count(0)
    assert chat(aiml, new) == 401
    console.check()


def test_a_user_key_sees_a_plain_message_on_the_admin_pages(
    browser: Any, aiml: RunningAiml
) -> None:
    console = open_console(browser, aiml, "keys", key=USER_KEY)
    page = console.page
    expect(page.locator("[data-admin-only]")).to_contain_text("The Keys page needs an admin key")
    expect(page.get_by_role("button", name="Make key")).to_have_count(0)
    page.get_by_role("link", name="Usage").click()
    expect(page.locator("[data-admin-only]")).to_contain_text("The Usage page needs an admin key")
    expect(page.get_by_role("button", name="Download CSV")).to_have_count(0)
    console.check()


def test_on_a_phone_the_keys_and_usage_pages_fit_the_screen(
    browser: Any, aiml: RunningAiml, artifacts: Path
) -> None:
    for where, ready in (("keys", "table.keys"), ("usage", "[data-period]")):
        console = open_console(browser, aiml, where, viewport={"width": 390, "height": 844})
        page = console.page
        page.locator(ready).wait_for()
        screenshot(page, artifacts, f"{where}-phone")
        width = page.evaluate("document.documentElement.scrollWidth")
        assert width <= 390, (where, width, page.evaluate(WIDE))
        console.check()
