"""The commands that change the registry directly: aliases, canaries (``rollout``), and the
subscription to MLflow's webhooks."""

from __future__ import annotations

import asyncio
from typing import Annotated

import typer

from aiml.inference.canary import Canary

from .common import console, run

__all__ = ["alias_app", "rollout_app", "webhook_app"]

alias_app = typer.Typer(help="Point registry aliases (e.g. @production) at versions.")
rollout_app = typer.Typer(help="Canaries: a share of an alias's callers on a candidate version.")
webhook_app = typer.Typer(help="MLflow's webhooks: registry changes served at once.")


@alias_app.command("set")
def alias_set(
    name: Annotated[str, typer.Argument(help="Registered model")],
    alias: Annotated[str, typer.Argument(help="Alias, e.g. production")],
    version: Annotated[int, typer.Argument(help="Version the alias points to")],
    force: Annotated[
        bool, typer.Option("--force", help="Move it even if VERSION lacks what the alias serves")
    ] = False,
) -> None:
    """Point NAME@ALIAS at VERSION, once VERSION is found to serve what the alias serves now
    (its engine, tasks, files, capabilities such as a chat template); --force skips that."""
    run(lambda s: s.catalog.set_alias(name, alias, version, force=force))
    console.print(f"{name}@{alias} -> version {version}")


@alias_app.command("delete")
def alias_delete(
    name: Annotated[str, typer.Argument(help="Registered model")],
    alias: Annotated[str, typer.Argument(help="Alias to delete")],
) -> None:
    """Delete NAME@ALIAS."""
    run(lambda s: s.catalog.delete_alias(name, alias))
    console.print(f"deleted {name}@{alias}")


@webhook_app.command("register")
def webhook_register(
    url: Annotated[
        str | None, typer.Option(help="aiml's URL as MLflow reaches it [default: AIML_HOST:PORT]")
    ] = None,
    name: Annotated[str, typer.Option(help="The webhook's name in MLflow")] = "aiml",
) -> None:
    """Subscribe this aiml's /hooks/mlflow to MLflow's registry events (signed with
    AIML_MLFLOW_WEBHOOK_SECRET), then have MLflow send it a test delivery."""
    from aiml.registry.webhooks import subscribe

    lines = run(lambda s: asyncio.to_thread(subscribe, s.settings, url, name=name))
    console.print("\n".join(lines), soft_wrap=True)


@rollout_app.command("canary")
def rollout_canary(
    name: Annotated[str, typer.Argument(help="Registered model")],
    alias: Annotated[str, typer.Argument(help="Alias, e.g. production")],
    version: Annotated[int, typer.Argument(help="The candidate version")],
    weight: Annotated[
        float | None, typer.Option(help="Percent of the alias's callers (default 5)")
    ] = None,
    plan: Annotated[
        str | None,
        typer.Option(help="Staged: rising percents, e.g. 5,25,100, then promoted"),
    ] = None,
    dwell: Annotated[float, typer.Option(help="Seconds at least at each step of --plan")] = 600,
    force: Annotated[
        bool, typer.Option("--force", help="Start it even if VERSION lacks what the alias serves")
    ] = False,
) -> None:
    """Send WEIGHT percent of NAME@ALIAS's callers (each keeps its version) to VERSION, or
    change the weight of the canary running; with --plan, step through its percents every
    --dwell seconds while the guard holds, then promote VERSION. VERSION must serve what
    the alias serves."""
    try:
        steps = [float(step) for step in plan.split(",")] if plan else None
    except ValueError:
        raise typer.BadParameter("percents separated by commas, e.g. 5,25,100") from None
    if steps is None and weight is None:
        weight = 5.0
    canary = run(
        lambda s: s.rollouts.start(
            name, alias, version, weight, plan=steps, dwell_s=dwell, force=force
        )
    )
    console.print(f"{name}@{alias}: {_split(canary)}")


@rollout_app.command("status")
def rollout_status(
    name: Annotated[str, typer.Argument(help="Registered model")],
    alias: Annotated[str, typer.Argument(help="Alias")],
) -> None:
    """NAME@ALIAS's version and its canary, if one runs."""
    version, canary = run(lambda s: s.rollouts.current(name, alias))
    split = "no canary" if canary is None else _split(canary)
    console.print(f"{name}@{alias} -> version {version}; {split}")


def _split(canary: Canary) -> str:
    split = f"{canary.weight:g}% to version {canary.version}"
    if canary.plan is not None:
        steps = " -> ".join(f"{step:g}%" for step in canary.plan.steps)
        split += f" (plan {steps}, {canary.plan.dwell_s:g} s a step, then promoted)"
    return split


@rollout_app.command("promote")
def rollout_promote(
    name: Annotated[str, typer.Argument(help="Registered model")],
    alias: Annotated[str, typer.Argument(help="Alias")],
    force: Annotated[bool, typer.Option("--force", help="Move without checking")] = False,
) -> None:
    """Move NAME@ALIAS to its canary's candidate and end the canary."""
    version = run(lambda s: s.rollouts.promote(name, alias, force=force))
    console.print(f"{name}@{alias} -> version {version}; canary ended")


@rollout_app.command("stop")
def rollout_stop(
    name: Annotated[str, typer.Argument(help="Registered model")],
    alias: Annotated[str, typer.Argument(help="Alias")],
) -> None:
    """End NAME@ALIAS's canary: every caller on the alias's version again."""
    stopped = run(lambda s: s.rollouts.stop(name, alias))
    console.print(f"{name}@{alias}: " + ("no canary ran" if stopped is None else "canary ended"))
