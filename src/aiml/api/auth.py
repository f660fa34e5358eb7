"""Bearer keys, kept only as SHA-256 digests and compared in constant time."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable

__all__ = ["KeyRing"]


class KeyRing:
    """A set of keys; the plain keys are dropped as soon as they are hashed."""

    def __init__(self, keys: Iterable[str]) -> None:
        self._digests = [_digest(key) for key in keys if key]

    @classmethod
    def from_setting(cls, value: str) -> KeyRing:
        return cls(part.strip() for part in value.split(","))

    def __bool__(self) -> bool:
        return bool(self._digests)

    def accepts(self, key: str) -> bool:
        digest = _digest(key)
        # Every digest is compared, match or not, so timing says nothing about which key.
        matches = [hmac.compare_digest(digest, known) for known in self._digests]
        return any(matches)


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()
