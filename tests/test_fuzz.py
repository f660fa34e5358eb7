"""schemathesis against aiml's own OpenAPI schema, over every route, with keys configured.

* Every route the app has is in the schema (but the named exclusions), and every operation
  in the schema is fuzzed: schemathesis' positive and negative cases, each checked for no
  5xx, a documented status and content type, a body that matches the documented schema,
  and a refusal without a key where the route needs one.
* Stateful: sequences that follow the schema's links (a stored response read back and
  deleted with the id its creation answered, an alias set then read and deleted).
* The media routes with generated files: zero-length, truncated, wrong magic, headers
  declaring huge images, pages or hours of audio, and valid tiny ones, on the bundled
  models (PP-OCR, Silero VAD, Whisper tiny.en) and through the model upload.

The cases run per operation are printed as a table (``pytest -s``) and written to
``fuzz-cases.txt`` in the test's temp folder. Deterministic: derandomized Hypothesis, no
example database. Driven by hand rather than through schemathesis' pytest plugin, whose
lazy fixtures do not run on pytest 9.
"""

from __future__ import annotations

import base64
import os
import re
import zlib
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    ignored_auth,
    response_schema_conformance,
    status_code_conformance,
)
from starlette.routing import Route
from starlette.testclient import TestClient

from aiml.api.app import create_app
from aiml.bundled import BUNDLED
from aiml.settings import Settings
from tests.conftest import (
    ModelFiles,
    Registry,
    RunningAiml,
    RunningOllama,
    fresh_sqlite_registry,
    launch_aiml,
    standard_stand_in,
)
from tests.fakes import media_files
from tests.fakes.servers import ServerThread

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    ignored_auth,
]
#: Cases per operation and generation mode (positive, negative); the linked sequences run as
#: many scenarios. Raise it for a deeper run: ``AIML_FUZZ_EXAMPLES=100``.
EXAMPLES = int(os.environ.get("AIML_FUZZ_EXAMPLES", "12"))
#: For requests sent by hand with the key in hand: ignored_auth cannot tell it was sent.
HAND_CHECKS = [check for check in CHECKS if check is not ignored_auth]
ADMIN, USER = "fuzz-admin", "fuzz-user"

#: Routes the schema leaves out, and why.
EXCLUDED = {
    "GET /openapi.json": "FastAPI's own: the schema itself",
    "GET /docs": "FastAPI's own documentation page",
    "GET /docs/oauth2-redirect": "FastAPI's own documentation page",
    "GET /redoc": "FastAPI's own documentation page",
    # The console: a page and its files for browsers, as /docs is (tests/console covers them).
    "GET /ui": "the console's page (HTML, no data in it)",
    "GET /ui/": "the console's page",
    "GET /ui/static/{build}/{path}": "the console's files: only bundle names answer",
    # Ollama's model management, which aiml does not do: a 501 whatever the request.
    "POST /api/push": "always 501 (test_unimplemented_ollama_routes_answer_501)",
    "POST /api/create": "always 501",
    "POST /api/copy": "always 501",
    "DELETE /api/delete": "always 501",
}


def _settings(**overrides: Any) -> Any:
    return settings(
        max_examples=overrides.pop("max_examples", EXAMPLES),
        deadline=None,
        database=None,
        derandomize=True,
        suppress_health_check=list(HealthCheck),
        **overrides,
    )


class Tally:
    """Cases run per operation and the statuses they got; failures with a reproduction."""

    def __init__(self) -> None:
        self.cases: dict[str, Counter[str]] = defaultdict(Counter)
        self.statuses: dict[str, Counter[int]] = defaultdict(Counter)
        self.failures: dict[str, str] = {}

    def run(self, label: str, kind: str, call: Callable[[], httpx.Response | Any]) -> None:
        self.cases[label][kind] += 1
        try:
            response = call()
        except BaseExceptionGroup as group:  # schemathesis' FailureGroup: the checks failed
            first = str(group).splitlines()
            self.failures.setdefault(f"{label}: {first[0] if first else group!r}", str(group))
            self.statuses[label][0] += 1
            return
        self.statuses[label][response.status_code] += 1

    def table(self) -> str:
        kinds = sorted({kind for counts in self.cases.values() for kind in counts})
        rows = [f"{'operation':<62} " + " ".join(f"{k:>9}" for k in kinds) + "  statuses"]
        for label in sorted(self.cases):
            counts = " ".join(f"{self.cases[label][k]:>9}" for k in kinds)
            statuses = ", ".join(f"{s}x{n}" for s, n in sorted(self.statuses[label].items()))
            rows.append(f"{label:<62} {counts}  {statuses}")
        total = sum(sum(c.values()) for c in self.cases.values())
        rows.append(f"{len(self.cases)} operations, {total} cases")
        return "\n".join(rows)

    def report(self, path: Path) -> None:
        text = self.table()
        path.write_text(text + "\n")
        print(f"\n{text}")
        assert not self.failures, "\n\n".join(self.failures.values())


