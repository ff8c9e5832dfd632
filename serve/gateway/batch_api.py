"""The Files, Batches and Usage endpoints of the gateway, in OpenAI's shapes (the official SDK's
`client.files`, `client.batches`):

| endpoint | what |
|---|---|
| POST /v1/files | upload a JSONL input file (multipart, `purpose=batch`) |
| GET /v1/files, /v1/files/{id}, /v1/files/{id}/content | the caller's files; one; its bytes |
| DELETE /v1/files/{id} | delete one of the caller's files |
| POST /v1/batches | start a job over an input file (`completion_window` 24h) |
| GET /v1/batches, /v1/batches/{id} | the caller's jobs (newest first, `after`/`limit`), one job |
| POST /v1/batches/{id}/cancel | stop starting its lines; the job ends `cancelled` |
| GET /v1/usage | metered usage: maintainers see every key and node, others their own key |

Files and jobs belong to the owner that made them (`serve.gateway.guard.owner_of`); another
owner gets a 404, as for anything that does not exist. Jobs live in serve.gateway.batches and are
run by serve.gateway.scheduler.
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Literal

from fastapi import APIRouter, File, Form, Query, Request, UploadFile
from fastapi.responses import PlainTextResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from serve.exceptions import ApiError, StorageFull
from serve.gateway.batches import ENDPOINTS, WINDOWS


class BatchIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    input_file_id: str = Field(max_length=64)
    endpoint: Literal[ENDPOINTS]
    completion_window: Literal[tuple(WINDOWS)]
    metadata: dict[str, Annotated[str, Field(max_length=512)]] | None = Field(None,
                                                                             max_length=16)


def router(state, caller_of) -> APIRouter:
    r = APIRouter()

    def scheduler():
        if state.batches is None:
            raise ApiError(404, "this gateway keeps no batch state (start it with a state "
                           "directory)", code="batches_unavailable")
        return state.batches

    def missing(what: str, id_: str) -> ApiError:
        return ApiError(404, f"no {what} {id_!r}", param="id", code="not_found")

    @r.post("/v1/files")
    async def upload(request: Request, file: Annotated[UploadFile, File()],
                     purpose: Annotated[str, Form(max_length=32)]):
        batches = scheduler()
        limits = batches.config
        if purpose != "batch":
            raise ApiError(400, f"purpose {purpose!r} is not served; use 'batch'",
                           param="purpose", code="unsupported_purpose")
        content = await file.read(limits.max_file_bytes + 1)
        if len(content) > limits.max_file_bytes:
            raise ApiError(413, f"file is larger than {limits.max_file_bytes} bytes",
                           param="file", code="file_too_large")
        try:
            text = content.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ApiError(400, f"file is not UTF-8 ({exc.reason} at byte {exc.start})",
                           param="file", code="invalid_file") from None
        lines = sum(1 for line in text.splitlines() if line.strip())
        if lines == 0:
            raise ApiError(400, "file holds no lines", param="file", code="invalid_file")
        if lines > limits.max_lines:
            raise ApiError(400, f"file holds {lines} lines; at most {limits.max_lines}",
                           param="file", code="too_many_lines")
        name = (file.filename or "upload.jsonl")[:256]
        try:
            return await asyncio.to_thread(batches.store.add_file, request.state.owner, purpose,
                                           name, content, limits.max_owner_bytes)
        except StorageFull as exc:
            raise ApiError(400, str(exc), param="file", code="storage_limit_exceeded") from None

    @r.get("/v1/files")
    async def list_files(request: Request,
                         purpose: Annotated[str | None, Query(max_length=32)] = None,
                         limit: Annotated[int, Query(ge=1, le=10_000)] = 10_000):
        data = await asyncio.to_thread(scheduler().store.files, request.state.owner, purpose,
                                       limit)
        return {"object": "list", "data": data, "has_more": False}

    @r.delete("/v1/files/{file_id}")
    async def delete_file(file_id: str, request: Request):
        if not await asyncio.to_thread(scheduler().store.delete_file, request.state.owner,
                                       file_id):
            raise missing("file", file_id)
        return {"id": file_id, "object": "file", "deleted": True}

    @r.get("/v1/files/{file_id}")
    async def get_file(file_id: str, request: Request):
        from serve.gateway.batches import file_object

        row = await asyncio.to_thread(scheduler().store.file, request.state.owner, file_id)
        if row is None:
            raise missing("file", file_id)
        return file_object(row)

    @r.get("/v1/files/{file_id}/content")
    async def file_content(file_id: str, request: Request):
        row = await asyncio.to_thread(scheduler().store.file, request.state.owner, file_id, True)
        if row is None:
            raise missing("file", file_id)
        return Response(row["content"], media_type="application/jsonl")

    @r.post("/v1/batches")
    async def create(body: BatchIn, request: Request):
        batches = scheduler()
        owner, caller = request.state.owner, caller_of(request)
        file = await asyncio.to_thread(batches.store.file, owner, body.input_file_id)
        if file is None:
            raise ApiError(404, f"no file {body.input_file_id!r}", param="input_file_id",
                           code="not_found")
        if file["purpose"] != "batch":
            raise ApiError(400, f"file {body.input_file_id!r} has purpose {file['purpose']!r}; "
                           "a batch reads files uploaded with purpose 'batch'",
                           param="input_file_id", code="invalid_file")
        job = await asyncio.to_thread(
            batches.store.create, owner, caller.model_dump_json() if caller else None,
            body.input_file_id, body.endpoint, body.completion_window, body.metadata)
        batches.wake()
        return job

    @r.get("/v1/batches")
    async def list_batches(request: Request,
                           after: Annotated[str | None, Query(max_length=64)] = None,
                           limit: Annotated[int, Query(ge=1, le=100)] = 20):
        data, more = await asyncio.to_thread(scheduler().store.list, request.state.owner, after,
                                             limit)
        return {"object": "list", "data": data, "first_id": data[0]["id"] if data else None,
                "last_id": data[-1]["id"] if data else None, "has_more": more}

    @r.get("/v1/batches/{batch_id}")
    async def get_batch(batch_id: str, request: Request):
        job = await asyncio.to_thread(scheduler().store.get, request.state.owner, batch_id)
        if job is None:
            raise missing("batch", batch_id)
        return job

    @r.post("/v1/batches/{batch_id}/cancel")
    async def cancel(batch_id: str, request: Request):
        batches = scheduler()
        job = await asyncio.to_thread(batches.store.cancel, request.state.owner, batch_id)
        if job is None:
            raise missing("batch", batch_id)
        batches.wake()
        return job

    @r.get("/v1/usage")
    async def usage(request: Request,
                    format: Annotated[Literal["json", "csv"], Query()] = "json"):
        """Maintainers: every owner and node. Anyone else: their own owner row."""
        from serve.gateway.usage import to_csv

        if state.meter is None:
            raise ApiError(404, "this gateway meters no usage (start it with a state "
                           "directory)", code="usage_unavailable")
        caller = caller_of(request)
        whose = None if caller is not None and caller.role == "maintainer" \
            else request.state.owner
        report = await asyncio.to_thread(state.meter.report, whose)
        if format == "csv":
            return PlainTextResponse(to_csv(report), media_type="text/csv")
        return report

    return r
