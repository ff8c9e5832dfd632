"""Batch files, jobs and lines, durably (serve.gateway.statedb), in OpenAI's Batch API shapes.

A job's life: `validating` (its input file is split into lines, each checked on its own: a bad
line is answered at once in the error file, with its reason) -> `in_progress` (the scheduler runs
its pending lines) -> `finalizing` (output and error files are written) -> `completed`. Or
`cancelling` -> `cancelled`, `expired` after the completion window, `failed` when the input file
itself is unusable.

A line is `pending` until its answer is recorded; the answer, the "done" mark, the job's counts
and the owner's usage are written in one transaction, and only while the line is still pending.
So a gateway killed mid-batch resumes with every line either answered once or pending (lines in
flight at the crash run again; only one answer is ever recorded).

This module knows nothing about HTTP or the swarm: `serve.gateway.batch_api` serves it and
`serve.gateway.scheduler` runs the lines.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from serve.exceptions import StorageFull
from serve.gateway.statedb import StateDB
from serve.gateway.usage import add_key_usage

ENDPOINTS = ("/v1/chat/completions", "/v1/completions")
WINDOWS = {"24h": 24 * 3600}
"""Completion windows offered (OpenAI's one), in seconds."""
ACTIVE = ("validating", "in_progress", "finalizing", "cancelling")


@dataclass(frozen=True)
class Line:
    """One pending line, as the scheduler runs it."""

    batch_id: str
    idx: int
    custom_id: str
    endpoint: str
    body: dict[str, Any]
    attempts: int
    owner: str
    caller: str | None
    """The owner's account (JSON) the line runs as: consent and capture follow it."""


def new_id(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:24]}"


def parse_lines(content: bytes, endpoint: str) -> list[tuple[str, dict | None, dict | None]]:
    """Each line of a batch input file as (custom_id, body, error): a line that cannot be run
    gets an error {code, message} naming what was wrong; the others a body that validated."""
    from serve.gateway.schemas import ChatCompletionRequest, CompletionRequest

    schema = ChatCompletionRequest if endpoint == "/v1/chat/completions" else CompletionRequest
    out: list[tuple[str, dict | None, dict | None]] = []
    seen: set[str] = set()
    for n, raw in enumerate(content.decode("utf-8").splitlines(), 1):
        if not raw.strip():
            continue
        custom_id = f"line-{n}"

        def bad(code: str, message: str) -> None:
            out.append((custom_id, None, {"code": code, "message": f"line {n}: {message}",
                                          "line": n}))
        try:
            item = json.loads(raw)
        except ValueError as exc:
            bad("invalid_json", f"not valid JSON ({exc})")
            continue
        if not isinstance(item, dict):
            bad("invalid_request", "a line must be a JSON object")
            continue
        if isinstance(item.get("custom_id"), str) and 0 < len(item["custom_id"]) <= 512:
            custom_id = item["custom_id"]
        else:
            bad("missing_custom_id", "custom_id must be a non-empty string of at most 512 "
                "characters")
            continue
        if custom_id in seen:
            bad("duplicate_custom_id", f"custom_id {custom_id!r} is used by an earlier line")
            continue
        seen.add(custom_id)
        if item.get("method", "POST") != "POST":
            bad("invalid_method", f"method {item.get('method')!r}; only POST is served")
        elif item.get("url") != endpoint:
            bad("mismatched_endpoint", f"url {item.get('url')!r} is not the batch's endpoint "
                f"{endpoint}")
        elif not isinstance(item.get("body"), dict):
            bad("invalid_request", "body must be a JSON object")
        elif item["body"].get("stream"):
            bad("invalid_request", "stream is not served in a batch")
        else:
            try:
                schema.model_validate(item["body"])
            except ValidationError as exc:
                first = exc.errors()[0]
                where = ".".join(str(p) for p in first.get("loc", ()))
                bad("invalid_request", f"{first.get('msg')}" + (f" (at body.{where})"
                                                                if where else ""))
            else:
                out.append((custom_id, item["body"], None))
    return out


