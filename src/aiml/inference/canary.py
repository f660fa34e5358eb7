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
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from aiml.errors import InvalidRequest
from aiml.types import RegistryVersion

__all__ = [
    "CANARY_TAG_PREFIX",
    "Canary",
    "RunningCanary",
    "canary_of",
    "canary_tag",
    "chooses_candidate",
]

CANARY_TAG_PREFIX = "aiml.canary."
#: Buckets of the sticky choice: weights have a resolution of 0.01%.
_BUCKETS = 10_000


@dataclass(frozen=True, slots=True)
class Canary:
    """``weight`` percent (0-100) of an alias's callers go to ``version``."""

    version: int
    weight: float

    def tag_value(self) -> str:
        return f"{self.version}:{self.weight:g}"


@dataclass(frozen=True, slots=True)
class RunningCanary:
    """A canary as the resolver holds it: ``name@alias`` on ``stable``, ``weight`` percent to
    ``candidate``."""

    name: str
    alias: str
    stable: int
    candidate: int
    weight: float


def canary_tag(alias: str) -> str:
    """The version tag that declares a canary for ``alias``."""
    return f"{CANARY_TAG_PREFIX}{alias}"


def parse_canary(value: str) -> Canary:
    """``"7:5"`` as a :class:`Canary` (a 400 naming the tag's form otherwise)."""
    version, sep, weight = value.partition(":")
    try:
        canary = Canary(int(version), float(weight))
    except ValueError:
        canary = None
    if not sep or canary is None or not 0 <= canary.weight <= 100 or canary.version < 1:
        raise InvalidRequest(
            f"a canary tag is '<version>:<percent>' (e.g. '7:5'), not {value!r}", param="canary"
        )
    return canary


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
