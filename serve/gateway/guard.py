"""The gateway's front door: every HTTP request is authenticated and its body bounded before any
route parses it.

`Guard` is an ASGI middleware in front of the FastAPI app. For each request it

1. refuses a declared body over `ApiLimits.max_body_bytes` (`max_upload_bytes` for a file upload)
   with a 413, before reading it;
2. authenticates the bearer key (from the header alone), so an unauthenticated caller never gets
   a large body parsed and validated; the caller's account lands in `request.state.caller`
   and who owns what the request makes and uses (`owner_of`) in `request.state.owner`;
3. reads the body itself, up to the limit (413 beyond) and within `body_timeout_s` (408 after:
   a client that trickles bytes holds no worker), and replays it to the route. Uploads, read only
   once authenticated, get `upload_timeout_s`, and at most `max_uploads` are read at once (the
   rest wait), so memory held by bodies stays bounded.

Key lookups in the trace store run in a worker thread, at most `auth_lookups` at a time; requests
that carry the same key while its lookup runs share it (when the store's cache of a busy key
expires, one lookup runs, not one per request); and a key that failed is remembered (by hash) for
`failed_key_ttl_s`, so a caller who repeats a bad key costs a dictionary lookup, and one who sprays
random keys costs a bounded share of the threads.

It knows nothing about OpenAI's request bodies; the routes do.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections import OrderedDict
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, Field
from starlette.responses import JSONResponse

from serve.exceptions import ApiError
from serve.gateway.dashboard import PUBLIC_PATHS as DASHBOARD_SHELL

if TYPE_CHECKING:
    from traces.schemas import Account

PUBLIC_PATHS = frozenset({"/health", "/metrics", "/v1/rollout", "/openapi.json", "/docs",
                          "/docs/oauth2-redirect", "/redoc"}) | DASHBOARD_SHELL
"""Paths that answer without a key (a key, when given, must still be valid). `/metrics` and
`/v1/rollout` show their operational detail only to maintainer keys; the dashboard's shell holds
no data (its views need a key)."""
UPLOAD_PATHS = frozenset({("POST", "/v1/files")})
"""Requests whose bodies are files (Batch API input), bounded by `ApiLimits.max_upload_bytes`."""


class ApiLimits(BaseModel):
    """Bounds on what one request may cost the gateway before a route looks at it."""

    max_body_bytes: int = Field(2 * 2**20, gt=0)
    """Largest request body accepted (413 beyond). 2 MiB holds any prompt that fits a context of
    a few hundred thousand tokens."""
    body_timeout_s: float = Field(30.0, gt=0)
    """Time allowed to receive the whole body (408 after)."""
    max_upload_bytes: int = Field(64 * 2**20, gt=0)
    """Largest file upload body accepted (`UPLOAD_PATHS`; 413 beyond). Read only from an
    authenticated caller."""
    upload_timeout_s: float = Field(300.0, gt=0)
    """Time allowed to receive a whole upload (408 after)."""
    max_uploads: int = Field(2, gt=0)
    """Upload bodies read at once (the rest wait their turn)."""
    max_key_chars: int = Field(256, gt=0)
    """Longer bearer keys are refused without a lookup."""
    auth_lookups: int = Field(4, gt=0)
    """Trace-store key lookups running at once (the rest wait)."""
    failed_key_ttl_s: float = Field(60.0, ge=0)
    """How long a key that failed is refused from memory. Keys are random secrets created
    before first use, so a key that failed does not become valid later."""
    failed_keys_kept: int = Field(65536, gt=0)
    """Most failed keys remembered (oldest forgotten first)."""
    failed_auth_per_client: int = Field(30, gt=0)
    """Failed authentications one client address may make per `failed_auth_window_s`; beyond,
    its requests get a 429 without a lookup until the window has passed (a key sprayer from one
    address guesses at this rate at most)."""
    failed_auth_window_s: float = Field(60.0, gt=0)


def error_body(message: str, type_: str, param: str | None = None,
               code: str | None = None) -> dict[str, Any]:
    """An error in OpenAI's shape."""
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def error_response(exc: ApiError) -> JSONResponse:
    return JSONResponse(error_body(exc.message, exc.type, exc.param, exc.code), exc.status,
                        headers=exc.headers)


