"""``/inference/*`` and ``/health/*`` over real HTTP, as the earlier system's clients use them."""

from __future__ import annotations

import base64
from collections.abc import Callable

import pytest

from tests.conftest import Registry, RunningAiml, RunningOllama
from tests.fakes.mlflow_client import UnreachableMlflowClient


@pytest.fixture
def aiml(start_aiml: Callable[..., RunningAiml], registry: Registry) -> RunningAiml:
    registry.register("llama2-7b-chat", "llama2:7b", alias="production")
    registry.register("embedder", "nomic-embed-text", task="embeddings")
    registry.register("vision", "qwen2:0.5b", task="vlm")
    return start_aiml()


def test_text_generation_by_registry_name_matches_the_earlier_contract(aiml: RunningAiml) -> None:
    response = aiml.infer(
        "llama2-7b-chat@production", options={"max_length": 4, "temperature": 0.1}
    )
    assert response.status_code == 200
    body = response.json()
    assert set(body) == {
        "success",
        "task",
        "engine",
        "model_name",
        "resolved",
        "result",
        "processing_time",
        "timestamp",
    }
    assert body["success"] is True
    assert body["resolved"] == {
        "engine_model": "llama2:7b",
        "registry_name": "llama2-7b-chat",
        "registry_version": 1,
        "source": "registry",
    }
    assert body["result"]["response"] == "llama2:7b heard: hello world"
    assert body["result"]["metadata"]["completion_tokens"] == 4
    assert body["processing_time"] >= 0


def test_engine_name_passes_through(aiml: RunningAiml) -> None:
    body = aiml.infer("llama2:13b").json()
    assert body["resolved"] == {
        "engine_model": "llama2:13b",
        "registry_name": None,
        "registry_version": None,
        "source": "direct",
    }


def test_chat_embeddings_and_vlm_results(aiml: RunningAiml, ollama: RunningOllama) -> None:
    chat = aiml.infer("llama2-7b-chat", task="chat").json()
    assert chat["result"]["message"] == {
        "role": "assistant",
        "content": "llama2:7b heard: hi there",
    }

    single = aiml.infer("embedder", task="embeddings", data={"inputs": "one"}).json()
    assert len(single["result"]["embeddings"]) == 1
    batch = aiml.infer("embedder", task="embeddings", data={"inputs": ["a", "b", "c"]}).json()
    assert len(batch["result"]["embeddings"]) == 3
    assert all(isinstance(x, float) for x in batch["result"]["embeddings"][0])

    image = base64.b64encode(b"\x89PNG fake image bytes").decode()
    vlm = aiml.infer("vision", task="vlm", data={"image": image, "prompt": "what is it"})
    assert vlm.status_code == 200, vlm.text
    sent = ollama.state.received[-1][1]
    assert sent["images"] == [image]


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"task": "paint"}, "task"),
        ({"engine": "tensorrt"}, "engine"),
        ({"model_name": "bad name"}, "model_name"),
        ({"model_name": "../../etc"}, "model_name"),
        ({"data": {"inputs": ""}}, "data.inputs"),
        ({"data": {"inputs": "x", "prompt": "y"}}, "data.prompt"),
        ({"data": {"inputs": 5}}, "data.inputs"),
        ({"options": {"temperature": 9}}, "options.temperature"),
        ({"options": {"max_tokens": "10"}}, "options.max_tokens"),
        ({"options": {"beam_width": 4}}, "options.beam_width"),
        ({"options": {"max_tokens": 5, "max_length": 6}}, "options"),
        ({"data": None}, "data"),
        ({"surprise": 1}, "surprise"),
    ],
)
def test_malformed_input_is_a_422_naming_the_field(
    aiml: RunningAiml, body: dict[str, object], param: str
) -> None:
    request = {
        "task": "text-generation",
        "engine": "ollama",
        "model_name": "llama2-7b-chat",
        "data": {"inputs": "x"},
        **body,
    }
    with aiml.client() as client:
        response = client.post("/inference/infer", json=request)
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == "invalid_request"
    assert error["param"] == param


def test_malformed_json_and_wrong_types(aiml: RunningAiml) -> None:
    with aiml.client() as client:
        broken = client.post(
            "/inference/infer", content=b"{nope", headers={"content-type": "application/json"}
        )
        assert broken.status_code == 422
        assert broken.json()["error"]["message"] == "request body is not valid JSON"
        missing = client.post("/inference/infer", json={"task": "chat"})
        assert missing.status_code == 422
        assert missing.json()["error"]["param"] == "engine"


