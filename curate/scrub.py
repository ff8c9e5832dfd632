"""PII and secret scrubbing with Presidio: what is found is replaced by `<ENTITY_TYPE>`.

Two recognizer groups run through Presidio's analyzer and anonymizer:
- PII: Presidio's own pattern and checksum recognizers (email, phone, credit card with Luhn, IBAN
  with its checksum, IPv4/IPv6, US SSN, crypto wallet), plus person names with spaCy NER only when a
  spaCy pipeline is installed locally (nothing is downloaded);
- secrets: recognizers defined here for API keys and tokens (`sk-…`, AWS, GitHub, Slack, Google,
  Stripe), JWTs, private-key blocks, passwords in URLs and `password=`-style assignments.

Speed: the PII recognizers are local patterns, so the analyzer runs only on windows around
characters that could start one (`@`, runs of 7+ digits, `XX00`, dotted quads, colons); text without
such a trigger is never tokenized. A test checks that windows find exactly what the whole text finds.
Bare URLs are kept (code and docs are full of them); only their credentials are removed.
"""

from __future__ import annotations

import functools
import logging
import re
from collections import Counter
from collections.abc import Iterable


from curate.config import ScrubConfig
from curate.records import Record

PII_ENTITIES = ("EMAIL_ADDRESS", "PHONE_NUMBER", "CREDIT_CARD", "IBAN_CODE", "IP_ADDRESS",
                "US_SSN", "CRYPTO")
PII_RECOGNIZERS = ("EmailRecognizer", "PhoneRecognizer", "CreditCardRecognizer", "IbanRecognizer",
                   "IpRecognizer", "UsSsnRecognizer", "CryptoRecognizer")

# entity -> [(pattern name, regex, score, hints)]: a pattern runs only on text that contains one
# of its hints (after lowercasing when the hint is lowercase), which keeps clean text cheap.
SECRET_PATTERNS: dict[str, list[tuple[str, str, float, tuple[str, ...]]]] = {
    "API_KEY": [
        ("sk-key", r"\bsk-[A-Za-z0-9][A-Za-z0-9_\-]{19,}", 0.9, ("sk-",)),
        ("stripe", r"\b[rs]k_(?:live|test)_[A-Za-z0-9]{16,}\b", 0.9, ("k_live_", "k_test_")),
        ("google", r"\bAIza[0-9A-Za-z_\-]{35}\b", 0.9, ("AIza",)),
        ("slack", r"\bxox[abposr]-[A-Za-z0-9\-]{10,}", 0.9, ("xox",)),
    ],
    "AWS_KEY": [
        ("access-key-id", r"\b(?:AKIA|ASIA|AGPA|AIDA|AROA|ANPA|ANVA)[A-Z0-9]{16}\b", 0.9,
         ("AKIA", "ASIA", "AGPA", "AIDA", "AROA", "ANPA", "ANVA")),
        ("secret-key", r"(?i)(?<=aws_secret_access_key[\"']?\s{0,3}[:=]\s{0,3}[\"']?)"
                       r"[A-Za-z0-9/+=]{40}(?![A-Za-z0-9/+=])", 0.9, ("aws_secret",)),
    ],
    "GITHUB_TOKEN": [
        ("classic", r"\bgh[pousr]_[A-Za-z0-9]{36,255}\b", 0.95,
         ("ghp_", "gho_", "ghu_", "ghs_", "ghr_")),
        ("fine-grained", r"\bgithub_pat_[A-Za-z0-9_]{22,255}\b", 0.95, ("github_pat_",)),
    ],
    "JWT": [("jwt", r"\beyJ[A-Za-z0-9_\-]{5,}\.eyJ[A-Za-z0-9_\-]{5,}\.[A-Za-z0-9_\-]{5,}", 0.9,
             ("eyJ",))],
    "PRIVATE_KEY": [("pem", r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY-----[\s\S]+?"
                            r"-----END (?:[A-Z0-9]+ )*PRIVATE KEY-----", 1.0, ("PRIVATE KEY-----",))],
    "URL_CREDENTIALS": [("userinfo", r"(?<=[A-Za-z][A-Za-z0-9+.\-]*://)[^\s/:@]+:[^\s/@]+(?=@)",
                         0.95, ("://",))],
    "PASSWORD": [("assignment", r"(?i)(?<=\b(?:password|passwd|pwd|secret|api[_\-]?key|"
                                r"access[_\-]?token|auth[_\-]?token|client[_\-]?secret)\\?[\"']?"
                                r"\s{0,3}[:=]\s{0,3}\\?[\"']?)[^\s\"',;\\]{6,}", 0.8,
                  ("password", "passwd", "pwd", "secret", "api_key", "api-key", "apikey",
                   "token"))],
}
SECRET_ENTITIES = tuple(SECRET_PATTERNS)

# anything a PII recognizer above could match starts near one of these
# (a superset: digit runs with separators cover phones, cards, SSNs and dotted IPv4; a colon pair
# covers IPv6; `XX00` starts an IBAN; `1`, `3`, `bc1` start a bitcoin address)
TRIGGER = re.compile(r"@|\d[\d\s().+\-/]{6,}|[A-Z]{2}\d{2}|:[0-9A-Fa-f]{0,4}:"
                     r"|\b(?:bc1|[13])[a-zA-Z0-9]{25,}")
WINDOW = 100
"""Characters kept on each side of a trigger (an email, IBAN or card fits well inside)."""