def _unauthorized(message: str) -> ApiError:
    return ApiError(401, message, "authentication_error", code="invalid_api_key")


class Authenticator:
    """Bearer key → caller: a trace-store account, a static-key app account, or None (open)."""

    def __init__(self, state: Any, limits: ApiLimits) -> None:
        self.state, self.limits = state, limits
        self._failed: OrderedDict[str, float] = OrderedDict()
        self._lookups: asyncio.Semaphore | None = None
        self._inflight: dict[str, asyncio.Future] = {}
        """Key digest → the lookup running for it (concurrent requests share it)."""
        self.lookups = 0
        """Trace-store lookups made (failed keys answered from memory are not counted)."""
        self._failures_by_client: OrderedDict[str, list[float]] = OrderedDict()
        """Client address → times of its recent failed authentications."""

    def _remember_failure(self, digest: str) -> None:
        self._failed[digest] = time.monotonic() + self.limits.failed_key_ttl_s
        self._failed.move_to_end(digest)
        while len(self._failed) > self.limits.failed_keys_kept:
            self._failed.popitem(last=False)

    def _failed_recently(self, digest: str) -> bool:
        until = self._failed.get(digest)
        if until is None:
            return False
        if until < time.monotonic():
            del self._failed[digest]
            return False
        return True

    def _check_client(self, client: str) -> None:
        """A 429 for a client address that failed authentication too often lately."""
        recent = self._failures_by_client.get(client)
        if not recent:
            return
        horizon = time.monotonic() - self.limits.failed_auth_window_s
        recent[:] = [t for t in recent if t > horizon]
        if len(recent) >= self.limits.failed_auth_per_client:
            wait = int(recent[0] - horizon) + 1
            raise ApiError(429, f"too many failed authentications from this address; retry in "
                           f"{wait} s", "rate_limit_error", code="rate_limit_exceeded",
                           headers={"Retry-After": str(wait)})

    def _count_failure(self, client: str) -> None:
        self._failures_by_client.setdefault(client, []).append(time.monotonic())
        self._failures_by_client.move_to_end(client)
        while len(self._failures_by_client) > self.limits.failed_keys_kept:
            self._failures_by_client.popitem(last=False)

    async def caller(self, authorization: str, required: bool,
                     client: str = "") -> "Account | None":
        """The caller of a request with this Authorization header from address `client`.
        Raises `ApiError` 401 for a bad key, and for a missing one when `required` and the
        gateway has keys; 429 for an address that keeps failing."""
        self._check_client(client)
        try:
            return await self._caller(authorization, required)
        except ApiError as exc:
            if exc.status == 401:
                self._count_failure(client)
            raise

    async def _caller(self, authorization: str, required: bool) -> "Account | None":
        from traces.schemas import Account

        secret = authorization[7:] if authorization[:7].lower() == "bearer " else ""
        secret = secret.strip()
        store = self.state.traces
        if store is None and not self.state.api_keys:
            return None  # an open gateway: any key (SDKs insist on sending one) is fine
        if not secret:
            if required:
                raise _unauthorized("missing API key (send 'Authorization: Bearer <key>')")
            return None
        if len(secret) > self.limits.max_key_chars or not secret.isascii():
            raise _unauthorized("invalid or revoked API key")
        if store is None:
            if secret not in self.state.api_keys:
                raise _unauthorized("invalid or missing API key")
            return Account(account_id="static", role="app", name="static key",
                           created_at=datetime.fromtimestamp(self.state.started, UTC))
        digest = hashlib.sha256(secret.encode()).hexdigest()
        if self._failed_recently(digest):
            raise _unauthorized("invalid or revoked API key")
        lookup = self._inflight.get(digest)
        if lookup is None:  # one lookup per key at a time, however many requests carry it
            lookup = self._inflight[digest] = asyncio.ensure_future(self._lookup(store, secret))
            lookup.add_done_callback(lambda _: self._inflight.pop(digest, None))
        from traces.exceptions import AuthError

        try:
            return await asyncio.shield(lookup)
        except AuthError as exc:
            self._remember_failure(digest)
            raise _unauthorized(str(exc)) from None

    async def _lookup(self, store: Any, secret: str) -> "Account":
        if self._lookups is None:
            self._lookups = asyncio.Semaphore(self.limits.auth_lookups)
        async with self._lookups:
            self.lookups += 1
            return await asyncio.to_thread(store.authenticate, secret)


