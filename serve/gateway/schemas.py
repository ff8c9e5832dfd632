"""OpenAI-compatible request bodies, validated strictly enough to answer 400 with a reason.

Every field a client sends is bounded here: numbers by range, strings and lists by length, free
JSON (tools, schemas, tool-call arguments) by nesting depth, so no value reaches the engine,
the tokenizer or torch in a form that would raise there. What the gateway cannot honour is
refused here or in the route, never ignored (docs/serving.md lists each parameter).
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

MAX_DEPTH = 32
"""Deepest nesting accepted in free JSON (tools, response schemas, tool-call arguments)."""
MAX_TEXT = 1_000_000
"""Longest string accepted in any field (the body limit bounds the total)."""
INT64 = 2**63
"""`seed` is a signed 64-bit integer, as in OpenAI's API."""


def json_depth(value: Any, limit: int = MAX_DEPTH) -> int:
    """Nesting depth of a JSON value, counted without recursion (so a hostile value cannot
    exhaust the stack); stops counting past `limit`."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            deepest = max(deepest, depth)
            if deepest > limit:
                return deepest
            stack.extend((v, depth + 1) for v in (item.values() if isinstance(item, dict)
                                                  else item))
    return deepest


def _shallow(value: Any, what: str) -> Any:
    if value is not None and json_depth(value) > MAX_DEPTH:
        raise ValueError(f"{what} is nested deeper than {MAX_DEPTH} levels")
    return value


def text_depth(text: str) -> int:
    """Bracket depth of JSON text (strings skipped), without parsing it."""
    if text.count("[") + text.count("{") <= MAX_DEPTH:
        return 0 if not text.count("[") + text.count("{") else MAX_DEPTH
    depth = deepest = 0
    in_string = escaped = False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
            if deepest > MAX_DEPTH:
                return deepest
        elif ch in "]}":
            depth -= 1
    return deepest


class FunctionCall(BaseModel):
    name: str = Field(max_length=256)
    arguments: str = Field(max_length=MAX_TEXT)
    """JSON text, as OpenAI sends it; parsed (when it parses) to render the chat template."""

    @field_validator("arguments")
    @classmethod
    def _shallow_arguments(cls, v: str) -> str:
        if text_depth(v) > MAX_DEPTH:
            raise ValueError(f"function arguments are nested deeper than {MAX_DEPTH} levels")
        return v

    def parsed_arguments(self) -> Any:
        """The arguments as JSON when they parse, else the text itself."""
        try:
            return json.loads(self.arguments)
        except ValueError:
            return self.arguments


class ToolCall(BaseModel):
    id: str = Field(max_length=256)
    type: Literal["function"] = "function"
    function: FunctionCall


class TextPart(BaseModel):
    """A text content part. Other part types (images, audio, files) are refused: the served
    models read text only."""

    type: Literal["text"]
    text: str = Field(max_length=MAX_TEXT)


class RefusalPart(BaseModel):
    """An assistant's refusal part (sent back in a conversation's history)."""

    type: Literal["refusal"]
    refusal: str = Field(max_length=MAX_TEXT)


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart | RefusalPart] | None = Field(None, max_length=MAX_TEXT)
    name: str | None = Field(None, max_length=256)
    tool_calls: list[ToolCall] | None = Field(None, max_length=128)
    tool_call_id: str | None = Field(None, max_length=256)

    @field_validator("content", mode="before")
    @classmethod
    def _parts(cls, v):
        """Say which part is wrong and how (the union's own errors name every branch)."""
        if not isinstance(v, list):
            return v
        for i, part in enumerate(v):
            kind = part.get("type") if isinstance(part, dict) else None
            if kind not in ("text", "refusal"):
                raise ValueError(f"content part {i} has type {kind!r}; only 'text' parts are "
                                 f"served")
            if not isinstance(part.get(kind), str):
                raise ValueError(f"content part {i}: {kind!r} must be a string")
        return v

    @model_validator(mode="after")
    def _content_rules(self) -> "ChatMessage":
        if self.content is None and not (self.role == "assistant" and self.tool_calls):
            raise ValueError(f"a {self.role!r} message needs content")
        if self.role == "tool" and not self.tool_call_id:
            raise ValueError("a 'tool' message needs tool_call_id")
        return self

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(p.text for p in self.content if isinstance(p, TextPart))
        return self.content or ""


class Speculation(BaseModel):
    """shoal extension (pass with the SDK's `extra_body`): choose or switch off speculation."""

    model_config = ConfigDict(extra="forbid")
    drafter: str | None = Field(None, max_length=64, description="a drafter name, or 'off'")
    k: int | None = Field(None, ge=1, le=16, description="fixed draft length (default adaptive)")


class Routing(BaseModel):
    """shoal extension (`extra_body`): which nodes may compute on this request (serve/policy.py).
    It can only narrow the policy the key's account requires."""

    model_config = ConfigDict(extra="forbid")
    policy: Literal["any", "allowlist", "attested"] = Field(
        "any", description="any node, only allowlisted nodes, or only attested nodes")


class StreamOptions(BaseModel):
    include_usage: bool = False


class SamplingFields(BaseModel):
    model_config = ConfigDict(extra="allow")
    model: str = Field(max_length=256)
    max_tokens: int | None = Field(None, ge=1, le=1_000_000)
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    n: int = Field(1, ge=1, le=1, description="only n=1 is served")
    stop: str | list[str] | None = Field(None, validate_default=True)
    seed: int | None = Field(None, ge=-INT64, lt=INT64)
    presence_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    frequency_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    logit_bias: dict[str, float] | None = Field(None, max_length=1024)
    """Token id (as a string) → bias in [-100, 100] added to its logit."""
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = Field(None, max_length=256)
    metadata: dict[str, str] | None = Field(None, max_length=16)
    store: bool | None = None
    """False: never record this request, whatever grants exist."""
    speculation: Speculation | None = None
    routing: Routing | None = None

    @field_validator("stop")
    @classmethod
    def _stops(cls, v):
        stops = [v] if isinstance(v, str) else (v or [])
        if len(stops) > 4 or any(not s or len(s) > 256 for s in stops):
            raise ValueError("stop takes up to 4 non-empty strings of at most 256 characters")
        return stops

    @field_validator("logit_bias")
    @classmethod
    def _biases(cls, v):
        for token, bias in (v or {}).items():
            if not token.isdigit() or len(token) > 9:
                raise ValueError(f"logit_bias keys are token ids; got {token[:20]!r}")
            if not -100.0 <= bias <= 100.0:
                raise ValueError(f"logit_bias of token {token} is {bias}; it must be in "
                                 f"[-100, 100]")
        return v

    @field_validator("metadata")
    @classmethod
    def _metadata(cls, v):
        for key, value in (v or {}).items():
            if len(key) > 64 or len(value) > 512:
                raise ValueError("metadata keys are at most 64 characters, values 512")
        return v

    def token_biases(self) -> tuple[tuple[int, float], ...]:
        return tuple((int(t), b) for t, b in (self.logit_bias or {}).items())


class JsonSchemaFormat(BaseModel):
    name: str = Field("response", max_length=64)
    description: str | None = Field(None, max_length=4096)
    schema_: dict[str, Any] = Field(default_factory=dict, alias="schema")
    strict: bool | None = None

    @field_validator("schema_")
    @classmethod
    def _shallow_schema(cls, v):
        return _shallow(v, "response_format.json_schema.schema")


class ResponseFormat(BaseModel):
    """`text`, `json_object` (any JSON object) or `json_schema` (an object of that schema); the
    JSON formats are enforced token by token (serve/gateway/constrained.py)."""

    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None

    @model_validator(mode="after")
    def _schema_given(self) -> "ResponseFormat":
        if self.type == "json_schema" and self.json_schema is None:
            raise ValueError("response_format of type json_schema needs json_schema")
        return self


class ChatCompletionRequest(SamplingFields):
    model_config = ConfigDict(extra="allow", json_schema_extra={"examples": [
        {"model": "default", "messages": [{"role": "user", "content": "Hello"}],
         "max_tokens": 8}]})
    messages: list[ChatMessage] = Field(min_length=1, max_length=4096)
    max_completion_tokens: int | None = Field(None, ge=1, le=1_000_000)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=20)
    tools: list[dict[str, Any]] | None = Field(None, max_length=128)
    tool_choice: Literal["none", "auto", "required"] | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    response_format: ResponseFormat | None = None

    @field_validator("tools", "tool_choice")
    @classmethod
    def _shallow_tools(cls, v, info):
        return _shallow(v, info.field_name)


