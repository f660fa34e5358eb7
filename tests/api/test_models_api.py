"""``/models/*``: registering Ollama models, listing them, moving aliases."""

from __future__ import annotations

from collections.abc import Callable

from tests.conftest import Registry, RunningAiml, RunningOllama


def test_register_ollama_then_infer_by_alias(
    start_aiml: Callable[..., RunningAiml], registry: Registry, ollama: RunningOllama
) -> None:
    aiml = start_aiml()
    with aiml.client() as client:
        created = client.post(
            "/models/register_ollama",
            json={
                "local_model_name": "llama2:7b",
                "registered_name": "llama2-7b-chat",
                "task": "chat",
                "alias": "production",
                "description": "the 7b chat model",
            },
        )
        assert created.status_code == 201, created.text
        assert created.json()["version"] == 1
        assert created.json()["tags"] == {
            "ollama_model_name": "llama2:7b",
            "inference_engine": "ollama",
            "inference_task": "chat",
        }
    # The version is a real registry version that the earlier system's tags describe.
    mv = registry.client.get_model_version_by_alias("llama2-7b-chat", "production")
    assert mv.tags["ollama_model_name"] == "llama2:7b"
    # Registered as MLflow 3 does: a logged model made by a run, its pointer the model's file
    # (a local store's source is the model's folder; on a server, test_remote_registry).
    (logged,) = registry.client.search_logged_models([mv_experiment(registry, mv.run_id)])
    assert (logged.status, logged.source_run_id) == ("READY", mv.run_id)
    assert (logged.name, mv.source) == ("llama2-7b-chat", logged.artifact_location)
    assert aiml.infer("llama2-7b-chat@production", task="chat").status_code == 200


def test_register_refuses_what_ollama_does_not_have(
    start_aiml: Callable[..., RunningAiml], registry: Registry
) -> None:
    aiml = start_aiml()
    with aiml.client() as client:
        missing = client.post(
            "/models/register_ollama",
            json={"local_model_name": "llama2", "registered_name": "x"},  # llama2:latest is absent
        )
        assert missing.status_code == 404
        assert missing.json()["error"]["param"] == "local_model_name"
        bad_name = client.post(
            "/models/register_ollama",
            json={"local_model_name": "llama2:7b", "registered_name": "has:colon"},
        )
        assert bad_name.status_code == 422
        assert bad_name.json()["error"]["param"] == "registered_name"
        bad_task = client.post(
            "/models/register_ollama",
            json={"local_model_name": "llama2:7b", "registered_name": "x", "task": "dance"},
        )
        assert bad_task.status_code == 422
    assert registry.client.search_registered_models() == []


def test_list_get_and_aliases(start_aiml: Callable[..., RunningAiml], registry: Registry) -> None:
    registry.register("alpha", "llama2:7b", alias="production")
    registry.register("alpha", "llama2:13b")
    registry.register("beta", "qwen2:0.5b")
    aiml = start_aiml(resolve_ttl_s=3600)  # long TTL: only the route's invalidation can help
    assert aiml.infer("alpha@production").json()["resolved"]["engine_model"] == "llama2:7b"
    with aiml.client() as client:
        listing = client.get("/models/registered_in_mlflow", params={"max_results": 1})
        assert listing.status_code == 200
        first = listing.json()
        assert len(first["models"]) == 1
        assert first["next_page_token"]
        second = client.get(
            "/models/registered_in_mlflow",
            params={"max_results": 1, "page_token": first["next_page_token"]},
        ).json()
        names = {first["models"][0]["name"], second["models"][0]["name"]}
        assert names == {"alpha", "beta"}
        garbage = client.get("/models/registered_in_mlflow", params={"page_token": "garbage"})
        assert garbage.status_code == 422
        assert garbage.json()["error"]["param"] == "page_token"

        detail = client.get("/models/registered_in_mlflow/alpha").json()
        assert detail["model"]["aliases"] == {"production": 1}
        assert [v["version"] for v in detail["versions"]] == [2, 1]
        assert detail["versions"][1]["aliases"] == ["production"]
        assert detail["versions"][0]["tags"]["ollama_model_name"] == "llama2:13b"

        moved = client.put(
            "/models/registered_in_mlflow/alpha/aliases/production", json={"version": 2}
        )
        assert moved.status_code == 200
    # Moved through aiml: seen on the very next request, TTL or not.
    assert aiml.infer("alpha@production").json()["resolved"]["engine_model"] == "llama2:13b"
    with aiml.client() as client:
        assert (
            client.delete("/models/registered_in_mlflow/alpha/aliases/production").status_code
            == 200
        )
        assert client.get("/models/registered_in_mlflow/nope").status_code == 404
        no_version = client.put("/models/registered_in_mlflow/alpha/aliases/x", json={"version": 9})
        assert no_version.status_code == 404
        reserved = client.put(
            "/models/registered_in_mlflow/alpha/aliases/latest", json={"version": 1}
        )
        assert reserved.status_code == 422
    gone = aiml.infer("alpha@production")
    assert gone.status_code == 404
    assert "no alias 'production'" in gone.json()["error"]["message"]


def test_listings_are_kept_and_show_changes_made_through_aiml_at_once(
    start_aiml: Callable[..., RunningAiml], registry: Registry
) -> None:
    registry.register("alpha", "llama2:7b")
    registry.register("alpha", "llama2:13b")
    aiml = start_aiml(resolve_ttl_s=3600)  # long TTL: only aiml's invalidation can help
    with aiml.client() as client:

        def listed() -> tuple[set[str], set[str]]:
            openai = {m["id"] for m in client.get("/v1/models").json()["data"]}
            ollama = {m["name"] for m in client.get("/api/tags").json()["models"]}
            return openai, ollama

        assert listed() == ({"alpha"}, {"alpha:latest"})
        before = aiml.spy.total
        for _ in range(3):
            assert listed() == ({"alpha"}, {"alpha:latest"})
        assert aiml.spy.total == before  # warm: no registry call at all

        moved = client.put("/models/registered_in_mlflow/alpha/aliases/prod", json={"version": 1})
        assert moved.status_code == 200
        assert listed() == ({"alpha", "alpha@prod"}, {"alpha:latest", "alpha:prod"})
        assert client.delete("/models/registered_in_mlflow/alpha/aliases/prod").status_code == 200
        assert listed() == ({"alpha"}, {"alpha:latest"})
        created = client.post(
            "/models/register_ollama",
            json={"local_model_name": "qwen2:0.5b", "registered_name": "beta"},
        )
        assert created.status_code == 201, created.text
        assert listed() == ({"alpha", "beta"}, {"alpha:latest", "beta:latest"})
        before = aiml.spy.total
        listed()
        assert aiml.spy.total == before


def mv_experiment(registry: Registry, run_id: str) -> str:
    return str(registry.client.get_run(run_id).info.experiment_id)