def owner_of(caller: "Account | None", authorization: str) -> str:
    """Who owns what a request makes and uses (batch files and jobs, metered usage): the
    caller's account; for a static key, the key itself (by hash, so two static keys own apart);
    `anonymous` on an open gateway."""
    if caller is None:
        return "anonymous"
    if caller.account_id != "static":
        return caller.account_id
    secret = authorization[7:].strip()
    return "key-" + hashlib.sha256(secret.encode()).hexdigest()[:16]


class Guard:
    """ASGI middleware: body bound, then authentication, then the bounded body read (see the
    module docstring). Only HTTP requests are guarded."""

    def __init__(self, app: Any, auth: Authenticator) -> None:
        self.app, self.auth, self.limits = app, auth, auth.limits
        self._uploads: asyncio.Semaphore | None = None  # made in the server's event loop

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        upload = (scope.get("method", ""), scope["path"]) in UPLOAD_PATHS
        limit = self.limits.max_upload_bytes if upload else self.limits.max_body_bytes
        try:
            headers = {k.decode("latin-1").lower(): v.decode("latin-1")
                       for k, v in scope.get("headers", [])}
            self._check_declared_length(headers.get("content-length"), limit)
            caller = await self.auth.caller(headers.get("authorization", ""),
                                            required=scope["path"] not in PUBLIC_PATHS,
                                            client=(scope.get("client") or ("",))[0])
            if upload:
                if self._uploads is None:
                    self._uploads = asyncio.Semaphore(self.limits.max_uploads)
                async with self._uploads:
                    body = await self._read_body(receive, limit, self.limits.upload_timeout_s)
            else:
                body = await self._read_body(receive, limit, self.limits.body_timeout_s)
        except ApiError as exc:
            await error_response(exc)(scope, receive, send)
            return
        scope.setdefault("state", {}).update(
            caller=caller, owner=owner_of(caller, headers.get("authorization", "")))
        replayed = False

        async def replay() -> dict:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # after the body: wait for the disconnect

        await self.app(scope, replay, send)

    def _check_declared_length(self, declared: str | None, limit: int) -> None:
        if declared is None:
            return
        if not declared.isdigit():
            raise ApiError(400, f"Content-Length {declared[:32]!r} is not a number",
                           code="invalid_content_length")
        if int(declared) > limit:
            raise self._too_large(limit)

    @staticmethod
    def _too_large(limit: int) -> ApiError:
        return ApiError(413, f"request body is larger than {limit} bytes",
                        code="request_too_large")

    async def _read_body(self, receive: Any, limit: int, timeout_s: float) -> bytes:
        chunks: list[bytes] = []
        size = 0
        deadline = time.monotonic() + timeout_s
        while True:
            left = deadline - time.monotonic()
            try:
                message = await asyncio.wait_for(receive(), timeout=max(left, 0.001))
            except TimeoutError:
                raise ApiError(408, f"request body not received within {timeout_s:g} s",
                               code="request_timeout") from None
            if message["type"] == "http.disconnect":
                raise ApiError(400, "client disconnected while sending the body")
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise self._too_large(limit)
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)
