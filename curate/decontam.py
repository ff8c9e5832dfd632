"""Decontamination: drop every record that shares a word n-gram (13 by default) with an evaluation
item, so the eval gate measures generalisation rather than recall. Items shorter than n words are
matched whole. Hashes only; the evaluation text itself is never copied into a dataset or card.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Sequence

from curate.records import Record

_WORD = re.compile(r"\w+")


def _words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def _h(gram: Sequence[str]) -> bytes:
    return hashlib.blake2b(" ".join(gram).encode(), digest_size=8).digest()


class EvalIndex:
    """The n-grams of a set of evaluation texts (and the whole of the short ones)."""

    def __init__(self, texts: Iterable[str], n: int = 13, min_words: int = 6) -> None:
        self.n = n
        self.grams: dict[int, set[bytes]] = {}
        self.items = 0
        self.skipped = 0
        for text in texts:
            words = _words(text)
            if len(words) < min_words:
                self.skipped += 1
                continue
            self.items += 1
            size = min(n, len(words))
            bucket = self.grams.setdefault(size, set())
            bucket.update(_h(words[i:i + size]) for i in range(len(words) - size + 1))

    def digest(self) -> str:
        h = hashlib.sha256(str(self.n).encode())
        for size in sorted(self.grams):
            for g in sorted(self.grams[size]):
                h.update(g)
        return h.hexdigest()

    def contaminated(self, text: str) -> bool:
        words = _words(text)
        for size, bucket in self.grams.items():
            if any(_h(words[i:i + size]) in bucket for i in range(len(words) - size + 1)):
                return True
        return False


def decontaminate(records: Sequence[Record], index: EvalIndex) -> tuple[list[Record], dict]:
    kept = [r for r in records if not index.contaminated(r.text())]
    return kept, {"in": len(records), "dropped": len(records) - len(kept), "ngram": index.n,
                  "eval_items": index.items, "eval_items_too_short": index.skipped,
                                  "eval_digest": index.digest()}
