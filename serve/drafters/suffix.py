"""A suffix index over text the swarm has served (SuffixDecoding-style), partitioned by tenant.

Every finished sequence is stored; an index maps each n-gram (n <= `max_depth`) to where it
occurred. To draft, the longest tail of the context found in the index selects the matching
occurrences, and the draft follows them token by token, taking the most frequent next token among
the occurrences that still agree, until support falls below `min_support`.

One index shared by every caller is a membership oracle: a draft accepted token by token tells the
caller that someone sent that text before (in `accepted`, and in latency). So the drafter keeps
one `SuffixIndex` per tenant (the caller's account) and one shared index, and a request is drafted
from its own tenant's index or the shared one (whichever matches the longer tail of the
context), never from another tenant's. What a
request teaches follows its `DraftScope`: its tenant's index when `learn` (never for
`store: false`), the shared index only under a grant with the `drafting` scope, remembered with
that grant so it is dropped when the grant expires (checked on every draft) or is revoked, and
with its contributor so erasure drops it (`forget_contributor`). Removal rebuilds the affected
index, so no n-gram of removed text stays in memory.

Memory is bounded: `max_tokens` per index (oldest sequences dropped first) and `max_tenants`
private indexes (the least recently used dropped first).
"""

from __future__ import annotations

import threading
import time
from collections import Counter, OrderedDict, defaultdict
from collections.abc import Iterable

import torch

from serve.drafters.base import NO_SCOPE, Draft, DraftScope, Shared, StatelessSession


class SuffixIndex:
    """One partition: sequences, their n-gram index, and who each sequence came from."""

    def __init__(self, max_depth: int, min_support: int, max_tokens: int,
                 max_occurrences: int) -> None:
        self.max_depth, self.min_support = max_depth, min_support
        self.max_tokens, self.max_occurrences = max_tokens, max_occurrences
        self.sequences: OrderedDict[int, list[int]] = OrderedDict()
        self.origin: dict[int, Shared] = {}
        """Sequence id → the grant that let it in (shared index only)."""
        self.index: dict[tuple[int, ...], list[tuple[int, int]]] = defaultdict(list)
        self.tokens_held = 0
        self._next_id = 0

    def add(self, tokens: list[int], origin: Shared | None = None) -> None:
        if len(tokens) < 2:
            return
        seq_id, self._next_id = self._next_id, self._next_id + 1
        self.sequences[seq_id] = list(tokens)
        if origin is not None:
            self.origin[seq_id] = origin
        self.tokens_held += len(tokens)
        self._index(seq_id, tokens)
        while self.tokens_held > self.max_tokens and self.sequences:
            old_id, old = self.sequences.popitem(last=False)
            self.origin.pop(old_id, None)
            self.tokens_held -= len(old)
        if len(self.index) > 4 * self.max_tokens:  # drop entries that only point at evicted data
            self._reindex()

    def _index(self, seq_id: int, tokens: list[int]) -> None:
        for pos in range(1, len(tokens)):
            for n in range(1, min(self.max_depth, pos) + 1):
                occ = self.index[tuple(tokens[pos - n:pos])]
                occ.append((seq_id, pos))
                if len(occ) > self.max_occurrences:
                    del occ[0]

    def _reindex(self) -> None:
        self.index = defaultdict(list)
        for seq_id, tokens in self.sequences.items():
            self._index(seq_id, tokens)

    def remove(self, which) -> int:
        """Drop the sequences whose origin `which(origin)` selects and rebuild the index (no
        n-gram of theirs stays); returns how many went."""
        gone = [s for s, o in self.origin.items() if which(o)]
        for s in gone:
            self.tokens_held -= len(self.sequences.pop(s))
            del self.origin[s]
        if gone:
            self._reindex()
        return len(gone)

    def clear(self) -> int:
        n = len(self.sequences)
        self.sequences.clear()
        self.origin.clear()
        self.index = defaultdict(list)
        self.tokens_held = 0
        return n

    def _live(self, seq_id: int, now: float) -> bool:
        origin = self.origin.get(seq_id)
        return seq_id in self.sequences and (origin is None or origin.expires_at > now)

    def propose(self, context: list[int], k: int) -> tuple[int, list[int]]:
        """(length of the context's tail that matched, the draft); (0, []) without a match."""
        now = time.time()
        for n in range(min(self.max_depth, len(context)), 0, -1):
            occ = [(s, p) for s, p in self.index.get(tuple(context[-n:]), ())
                   if self._live(s, now)]
            if len(occ) >= self.min_support:
                return n, self._follow(occ, k)
        return 0, []

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


