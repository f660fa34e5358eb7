"""Service settings, read from the environment.

The ecosystem's own variables are used where they exist (``MLFLOW_TRACKING_URI``,
``MLFLOW_REGISTRY_URI``, ``OLLAMA_HOST``); everything of ours is ``AIML_*``. With nothing
set, the service runs on an embedded sqlite registry under ``AIML_HOME`` and needs no
external server but the engines it is asked to use.
"""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import AliasChoices, Field, PositiveFloat, PositiveInt
from pydantic_settings import BaseSettings, SettingsConfigDict

from .lifecycle_settings import LifecycleSettings

__all__ = ["Settings"]


class Settings(BaseSettings, LifecycleSettings):
    """All knobs of the service. Field names map to ``AIML_<NAME>`` unless an alias says so."""

    model_config = SettingsConfigDict(
        env_prefix="AIML_", extra="ignore", frozen=True, populate_by_name=True
    )

    home: Path = Field(
        default=Path(".aiml"),
        description="Folder for the embedded registry, its artifacts and caches.",
    )
    host: str = Field(default="127.0.0.1", description="Address `aiml serve` binds.")
    port: int = Field(default=8000, ge=0, le=65535, description="Port `aiml serve` binds.")

    mlflow_tracking_uri: str | None = Field(
        default=None,
        validation_alias=AliasChoices("MLFLOW_TRACKING_URI", "AIML_MLFLOW_TRACKING_URI"),
        description="MLflow tracking server or database; default: sqlite under AIML_HOME.",
    )
    mlflow_registry_uri: str | None = Field(
        default=None,
        validation_alias=AliasChoices("MLFLOW_REGISTRY_URI", "AIML_MLFLOW_REGISTRY_URI"),
        description="Model registry URI when it differs from the tracking URI.",
    )
    registry_timeout_s: PositiveInt = Field(
        default=5,
        description="Every MLflow registry lookup, remote or sqlite, is answered within this "
        "(seconds), else 503 registry_unavailable; also a remote request's timeout.",
    )
    registry_max_retries: int = Field(
        default=1,
        ge=0,
        le=10,
        description="Retries of a failed registry request (MLflow's default waits minutes).",
    )
    resolve_ttl_s: float = Field(
        default=30.0,
        ge=0,
        description="How long a resolution of an alias or of 'latest' is trusted (seconds); "
        "one in use is refreshed in the background before then, and past it a request waits "
        "for the registry's answer.",
    )
    resolve_wait_s: float = Field(
        default=1.0,
        ge=0,
        description="Past its TTL, how long a request waits for the registry's answer before "
        "the expired resolution is served instead (the lookup goes on and lands); 0: never "
        "wait (seconds).",
    )
    resolve_stale_s: float = Field(
        default=300.0,
        ge=0,
        description="While the registry fails or is slower than AIML_RESOLVE_WAIT_S, how long "
        "past its TTL (or its last failed re-check) a known resolution is still served; older "
        "ones get the registry's answer or 503 (seconds).",
    )

    ollama_host: str = Field(
        default="http://127.0.0.1:11434",
        validation_alias=AliasChoices("OLLAMA_HOST", "AIML_OLLAMA_HOST"),
        description="The Ollama server; several, comma-separated, are load-balanced.",
    )
    ollama_timeout_s: PositiveFloat = Field(
        default=300.0, description="Read timeout for one Ollama call (seconds)."
    )
    ollama_connect_timeout_s: PositiveFloat = Field(
        default=5.0, description="Connect timeout for Ollama (seconds)."
    )
    ollama_allow_pull: bool = Field(
        default=False,
        description="Pull a model the Ollama server lacks instead of answering 404.",
    )

    openai_base_url: str | None = Field(
        default=None,
        validation_alias=AliasChoices("AIML_OPENAI_BASE_URL", "OPENAI_BASE_URL"),
        description="A remote OpenAI-compatible server for the openai engine (e.g. .../v1).",
    )
    openai_api_key: str | None = Field(
        default=None,
        validation_alias=AliasChoices("AIML_OPENAI_API_KEY", "OPENAI_API_KEY"),
        description="Its API key.",
    )
    openai_timeout_s: PositiveFloat = Field(
        default=300.0, description="Read timeout for one call to that server (seconds)."
    )
    engines: str = Field(
        default="ollama,llamacpp,transformers,whisper,onnx,openai",
        description="Engines to run, comma-separated; local ones need the [local] extra.",
    )
    required_engines: str = Field(
        default="auto",
        description="Engines readiness needs, comma-separated; 'auto': the in-process ones "
        "and each remote engine some registered version is tagged for. Others that are down "
        "show as degraded.",
    )
    max_loaded_models: PositiveInt = Field(
        default=3, description="Models the local engines keep loaded at once."
    )
    max_model_memory_bytes: PositiveInt = Field(
        default_factory=lambda: _half_of_ram(),
        description="Memory budget of loaded local models in bytes (default: half of RAM).",
    )
    model_idle_ttl_s: float = Field(
        default=300.0, ge=0, description="Unload a local model idle this long (0: never)."
    )
    model_load_wait_s: float = Field(
        default=30.0, ge=0, description="How long a load waits for a busy pool to free room."
    )
    default_max_tokens: PositiveInt = Field(
        default=512, description="Local engines' generation limit when a request sets none."
    )
    llamacpp_n_ctx: PositiveInt = Field(
        default=2048, description="llama.cpp context per sequence (tokens, prompt included)."
    )
    llamacpp_parallel: PositiveInt = Field(
        default=8,
        description="Sequences a llama.cpp model decodes together (continuous batching); "
        "each has its own AIML_LLAMACPP_N_CTX of KV cache.",
    )
    llamacpp_batch: PositiveInt = Field(
        default=512, description="Most tokens in one llama.cpp decode step (prompt chunks)."
    )
    llamacpp_threads: int | None = Field(
        default=None, ge=1, description="llama.cpp threads (default: the usable cores)."
    )
    torch_threads: int | None = Field(
        default=None,
        ge=1,
        description="torch threads (default: half the usable cores beside llama.cpp, else all).",
    )
    whisper_threads: int | None = Field(
        default=None, ge=1, description="faster-whisper threads (default: the usable cores)."
    )
    whisper_beam_size: PositiveInt = Field(
        default=5, description="Whisper's beam width (1 is ~30% faster, a little less exact)."
    )
    max_audio_s: PositiveFloat = Field(
        default=3600.0, description="Longest audio a request may send (seconds); past it, 413."
    )
    onnx_threads: int | None = Field(
        default=None, ge=1, description="ONNX Runtime threads for OCR (default: usable cores)."
    )
    max_image_pixels: PositiveInt = Field(
        default=40_000_000, description="Largest image (width x height) OCR reads; past it, 413."
    )
    max_document_pages: PositiveInt = Field(
        default=50, description="Most pages of a PDF document-analysis reads; past it, 413."
    )
    document_dpi: int = Field(
        default=150, ge=50, le=400, description="Resolution scanned PDF pages are read at."
    )
    embed_max_batch: PositiveInt = Field(
        default=32, description="Most texts in one batched embeddings forward pass."
    )
    embed_max_wait_ms: float = Field(
        default=5.0, ge=0, description="How long a batch waits for more requests (ms)."
    )
    api_keys: str = Field(
        default="",
        description="Comma-separated API keys (Bearer). With none, aiml binds loopback only.",
    )
    admin_keys: str = Field(
        default="",
        description="Comma-separated admin keys: register, aliases, cache, load, unload, pull.",
    )
    database_url: str | None = Field(
        default=None,
        description="aiml's own database (keys, teams, usage, audit), a SQLAlchemy URL; "
        "default: sqlite aiml.db in AIML_HOME. Fronts of one cluster share one.",
    )
    keys_refresh_s: float = Field(
        default=1.0, gt=0, le=60, description="How often a front checks the keys for changes."
    )
    usage_flush_s: float = Field(
        default=1.0,
        gt=0,
        le=60,
        description="How often counted usage is written (a crash loses at most this much of it).",
    )
    max_body_bytes: PositiveInt = Field(
        default=16 << 20, description="Largest request body (uploads to /admin excepted)."
    )
    max_upload_bytes: PositiveInt = Field(
        default=64 << 30, description="Largest model upload to /admin/models/register."
    )
    max_prompt_chars: PositiveInt = Field(
        default=200_000, description="Longest prompt (all chat messages together), characters."
    )
    max_tokens_limit: PositiveInt = Field(
        default=8192, description="Largest max_tokens a request may ask for."
    )
    max_embed_inputs: PositiveInt = Field(
        default=256, description="Most texts in one embeddings request."
    )
    max_image_bytes: PositiveInt = Field(
        default=8 << 20, description="Largest image (decoded) in a request."
    )
    max_in_flight: PositiveInt = Field(
        default=32, description="Requests running at once per engine; more wait in its queue."
    )
    max_queue: int = Field(
        default=128, ge=0, description="Requests waiting per engine; past it, 429."
    )
    request_timeout_s: PositiveFloat = Field(
        default=300.0,
        description="Deadline of a request (a request may ask for less with X-Request-Timeout).",
    )
    drain_timeout_s: float = Field(
        default=30.0, ge=0, description="On SIGTERM, how long in-flight requests may finish."
    )
    keep_alive_s: int = Field(
        default=75,
        ge=1,
        description="How long an idle client connection is kept open. Longer than clients' "
        "own idle expiry (httpx, Node: 5 s; load balancers: often 60 s), so that the client "
        "always closes first and never sends a request into a connection being closed.",
    )
    header_timeout_s: PositiveFloat = Field(
        default=10.0,
        description="How long a client may take to send a request's headers (from its first "
        "byte, or from connecting) before its connection is closed.",
    )
    max_header_bytes: int = Field(
        default=65536,
        ge=1024,
        description="Largest request head (request line and headers together), per request; "
        "past it, 431 and the connection is closed.",
    )
    max_headers: PositiveInt = Field(
        default=100, description="Most header fields in one request; past it, 431 and closed."
    )
    body_timeout_s: PositiveFloat = Field(
        default=10.0,
        description="A request body may pause at most this long, and gets this long as a "
        "grace before AIML_BODY_MIN_RATE applies; then 408 and the connection is closed.",
    )
    body_min_rate: float = Field(
        default=500.0,
        ge=0,
        description="Bytes a second a request body must average, counted from its start "
        "after the grace of AIML_BODY_TIMEOUT_S (0: only pauses count).",
    )
    max_connections_per_client: int = Field(
        default=64,
        ge=0,
        description="Open connections one client address may hold; past it, new ones get 503 "
        "and are closed (0: no cap). Behind a reverse proxy every client shares its address.",
    )
    ray: bool = Field(
        default=False,
        description="Run local models (llama.cpp, transformers) on the Ray Serve cluster at "
        "RAY_ADDRESS, multiplexed across model replicas (`aiml serve --ray`).",
    )
    ray_app: str = Field(default="aiml-models", description="Ray Serve application name.")
    ray_min_replicas: int = Field(default=1, ge=0, description="Fewest model replicas.")
    ray_max_replicas: PositiveInt = Field(default=4, description="Most model replicas.")
    ray_target_ongoing_requests: PositiveFloat = Field(
        default=8.0,
        description="Requests in flight per model replica the autoscaler aims at (its queue).",
    )
    ray_upscale_delay_s: float = Field(
        default=30.0,
        ge=0,
        description="How long the queue must stay over target before Ray "
        "adds a model replica (Ray Serve's upscale_delay_s).",
    )
    ray_downscale_delay_s: float = Field(
        default=600.0,
        ge=0,
        description="How long it must stay under target before Ray "
        "removes one (Ray Serve's downscale_delay_s).",
    )
    ray_look_back_s: PositiveFloat = Field(
        default=30.0, description="The window over which Ray averages the queue length."
    )
    ray_replica_cpus: PositiveFloat = Field(
        default=1.0, description="CPUs Ray reserves for each model replica (may be fractional)."
    )
    ray_models_per_replica: PositiveInt = Field(
        default=4,
        description="Models one replica keeps loaded (Ray's multiplexing LRU; the replica's "
        "own pool budget still applies).",
    )
    ray_stream_interval_ms: float = Field(
        default=50.0,
        ge=0,
        description="A model replica sends a stream's tokens after the first in batches, at "
        "most this often (each Ray item costs CPU on both sides); 0 sends each token alone.",
    )
    replica_name: str = Field(
        default_factory=lambda: f"{os.uname().nodename}:{os.getpid()}",
        description="This process's name in the x-aiml-replica response header.",
    )
    responses_retention_s: float = Field(
        default=30 * 86400.0,
        gt=0,
        description="How long /v1/responses keeps a response for GET and previous_response_id "
        "(in responses.db in AIML_HOME).",
    )
    log_format: str = Field(default="json", pattern="^(json|text)$", description="json or text.")
    log_level: str = Field(default="info", description="Log level of the service.")

    @property
    def engine_names(self) -> list[str]:
        return [name.strip() for name in self.engines.split(",") if name.strip()]

    @property
    def model_cache_dir(self) -> Path:
        """Where local engines keep the verified files of registry versions."""
        return self.home_dir / "models"

    @property
    def tracking_uri(self) -> str:
        """The MLflow tracking URI in effect (embedded sqlite when none is configured)."""
        if self.mlflow_tracking_uri:
            return self.mlflow_tracking_uri
        return f"sqlite:///{(self.home_dir / 'mlflow.db').as_posix()}"

    @property
    def registry_uri(self) -> str:
        return self.mlflow_registry_uri or self.tracking_uri

    @property
    def database(self) -> str:
        """aiml's own database in effect (sqlite in AIML_HOME when none is configured)."""
        return self.database_url or f"sqlite:///{(self.home_dir / 'aiml.db').as_posix()}"

    @property
    def home_dir(self) -> Path:
        return self.home.expanduser().resolve()

    @property
    def embedded_registry(self) -> bool:
        """True when the registry is the sqlite file we own (so artifacts live beside it)."""
        return not self.mlflow_tracking_uri and not self.mlflow_registry_uri

    @property
    def artifact_dir(self) -> Path:
        return self.home_dir / "artifacts"


def _half_of_ram() -> int:
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 2
    except (ValueError, OSError, AttributeError):  # pragma: no cover - non-POSIX
        return 4 << 30
