"""How an encoder's token vectors become one sentence vector, as the model declares it
(sentence-transformers' ``modules.json`` and ``1_Pooling/config.json``)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiml.errors import ModelNotServable

__all__ = ["Pooling"]


@dataclass(frozen=True, slots=True)
class Pooling:
    """How token vectors become one sentence vector (sentence-transformers' config)."""

    mode: str = "mean"  # mean, cls, max, lasttoken
    normalize: bool = False

    @classmethod
    def declared_by(cls, folder: Path) -> Pooling:
        modules_file = folder / "modules.json"
        if not modules_file.is_file():
            return cls()  # no declaration: mean pooling, the common default
        modules = json.loads(modules_file.read_text())
        mode, normalize = "mean", False
        for module in modules:
            kind = str(module.get("type", "")).rsplit(".", 1)[-1]
            if kind == "Transformer":
                continue
            if kind == "Normalize":
                normalize = True
            elif kind == "Pooling":
                path = folder / str(module.get("path", "")) / "config.json"
                config = json.loads(path.read_text()) if path.is_file() else {}
                mode = _pooling_mode(config)
            else:
                raise ModelNotServable(
                    f"sentence-transformers module {kind!r} is not supported (only "
                    "Transformer, Pooling and Normalize)",
                    param="model_name",
                )
        return cls(mode=mode, normalize=normalize)


def _pooling_mode(config: dict[str, Any]) -> str:
    for key, mode in (
        ("pooling_mode_cls_token", "cls"),
        ("pooling_mode_max_tokens", "max"),
        ("pooling_mode_lasttoken", "lasttoken"),
        ("pooling_mode_mean_tokens", "mean"),
    ):
        if config.get(key):
            return mode
    return "mean"
