"""Decontamination: drop every record that shares a word n-gram (13 by default) with an evaluation
item, so the eval gate measures generalisation rather than recall. Hashes only; the evaluation
text itself is never copied into a dataset or card.

Text is normalised before it is compared: lower case, words only (punctuation and spacing gone).
Items shorter than n words are matched whole:

- an item of `min_words` to n-1 words contaminates a record that contains all of it, word for word;
- a shorter item ("What is 2 plus 2?") contaminates a record one of whose turns *is* that item.
  A phrase of two or three words inside a longer turn is ordinary language, not a leak of the
  item; the same short question sent on its own is.
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
    """The n-grams of a set of evaluation texts, and the whole of the short ones."""

    def __init__(self, texts: Iterable[str], n: int = 13, min_words: int = 6) -> None:
        self.n = n
        self.grams: dict[int, set[bytes]] = {}
        self.whole: set[bytes] = set()
        """Hashes of the normalised items under `min_words` words, matched against whole turns."""
        self.items = 0
        self.short = 0
        for text in texts:
            words = _words(text)
            if not words:
                continue
            self.items += 1
            if len(words) < min_words:
                self.short += 1
                self.whole.add(_h(words))
                continue
            size = min(n, len(words))
            bucket = self.grams.setdefault(size, set())
            bucket.update(_h(words[i:i + size]) for i in range(len(words) - size + 1))

    def digest(self) -> str:
        h = hashlib.sha256(str(self.n).encode())
        for size in sorted(self.grams):
            for g in sorted(self.grams[size]):
                h.update(g)
        h.update(b"whole")
        for g in sorted(self.whole):
            h.update(g)
        return h.hexdigest()

    def contaminated(self, text: str) -> bool:
        """Whether `text` holds an n-gram of an item, or one of its lines (turns) is a short
        item."""
        words = _words(text)
        for size, bucket in self.grams.items():
            if any(_h(words[i:i + size]) in bucket for i in range(len(words) - size + 1)):
                return True
        return bool(self.whole) and any(_h(_words(line)) in self.whole
                                        for line in [text, *text.splitlines()])


def decontaminate(records: Sequence[Record], index: EvalIndex) -> tuple[list[Record], dict]:
    kept = [r for r in records if not _record_contaminated(r, index)]
    return kept, {"in": len(records), "dropped": len(records) - len(kept), "ngram": index.n,
                  "eval_items": index.items, "eval_items_matched_whole": index.short,
                  "eval_digest": index.digest()}


def _record_contaminated(record: Record, index: EvalIndex) -> bool:
    """The record's text, with each turn (and each correction) also tried whole."""
    turns = [m["content"] for m in record.messages if isinstance(m.get("content"), str)]
    return index.contaminated(record.text()) or any(
        index.contaminated(turn) for turn in (*turns, *record.corrections))
