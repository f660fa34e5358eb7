"""Stored responses: kept for the retention, gone after it (purged on the next write)."""

from __future__ import annotations

from pathlib import Path

from aiml.inference.response_store import ResponseStore


async def test_a_response_is_kept_for_the_retention_then_purged(tmp_path: Path) -> None:
    now = [1000.0]
    store = ResponseStore(tmp_path / "responses.db", retention_s=60, clock=lambda: now[0])
    await store.save("resp_a", {"response": {"id": "resp_a"}, "conversation": []})
    now[0] += 59
    assert await store.get("resp_a") == {"response": {"id": "resp_a"}, "conversation": []}
    now[0] += 2
    assert await store.get("resp_a") is None  # expired: not served
    await store.save("resp_b", {"response": {}, "conversation": []})  # a write purges
    assert not await store.delete("resp_a")
    assert await store.delete("resp_b")
    store.close()
