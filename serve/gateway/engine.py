"""Generation at the gateway: the decode loop over a `Session`, with speculation and stop conditions.

The engine turns token ids into tokens: it embeds, sends hidden states through the pipeline,
computes logits locally, samples, and stops on an end-of-sequence token, a stop string, or the
token budget. It knows nothing about HTTP or the OpenAI wire format.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import torch

from serve.drafters.base import NO_SCOPE, Draft, DraftScope
from serve.gateway.head import Head
from serve.gateway.pipeline import Pipeline, Session
from serve.gateway.speculative import AdaptiveK, verify
from serve.sampling import SamplingParams, Step, annotate, pick, score

PROMPT_ROWS = 256
"""Prompt positions scored per batch of logits (a row is the whole vocabulary)."""


@dataclass
class Outcome:
    """Filled in while generating; read after the iterator ends."""

    finish_reason: str = "length"
    prompt_tokens: int = 0
    completion_tokens: int = 0
    traversals: int = 0
    failovers: int = 0
    route: list[str] = field(default_factory=list)
    first_token_s: float = 0.0
    total_s: float = 0.0
    drafter: str = "none"
    drafted: int = 0
    accepted: int = 0
    routing_policy: str = "any"
    """The routing policies the route had to meet (`serve.policy.describe`)."""
    prompt_steps: list[Step] = field(default_factory=list)
    """With `SamplingParams.prompt_logprobs`: the prompt's tokens after the first, scored."""


@dataclass
class SpecStats:
    requests: int = 0
    drafted: int = 0
    accepted: int = 0
    traversals: int = 0
    tokens: int = 0

    def as_dict(self) -> dict:
        return {"requests": self.requests, "drafted": self.drafted, "accepted": self.accepted,
                **speculation_rates(self.drafted, self.accepted, self.tokens, self.traversals)}


def speculation_rates(drafted: int, accepted: int, tokens: int, traversals: int) -> dict:
    """Acceptance rate and tokens per traversal (None where nothing was counted): the one
    definition behind `/metrics`, each response's `shoal` extension and the benchmarks."""
    return {"acceptance_rate": round(accepted / drafted, 4) if drafted else None,
            "tokens_per_traversal": round(tokens / traversals, 4) if traversals else None}


class Engine:
    def __init__(self, head: Head, pipeline: Pipeline, drafters: dict | None = None,
                 default_drafter: str | None = None) -> None:
        self.head, self.pipeline = head, pipeline
        self.drafters = drafters or {}
        self.default_drafter = default_drafter
        self.tokens_generated = 0
        self.requests = 0
        self.cancelled = 0
        """Requests whose client went away mid-generation (their sessions are closed)."""
        self.spec_stats: dict[str, SpecStats] = {}

    def score_prompt(self, hidden: torch.Tensor, prompt: list[int], top: int) -> list[Step]:
        """Each prompt token after the first, scored under the logits of the position before it
        (the last-layer `hidden` states of the prompt), `PROMPT_ROWS` positions at a time."""
        steps: list[Step] = []
        for i in range(0, len(prompt) - 1, PROMPT_ROWS):
            rows = hidden[i:min(i + PROMPT_ROWS, len(prompt) - 1)]
            steps += score(self.head.logits(rows), prompt[i + 1:i + 1 + len(rows)], top)
        return steps

    async def generate(self, prompt: list[int], params: SamplingParams, outcome: Outcome,
                       drafter: str | None = "default", k: int | None = None,
                       scope: DraftScope = NO_SCOPE, admits=None) -> AsyncIterator[Step]:
        """Yield sampled tokens one by one; `outcome` says why it stopped and what it cost.

        `drafter` names a drafter ("default": the gateway's; None or "off": no speculation);
        `k` fixes the draft length instead of adapting it; `scope` says whose request it is and
        what a learning drafter may draft from and learn (`serve.drafters.base.DraftScope`);
        `admits` (a `serve.policy.NodeFilter`) limits the route to the nodes its policy allows.
        """
        self.requests += 1
        t0 = time.perf_counter()
        generator = None
        if not params.greedy:
            generator = torch.Generator().manual_seed(
                params.seed if params.seed is not None else torch.seed() % (2**63))
        name = self.default_drafter if drafter == "default" else drafter
        # verification compares drafts with the unshaped distribution: shaped requests
        # (bias, penalties, constraints) decode token by token
        name = None if name == "off" or params.shapes else name
        draft_source = self.drafters[name].start(prompt, params.temperature, params.top_p,
                                                 generator, scope) if name else None
        outcome.drafter = name or "none"
        stats = self.spec_stats.setdefault(outcome.drafter, SpecStats())
        stats.requests += 1
        adaptive = AdaptiveK(k or 4, k_max=max(8, k or 0))
        session = Session(self.pipeline, self.head.embed_ids, admits)
        outcome.routing_policy = admits.name if admits is not None else "any"
        outcome.prompt_tokens = len(prompt)
        budget = params.max_tokens
        try:
            hidden = await session.extend(prompt)
            if params.prompt_logprobs:
                outcome.prompt_steps = self.score_prompt(hidden, prompt, params.top_logprobs)
            pending = [pick(self.head.logits(hidden[-1:])[0], params, generator, prompt)]
            outcome.first_token_s = time.perf_counter() - t0
            while True:
                for step in pending:
                    if step.token in self.head.stop_ids and not params.ignore_eos:
                        outcome.finish_reason = "stop"
                        return
                    outcome.completion_tokens += 1
                    self.tokens_generated += 1
                    yield step
                    if outcome.finish_reason == "stop":  # the consumer matched a stop string
                        return
                    if outcome.completion_tokens == budget:
                        outcome.finish_reason = "length"
                        return
                last = pending[-1].token  # chosen, not yet in the nodes' caches
                room = budget - outcome.completion_tokens - 1
                want = 0 if draft_source is None else min(k if k else adaptive.next_k(), room)
                draft = draft_source.propose(session.tokens + [last], want) if want > 0 \
                    else Draft([])
                if not draft.tokens:
                    hidden = await session.extend([last])
                    pending = [pick(self.head.logits(hidden)[0], params, generator,
                                    session.tokens, outcome.completion_tokens)]
                    continue
                n = len(draft.tokens)
                hidden = await session.extend([last] + draft.tokens)
                logits = self.head.logits(hidden)
                acceptance = verify(logits, draft.tokens, draft.probs, params, generator)
                session.rollback(len(session.tokens) - (n - acceptance.accepted))
                adaptive.update(n, acceptance.accepted)
                outcome.drafted += n
                outcome.accepted += acceptance.accepted
                pending = [annotate(Step(t), logits[i], params)
                           for i, t in enumerate(draft.tokens[:acceptance.accepted])]
                pending.append(annotate(Step(acceptance.next_token), logits[acceptance.accepted],
                                        params))
        except (GeneratorExit, asyncio.CancelledError):
            self.cancelled += 1
            raise
        finally:
            outcome.traversals, outcome.failovers = session.traversals, session.failovers
            outcome.route = [h.node_id for h in session.route or []]
            outcome.total_s = time.perf_counter() - t0
            stats.drafted += outcome.drafted
            stats.accepted += outcome.accepted
            stats.traversals += outcome.traversals
            stats.tokens += outcome.completion_tokens
            session.close()
            if draft_source is not None:
                draft_source.close()
            if name:
                self.drafters[name].observe(session.tokens, scope)