def test_vlm_image_must_be_base64_and_never_a_path(
    aiml: RunningAiml, ollama: RunningOllama
) -> None:
    for image in ("/etc/hostname", "not base64!!"):
        response = aiml.infer("vision", task="vlm", data={"image": image, "prompt": "x"})
        assert response.status_code == 422
        assert response.json()["error"]["param"] == "data.image"
    assert ollama.state.counts["POST /api/generate"] == 0


def test_engine_failures_map_to_meaningful_statuses(
    aiml: RunningAiml, ollama: RunningOllama
) -> None:
    assert aiml.infer("llama2-7b-chat").status_code == 200
    ollama.state.delay_s = 2.5  # past the 2 s engine timeout of the test settings
    timed_out = aiml.infer("llama2-7b-chat")
    assert (timed_out.status_code, timed_out.json()["error"]["code"]) == (504, "engine_timeout")
    ollama.state.delay_s = 0.0
    rejected = aiml.infer("nomic-embed-text")  # an embedding-only model asked to generate
    # Ollama's own 400, passed on: the request was at fault, not the gateway
    assert (rejected.status_code, rejected.json()["error"]["code"]) == (400, "engine_rejected")
    ollama.state.remove("llama2:7b")  # vanished from the engine after we resolved it
    gone = aiml.infer("llama2-7b-chat")
    assert (gone.status_code, gone.json()["error"]["code"]) == (404, "model_not_found")
    ollama.state.add("llama2:7b")
    assert aiml.infer("llama2-7b-chat").status_code == 200  # re-checked, not cached as gone
    ollama.server.stop()
    down = aiml.infer("llama2-7b-chat")
    assert (down.status_code, down.json()["error"]["code"]) == (503, "engine_unavailable")
    ollama.server.start()
    assert aiml.infer("llama2-7b-chat").status_code == 200


def test_registry_outage_keeps_known_references_served(
    start_aiml: Callable[..., RunningAiml], registry: Registry
) -> None:
    registry.register("known", "llama2:7b", alias="production")
    registry.register("unseen", "llama2:7b")
    aiml = start_aiml(resolve_ttl_s=0.0)  # every request refreshes: the outage is felt at once
    assert aiml.infer("known@production").status_code == 200
    real = aiml.services.registry._client
    aiml.services.registry._client = UnreachableMlflowClient()  # type: ignore[assignment]
    assert aiml.infer("known@production").status_code == 200
    new = aiml.infer("unseen")
    assert (new.status_code, new.json()["error"]["code"]) == (503, "registry_unavailable")
    with aiml.client() as client:
        ready = client.get("/health/ready")  # it serves what it resolved before
        assert (ready.status_code, ready.json()["degraded"]) == (200, ["registry"])
        assert client.get("/health/live").status_code == 200
    aiml.services.registry._client = real
    assert aiml.infer("unseen").status_code == 200


def test_supported_tasks_stats_and_health(aiml: RunningAiml, ollama: RunningOllama) -> None:
    aiml.infer("llama2-7b-chat")
    aiml.infer("llama2-7b-chat")
    aiml.infer("absent-model")
    with aiml.client() as client:
        tasks = client.get("/inference/supported-tasks").json()["tasks"]
        assert tasks == {
            "text-generation": ["ollama", "llamacpp", "transformers"],
            "chat": ["ollama", "llamacpp", "transformers"],
            "embeddings": ["ollama", "llamacpp", "transformers"],
            "vlm": ["ollama"],
            "text-classification": ["transformers"],
            "asr": ["whisper"],
            "vad": ["onnx"],
            "ocr": ["onnx"],
            "document-analysis": ["onnx"],
            "image-captioning": ["ollama"],
        }
        stats = client.get("/inference/stats").json()["stats"]
        assert stats["requests"] == 3 and stats["succeeded"] == 2 and stats["failed"] == 1
        assert stats["errors"] == {"model_not_found": 1}
        assert stats["by_model"] == {"llama2-7b-chat": {"200": 2}, "-": {"404": 1}}
        assert stats["cache"]["hits"] == 1 and stats["cache"]["misses"] == 2
        assert stats["registry_lookups"] == aiml.spy.total
        assert stats["executors"] == ["text-generation/ollama"]
        assert client.get("/inference/health").json()["status"] == "healthy"
        assert client.get("/health/ready").json()["status"] == "ready"
        ollama.server.stop()
        unhealthy = client.get("/inference/health")
        assert unhealthy.status_code == 503
        assert unhealthy.json()["engines"]["ollama"] != "ok"
        assert client.get("/health/live").json() == {"status": "alive"}


def test_unknown_route_uses_the_error_body(aiml: RunningAiml) -> None:
    with aiml.client() as client:
        response = client.get("/no/such/route")
    assert response.status_code == 404
    assert response.json() == {
        "success": False,
        "error": {"code": "not_found", "message": "Not Found"},
    }