TokenIds = list[Annotated[int, Field(ge=0, lt=2**31)]]
"""A prompt given as token ids (what evaluation harnesses send); checked against the vocabulary
at the route, where the tokenizer is known."""
MAX_PROMPT_IDS = 1 << 20


class CompletionRequest(SamplingFields):
    model_config = ConfigDict(extra="allow", json_schema_extra={"examples": [
        {"model": "default", "prompt": "Hello", "max_tokens": 8}]})
    prompt: str | list[str] | TokenIds | list[TokenIds] = Field(max_length=MAX_TEXT)
    """Text or token ids; a list of one prompt is that prompt (one prompt per request)."""
    logprobs: int | None = Field(None, ge=0, le=20)
    echo: bool = False
    """Return the prompt before the completion; with `logprobs`, the prompt's tokens scored too."""
    suffix: None = Field(None, description="insertion (suffix) is not served")

    @field_validator("prompt")
    @classmethod
    def _one_prompt(cls, v):
        if isinstance(v, list) and v and isinstance(v[0], (str, list)):
            if len(v) != 1:
                raise ValueError("exactly one prompt is served per request")
            v = v[0]
        if not v:
            raise ValueError("prompt is empty")
        if isinstance(v, list) and len(v) > MAX_PROMPT_IDS:
            raise ValueError(f"a prompt is at most {MAX_PROMPT_IDS} token ids")
        return v
