"""Local engines over HTTP: real answers, alias moves, the memory budget, admin routes."""

from __future__ import annotations

import math
import struct
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from aiml.engines.pool import rss_bytes
from tests.conftest import ModelFiles, Registry, RunningAiml, RunningOllama

MB = 1 << 20


def infer(
    aiml: RunningAiml, engine: str, task: str, model: str, data: dict[str, object], **extra: object
) -> httpx.Response:
    body = {"task": task, "engine": engine, "model_name": model, "data": data, **extra}
    with aiml.client(timeout=120) as client:
        return client.post("/inference/infer", json=body)


def cosine(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    return dot / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))


def loaded(aiml: RunningAiml) -> dict[str, object]:
    with aiml.client() as client:
        body: dict[str, object] = client.get("/inference/loaded").json()
        return body


def test_real_chat_and_embeddings_as_the_quickstart_serves_them(
    start_aiml: Callable[..., RunningAiml], registry: Registry, model_files: ModelFiles
) -> None:
    registry.register_files(
        model_files.smollm2, "smollm2-135m-instruct", task="chat", alias="default"
    )
    registry.register_files(model_files.minilm, "all-minilm-l6-v2", alias="default")
    aiml = start_aiml()
    chat = infer(
        aiml,
        "llamacpp",
        "chat",
        "smollm2-135m-instruct@default",
        {"messages": [{"role": "user", "content": "Write one sentence about cats."}]},
        options={"max_tokens": 60, "temperature": 0},
    )
    assert chat.status_code == 200, chat.text
    answer = chat.json()["result"]["message"]["content"]
    assert "cat" in answer.lower(), answer
    assert chat.json()["result"]["metadata"]["prompt_tokens"] > 5

    emb = infer(
        aiml,
        "transformers",
        "embeddings",
        "all-minilm-l6-v2@default",
        {"inputs": ["cat", "kitten", "stock market"]},
    )
    cat, kitten, stock = emb.json()["result"]["embeddings"]
    assert cosine(cat, kitten) > cosine(cat, stock)
    models = {(m["registry_name"], m["engine"]) for m in loaded(aiml)["models"]}  # type: ignore[attr-defined]
    assert models == {("smollm2-135m-instruct", "llamacpp"), ("all-minilm-l6-v2", "transformers")}


def test_a_moved_alias_serves_the_new_weights_within_the_ttl(
    start_aiml: Callable[..., RunningAiml], registry: Registry, model_files: ModelFiles
) -> None:
    registry.register_files(model_files.tiny_lm_a, "assistant", alias="prod")
    registry.register_files(model_files.tiny_lm_b, "assistant")
    ttl = 0.5
    aiml = start_aiml(resolve_ttl_s=ttl)

    def ask() -> tuple[int, str]:
        response = infer(
            aiml,
            "transformers",
            "text-generation",
            "assistant@prod",
            {"inputs": "the cat sat"},
            options={"max_tokens": 8},
        )
        assert response.status_code == 200, response.text
        body = response.json()
        return body["resolved"]["registry_version"], body["result"]["response"]

    version, old_text = ask()
    assert version == 1
    moved = time.monotonic()
    registry.client.set_registered_model_alias("assistant", "prod", "2")
    while (answer := ask())[0] != 2:
        assert time.monotonic() - moved < ttl + 2.0
    assert answer[1] != old_text  # different weights, different words
    versions = {m["registry_version"] for m in loaded(aiml)["models"]}  # type: ignore[attr-defined]
    assert 2 in versions


