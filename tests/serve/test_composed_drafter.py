"""Composed drafters (`serve.drafters.composed`): prompt lookup drafts where the text is copied,
the draft model elsewhere, per round; a member rolled out later is used from the next request;
sampling through the composition keeps the target's distribution (chi-square against the exact
two-token distribution, on a prompt where each member drafts)."""

from __future__ import annotations

from collections import Counter

import torch

from serve.drafters import add_compositions
from serve.drafters.base import DraftScope
from serve.drafters.draft_model import DraftModelDrafter
from serve.drafters.prompt_lookup import PromptLookupDrafter
from serve.drafters.suffix import SuffixDrafter
from serve.gateway.speculative import verify
from serve.sampling import SamplingParams, target_probs
from tests.serve.test_speculative import (  # noqa: F401 - two_models is a fixture
    ALPHA, TEMPERATURE, chi_square_p, exact_pairs, two_models)

COPIED = [5, 17, 42, 9, 5, 17]  # the tail (5, 17) occurred before, followed by 42, 9
FRESH = [5, 17, 42]


def test_each_round_drafts_from_the_member_that_has_something(two_models):
    _, draft = two_models
    table = add_compositions({"prompt_lookup": PromptLookupDrafter(),
                              "draft_model": DraftModelDrafter(model=draft)})
    composed = table["prompt_lookup+draft_model"]
    greedy = composed.start(FRESH, 0.0, 1.0, None)
    copied = greedy.propose(COPIED, 3)
    assert copied.tokens == [42, 9, 5] and copied.probs is None  # the copy, one-hot
    alone = table["draft_model"].start(FRESH, 0.0, 1.0, None)
    assert greedy.propose(FRESH, 3).tokens == alone.propose(FRESH, 3).tokens  # nothing to copy
    greedy.close(), alone.close()
    # sampling: the draft model's round carries its own distributions, untouched
    mine = composed.start(FRESH, TEMPERATURE, 1.0, torch.Generator().manual_seed(3))
    its = table["draft_model"].start(FRESH, TEMPERATURE, 1.0, torch.Generator().manual_seed(3))
    a, b = mine.propose(FRESH, 3), its.propose(FRESH, 3)
    assert a.tokens == b.tokens and a.probs is not None and torch.equal(a.probs, b.probs)
    # with min_copy=2 a single repeated token is not a copy: the draft model drafts instead
    from serve.drafters.composed import ComposedDrafter

    strict = ComposedDrafter(["prompt_lookup", "draft_model"], table, min_copy=2)
    assert composed.start(FRESH, 0.0, 1.0, None).propose([5, 17, 5], 2).tokens == [17, 5]
    assert strict.start(FRESH, 0.0, 1.0, None).propose([5, 17, 5], 2).tokens == \
        table["draft_model"].start(FRESH, 0.0, 1.0, None).propose([5, 17, 5], 2).tokens


def test_a_member_rolled_out_later_is_used_from_the_next_request():
    table = add_compositions({"prompt_lookup": PromptLookupDrafter(), "suffix": SuffixDrafter()})
    assert "prompt_lookup+suffix" in table and "prompt_lookup+draft_model" not in table
    composed, me = table["prompt_lookup+suffix"], DraftScope(tenant="a", learn=True)
    replacement = SuffixDrafter()
    replacement.observe([10, 1, 2, 3, 4, 5, 6], me)
    before = composed.start([1], 0.0, 1.0, None, me)
    table["suffix"] = replacement  # as a gateway swaps a member in
    after = composed.start([1], 0.0, 1.0, None, me)
    assert before.propose([99, 2, 3], 3).tokens == []  # the old index never saw the text
    assert after.propose([99, 2, 3], 3).tokens == [4, 5, 6]
    composed.observe([20, 7, 8, 9, 30], me)  # the composition teaches its learning member
    assert replacement.propose([7, 8], 2, me).tokens == [9, 30]


def sample_pairs(target, composed, prompt: list[int], n: int, seed: int) -> Counter:
    """The first two tokens after `prompt`, drafted by `composed` and verified as the engine
    does (draft 2 tokens, verify against the target, top up from the target if rejected)."""
    params = SamplingParams(temperature=TEMPERATURE, top_p=1.0)
    g = torch.Generator().manual_seed(seed)
    cache: dict[tuple, torch.Tensor] = {}

    def p_logits(ctx: list[int]) -> torch.Tensor:
        if tuple(ctx) not in cache:
            with torch.no_grad():
                cache[tuple(ctx)] = target(torch.tensor([ctx])).logits[0, -1]
        return cache[tuple(ctx)]

    counts: Counter = Counter()
    for _ in range(n):
        session = composed.start(prompt, TEMPERATURE, 1.0, g)
        draft = session.propose(prompt, 2)
        session.close()
        d = draft.tokens
        logits = torch.stack([p_logits(prompt + d[:i]) for i in range(len(d) + 1)])
        verdict = verify(logits, d, draft.probs, params, g)
        out = d[:verdict.accepted] + [verdict.next_token]
        if len(out) < 2:
            out.append(int(torch.multinomial(target_probs(p_logits(prompt + out), params), 1,
                                             generator=g)))
        counts[tuple(out[:2])] += 1
    return counts


def test_sampling_through_the_composition_is_lossless(two_models):
    target, draft = two_models
    composed = add_compositions({"prompt_lookup": PromptLookupDrafter(),
                                 "draft_model": DraftModelDrafter(model=draft)})[
        "prompt_lookup+draft_model"]
    n = 3000
    for prompt, seed in ((COPIED, 11), (FRESH, 12)):  # prompt lookup drafts; the draft model
        counts = sample_pairs(target, composed, prompt, n, seed)
        assert chi_square_p(counts, exact_pairs(target, prompt), n) > ALPHA, prompt
