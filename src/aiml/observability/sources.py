"""What the metrics and the console's history read, as the shapes they read.

Observability sits below the layers it watches: the admission gates (inference) and the
model pool (engines) satisfy these protocols without this package importing either.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any, Protocol

__all__ = ["AdmissionGauges", "HeldModel", "PoolGauges"]


class AdmissionGauges(Protocol):
    """One engine's admission: requests running, waiting, and refused so far."""

    running: int
    waiting: int
    rejected: int


class HeldModel(Protocol):
    """A loaded model: its (engine, name, version) and how many hold it now."""

    @property
    def key(self) -> tuple[str, str, int]: ...

    @property
    def users(self) -> int: ...


class PoolGauges(Protocol):
    """The model pool as the metrics read it."""

    evictions: Counter[str]
    load_failures: int

    @property
    def used_bytes(self) -> int: ...

    def entries(self) -> Sequence[HeldModel]: ...

    def model_stats(self) -> dict[str, Any]: ...
