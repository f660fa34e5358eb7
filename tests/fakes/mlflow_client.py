"""An MLflow client whose every call fails the way an unreachable tracking server does."""

from __future__ import annotations

from collections.abc import Callable


class UnreachableMlflowClient:
    def __getattr__(self, name: str) -> Callable[..., None]:
        def fail(*args: object, **kwargs: object) -> None:
            raise ConnectionError("Connection refused")

        return fail
