"""Structured-output requests from any surface as one domain object."""

from __future__ import annotations

import json
from typing import Any

from aiml.types import OutputFormat

__all__ = ["schema_format"]


def schema_format(schema: dict[str, Any], name: str | None, param: str) -> OutputFormat:
    """A JSON schema as sent: its text keeps the client's property order (the order the
    answer's keys follow) and is the key grammars are cached by."""
    return OutputFormat(schema=json.dumps(schema, separators=(",", ":")), name=name, param=param)