def _operations_of_app(app: Any) -> set[str]:
    found = set()
    for route in app.routes:
        if isinstance(route, Route):
            path = re.sub(r"\{(\w+):\w+\}", r"{\1}", route.path)  # {model:path} -> {model}
            found |= {f"{method} {path}" for method in route.methods or () if method != "HEAD"}
    return found


def test_every_route_is_in_the_schema_but_the_named_exclusions(tmp_path: Path) -> None:
    app = create_app(Settings(home=tmp_path, api_keys=USER, admin_keys=ADMIN))
    documented = {
        f"{method.upper()} {path}"
        for path, operations in app.openapi()["paths"].items()
        for method in operations
    }
    routes = _operations_of_app(app)
    assert routes - documented == set(EXCLUDED), "a route is missing from the schema"
    assert documented <= routes
    # The console, the Responses API, speech and the upload are all fuzzed.
    for label in ("GET /auth/whoami", "GET /inference/traffic", "POST /v1/responses",
                  "GET /v1/responses/{response_id}", "DELETE /v1/responses/{response_id}",
                  "POST /v1/audio/transcriptions", "POST /admin/models/register"):  # fmt: skip
        assert label in documented


def test_answers_are_documented_in_each_surfaces_error_body(tmp_path: Path) -> None:
    """The central documentation: keys' 401/403 only where the key table asks for a key,
    413 where a body is read, bad input as 400 on /v1 and /api, each surface's body."""
    schema = create_app(Settings(home=tmp_path, api_keys=USER, admin_keys=ADMIN)).openapi()
    paths = schema["paths"]

    def body_of(path: str, method: str, status: str) -> str:
        """The route's own body for ``status`` (the first, where the guard's may follow)."""
        schema = paths[path][method]["responses"][status]["content"]["application/json"]
        ref: str = schema["schema"].get("anyOf", [schema["schema"]])[0]["$ref"]
        return ref.rsplit("/", 1)[1]

    # X-Request-Timeout's 422; the connection guard's 400, 408, 431 and 503 on every route
    assert set(paths["/health/live"]["get"]["responses"]) == {
        "200", "400", "408", "422", "431", "503"
    }  # fmt: skip
    assert body_of("/health/live", "get", "431") == "ErrorResponse"
    answers = paths["/v1/chat/completions"]["post"]["responses"]
    assert "content" not in answers["408"]
    assert [one["$ref"].rsplit("/", 1)[1] for one in
            answers["503"]["content"]["application/json"]["schema"]["anyOf"]] == [
        "OpenAIError", "ErrorResponse"]  # fmt: skip
    assert "401" in paths["/inference/stats"]["get"]["responses"]
    # A key's rules (its surfaces, models) and limits hold on every keyed route.
    assert {"403", "429"} <= set(paths["/inference/stats"]["get"]["responses"])
    assert "403" not in paths["/health/live"]["get"]["responses"]
    assert {"401", "403", "409", "413"} <= set(paths["/admin/models/unload"]["post"]["responses"])
    assert body_of("/v1/chat/completions", "post", "400") == "OpenAIError"
    assert "422" not in paths["/v1/chat/completions"]["post"]["responses"]
    assert body_of("/api/chat", "post", "403") == "OllamaError"  # keep_alive needs an admin
    assert body_of("/inference/infer", "post", "429") == "ErrorResponse"
    assert "HTTPValidationError" not in schema["components"]["schemas"]
    links = paths["/v1/responses"]["post"]["responses"]["200"]["links"]
    assert links["GetResponse"]["parameters"] == {"response_id": "$response.body#/id"}
    unkeyed = create_app(Settings(home=tmp_path)).openapi()
    assert "securitySchemes" not in unkeyed["components"]
    assert "401" not in unkeyed["paths"]["/inference/stats"]["get"]["responses"]


