"""The tests' stand-in Ollama server as an ASGI app for a process of its own.

``bench/soak.py`` runs it under uvicorn, apart from the load client, so that the client's
process measures only itself. Set by the environment: ``STANDIN_MODELS`` (comma-separated),
``STANDIN_DELAY_S`` (before each answer) and ``STANDIN_TOKEN_DELAY_S`` (between streamed
tokens).
"""

from __future__ import annotations

import os

from tests.fakes.ollama_server import OllamaStandIn

_engine = OllamaStandIn(
    delay_s=float(os.environ.get("STANDIN_DELAY_S", "0")),
    token_delay_s=float(os.environ.get("STANDIN_TOKEN_DELAY_S", "0")),
)
for _name in os.environ.get("STANDIN_MODELS", "llama2:7b").split(","):
    _engine.add(_name)

app = _engine.app()
