"""What the commands share: the consoles, and one action run on services built from the
environment, its errors reported plainly."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import typer
from rich.console import Console

from aiml.errors import AimlError
from aiml.settings import Settings

__all__ = ["console", "err", "run"]

T = TypeVar("T")
console = Console()
err = Console(stderr=True)


def run(action: Callable[[Any], Awaitable[T]], settings: Settings | None = None) -> T:
    """Build the services from the environment (or ``settings``), run one action, report
    errors plainly."""
    from aiml.services import build_services

    async def main() -> T:
        services = build_services(settings or Settings())
        try:
            return await action(services)
        finally:
            await services.aclose()

    try:
        return asyncio.run(main())
    except AimlError as exc:
        err.print(f"[red]{exc.status_code} {exc.code}: {exc.message}[/]")
        raise typer.Exit(1) from None