def test_a_body_that_is_not_utf8_is_bad_input_on_every_surface(tmp_path: Path) -> None:
    """Found by the fuzzer: FastAPI's own 400 ("There was an error parsing the body", code
    bad_request) for a JSON body that is not UTF-8, where one that is not JSON is a 422."""
    app = create_app(Settings(home=tmp_path))
    client = TestClient(app)  # the body is refused before any service is needed
    for path, status in (("/inference/infer", 422), ("/admin/models/load", 422),
                         ("/v1/chat/completions", 400), ("/api/chat", 400)):  # fmt: skip
        answer = client.post(
            path, content=b"\xff\xfe{", headers={"content-type": "application/json"}
        )
        assert answer.status_code == status, (path, answer.text)
        error = answer.json()["error"]
        if not path.startswith("/api/"):
            assert error["code"] == "invalid_request", (path, answer.text)


def test_unimplemented_ollama_routes_answer_501(
    start_aiml: Callable[..., RunningAiml],
) -> None:
    aiml = start_aiml(api_keys=USER, admin_keys=ADMIN)
    tally = Tally()

    @given(body=st.dictionaries(st.text(max_size=8), st.text(max_size=8), max_size=3))
    @_settings(max_examples=max(EXAMPLES // 5, 3))
    def exercise(body: dict[str, str]) -> None:
        with aiml.client(headers={"authorization": f"Bearer {USER}"}) as client:
            for method, path in (("POST", "/api/push"), ("POST", "/api/create"),
                                 ("POST", "/api/copy"), ("DELETE", "/api/delete")):  # fmt: skip
                answer = client.request(method, path, json=body)
                tally.run(f"{method} {path}", "positive", lambda a=answer: a)  # type: ignore[misc]
                assert answer.status_code == 501 and isinstance(answer.json()["error"], str)

    exercise()
    print(f"\n{tally.table()}")


@pytest.fixture
def fuzzed(
    start_aiml: Callable[..., RunningAiml], registry: Registry, model_files: ModelFiles
) -> tuple[RunningAiml, Any]:
    registry.register("llama2-7b-chat", "llama2:7b", task="chat", alias="production")
    registry.register_files(model_files.tiny_lm_a, "tiny", task="chat", alias="default")
    aiml = start_aiml(api_keys=USER, admin_keys=ADMIN, max_tokens_limit=64)
    config = schemathesis.config.SchemathesisConfig.from_str(
        f'[auth.openapi.bearer]\nbearer = "{ADMIN}"\n'
    )
    return aiml, schemathesis.openapi.from_url(f"{aiml.url}/openapi.json", config=config)


@pytest.mark.timeout(300)  # ~90 s on 2 busy cores at the default count
def test_no_route_fails_on_any_input(fuzzed: tuple[RunningAiml, Any], tmp_path: Path) -> None:
    aiml, schema = fuzzed
    operations = [result.ok() for result in schema.get_all_operations()]
    with aiml.client() as client:
        documented = len(client.get("/openapi.json").json()["paths"])
    assert len({op.path for op in operations}) == documented  # every documented route
    tally = Tally()
    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            try:
                _fuzz(operation, mode, tally)
            except Unsatisfiable:  # nothing to negate: no parameters and no body
                assert mode is GenerationMode.NEGATIVE
    tally.report(tmp_path / "fuzz-cases.txt")


#: Registered models: a generated case names one of these at times, to get past the lookup.
MODELS = ("tiny", "tiny@default", "llama2-7b-chat", "llama2-7b-chat@production")


def _fuzz(operation: Any, mode: GenerationMode, tally: Tally) -> None:
    @given(case=operation.as_strategy(generation_mode=mode), model=st.sampled_from((None, *MODELS)))
    @_settings()
    def exercise(case: schemathesis.Case, model: str | None) -> None:
        if model is not None and isinstance(case.body, dict):
            for field in ("model", "model_name"):
                if isinstance(case.body.get(field), str):
                    case.body[field] = model
        call = lambda: case.call_and_validate(timeout=30, checks=CHECKS)  # noqa: E731
        tally.run(case.operation.label, mode.value, call)

    exercise()


def test_linked_calls_in_sequence(fuzzed: tuple[RunningAiml, Any], tmp_path: Path) -> None:
    """Stateful: schemathesis follows the schema's links from what each answer gave; the
    requests that create something name a registered model, so that something exists."""
    _, schema = fuzzed
    tally = Tally()
    linked = schema.include(path_regex=r"^/v1/responses|^/models/registered_in_mlflow/")

    class Sequences(linked.as_state_machine()):  # type: ignore[misc]
        def before_call(self, case: schemathesis.Case) -> None:
            body = case.body if isinstance(case.body, dict) else {}
            if case.operation.label == "POST /v1/responses":
                body["model"] = _draw(MODELS, case)
                body["max_output_tokens"] = 16
                if _draw(("plain", "plain", "generated"), case) == "plain":
                    body.update(input="Say hello.", store=True)  # stored, to be read back
            if case.operation.path.endswith("/aliases/{alias}") and case.path_parameters:
                case.path_parameters["name"] = "tiny"  # version 1 exists
                case.path_parameters["alias"] = _draw(("fuzzed", "stage-2", "x"), case)
                if "version" in body:
                    body["version"] = 1

        def validate_response(self, response: Any, case: schemathesis.Case, **kwargs: Any) -> None:
            def validate() -> Any:
                case.validate_response(response, checks=CHECKS)
                return response

            tally.run(case.operation.label, "stateful", validate)

    Sequences.run(settings=_settings(max_examples=EXAMPLES, stateful_step_count=8))
    # Which links a run follows depends on what the model answered: the test asks only that
    # the linked operations ran; the links themselves are followed by hand below.
    _follow_the_stored_response_links(schema, tally)
    tally.report(tmp_path / "fuzz-cases.txt")
    for label in ("GET /v1/responses/{response_id}", "GET /models/registered_in_mlflow/{name}"):
        assert tally.cases[label]["stateful"] > 0, f"no sequence reached {label}"


def _follow_the_stored_response_links(schema: Any, tally: Tally) -> None:
    """A stored response, then each link its 200 documents, with the value the link's
    runtime expression (``$response.body#/id``) names in the answer."""
    create = schema["/v1/responses"]["POST"]
    auth = {"authorization": f"Bearer {ADMIN}"}
    body = {"model": "tiny", "input": "Say hello.", "store": True, "max_output_tokens": 8}
    created = create.Case(body=body, media_type="application/json").call(headers=auth)
    assert created.status_code == 200, created.text
    links = create.definition.raw["responses"]["200"]["links"]
    targets = {"GetResponse": ("GET", 200), "DeleteResponse": ("DELETE", 200)}
    for name, (method, status) in targets.items():
        expression = links[name]["parameters"]["response_id"]
        assert expression == "$response.body#/id"
        case = schema["/v1/responses/{response_id}"][method].Case(
            path_parameters={"response_id": created.json()["id"]}
        )
        answer = case.call(headers=auth)
        tally.run(case.operation.label, "link", lambda c=case, a=answer: _checked(c, a))  # type: ignore[misc]
        assert answer.status_code == status, answer.text


def _checked(case: schemathesis.Case, answer: Any) -> Any:
    case.validate_response(answer, checks=HAND_CHECKS)
    return answer


def _draw(choices: tuple[str, ...], case: schemathesis.Case) -> str:
    """One of ``choices``, picked by the case's own data (not ``hash``: runs must repeat)."""
    return choices[zlib.crc32(repr(case.body).encode()) % len(choices)]


# --- The media routes, with generated files, on the bundled models -----------------------

#: Generated files per media route, besides one of each fixed kind.
MEDIA_EXAMPLES = int(os.environ.get("AIML_FUZZ_MEDIA_EXAMPLES", "10"))


@pytest.fixture(scope="module")
def media_aiml(
    tmp_path_factory: pytest.TempPathFactory, sqlite_template: Path, model_files: ModelFiles
) -> Iterator[tuple[RunningAiml, Any]]:
    """One keyed aiml for the media tests, with Silero VAD, PP-OCR (ocr and
    document-analysis) and Whisper tiny.en registered (loaded once, on first use)."""
    folder = tmp_path_factory.mktemp("fuzz-media")
    registry = fresh_sqlite_registry(folder, sqlite_template)
    located = {model.registered_name: model.locate(folder) for model in BUNDLED}
    registry.register_files(located["silero-vad"], "silero-vad")
    registry.register_files(located["pp-ocrv4"], "pp-ocrv4")
    registry.register_files(located["pp-ocrv4"], "pp-docs", task="document-analysis")
    registry.register_files(model_files.whisper, "whisper-tiny-en", task="asr")
    state = standard_stand_in()
    stand_in = ServerThread(state.app(), lifespan="off").start()
    aiml = launch_aiml(folder, registry, RunningOllama(state, stand_in),
                       api_keys=USER, admin_keys=ADMIN)  # fmt: skip
    schema = schemathesis.openapi.from_url(f"{aiml.url}/openapi.json")
    yield aiml, schema
    aiml.server.stop()
    stand_in.stop()


MEDIA_TASKS = {  # task: (engine, model, data field, files)
    "ocr": ("onnx", "pp-ocrv4", "image", media_files.image_files()),
    "document-analysis": ("onnx", "pp-docs", "document", media_files.document_files()),
    "vad": ("onnx", "silero-vad", "audio", media_files.audio_files()),
    "asr": ("whisper", "whisper-tiny-en", "audio", media_files.audio_files()),
}


def _each_and_generated(
    fixed: list[Any], generated: st.SearchStrategy[Any], send: Callable[[Any], None]
) -> None:
    """Every fixed sample once, then ``MEDIA_EXAMPLES`` generated ones."""
    for sample in fixed:
        send(sample)

    @given(sample=generated)
    @_settings(max_examples=MEDIA_EXAMPLES)
    def exercise(sample: Any) -> None:
        send(sample)

    exercise()


def _kind(kind: str) -> str:
    return re.sub(r" cut at \d+", " cut short", kind)


@pytest.mark.slow
@pytest.mark.parametrize("task", list(MEDIA_TASKS))
def test_media_in_json_never_fails(
    media_aiml: tuple[RunningAiml, Any], task: str, tmp_path: Path
) -> None:
    _, schema = media_aiml
    engine, model, field, (fixed, generated) = MEDIA_TASKS[task]
    operation = schema["/inference/infer"]["POST"]
    tally = Tally()

    def send(media: tuple[str, bytes]) -> None:
        kind, data = media
        body = {"task": task, "engine": engine, "model_name": model,
                "data": {field: base64.b64encode(data).decode()}}  # fmt: skip
        case = operation.Case(body=body, media_type="application/json")
        call = lambda: case.call_and_validate(  # noqa: E731
            timeout=60, checks=HAND_CHECKS, headers={"authorization": f"Bearer {USER}"}
        )
        tally.run(f"POST /inference/infer {task}: {_kind(kind)}", "media", call)

    _each_and_generated(fixed, generated, send)
    tally.report(tmp_path / "fuzz-cases.txt")


@pytest.mark.slow
def test_transcriptions_upload_never_fails(
    media_aiml: tuple[RunningAiml, Any], tmp_path: Path
) -> None:
    aiml, schema = media_aiml
    operation = schema["/v1/audio/transcriptions"]["POST"]
    tally = Tally()
    formats = ("json", "text", "verbose_json", "srt")

    def send(media: tuple[str, bytes]) -> None:
        kind, data = media
        fmt = formats[zlib.crc32(data) % len(formats)]
        form = {"model": "whisper-tiny-en", "response_format": fmt}

        def call() -> httpx.Response:
            with aiml.client(timeout=60, headers={"authorization": f"Bearer {USER}"}) as client:
                answer = client.post("/v1/audio/transcriptions", data=form,
                                     files={"file": ("clip.wav", data, "audio/wav")})  # fmt: skip
            _validate(operation, answer)
            return answer

        tally.run(f"POST /v1/audio/transcriptions: {_kind(kind)}", "media", call)

    _each_and_generated(*media_files.audio_files(), send)
    tally.report(tmp_path / "fuzz-cases.txt")


@pytest.mark.slow
def test_model_uploads_never_fail(media_aiml: tuple[RunningAiml, Any], tmp_path: Path) -> None:
    aiml, schema = media_aiml
    operation = schema["/admin/models/register"]["POST"]
    tally = Tally()
    vad = next(model for model in BUNDLED if model.registered_name == "silero-vad")
    fixed, generated = media_files.model_files(vad.locate(tmp_path).read_bytes())
    tasks = ("", "vad", "ocr", "nonsense")

    def send(files: list[media_files.Upload]) -> None:
        parts = [("files", (name, data, "application/octet-stream")) for _, name, data in files]
        task = tasks[zlib.crc32(b"".join(data for _, _, data in files)) % len(tasks)]
        form = {"registered_name": "fuzzed-upload", "task": task}

        def call() -> httpx.Response:
            with aiml.client(timeout=60, headers={"authorization": f"Bearer {ADMIN}"}) as client:
                answer = client.post("/admin/models/register", data=form, files=parts)
            _validate(operation, answer)
            return answer

        kinds = " + ".join(sorted({_kind(kind) for kind, _, _ in files}))
        tally.run(f"POST /admin/models/register: {kinds}", "media", call)

    _each_and_generated(
        [[upload] for upload in fixed], st.lists(generated, min_size=1, max_size=3), send
    )
    tally.report(tmp_path / "fuzz-cases.txt")


def _validate(operation: Any, answer: httpx.Response) -> None:
    """schemathesis' checks on an answer to a request sent by hand (a multipart form with
    the file names and bytes a strategy chose, which schemathesis cannot be told)."""
    answer.request.read()  # schemathesis reads what was sent
    case = operation.Case(media_type="multipart/form-data")
    case.validate_response(answer, checks=HAND_CHECKS)
