"""What a model is and can do (:class:`ModelDetails`), from what each kind of engine can read.

Capabilities use Ollama's names (``completion``, ``tools``, ``insert``, ``embedding``,
``vision``) plus ``chat``: the model has a chat template, so messages can be rendered for
it. ``tools`` means aiml can get tool calls from the model; on llama.cpp that is any model
with a chat template (the call is generated under a grammar), and ``tools_in_template`` says
whether the template renders the tools itself.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from aiml.types import ModelDetails, Task

__all__ = ["generic_details", "gguf_details", "hf_details", "ollama_details"]

#: GGUF's general.file_type (llama.cpp's LLAMA_FTYPE) as Ollama names quantisations.
_FILE_TYPES = {"0": "F32", "1": "F16", "2": "Q4_0", "3": "Q4_1", "7": "Q8_0", "8": "Q5_0",
               "9": "Q5_1", "10": "Q2_K", "11": "Q3_K_S", "12": "Q3_K_M", "13": "Q3_K_L",
               "14": "Q4_K_S", "15": "Q4_K_M", "16": "Q5_K_S", "17": "Q5_K_M", "18": "Q6_K",
               "32": "BF16"}  # fmt: skip


def generic_details(family: str, task: str | None, extra_options: frozenset[str]) -> ModelDetails:
    """What an engine that cannot look inside the model can say: its registered task, and
    what the engine passes on to the server that runs it."""
    if task == Task.EMBEDDINGS:
        return ModelDetails(family=family, capabilities=("embedding",))
    if task == Task.TEXT_CLASSIFICATION:
        return ModelDetails(family=family, capabilities=("classification",))
    capabilities = ["completion", "chat"]
    capabilities += ["tools"] if "tools" in extra_options else []
    capabilities += ["insert"] if "suffix" in extra_options else []
    capabilities += ["vision"] if task == Task.VLM else []
    return ModelDetails(family=family, capabilities=tuple(capabilities))


def gguf_details(
    meta: Mapping[str, str], has_fim: bool, task: str | None, tools_in_template: bool
) -> ModelDetails:
    """From a GGUF's metadata (read without loading its weights)."""
    arch = meta.get("general.architecture", "")
    template = meta.get("tokenizer.chat_template", "")
    if task == Task.EMBEDDINGS:
        capabilities: tuple[str, ...] = ("embedding",)
    else:
        capabilities = ("completion",)
        capabilities += ("chat", "tools") if template else ()
        capabilities += ("insert",) if has_fim else ()
    context = meta.get(f"{arch}.context_length", "")
    width = meta.get(f"{arch}.embedding_length", "")
    return ModelDetails(
        family=arch,
        format="gguf",
        parameter_size=meta.get("general.size_label", ""),
        quantization=_FILE_TYPES.get(meta.get("general.file_type", ""), ""),
        context_length=int(context) if context.isdigit() else None,
        template=template,
        capabilities=capabilities,
        tools_in_template=bool(template) and tools_in_template,
        embedding_length=int(width) if task == Task.EMBEDDINGS and width.isdigit() else None,
    )


def hf_details(folder: Path, task: str | None) -> ModelDetails:
    """From a Hugging Face folder's ``config.json`` and tokenizer files (no weights read)."""
    config = _json(folder / "config.json")
    base = generic_details(str(config.get("model_type", "")), task, frozenset())
    template = str(_json(folder / "tokenizer_config.json").get("chat_template") or "")
    if not template and (folder / "chat_template.jinja").is_file():
        template = (folder / "chat_template.jinja").read_text(encoding="utf-8")
    capabilities = tuple(c for c in base.capabilities if c != "chat" or template)
    if "vision_config" in config and task not in (Task.EMBEDDINGS, Task.TEXT_CLASSIFICATION):
        capabilities += () if "vision" in capabilities else ("vision",)
    context = config.get("max_position_embeddings")
    width = config.get("hidden_size")  # what the pooled sentence embedding is, without a head
    return ModelDetails(
        family=base.family,
        format="safetensors",
        context_length=context if isinstance(context, int) else None,
        template=template,
        capabilities=capabilities,
        embedding_length=width if task == Task.EMBEDDINGS and isinstance(width, int) else None,
    )


def ollama_details(shown: Mapping[str, Any], fallback: ModelDetails) -> ModelDetails:
    """From an Ollama server's ``/api/show`` answer; what it leaves out comes from
    ``fallback`` (older servers send no ``capabilities``)."""
    details = shown.get("details") or {}
    info = shown.get("model_info") or shown.get("modelinfo") or {}
    arch = str(info.get("general.architecture", ""))
    context = info.get(f"{arch}.context_length")
    width = info.get(f"{arch}.embedding_length")
    capabilities = tuple(shown.get("capabilities") or fallback.capabilities)
    if "completion" in capabilities and "chat" not in capabilities:
        capabilities += ("chat",)  # Ollama renders every completion model's template itself
    return ModelDetails(
        family=str(details.get("family") or arch or fallback.family),
        format=str(details.get("format", "")),
        parameter_size=str(details.get("parameter_size", "")),
        quantization=str(details.get("quantization_level", "")),
        context_length=context if isinstance(context, int) else None,
        template=str(shown.get("template", "")),
        capabilities=capabilities,
        embedding_length=width if "embedding" in capabilities and isinstance(width, int) else None,
    )


def _json(path: Path) -> dict[str, Any]:
    try:
        loaded = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return loaded if isinstance(loaded, dict) else {}