def test_requests_cycling_through_more_models_than_the_budget_holds(
    start_aiml: Callable[..., RunningAiml], registry: Registry, model_files: ModelFiles
) -> None:
    registry.register_files(model_files.smollm2, "smol", task="chat")
    registry.register_files(model_files.gemma3, "gemma", task="text-generation")
    # Room for one of smol (~280 MB) and gemma (~420 MB) with the KV cache of 2 sequences
    # of 2048 tokens each counted, never both.
    budget = 450 * MB
    aiml = start_aiml(max_model_memory_bytes=budget, max_loaded_models=3, llamacpp_parallel=2)
    baseline = rss_bytes()
    peaks = []
    for round_ in range(3):
        for name in ("smol", "gemma"):
            response = infer(
                aiml,
                "llamacpp",
                "text-generation",
                name,
                {"inputs": "Cats are"},
                options={"max_tokens": 4},
            )
            assert response.status_code == 200, (round_, name, response.text)
            state = loaded(aiml)
            budget_view = state["budget"]
            assert budget_view["used_bytes"] <= budget  # type: ignore[index]
            assert len(state["models"]) == 1  # type: ignore[arg-type]
            peaks.append(rss_bytes() - baseline)
    # The process itself stays within the budget too (plus slack for the interpreter's heap).
    assert max(peaks) < budget + 150 * MB, [p // MB for p in peaks]


def test_admin_load_unload_and_idle_unload(
    start_aiml: Callable[..., RunningAiml],
    registry: Registry,
    model_files: ModelFiles,
    ollama: RunningOllama,
) -> None:
    registry.register_files(model_files.tiny_lm_a, "lm")
    aiml = start_aiml(model_idle_ttl_s=0.5)
    with aiml.client() as client:
        load = client.post(
            "/admin/models/load", json={"engine": "transformers", "model_name": "lm"}
        )
        assert load.status_code == 200, load.text
        assert [m["registry_name"] for m in loaded(aiml)["models"]] == ["lm"]  # type: ignore[attr-defined]
        unload = client.post(
            "/admin/models/unload", json={"engine": "transformers", "model_name": "lm"}
        )
        assert unload.json()["unloaded"] is True
        assert loaded(aiml)["models"] == []
        ollama_load = client.post(
            "/admin/models/load", json={"engine": "ollama", "model_name": "llama2:7b"}
        )
        assert ollama_load.status_code == 200, ollama_load.text
        assert ollama.state.counts["load"] == 1  # Ollama's way: generate from an empty prompt
        ollama_unload = client.post(
            "/admin/models/unload", json={"engine": "ollama", "model_name": "llama2:7b"}
        )
        assert ollama_unload.json()["unloaded"] is True
        assert ollama.state.counts["unload"] == 1
    assert infer(aiml, "transformers", "text-generation", "lm", {"inputs": "hi"}).status_code == 200
    started = time.monotonic()
    while loaded(aiml)["models"]:  # the keep-alive reaper unloads it, unasked
        assert time.monotonic() - started < 5.0
        time.sleep(0.05)


def test_admin_register_upload_and_admin_keys(
    start_aiml: Callable[..., RunningAiml], model_files: ModelFiles
) -> None:
    aiml = start_aiml(admin_keys="s3cret,other", api_keys="user-key")
    folder = model_files.tiny_lm_a
    files = [
        ("files", (p.relative_to(folder).as_posix(), p.read_bytes()))
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    ]
    form = {"registered_name": "uploaded", "alias": "prod"}
    with aiml.client() as client:
        assert client.post("/admin/models/register", data=form, files=files).status_code == 401
        wrong = client.post(
            "/admin/models/register",
            data=form,
            files=files,
            headers={"authorization": "Bearer nope"},
        )
        assert wrong.status_code == 401
        user = client.post(
            "/admin/models/register",
            data=form,
            files=files,
            headers={"authorization": "Bearer user-key"},
        )
        assert user.status_code == 403  # a valid key, but not an admin's
        headers = {"authorization": "Bearer s3cret"}
        created = client.post("/admin/models/register", data=form, files=files, headers=headers)
        assert created.status_code == 201, created.text
        assert created.json()["tags"]["inference_engine"] == "transformers"
        again = client.post("/admin/models/register", data=form, files=files, headers=headers)
        assert again.status_code == 200
        assert again.json()["created"] is False
        sneaky = client.post(
            "/admin/models/register",
            data=form,
            headers=headers,
            files=[("files", ("../../escape.gguf", b"x"))],
        )
        assert sneaky.status_code == 422
        assert (
            client.post(
                "/admin/models/unload", json={"engine": "transformers", "model_name": "x"}
            ).status_code
            == 401
        )
    assert infer(aiml, "transformers", "text-generation", "uploaded@prod", {}).status_code == 401
    body = {
        "task": "text-generation",
        "engine": "transformers",
        "model_name": "uploaded@prod",
        "data": {"inputs": "the cat"},
    }
    with aiml.client(headers={"authorization": "Bearer user-key"}) as client:
        assert client.post("/inference/infer", json=body).status_code == 200


def test_a_model_that_fails_to_load_leaves_nothing_and_says_why(
    start_aiml: Callable[..., RunningAiml], registry: Registry, tmp_path: Path
) -> None:
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 0, 0) + b"\0" * 1024)  # a header only
    registry.register_files(broken, "broken")
    aiml = start_aiml()
    response = infer(aiml, "llamacpp", "text-generation", "broken", {"inputs": "hi"})
    assert response.status_code == 500
    assert response.json()["error"]["code"] == "model_load_failed"
    assert "broken/1" in response.json()["error"]["message"]
    assert loaded(aiml)["models"] == []


def test_classification_over_http(
    start_aiml: Callable[..., RunningAiml], registry: Registry, model_files: ModelFiles
) -> None:
    registry.register_files(model_files.tiny_classifier, "clf")
    aiml = start_aiml()
    response = infer(
        aiml,
        "transformers",
        "text-classification",
        "clf",
        {"inputs": ["good", "bad"]},
        options={"top_k": 1},
    )
    assert response.status_code == 200, response.text
    labels = response.json()["result"]["labels"]
    assert len(labels) == 2
    assert len(labels[0]) == 1
    assert labels[0][0]["label"] in {"negative", "positive"}
    wrong = infer(aiml, "llamacpp", "text-classification", "clf", {"inputs": "x"})
    assert wrong.status_code == 422
