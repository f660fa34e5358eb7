"""Model capabilities: read once per version, shown in ``/v1/models``, ``/api/show`` and the
stats route, and used to refuse (400 naming the capability) before a model generates.

Fill-in-the-middle on llama.cpp runs on a copy of SmolLM2's GGUF whose metadata names three
of its tokens as FIM prefix, suffix and middle (``gguf-new-metadata``, the ``gguf``
package's own tool): no GGUF shipped on PyPI small enough for the suite has FIM tokens.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
import ollama as ol
import openai
import pytest
from llama_cpp import Llama

from tests.conftest import ModelFiles, Shared

pytestmark = pytest.mark.slow

_PRE, _SUF, _MID = 3, 4, 5  # <repo_name>, <reponame>, <file_sep> in SmolLM2's vocabulary


@pytest.fixture(scope="module")
def fim_gguf(tmp_path_factory: pytest.TempPathFactory, model_files: ModelFiles) -> Path:
    path = tmp_path_factory.mktemp("fim") / "smollm2-fim.gguf"
    tokens = [("fim_pre", _PRE), ("fim_suf", _SUF), ("fim_mid", _MID)]
    flags = [arg for name, token in tokens for arg in ("--special-token-by-id", name, str(token))]
    subprocess.run(
        [sys.executable, "-m", "gguf.scripts.gguf_new_metadata", *flags, "--force",
         str(model_files.smollm2), str(path)],
        check=True, capture_output=True,
    )  # fmt: skip
    return path


def test_capabilities_are_read_once_and_shown_everywhere(shared: Shared) -> None:
    aiml, stand_in = shared.aiml, shared.ollama.state
    stand_in.add("codellama:7b", family="llama", capabilities=("completion", "insert"))
    shared.registry.register("codellama", "codellama:7b", task="text-generation")
    listed = {m["id"]: m for m in httpx.get(f"{aiml.url}/v1/models").json()["data"]}
    assert "capabilities" not in listed["codellama"]  # not read yet: nothing is guessed

    shows = stand_in.counts["POST /api/show"]
    client = ol.Client(host=aiml.url)
    assert set(client.show("codellama").capabilities or ()) == {"completion", "insert"}
    model = httpx.get(f"{aiml.url}/v1/models/codellama").json()
    assert model["capabilities"] == ["completion", "insert", "chat"]
    assert model["details"]["context_length"] == 4096
    client.generate(model="codellama", prompt="def add(a, b):", suffix="    return c")
    assert stand_in.received[-1][1]["suffix"] == "    return c"  # passed through
    assert stand_in.counts["POST /api/show"] == shows + 1  # one reading for all of them

    listed = {m["id"]: m for m in httpx.get(f"{aiml.url}/v1/models").json()["data"]}
    assert listed["codellama"]["capabilities"] == ["completion", "insert", "chat"]
    stats = httpx.get(f"{aiml.url}/inference/stats").json()["stats"]
    assert stats["capabilities"]["codellama/1"]["capabilities"] == ["completion", "insert", "chat"]


def test_a_server_whose_show_fails_still_serves_by_the_registered_task(shared: Shared) -> None:
    stand_in = shared.ollama.state
    stand_in.add("mistral:7b")
    shared.registry.register("mistral", "mistral:7b", task="chat")
    stand_in.show_error = 500
    try:
        answer = shared.aiml.openai().chat.completions.create(
            model="mistral", messages=[{"role": "user", "content": "hi"}]
        )
    finally:
        stand_in.show_error = None
    assert answer.choices[0].message.content  # not a 502 for every chat
    model = httpx.get(f"{shared.aiml.url}/v1/models/mistral").json()
    assert model["capabilities"] == ["completion", "chat", "tools", "insert"]  # generic


def test_the_gguf_says_what_a_llamacpp_model_can_do(shared: Shared) -> None:
    model = httpx.get(f"{shared.aiml.url}/v1/models/smol").json()
    assert model["capabilities"] == ["completion", "chat", "tools"]  # a template, no FIM
    assert model["details"]["family"] == "llama" and model["details"]["context_length"] == 8192
    # SmolLM2's template does not read `tools`: aiml renders them (engines/llamacpp/tool_calls.py).
    assert model["details"]["tools_in_template"] is False


def test_a_request_needing_what_the_model_lacks_is_a_400_before_it_runs(shared: Shared) -> None:
    aiml, stand_in = shared.aiml, shared.ollama.state
    stand_in.add("plain:1b", capabilities=("completion",))
    shared.registry.register("plain", "plain:1b", task="chat")
    client = aiml.openai()
    sent = len(stand_in.received)
    tool = {"type": "function", "function": {"name": "now", "parameters": {"type": "object"}}}
    with pytest.raises(openai.BadRequestError) as no_tools:
        client.chat.completions.create(
            model="plain", messages=[{"role": "user", "content": "time?"}], tools=[tool]
        )
    assert "capability 'tools'" in no_tools.value.message
    assert no_tools.value.body["param"] == "tools"  # type: ignore[index]
    with pytest.raises(ol.ResponseError) as no_insert:
        ol.Client(host=aiml.url).generate(model="plain", prompt="def f():", suffix="    pass")
    assert no_insert.value.status_code == 400 and "capability 'insert'" in no_insert.value.error
    # The engine was asked what the model is (once), never to generate.
    assert [route for route, _ in stand_in.received[sent:]] == ["POST /api/show"]
    with pytest.raises(ol.ResponseError) as smol:
        ol.Client(host=aiml.url).generate(model="smol", prompt="def f():", suffix="    pass")
    assert "fill-in-the-middle" in smol.value.error and "insert" in smol.value.error


def test_chat_on_a_gguf_without_a_chat_template_is_refused_unloaded(
    shared: Shared, model_files: ModelFiles
) -> None:
    shared.registry.register_files(model_files.gemma3, "gemma-base", task="text-generation")
    with pytest.raises(openai.BadRequestError) as refused:
        shared.aiml.openai().chat.completions.create(
            model="gemma-base", messages=[{"role": "user", "content": "hi"}]
        )
    assert "capability 'chat'" in refused.value.message
    assert refused.value.body["param"] == "messages"  # type: ignore[index]
    loaded = httpx.get(f"{shared.aiml.url}/api/ps").json()["models"]
    assert all(not m["name"].startswith("gemma-base") for m in loaded)  # never loaded


def test_fill_in_the_middle_on_a_gguf_that_has_the_tokens(shared: Shared, fim_gguf: Path) -> None:
    shared.registry.register_files(fim_gguf, "smol-fim", task="text-generation")
    client = ol.Client(host=shared.aiml.url)
    assert "insert" in (client.show("smol-fim").capabilities or ())
    prefix, suffix = "def add(a, b):\n", "\n    return c\n"
    answer = client.generate(
        model="smol-fim", prompt=prefix, suffix=suffix, options={"num_predict": 4, "seed": 1}
    )
    vocab = Llama(model_path=str(fim_gguf), vocab_only=True, verbose=False)
    count = len(vocab.tokenize(prefix.encode(), add_bos=False))
    count += len(vocab.tokenize(suffix.encode(), add_bos=False))
    # llama.cpp's infill order: <pre> prefix <suf> suffix <mid>, no BOS
    assert answer.prompt_eval_count == count + 3
    assert answer.eval_count and answer.eval_count <= 4
    completion = shared.aiml.openai().completions.create(
        model="smol-fim", prompt=prefix, suffix=suffix, max_tokens=4
    )
    assert completion.usage is not None and completion.usage.prompt_tokens == count + 3
