"""The batch scheduler: batch lines fill the capacity interactive requests leave idle.

Interactive requests always start at once; the scheduler only decides how many batch lines run
beside them. While no interactive request runs, up to `BatchConfig.max_sessions` lines run at
once, each its own session through the pipeline; the nodes batch the forwards that reach them
together, so the lines travel as micro-batches. Lines start `stagger_s` apart, so those
micro-batches sit at different stages of the pipeline (node A computes one while B computes
another) instead of moving in lockstep with two of three stages idle. While interactive requests
run, only the `busy_sessions` oldest lines go on: the others wait before their next traversal
(`hold`, the pipeline's `before_traverse` hook; their caches stay on the nodes, nothing is
recomputed) and no new line starts.

Each line runs through the gateway's own request path (`GatewayState.handlers`: the same
rendering, budget checks, sampling and capture as `/v1/chat/completions` and `/v1/completions`)
and its answer is recorded by `BatchStore.finish`. A line the swarm could not answer (no route, a
failed hop) is tried again later, up to `max_attempts` times.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import time
from typing import Any

from serve.config import BatchConfig
from serve.exceptions import ApiError
from serve.gateway.batches import BatchStore, Line, answer_line
from serve.gateway.guard import error_body

log = logging.getLogger("shoal.batch")
RETRY = (502, 503)
"""Statuses that say the swarm, not the line, failed: the line is tried again."""
BATCH_LINE: contextvars.ContextVar[tuple[str, int] | None] = contextvars.ContextVar(
    "batch_line", default=None)
"""The line the running task serves (None: an interactive request); set in the line's task, so
the pipeline's hook can tell a batch line's traversal from an interactive one."""
HOLD_POLL_S = 0.005


class Scheduler:
    def __init__(self, state: Any, store: BatchStore, config: BatchConfig | None = None) -> None:
        self.state, self.store = state, store
        self.config = config or BatchConfig()
        self.running: dict[tuple[str, int], asyncio.Task] = {}
        self.lines_run = 0
        """Lines answered by this process (recorded)."""
        self.generating = 0
        """Lines inside the request path now."""
        self._wake = asyncio.Event()
        self._hold_until = 0.0
        """After the swarm failed a line: no new line starts before this (monotonic)."""
        self._released = asyncio.Event()
        """Set when held lines may go on (`hold`)."""
        self._watch: asyncio.Task | None = None

    def wake(self) -> None:
        """Look at the job table now (a job was created or cancelled)."""
        self._wake.set()

    def interactive(self) -> int:
        """Interactive requests running now: every request counts in its runtime's `inflight`
        while it generates, and `generating` counts the batch lines among them (a line being
        recorded is no longer generating, so it cannot hide an interactive request)."""
        inflight = sum(rt.inflight for rt in self.state.versions.items.values())
        return max(0, inflight - self.generating)

    def capacity(self) -> int:
        return self.config.busy_sessions if self.interactive() else self.config.max_sessions

    async def hold(self) -> None:
        """The pipeline's `before_traverse`: while interactive requests run, a batch line other
        than the `busy_sessions` oldest waits before its next traversal (its nodes keep its
        cache), so interactive traffic has the pipeline nearly to itself."""
        key = BATCH_LINE.get()
        if key is None:
            return
        while self.interactive() and key not in list(self.running)[:self.config.busy_sessions]:
            if self._watch is None or self._watch.done():
                self._released.clear()  # here, not in the task: a set event would not suspend
                self._watch = asyncio.create_task(self._watch_interactive())
            await self._released.wait()

    async def _watch_interactive(self) -> None:
        """One poll for every held line: release them when no interactive request runs."""
        while self.interactive():
            await asyncio.sleep(HOLD_POLL_S)
        self._released.set()

    async def run(self) -> None:
        """Until cancelled: advance jobs, start lines, wait for a change."""
        try:
            while True:
                try:
                    await self.step()
                except Exception:  # a broken job must not stop the others
                    log.exception("batch scheduler step failed")
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self.config.poll_s)
        finally:
            for task in list(self.running.values()):
                task.cancel()

    async def step(self) -> None:
        now = time.time()
        for job in await asyncio.to_thread(self.store.active):
            busy = any(key[0] == job["id"] for key in self.running)
            if job["status"] == "validating":
                await asyncio.to_thread(self.store.validate, job["id"])
            elif job["expires_at"] <= now:
                await asyncio.to_thread(self.store.finalize, job["id"], "expired")
            elif job["status"] == "cancelling" and not busy:
                await asyncio.to_thread(self.store.finalize, job["id"], "cancelled")
            elif job["status"] == "in_progress" and not busy and \
                    await asyncio.to_thread(self.store.open_lines, job["id"]) == 0:
                await asyncio.to_thread(self.store.finalize, job["id"], "completed")
        if time.monotonic() < self._hold_until:
            return
        free = self.capacity() - len(self.running)
        if free <= 0:
            return
        lines = await asyncio.to_thread(self.store.pending, free, set(self.running))
        for i, line in enumerate(lines):
            if i and self.config.stagger_s:
                await asyncio.sleep(self.config.stagger_s)
                if len(self.running) >= self.capacity():  # an interactive request arrived
                    break
            key = (line.batch_id, line.idx)
            self.running[key] = asyncio.create_task(self._line(line))

    async def _line(self, line: Line) -> None:
        BATCH_LINE.set((line.batch_id, line.idx))
        try:
            self.generating += 1
            try:
                status, body = await run_line(self.state, line)
            finally:
                self.generating -= 1
            if status in RETRY and line.attempts + 1 < self.config.max_attempts:
                self._hold_until = time.monotonic() + 1.0
                await asyncio.to_thread(self.store.retry_later, line)
                return
            ok = status == 200
            if await asyncio.to_thread(self.store.finish, line, answer_line(
                    line.custom_id, status, body), ok, body.get("usage") if ok else None):
                self.lines_run += 1
        except asyncio.CancelledError:
            raise
        except Exception:  # the store failed: the line stays pending and runs again
            log.exception("batch line %s/%s not recorded", line.batch_id, line.custom_id)
        finally:
            self.running.pop((line.batch_id, line.idx), None)
            self._wake.set()


async def run_line(state: Any, line: Line) -> tuple[int, dict[str, Any]]:
    """Run one line through the gateway's request path: (HTTP status, response body)."""
    from serve.gateway.schemas import ChatCompletionRequest, CompletionRequest
    from traces.schemas import Account

    chat = line.endpoint == "/v1/chat/completions"
    try:
        body = (ChatCompletionRequest if chat else CompletionRequest).model_validate(line.body)
        caller = Account.model_validate_json(line.caller) if line.caller else None
        return 200, await state.handlers[line.endpoint](body, caller, None)
    except ApiError as exc:
        return exc.status, error_body(exc.message, exc.type, exc.param, exc.code)
    except Exception:  # a bug: the line fails alone, as an interactive request would (500)
        log.exception("batch line %s/%s raised", line.batch_id, line.custom_id)
        return 500, error_body("internal error", "server_error")
