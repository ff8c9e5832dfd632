"""Drafters composed per round: copy where the text is copied, another drafter elsewhere.

`prompt_lookup+suffix` and `prompt_lookup+draft_model` try their members in order each round and
send the first proposal that is not empty. Prompt lookup proposes only where the tail of the text
occurred before (an agent echoing a tool's output, an edit copying lines), and there its drafts
are long and cheap; elsewhere it has nothing, and the next member drafts.

The engine's adaptive draft length is one per request, so a member that is often wrong shortens
the next member's drafts too: with a weak draft model (the default model's first 6 layers, 1.0
tokens per traversal alone), `prompt_lookup+draft_model` made 2.58 tokens per traversal on a
JSON-echo prompt where prompt lookup alone made 3.10. Compose members that are each worth their
traversals.

Lossless: which member drafts a round depends only on the context, never on the target's
randomness, and the round's draft carries that member's own distributions (or none: one-hot).
So the verifier's rejection rule sees an ordinary draft from one drafter, and the target's
distribution is kept exactly (tests/serve/test_speculative.py).

Members are looked up by name in the gateway's live table of drafters when a request starts, so
a draft model rolled out later (`serve.gateway.server._pair_draft`) is used by the next request.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from serve.drafters.base import NO_SCOPE, Draft, DraftScope, DraftSession
from serve.drafters.prompt_lookup import PromptLookupDrafter


class ComposedDrafter:
    def __init__(self, members: list[str], drafters: Mapping[str, object],
                 min_copy: int = 1) -> None:
        """`members`: drafter names in the order tried; `drafters`: the gateway's table
        (read at each request's start); prompt lookup is this drafter's own, with `min_copy`."""
        self.name = "+".join(members)
        self.members, self.drafters = members, drafters
        self._copy = PromptLookupDrafter(min_ngram=min_copy)

    def _member(self, name: str):
        return self._copy if name == "prompt_lookup" else self.drafters.get(name)

    def start(self, prompt, temperature: float, top_p: float,
              generator: torch.Generator | None, scope: DraftScope = NO_SCOPE
              ) -> ComposedSession:
        sessions = [m.start(prompt, temperature, top_p, generator, scope)
                    for m in map(self._member, self.members) if m is not None]
        return ComposedSession(sessions)

    def observe(self, tokens: list[int], scope: DraftScope = NO_SCOPE) -> None:
        for name in self.members:  # a learning member learns from the whole text
            member = self._member(name)
            if member is not None and member is not self._copy:
                member.observe(tokens, scope)


class ComposedSession:
    def __init__(self, sessions: list[DraftSession]) -> None:
        self.sessions = sessions

    def propose(self, context: list[int], k: int) -> Draft:
        for session in self.sessions:
            draft = session.propose(context, k)
            if draft.tokens:
                return draft
        return Draft([])

    def close(self) -> None:
        for session in self.sessions:
            session.close()
