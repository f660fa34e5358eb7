"""A canary: an alias's traffic split between its version and a candidate, by weight.

Declared in the registry, on the version the alias points to, as one version tag
``aiml.canary.<alias> = "<candidate version>:<percent>"`` (``"7:5"``: 5% to version 7). A
version tag because setting one is an MLflow webhook event (``model_version_tag.set``), so
a pipeline's ``MlflowClient().set_model_version_tag(...)`` takes effect at once; MLflow
sends no event for registered-model tags. On the alias's version because that is what the
alias's lookup already reads (no registry call more while no canary runs), and because
moving the alias (promotion, or any move) leaves the tag behind: a canary never outlives
the version it was declared against.

The choice per request is sticky: a hash of the alias and the caller's affinity key (the
OpenAI ``user`` field, an ``x-aiml-session`` header, else the API key, else the client's
address) against the weight, so a caller keeps one version for a conversation, and a
weight raised from 5 to 25 keeps the first 5%'s callers on the candidate.

A staged canary carries its plan in the same tag: ``"7:25 plan=5,25,100 dwell=600
since=1765130000"`` is at 25% since that time (Unix seconds), and steps up every 600 s
while the guard holds (rollout_plan.py); the guard's trip writes ``"7:0"``, which ends the
plan with the canary's traffic.
"""

from __future__ import annotations

import hashlib
import itertools
import math
from dataclasses import dataclass

from aiml.errors import InvalidRequest
from aiml.types import RegistryVersion

__all__ = [
    "CANARY_TAG_PREFIX",
    "Canary",
    "Plan",
    "RunningCanary",
    "canary_of",
    "canary_tag",
    "chooses_candidate",
]

CANARY_TAG_PREFIX = "aiml.canary."
#: Buckets of the sticky choice: weights have a resolution of 0.01%.
_BUCKETS = 10_000


@dataclass(frozen=True, slots=True)
class Plan:
    """A staged canary's weights, in order, each held ``dwell_s`` seconds at least; the
    current step began at ``since`` (Unix seconds, so every front reads the same time)."""

    steps: tuple[float, ...]
    dwell_s: float
    since: float

    def after(self, weight: float) -> float | None:
        """The step that follows ``weight``; ``None`` past the last (promotion is next)."""
        return next((step for step in self.steps if step > weight), None)

    def tag_suffix(self) -> str:
        steps = ",".join(f"{step:g}" for step in self.steps)
        since = f"{self.since:.3f}".rstrip("0").rstrip(".")  # to the millisecond
        return f" plan={steps} dwell={self.dwell_s:g} since={since}"


@dataclass(frozen=True, slots=True)
class Canary:
    """``weight`` percent (0-100) of an alias's callers go to ``version``; a staged canary
    has the ``plan`` its weight steps through."""

    version: int
    weight: float
    plan: Plan | None = None

    def tag_value(self) -> str:
        suffix = self.plan.tag_suffix() if self.plan is not None else ""
        return f"{self.version}:{self.weight:g}{suffix}"


@dataclass(frozen=True, slots=True)
class RunningCanary:
    """A canary as the resolver holds it: ``name@alias`` on ``stable``, ``weight`` percent to
    ``candidate``."""

    name: str
    alias: str
    stable: int
    candidate: int
    weight: float
    plan: Plan | None = None


def canary_tag(alias: str) -> str:
    """The version tag that declares a canary for ``alias``."""
    return f"{CANARY_TAG_PREFIX}{alias}"


def parse_canary(value: str) -> Canary:
    """``"7:5"`` (or with a plan, ``"7:5 plan=5,25,100 dwell=600 since=1765130000"``) as a
    :class:`Canary`; a 400 naming the tag's form otherwise."""
    head, *fields = value.split()
    version, sep, weight = head.partition(":") if head else ("", "", "")
    try:
        canary = Canary(int(version), float(weight), _parse_plan(fields) if fields else None)
    except ValueError:
        canary = None
    if not sep or canary is None or not 0 <= canary.weight <= 100 or canary.version < 1:
        raise InvalidRequest(
            f"a canary tag is '<version>:<percent>' (e.g. '7:5'), optionally followed by "
            f"'plan=5,25,100 dwell=<seconds> since=<unix time>', not {value!r}",
            param="canary",
        )
    return canary


def make_plan(steps: list[float], dwell_s: float, since: float) -> Plan:
    """A plan from what a caller asked for: steps rising within (0, 100], a dwell above 0
    (a 400 naming the rule otherwise)."""
    rising = all(a < b for a, b in itertools.pairwise(steps))
    if not steps or not rising or steps[0] <= 0 or steps[-1] > 100:
        raise InvalidRequest(
            "a plan's steps are percents rising within (0, 100], e.g. [5, 25, 100]",
            param="plan",
        )
    if not 0 < dwell_s < math.inf:
        raise InvalidRequest("a plan's dwell is a time above 0 seconds", param="dwell_s")
    if not math.isfinite(since):
        raise InvalidRequest("a plan's start is a Unix time", param="since")
    return Plan(tuple(steps), dwell_s, since)


def _parse_plan(fields: list[str]) -> Plan:
    """``plan=5,25,100 dwell=600 since=1765130000``; a ValueError if it is not that."""
    given = dict(field.partition("=")[::2] for field in fields)
    if set(given) != {"plan", "dwell", "since"}:
        raise ValueError(fields)
    steps = [float(step) for step in given["plan"].split(",")]
    try:
        return make_plan(steps, float(given["dwell"]), float(given["since"]))
    except InvalidRequest as exc:
        raise ValueError(fields) from exc


def canary_of(version: RegistryVersion, alias: str) -> Canary | None:
    """The canary declared for ``alias`` on the version it points to, if any; a tag that
    does not parse declares none (the alias serves its version, as if untagged)."""
    value = version.tag(canary_tag(alias))
    if not value:
        return None
    try:
        canary = parse_canary(value)
    except InvalidRequest:
        return None
    return None if canary.version == version.version else canary


def chooses_candidate(name: str, alias: str, affinity: str, weight: float) -> bool:
    """Whether the caller ``affinity`` of ``name@alias`` is in the candidate's share."""
    if weight <= 0:
        return False
    if weight >= 100:
        return True
    digest = hashlib.blake2b(f"{name}@{alias}\0{affinity}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % _BUCKETS < weight * (_BUCKETS // 100)
