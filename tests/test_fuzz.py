"""schemathesis against aiml's own OpenAPI schema, over every route it documents.

With keys configured: no 5xx for any generated request, every documented response matches
its schema, and every route that declares auth refuses requests without a valid key.
(Driven by hand rather than through schemathesis' pytest plugin, whose lazy fixtures do
not run on pytest 9.)
"""

from __future__ import annotations

import os
from collections.abc import Callable

import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import ignored_auth, response_schema_conformance

from tests.conftest import ModelFiles, Registry, RunningAiml

CHECKS = [not_a_server_error, response_schema_conformance, ignored_auth]


def test_no_route_fails_on_any_input(
    start_aiml: Callable[..., RunningAiml], registry: Registry, model_files: ModelFiles
) -> None:
    registry.register("llama2-7b-chat", "llama2:7b", task="chat", alias="production")
    registry.register_files(model_files.tiny_lm_a, "tiny", alias="default")
    aiml = start_aiml(api_keys="fuzz-user", admin_keys="fuzz-admin", max_tokens_limit=64)
    config = schemathesis.config.SchemathesisConfig.from_str(
        '[auth.openapi.bearer]\nbearer = "fuzz-admin"\n'
    )
    schema = schemathesis.openapi.from_url(f"{aiml.url}/openapi.json", config=config)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 25  # every documented route is exercised
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(
            max_examples=int(os.environ.get("AIML_FUZZ_EXAMPLES", "25")),
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        def exercise(case: schemathesis.Case) -> None:
            case.call_and_validate(timeout=30, checks=CHECKS)

        exercise()
