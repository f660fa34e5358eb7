"""``/admin/*``: registering model files, loading and unloading models (admin keys)."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import anyio.to_thread
from fastapi import APIRouter, Request
from pydantic import ConfigDict, Field

from aiml.errors import InvalidRequest
from aiml.inference.manager import fixed
from aiml.inference.tasks.base import CleanText
from aiml.registry.references import parse_reference

from ..deps import ServicesDep
from ..responses import JSONResponse
from ..threaded_json import ThreadedJsonRoute
from ..uploads import receive_upload

__all__ = ["router"]

# Admin keys are checked for everything under /admin by the Authentication middleware.
router = APIRouter(prefix="/admin", tags=["admin"], route_class=ThreadedJsonRoute)


class ModelTarget(CleanText):
    model_config = ConfigDict(extra="forbid")

    engine: str = Field(max_length=64, examples=["llamacpp"])
    model_name: str = Field(max_length=512, examples=["smollm2-135m-instruct@production"])


@router.post("/models/load")
async def load(body: ModelTarget, services: ServicesDep) -> JSONResponse:
    """Resolve a model and load it into memory before its first request."""
    ref = parse_reference(body.model_name)
    resolved = await services.manager.load(fixed(body.engine, ref))
    return JSONResponse({"success": True, "resolved": resolved.describe()})


@router.post("/models/unload")
async def unload(body: ModelTarget, services: ServicesDep) -> JSONResponse:
    """Free a loaded model now (409 while it serves requests)."""
    ref = parse_reference(body.model_name)
    resolved, was_loaded = await services.manager.unload(fixed(body.engine, ref))
    return JSONResponse({"success": True, "resolved": resolved.describe(), "unloaded": was_loaded})


#: The form as OpenAPI tells it (the route reads the body itself, as it streams in).
_REGISTER_FORM = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["registered_name", "files"],
                    "properties": {
                        "registered_name": {"type": "string", "maxLength": 256},
                        "engine": {"type": "string"},
                        "task": {"type": "string"},
                        "alias": {"type": "string"},
                        "description": {"type": "string"},
                        "force": {"type": "string", "enum": ["true", "false"]},
                        "files": {"type": "array", "items": {"type": "string", "format": "binary"}},
                    },
                }
            }
        },
    }
}


@router.post(
    "/models/register",
    status_code=201,
    responses={200: {"description": "These files were registered before: that version"}},
    openapi_extra=_REGISTER_FORM,
)
async def register(request: Request, services: ServicesDep) -> JSONResponse:
    """Register uploaded model files as a new registry version (multipart form).

    Fields: ``registered_name``, optional ``engine``, ``task``, ``alias``, ``description``,
    ``force``; one or more ``files`` whose file names are their paths inside the model (one
    ``.gguf`` or ``.onnx``, or a folder's files such as ``config.json``,
    ``1_Pooling/config.json``, a Whisper folder's ``model.bin``). Nothing is read from the
    server's own disk. The files are written to disk as they arrive (under ``AIML_HOME``,
    not the system temp folder, which is often in RAM).
    """
    uploads = services.settings.home_dir / "uploads"
    staging = Path(await anyio.to_thread.run_sync(_staging_folder, uploads))
    try:
        upload = await receive_upload(request, staging, fields=_REGISTER_FIELDS, files="files")
        if not upload.files:
            raise InvalidRequest("upload the model's files in 'files'", param="files")
        fields = upload.fields
        if "registered_name" not in fields:
            raise InvalidRequest("registered_name is required", param="registered_name")
        names = upload.files
        single_file = len(names) == 1 and names[0].endswith((".gguf", ".onnx"))
        source = staging / names[0] if single_file else staging
        registration = await services.catalog.register_files(
            source,
            fields["registered_name"],
            engine=fields.get("engine") or None,
            task=fields.get("task") or None,
            alias=fields.get("alias") or None,
            description=fields.get("description") or None,
            force=fields.get("force", "").lower() in {"1", "true", "yes"},
        )
    finally:
        await anyio.to_thread.run_sync(lambda: shutil.rmtree(staging, ignore_errors=True))
    version = registration.version
    return JSONResponse(
        {
            "success": True,
            "registered_name": version.name,
            "version": version.version,
            "created": registration.created,
            "alias": registration.alias,
            "tags": dict(version.tags),
            "skipped": list(registration.skipped),
        },
        status_code=201 if registration.created else 200,
    )


_REGISTER_FIELDS = frozenset({"registered_name", "engine", "task", "alias", "description", "force"})


def _staging_folder(parent: Path) -> str:
    parent.mkdir(parents=True, exist_ok=True)
    return tempfile.mkdtemp(prefix="upload-", dir=parent)
