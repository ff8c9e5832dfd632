"""A suffix index over completions the swarm has served (SuffixDecoding-style).

Every finished sequence is stored; an index maps each n-gram (n <= `max_depth`) to where it
occurred. To draft, the longest tail of the context found in the index selects the matching
occurrences, and the draft follows them token by token, taking the most frequent next token among
the occurrences that still agree, until support falls below `min_support`. Memory is bounded by
`max_tokens`: the oldest sequences are dropped first. Updated online with `observe`; it can be seeded
from the trace store's completions.
"""

from __future__ import annotations

from collections import Counter, OrderedDict, defaultdict

import torch

from serve.drafters.base import Draft, StatelessSession


class SuffixDrafter:
    name = "suffix"

    def __init__(self, max_depth: int = 6, min_support: int = 1, max_tokens: int = 1_000_000,
                 max_occurrences: int = 64) -> None:
        self.max_depth, self.min_support = max_depth, min_support
        self.max_tokens, self.max_occurrences = max_tokens, max_occurrences
        self.sequences: OrderedDict[int, list[int]] = OrderedDict()
        self.index: dict[tuple[int, ...], list[tuple[int, int]]] = defaultdict(list)
        self.tokens_held = 0
        self._next_id = 0

    def start(self, prompt, temperature, top_p, generator: torch.Generator | None):
        return StatelessSession(self.propose)

    def observe(self, tokens: list[int]) -> None:
        if len(tokens) < 2:
            return
        seq_id, self._next_id = self._next_id, self._next_id + 1
        self.sequences[seq_id] = list(tokens)
        self.tokens_held += len(tokens)
        for pos in range(1, len(tokens)):
            for n in range(1, min(self.max_depth, pos) + 1):
                occ = self.index[tuple(tokens[pos - n:pos])]
                occ.append((seq_id, pos))
                if len(occ) > self.max_occurrences:
                    del occ[0]
        while self.tokens_held > self.max_tokens and self.sequences:
            _, old = self.sequences.popitem(last=False)
            self.tokens_held -= len(old)
        if len(self.index) > 4 * self.max_tokens:  # drop entries that only point at evicted data
            self.index = defaultdict(list, {k: [o for o in v if o[0] in self.sequences]
                                            for k, v in self.index.items()})

    def propose(self, context: list[int], k: int) -> Draft:
        for n in range(min(self.max_depth, len(context)), 0, -1):
            occ = [(s, p) for s, p in self.index.get(tuple(context[-n:]), ())
                   if s in self.sequences]
            if len(occ) >= self.min_support:
                return Draft(self._follow(occ, k))
        return Draft([])

    def _follow(self, occ: list[tuple[int, int]], k: int) -> list[int]:
        draft: list[int] = []
        live = occ
        while len(draft) < k and len(live) >= self.min_support:
            counts = Counter(self.sequences[s][p] for s, p in live if p < len(self.sequences[s]))
            if not counts:
                break
            token, _ = counts.most_common(1)[0]
            draft.append(token)
            live = [(s, p + 1) for s, p in live
                    if p < len(self.sequences[s]) and self.sequences[s][p] == token]
        return draft