def error_line(custom_id: str, code: str, message: str) -> dict[str, Any]:
    """An error-file line for a line that never ran (invalid, expired, cancelled)."""
    return {"id": new_id("batch_req_"), "custom_id": custom_id, "response": None,
            "error": {"code": code, "message": message}}


def answer_line(custom_id: str, status: int, body: dict[str, Any]) -> dict[str, Any]:
    """An output- or error-file line for a line that ran and got an HTTP answer."""
    return {"id": new_id("batch_req_"), "custom_id": custom_id,
            "response": {"status_code": status, "request_id": body.get("id", new_id("req_")),
                         "body": body}, "error": None}


class BatchStore:
    def __init__(self, db: StateDB) -> None:
        self.db = db

    # files ----------------------------------------------------------------------------------

    def add_file(self, owner: str, purpose: str, filename: str, content: bytes,
                 max_owner_bytes: int | None = None) -> dict:
        """Store an owner's file; `StorageFull` if it would take the owner's stored files past
        `max_owner_bytes` (checked in the same transaction as the insert)."""
        row = {"id": new_id("file-"), "owner": owner, "purpose": purpose, "filename": filename,
               "bytes": len(content), "created_at": int(time.time())}
        with self.db.transaction() as conn:
            if max_owner_bytes is not None:
                (held,), = conn.execute("SELECT COALESCE(SUM(bytes), 0) FROM files WHERE owner = ?",
                                        (owner,)).fetchall()
                if held + len(content) > max_owner_bytes:
                    raise StorageFull(held, max_owner_bytes)
            conn.execute("INSERT INTO files VALUES (:id, :owner, :purpose, :filename, :bytes, "
                         ":created_at, :content)", {**row, "content": content})
        return file_object(row)

    def file(self, owner: str, file_id: str, content: bool = False) -> dict | None:
        """The file `file_id` if `owner` made it (None otherwise: another key's file does not
        exist for this one)."""
        cols = "*" if content else "id, owner, purpose, filename, bytes, created_at"
        rows = self.db.rows(f"SELECT {cols} FROM files WHERE id = ? AND owner = ?",
                            (file_id, owner))
        return dict(rows[0]) if rows else None

    def files(self, owner: str, purpose: str | None, limit: int) -> list[dict]:
        """The owner's files, newest first (content left out)."""
        rows = self.db.rows(
            "SELECT id, owner, purpose, filename, bytes, created_at FROM files WHERE owner = ? "
            "AND (? IS NULL OR purpose = ?) ORDER BY created_at DESC, id DESC LIMIT ?",
            (owner, purpose, purpose, limit))
        return [file_object(dict(r)) for r in rows]

    def delete_file(self, owner: str, file_id: str) -> bool:
        """Delete the owner's file (a job already past `validating` keeps its lines)."""
        with self.db.transaction() as conn:
            return conn.execute("DELETE FROM files WHERE id = ? AND owner = ?",
                                (file_id, owner)).rowcount == 1

    # jobs -----------------------------------------------------------------------------------

    def create(self, owner: str, caller: str | None, input_file_id: str, endpoint: str,
               window: str, metadata: dict[str, str] | None) -> dict:
        now = int(time.time())
        row = {"id": new_id("batch_"), "owner": owner, "caller": caller, "endpoint": endpoint,
               "input_file_id": input_file_id, "completion_window": window,
               "status": "validating", "created_at": now, "expires_at": now + WINDOWS[window],
               "metadata": json.dumps(metadata) if metadata else None}
        with self.db.transaction() as conn:
            conn.execute(f"INSERT INTO batches ({', '.join(row)}) VALUES "
                         f"({', '.join(':' + k for k in row)})", row)
        return self.get(owner, row["id"])

    def get(self, owner: str, batch_id: str) -> dict | None:
        rows = self.db.rows("SELECT * FROM batches WHERE id = ? AND owner = ?", (batch_id, owner))
        return batch_object(rows[0]) if rows else None

    def list(self, owner: str, after: str | None, limit: int) -> tuple[list[dict], bool]:
        """The owner's jobs newest first, after the job `after` (a cursor); and whether more
        follow."""
        args: tuple = (owner,)
        where = "owner = ?"
        if after:
            where += " AND (created_at, id) < (SELECT created_at, id FROM batches WHERE id = ?)"
            args += (after,)
        rows = self.db.rows(f"SELECT * FROM batches WHERE {where} ORDER BY created_at DESC, "
                            f"id DESC LIMIT ?", (*args, limit + 1))
        return [batch_object(r) for r in rows[:limit]], len(rows) > limit

    def cancel(self, owner: str, batch_id: str) -> dict | None:
        with self.db.transaction() as conn:
            conn.execute("UPDATE batches SET status = 'cancelling', cancelling_at = ? WHERE id = ? "
                         "AND owner = ? AND status IN ('validating', 'in_progress')",
                         (int(time.time()), batch_id, owner))
        return self.get(owner, batch_id)

    def active(self) -> list[dict]:
        """Jobs not finished yet, oldest first (what the scheduler works on)."""
        return [dict(r) for r in self.db.rows(
            "SELECT id, owner, status, expires_at, endpoint, input_file_id FROM batches WHERE "
            f"status IN {ACTIVE} ORDER BY created_at, id")]

    # the job's steps (the scheduler calls these) -------------------------------------------

    def validate(self, batch_id: str) -> None:
        """Split the job's input file into lines and start it (or fail it when the file cannot
        be read). Idempotent: a crash while validating validates again."""
        job = dict(self.db.rows("SELECT * FROM batches WHERE id = ?", (batch_id,))[0])
        file = self.file(job["owner"], job["input_file_id"], content=True)
        errors = None
        try:
            if file is None:
                raise ValueError(f"input file {job['input_file_id']} no longer exists")
            lines = parse_lines(file["content"], job["endpoint"])
            if not lines:
                raise ValueError("the input file holds no lines")
        except (ValueError, UnicodeDecodeError) as exc:
            lines, errors = [], {"object": "list", "data": [
                {"code": "invalid_file", "message": str(exc), "param": "input_file_id",
                 "line": None}]}
        now = int(time.time())
        with self.db.transaction() as conn:
            conn.execute("DELETE FROM lines WHERE batch_id = ?", (batch_id,))
            conn.executemany(
                "INSERT INTO lines (batch_id, idx, custom_id, body, state, result) VALUES "
                "(?, ?, ?, ?, ?, ?)",
                [(batch_id, i, cid, json.dumps(body) if body is not None else None,
                  "pending" if err is None else "error",
                  None if err is None else json.dumps(error_line(cid, err["code"],
                                                                 err["message"])))
                 for i, (cid, body, err) in enumerate(lines)])
            failed = sum(err is not None for _, _, err in lines)
            status = "failed" if errors else "in_progress"
            conn.execute(f"UPDATE batches SET status = ?, {status}_at = ?, total = ?, failed = ?, "
                         "errors = ? WHERE id = ? AND status = 'validating'",
                         (status, now, len(lines), failed,
                          json.dumps(errors) if errors else None, batch_id))

    def pending(self, limit: int, running: set[tuple[str, int]]) -> list[Line]:
        """Up to `limit` pending lines of running jobs, oldest job first, skipping `running`."""
        rows = self.db.rows(
            "SELECT l.batch_id, l.idx, l.custom_id, l.body, l.attempts, b.endpoint, b.owner, "
            "b.caller FROM lines l JOIN batches b ON b.id = l.batch_id WHERE l.state = 'pending' "
            "AND b.status = 'in_progress' ORDER BY b.created_at, b.id, l.idx LIMIT ?",
            (limit + len(running),))
        lines = [Line(r["batch_id"], r["idx"], r["custom_id"], r["endpoint"],
                      json.loads(r["body"]), r["attempts"], r["owner"], r["caller"])
                 for r in rows if (r["batch_id"], r["idx"]) not in running]
        return lines[:limit]

    def finish(self, line: Line, result: dict[str, Any], ok: bool,
               usage: dict[str, int] | None) -> bool:
        """Record a line's answer, mark it done, count it for its job and its owner: together,
        and only if it is still pending. Returns whether it was recorded."""
        with self.db.transaction() as conn:
            cur = conn.execute("UPDATE lines SET state = ?, result = ? WHERE batch_id = ? AND "
                               "idx = ? AND state = 'pending'",
                               ("ok" if ok else "error", json.dumps(result), line.batch_id,
                                line.idx))
            if cur.rowcount != 1:
                return False
            conn.execute(f"UPDATE batches SET {'completed' if ok else 'failed'} = "
                         f"{'completed' if ok else 'failed'} + 1 WHERE id = ?", (line.batch_id,))
            if usage is not None:
                add_key_usage(conn, line.owner, usage, batch_line=True)
        return True

    def retry_later(self, line: Line) -> None:
        with self.db.transaction() as conn:
            conn.execute("UPDATE lines SET attempts = attempts + 1 WHERE batch_id = ? AND idx = ?",
                         (line.batch_id, line.idx))

    def open_lines(self, batch_id: str) -> int:
        return self.db.rows("SELECT COUNT(*) AS n FROM lines WHERE batch_id = ? AND state = "
                            "'pending'", (batch_id,))[0]["n"]

    def finalize(self, batch_id: str, status: str) -> None:
        """End a job as `status` (completed, cancelled or expired): lines still pending get an
        error line saying why, then the output and error files are written."""
        now = int(time.time())
        reason = {"cancelled": ("batch_cancelled", "the batch was cancelled before this line "
                                "ran"),
                  "expired": ("batch_expired", "the batch's completion window ended before "
                              "this line ran")}.get(status)
        with self.db.transaction() as conn:
            job = conn.execute("SELECT owner, status FROM batches WHERE id = ?",
                               (batch_id,)).fetchone()
            if job["status"] not in ACTIVE:
                return
            conn.execute("UPDATE batches SET status = 'finalizing', finalizing_at = ? WHERE "
                         "id = ?", (now, batch_id))
            if reason is not None:
                for r in conn.execute("SELECT idx, custom_id FROM lines WHERE batch_id = ? AND "
                                      "state = 'pending'", (batch_id,)).fetchall():
                    conn.execute("UPDATE lines SET state = ?, result = ? WHERE batch_id = ? AND "
                                 "idx = ?", (status, json.dumps(error_line(r["custom_id"],
                                                                           *reason)),
                                             batch_id, r["idx"]))
            outputs: dict[bool, list[str]] = {True: [], False: []}
            for r in conn.execute("SELECT state, result FROM lines WHERE batch_id = ? AND "
                                  "result IS NOT NULL ORDER BY idx", (batch_id,)):
                outputs[r["state"] == "ok"].append(r["result"])
            ids: dict[bool, str | None] = {}
            for ok, lines in outputs.items():
                ids[ok] = None
                if lines:
                    ids[ok] = new_id("file-")
                    content = ("\n".join(lines) + "\n").encode()
                    conn.execute("INSERT INTO files VALUES (?, ?, ?, ?, ?, ?, ?)",
                                 (ids[ok], job["owner"], "batch_output",
                                  f"{batch_id}_{'output' if ok else 'error'}.jsonl",
                                  len(content), now, content))
            conn.execute(f"UPDATE batches SET status = ?, {status}_at = ?, output_file_id = ?, "
                         "error_file_id = ? WHERE id = ?",
                         (status, now, ids[True], ids[False], batch_id))


def file_object(row: dict) -> dict[str, Any]:
    return {"id": row["id"], "object": "file", "bytes": row["bytes"],
            "created_at": row["created_at"], "filename": row["filename"],
            "purpose": row["purpose"], "status": "processed", "status_details": None}


def batch_object(r) -> dict[str, Any]:
    """A job as OpenAI's `Batch` object."""
    keys = ("id", "endpoint", "input_file_id", "completion_window", "status", "output_file_id",
            "error_file_id", "created_at", "in_progress_at", "expires_at", "finalizing_at",
            "completed_at", "failed_at", "expired_at", "cancelling_at", "cancelled_at")
    return {**{k: r[k] for k in keys}, "object": "batch",
            "errors": json.loads(r["errors"]) if r["errors"] else None,
            "request_counts": {"total": r["total"], "completed": r["completed"],
                               "failed": r["failed"]},
            "metadata": json.loads(r["metadata"]) if r["metadata"] else None}
