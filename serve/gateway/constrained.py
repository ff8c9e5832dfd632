"""`response_format` by constrained decoding: a `serve.sampling.Constraint` that allows, at each
step, only the tokens that keep the completion a prefix of valid JSON (of the schema, for
`json_schema`; any object for `json_object`), and end-of-sequence once the value is complete.

The grammar compiler and the token masks are llguidance's (see docs/serving.md for why that
library). This module adapts it to the gateway's sampler: one llguidance tokenizer per model
tokenizer, built once in a worker thread, and one matcher per request.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import torch

from serve.exceptions import ApiError

_tokenizers: dict[int, tuple[Any, Any]] = {}
"""id(HF tokenizer) → (that tokenizer, its llguidance tokenizer); the HF tokenizer is kept so its
id cannot be reused by another."""
_lock = threading.Lock()
COMPACT = {"whitespace_flexible": False}
"""JSON without free whitespace: a model cannot spend its budget on blank space."""


def _ll_tokenizer(tokenizer: Any, vocab_size: int, stop_ids: list[int]) -> Any:
    import llguidance.hf

    with _lock:
        cached = _tokenizers.get(id(tokenizer))
        if cached is not None and cached[0] is tokenizer:
            return cached[1]
        try:
            ll = llguidance.hf.from_tokenizer(tokenizer, n_vocab=vocab_size, eos_token=stop_ids)
        except ValueError as exc:  # a slow (Python-only) tokenizer
            raise ApiError(400, f"response_format is not available for this model's tokenizer: "
                           f"{exc}", param="response_format") from None
        _tokenizers[id(tokenizer)] = (tokenizer, ll)
        return ll


class JsonConstraint:
    """Tokens that keep the completion valid JSON of `schema`."""

    def __init__(self, ll_tokenizer: Any, schema: dict[str, Any], vocab_size: int) -> None:
        import llguidance

        try:
            grammar = llguidance.LLMatcher.grammar_from_json_schema(schema, overrides=COMPACT)
        except ValueError as exc:
            raise ApiError(400, f"response_format schema is not valid: {exc}",
                           param="response_format") from None
        self.matcher = llguidance.LLMatcher(ll_tokenizer, grammar, log_level=0)
        if self.matcher.is_error():
            raise ApiError(400, f"response_format schema cannot be enforced: "
                           f"{self.matcher.get_error()}", param="response_format")
        self.vocab_size = vocab_size
        self.consumed = 0

    def allowed(self, completion: list[int]) -> torch.Tensor:
        """Boolean mask over the vocabulary of the tokens allowed after `completion`."""
        for token in completion[self.consumed:]:
            self.matcher.consume_token(token)
        self.consumed = len(completion)
        if self.matcher.is_error():  # cannot happen for tokens this mask allowed
            raise ApiError(500, f"constrained decoding failed: {self.matcher.get_error()}",
                           "server_error")
        bias = torch.frombuffer(bytearray(self.matcher.compute_logit_bias()), dtype=torch.uint8)
        mask = torch.zeros(self.vocab_size, dtype=torch.bool)
        n = min(self.vocab_size, bias.numel())
        mask[:n] = bias[:n] > 0
        return mask


async def json_constraint(head: Any, response_format: Any) -> JsonConstraint | None:
    """The constraint a request's `response_format` asks for (None for text or no format)."""
    if response_format is None or response_format.type == "text":
        return None
    schema = (response_format.json_schema.schema_ if response_format.type == "json_schema"
              else {"type": "object"})
    vocab = int(head.lm_head.shape[0])
    ll = await asyncio.to_thread(_ll_tokenizer, head.tokenizer, vocab, sorted(head.stop_ids))
    return await asyncio.to_thread(JsonConstraint, ll, schema or {"type": "object"}, vocab)