@functools.lru_cache(maxsize=1)
def _spacy_pipeline(name: str):
    """The installed spaCy pipeline `name` if there is one, else a blank English tokenizer."""
    import spacy

    if spacy.util.is_package(name):
        return spacy.load(name), True
    return spacy.blank("en"), False


def _offline_tldextract() -> None:
    """Presidio's email check uses tldextract, which would fetch the suffix list: use the bundled one."""
    import tldextract
    import tldextract.tldextract as impl

    if impl.TLD_EXTRACTOR.suffix_list_urls:
        impl.TLD_EXTRACTOR = tldextract.TLDExtract(suffix_list_urls=(), cache_dir=None)


class Scrubber:
    """Finds and replaces PII and secrets in text; `scrub` maps it over records with counters."""

    def __init__(self, config: ScrubConfig | None = None) -> None:
        from presidio_analyzer import AnalyzerEngine, Pattern, PatternRecognizer, RecognizerRegistry
        from presidio_analyzer.nlp_engine import SpacyNlpEngine
        from presidio_anonymizer import AnonymizerEngine

        self.config = config or ScrubConfig()
        _offline_tldextract()
        nlp, has_ner = _spacy_pipeline(self.config.spacy_model)
        self.ner = bool(self.config.ner and has_ner)

        class LocalSpacy(SpacyNlpEngine):  # never downloads: uses what _spacy_pipeline found
            def load(self) -> None:
                self.nlp = {"en": nlp}

        engine = LocalSpacy(models=[{"lang_code": "en", "model_name": self.config.spacy_model}])
        engine.load()
        registry = RecognizerRegistry(supported_languages=["en"])
        quiet = logging.getLogger("presidio-analyzer")
        level = quiet.level
        quiet.setLevel(logging.ERROR)  # it warns about every recognizer of other languages
        try:
            registry.load_predefined_recognizers(nlp_engine=engine, languages=["en"])
        finally:
            quiet.setLevel(level)
        keep = set(PII_RECOGNIZERS) | ({"SpacyRecognizer"} if self.ner else set())
        registry.recognizers = [r for r in registry.recognizers if r.name in keep]
        self.pii_entities = list(PII_ENTITIES) + (["PERSON"] if self.ner else [])
        self.analyzer = AnalyzerEngine(nlp_engine=engine, registry=registry,
                                       supported_languages=["en"])
        self.secret_recognizers = [
            (hints, PatternRecognizer(supported_entity=entity, name=f"{entity}:{name}",
                                      patterns=[Pattern(name, rx, score)]))
            for entity, patterns in SECRET_PATTERNS.items()
            for name, rx, score, hints in patterns]
        self.anonymizer = AnonymizerEngine()

    def capabilities(self) -> dict:
        """What this scrubber can and cannot detect (goes into the data card)."""
        return {
            "engine": "presidio analyzer + anonymizer",
            "pii": self.pii_entities,
            "secrets": list(SECRET_ENTITIES),
            "names": ("spaCy NER (" + self.config.spacy_model + ")" if self.ner else
                      "not detected: no spaCy NER pipeline is installed"),
            "not_detected": ["bare URLs (kept; only their credentials are removed)",
                             "postal addresses", "secrets without a known prefix or a "
                             "password/token/secret label"]
                            + ([] if self.ner else ["person, place and organisation names"]),
            "score_threshold": self.config.score_threshold,
        }

    def find(self, text: str) -> list:
        """Presidio results for `text` (secrets over the whole text, PII in trigger windows)."""
        from presidio_analyzer import RecognizerResult

        results = []
        lowered = text.lower()
        for hints, recognizer in self.secret_recognizers:
            if any(h in (lowered if h.islower() else text) for h in hints):
                results += recognizer.analyze(text, recognizer.supported_entities)
        if self.ner:
            results += self.analyzer.analyze(text, language="en", entities=self.pii_entities,
                                             score_threshold=self.config.score_threshold)
        else:
            for start, end in _windows(text):
                for r in self.analyzer.analyze(text[start:end], language="en",
                                               entities=self.pii_entities,
                                               score_threshold=self.config.score_threshold):
                    results.append(RecognizerResult(r.entity_type, r.start + start, r.end + start,
                                                    r.score))
        return [r for r in results if r.score >= self.config.score_threshold]

    def scrub_text(self, text: str, counts: Counter | None = None) -> str:
        if not text:
            return text
        results = self.find(text)
        if not results:
            return text
        out = self.anonymizer.anonymize(text=text, analyzer_results=results)
        if counts is not None:
            counts.update(item.entity_type for item in out.items)
        return out.text

    def scrub(self, records: Iterable[Record]) -> tuple[list[Record], dict]:
        counts: Counter = Counter()
        out = []
        touched = 0
        for record in records:
            before = sum(counts.values())
            out.append(record.map_text(lambda t: self.scrub_text(t, counts)))
            touched += sum(counts.values()) > before
        return out, {"records": len(out), "records_changed": touched,
                     "replaced": dict(sorted(counts.items()))}


def _windows(text: str) -> list[tuple[int, int]]:
    """Merged [start, end) spans around triggers, widened to whitespace so no token is cut."""
    spans: list[tuple[int, int]] = []
    n = len(text)
    for m in TRIGGER.finditer(text):
        start = max(0, m.start() - WINDOW)
        end = min(n, m.end() + WINDOW)
        while start > 0 and not text[start - 1].isspace():
            start -= 1
        while end < n and not text[end].isspace():
            end += 1
        if spans and start <= spans[-1][1]:
            spans[-1] = (spans[-1][0], max(end, spans[-1][1]))
        else:
            spans.append((start, end))
    return spans