class SuffixDrafter:
    name = "suffix"

    def __init__(self, max_depth: int = 6, min_support: int = 1, max_tokens: int = 1_000_000,
                 max_occurrences: int = 64, max_tenants: int = 1024,
                 tenant_tokens: int = 100_000) -> None:
        self._make = lambda tokens: SuffixIndex(max_depth, min_support, tokens, max_occurrences)
        self.shared = self._make(max_tokens)
        """Text whose contributors granted `drafting`: drafts for every caller."""
        self.tenants: OrderedDict[str, SuffixIndex] = OrderedDict()
        """Tenant (account id) → its own requests' text: drafts for that tenant only."""
        self.max_tenants, self.tenant_tokens = max_tenants, tenant_tokens
        self._lock = threading.Lock()  # erasure runs in worker threads, drafting on the loop

    @property
    def tokens_held(self) -> int:
        return self.shared.tokens_held + sum(i.tokens_held for i in self.tenants.values())

    def start(self, prompt, temperature, top_p, generator: torch.Generator | None,
              scope: DraftScope = NO_SCOPE):
        return StatelessSession(lambda context, k: self.propose(context, k, scope))

    def observe(self, tokens: list[int], scope: DraftScope = NO_SCOPE) -> None:
        with self._lock:
            if scope.tenant is not None and scope.learn:
                own = self.tenants.get(scope.tenant)
                if own is None:
                    own = self.tenants[scope.tenant] = self._make(self.tenant_tokens)
                    while len(self.tenants) > self.max_tenants:
                        self.tenants.popitem(last=False)
                self.tenants.move_to_end(scope.tenant)
                own.add(tokens, Shared(scope.tenant, "", float("inf")))
            if scope.shared is not None and scope.learn:
                self.shared.add(tokens, scope.shared)

    def seed(self, sequences: Iterable[tuple[list[int], Shared]]) -> int:
        """Teach the shared index consented text (stored traces granted `drafting`)."""
        n = 0
        with self._lock:
            for tokens, origin in sequences:
                self.shared.add(tokens, origin)
                n += 1
        return n

    def propose(self, context: list[int], k: int, scope: DraftScope = NO_SCOPE) -> Draft:
        with self._lock:
            own = self.tenants.get(scope.tenant) if scope.tenant is not None else None
            mine = own.propose(context, k) if own is not None else (0, [])
            shared = self.shared.propose(context, k)
            best = mine if mine[1] and mine[0] >= shared[0] else shared  # the longer match
            return Draft(best[1])

    def forget_contributor(self, account_id: str) -> int:
        """Erasure: drop the account's own index and every shared sequence it contributed;
        returns the sequences removed."""
        with self._lock:
            own = self.tenants.pop(account_id, None)
            removed = own.clear() if own is not None else 0
            return removed + self.shared.remove(lambda o: o.contributor_id == account_id)

    def forget_grants(self, grant_ids: set[str]) -> int:
        """Revocation or expiry: drop the shared sequences those grants let in."""
        with self._lock:
            return self.shared.remove(lambda o: o.grant_id in grant_ids)

    def shared_grants(self) -> set[str]:
        """The grants the shared index holds text under (to check for revocation)."""
        with self._lock:
            return {o.grant_id for o in self.shared.origin.values()}

    def drop_expired(self) -> int:
        """Drop shared sequences whose grant expired (drafting already skips them)."""
        now = time.time()
        with self._lock:
            return self.shared.remove(lambda o: o.expires_at <= now)
