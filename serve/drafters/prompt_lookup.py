"""Prompt lookup: continue the text the way it continued the last time its tail appeared.

Agents repeat themselves: tool-call JSON echoes argument names, code edits copy lines from the
prompt. Find the longest suffix of the context (up to `max_ngram` tokens) that occurred earlier,
and propose the tokens that followed its most recent earlier occurrence.
"""

from __future__ import annotations

import torch

from serve.drafters.base import NO_SCOPE, Draft, DraftScope, StatelessSession


class PromptLookupDrafter:
    name = "prompt_lookup"

    def __init__(self, max_ngram: int = 4, min_ngram: int = 1) -> None:
        self.max_ngram, self.min_ngram = max_ngram, min_ngram

    def start(self, prompt, temperature, top_p, generator: torch.Generator | None,
              scope: DraftScope = NO_SCOPE):
        return StatelessSession(self.propose)

    def observe(self, tokens: list[int], scope: DraftScope = NO_SCOPE) -> None:
        pass  # learns nothing: drafts come from the request's own text only

    def propose(self, context: list[int], k: int) -> Draft:
        n_ctx = len(context)
        for n in range(min(self.max_ngram, n_ctx - 1), self.min_ngram - 1, -1):
            tail = context[-n:]
            for start in range(n_ctx - n - 1, -1, -1):  # most recent earlier occurrence first
                if context[start:start + n] == tail:
                    follow = context[start + n:start + n + k]
                    if follow:
                        return Draft(follow)
        return Draft([])
