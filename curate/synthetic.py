"""A seeded synthetic trace corpus with planted problems, for tests and `shoal bench curate`.

`corpus()` returns trace rows and feedback rows shaped like the trace store's, plus `planted`: every
secret and PII string it hid (of every kind the scrubber claims), the exact and near duplicate
pairs, the contaminated items and the low-quality ones, so a test can check each was handled.
"""

from __future__ import annotations

import json
import random
import string
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

_SYLLABLES = ["ka", "lo", "mi", "ru", "te", "so", "na", "vi", "dor", "pel", "tam", "qui", "zen",
              "bar", "fol", "ish", "ent", "ur", "ax", "om"]
_COMMON = ("the a to of and in is for on with that this it as be by at from or an are was we file "
           "call tool result value list read write open run test output error line function data "
           "user agent model answer returns json config path server request").split()


def _vocab(rng: random.Random, size: int = 6000) -> list[str]:
    words = set()
    while len(words) < size:
        words.add("".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(2, 4))))
    return sorted(words)


def _luhn_card(rng: random.Random) -> str:
    digits = [4] + [rng.randint(0, 9) for _ in range(14)]
    total = 0
    for i, d in enumerate(reversed(digits)):
        d = d * 2 if i % 2 == 0 else d
        total += d - 9 if d > 9 else d
    digits.append((10 - total % 10) % 10)
    s = "".join(map(str, digits))
    return " ".join(s[i:i + 4] for i in range(0, 16, 4))


def _iban_de(rng: random.Random) -> str:
    bban = "".join(str(rng.randint(0, 9)) for _ in range(18))
    rearranged = bban + "1314" + "00"  # D=13, E=14
    check = 98 - int(rearranged) % 97
    return f"DE{check:02d}{bban}"


def _alnum(rng: random.Random, n: int, alphabet: str = string.ascii_letters + string.digits) -> str:
    return "".join(rng.choice(alphabet) for _ in range(n))


def planted_values(rng: random.Random) -> dict[str, str]:
    """One fresh value of every kind of PII and secret the scrubber must remove."""
    upper = string.ascii_uppercase + string.digits
    return {
        "EMAIL_ADDRESS": f"{_alnum(rng, 8, string.ascii_lowercase)}.{_alnum(rng, 5, string.ascii_lowercase)}@example.org",
        "PHONE_NUMBER": f"+1 (415) 555-{rng.randint(1000, 9999)}",
        "CREDIT_CARD": _luhn_card(rng),
        "IBAN_CODE": _iban_de(rng),
        "IP_ADDRESS": f"10.{rng.randint(0, 255)}.{rng.randint(0, 255)}.{rng.randint(1, 254)}",
        "URL_CREDENTIALS": f"svc{_alnum(rng, 4, string.ascii_lowercase)}:Pw{_alnum(rng, 10)}",
        "API_KEY": f"sk-proj-{_alnum(rng, 32)}",
        "AWS_KEY": f"AKIA{_alnum(rng, 16, upper)}",
        "AWS_SECRET": _alnum(rng, 40, string.ascii_letters + string.digits + "/+"),
        "GITHUB_TOKEN": f"ghp_{_alnum(rng, 36)}",
        "JWT": f"eyJhbGciOiJIUzI1NiJ9.eyJ{_alnum(rng, 24)}.{_alnum(rng, 30)}",
        "PRIVATE_KEY": f"MII{_alnum(rng, 60)}",
        "PASSWORD": f"Hx{_alnum(rng, 12)}",
    }


def _embed_secret(kind: str, value: str) -> str:
    """The sentence that carries a planted value, as an agent trace would contain it."""
    return {
        "URL_CREDENTIALS": f"cloning https://{value}@git.example.org/team/repo.git now",
        "AWS_SECRET": f"export aws_secret_access_key={value}",
        "PRIVATE_KEY": ("-----BEGIN RSA PRIVATE KEY-----\n" + value +
                        "\n-----END RSA PRIVATE KEY-----"),
        "PASSWORD": f'config: {{"password": "{value}"}}',
    }.get(kind, f"the value is {value} as requested")


@dataclass
class Corpus:
    traces: list[dict]
    feedback: list[dict]
    planted: dict = field(default_factory=dict)


def _text(rng: random.Random, vocab: list[str], words: int) -> str:
    return " ".join(rng.choice(vocab) if rng.random() < 0.7 else rng.choice(_COMMON)
                    for _ in range(words))


def _trace(i: int, contributor: str, scopes: list[str], prompt: str, answer: str, *,
           t0: datetime, tool_calls: list | None = None, messages: list | None = None,
           trace_id: str | None = None, model_version: str = "genesis") -> dict:
    messages = messages or [{"role": "user", "content": prompt}]
    return {"request_id": f"req{i:06d}", "trace_id": trace_id or f"run{i:06d}", "parent_id": "",
            "contributor_id": contributor, "grant_id": f"g-{contributor}", "grant_scopes": scopes,
            "grant_expires_at": t0 + timedelta(days=30), "model_version": model_version,
            "messages_json": json.dumps(messages), "completion": answer,
            "tool_calls_json": json.dumps(tool_calls or []), "sampling_json": "{}",
            "prompt_tokens": len(prompt.split()), "completion_tokens": len(answer.split()),
            "route": [], "proof_status": "ok", "drafter_json": "{}", "latency_ms": 1.0,
            "ttft_ms": 1.0, "created_at": t0 + timedelta(seconds=i)}


def corpus(n: int = 200, *, seed: int = 0, words: int = 120, eval_texts: list[str] = (),
           contributors: dict[str, list[str]] | None = None) -> Corpus:
    """`n` clean traces plus one planted case of every kind (see the module docstring)."""
    rng = random.Random(seed)
    vocab = _vocab(rng)
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    contributors = contributors or {"alice": ["sft", "dpo", "distill", "eval"],
                                    "bob": ["sft"], "carol": ["sft", "dpo", "distill"]}
    names = sorted(contributors)
    traces: list[dict] = []
    feedback: list[dict] = []
    planted: dict = {"secrets": {}, "exact_dups": [], "near_dups": [], "contaminated": [],
                     "low_quality": {}}

    def add(prompt: str, answer: str, who: str | None = None, **kw) -> dict:
        who = who or names[len(traces) % len(names)]
        row = _trace(len(traces), who, contributors[who], prompt, answer, t0=t0, **kw)
        traces.append(row)
        return row

    for _ in range(n):
        add(_text(rng, vocab, words // 4), _text(rng, vocab, words))

    # secrets and PII: each kind once in a prompt, once in an answer, once in a tool-call argument
    for kind, value in planted_values(rng).items():
        planted["secrets"][kind] = value
        add(f"{_text(rng, vocab, 20)} {_embed_secret(kind, value)}", _text(rng, vocab, 40))
    for kind, value in planted_values(rng).items():
        planted["secrets"][kind + "/answer"] = value
        add(_text(rng, vocab, 20), f"{_text(rng, vocab, 30)} {_embed_secret(kind, value)}")
    for kind, value in planted_values(rng).items():
        planted["secrets"][kind + "/tool"] = value
        args = json.dumps({"query": _text(rng, vocab, 8), "note": _embed_secret(kind, value)})
        add(_text(rng, vocab, 25), "", tool_calls=[{"id": "c1", "type": "function",
                                                    "function": {"name": "search",
                                                                 "arguments": args}}])

    # duplicates of clean traces
    for k in range(5):
        src = traces[k]
        dup = add(json.loads(src["messages_json"])[0]["content"].upper(),
                  "  " + src["completion"] + "  ")
        planted["exact_dups"].append((src["request_id"], dup["request_id"]))
    for k in range(5, 10):
        src = traces[k]
        words_ = src["completion"].split()
        for j in rng.sample(range(len(words_)), max(1, len(words_) // 60)):
            words_[j] = rng.choice(vocab)
        dup = add(json.loads(src["messages_json"])[0]["content"], " ".join(words_))
        planted["near_dups"].append((src["request_id"], dup["request_id"]))

    # contamination: an evaluation prompt pasted into a trace
    for text in list(eval_texts)[:3]:
        row = add(f"{_text(rng, vocab, 10)} {text}", _text(rng, vocab, 40))
        planted["contaminated"].append(row["request_id"])

    # low quality, one of each
    lq = planted["low_quality"]
    lq["empty"] = add(_text(rng, vocab, 20), "   ")["request_id"]
    lq["refused"] = add(_text(rng, vocab, 20), "I'm sorry, but I can't help with that.")["request_id"]
    lq["repetitive"] = add(_text(rng, vocab, 20), "try again later " * 40)["request_id"]
    lq["broken_tool_call"] = add(_text(rng, vocab, 20), "", tool_calls=[
        {"id": "c2", "type": "function", "function": {"name": "read_file",
                                                      "arguments": '{"path": "/tmp/'}}])["request_id"]
    lq["failed_tool_call"] = add("", _text(rng, vocab, 30), messages=[
        {"role": "user", "content": _text(rng, vocab, 15)},
        {"role": "assistant", "content": "", "tool_calls": [
            {"id": "c3", "type": "function", "function": {"name": "run", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "c3", "content": "Error: command not found"}])["request_id"]
    low = add(_text(rng, vocab, 20), _text(rng, vocab, 40), who=names[0])
    lq["low_rating"] = low["request_id"]
    feedback.append({"feedback_id": "fb-low", "request_id": low["request_id"],
                     "contributor_id": low["contributor_id"], "rating": 0, "chosen": "",
                     "rejected": "", "correction": "", "created_at": t0})

    # preference feedback from every contributor (only those with the dpo scope may yield rows)
    planted["feedback_by"] = {}
    for k, who in enumerate(names):
        base = add(_text(rng, vocab, 20), _text(rng, vocab, 40), who=who)
        correction = _text(rng, vocab, 40)
        feedback.append({"feedback_id": f"fb-c{k}", "request_id": base["request_id"],
                         "contributor_id": who, "rating": None, "chosen": "", "rejected": "",
                         "correction": correction, "created_at": t0})
        planted["feedback_by"][who] = base["request_id"]
    return Corpus(traces=traces, feedback=feedback, planted=planted)


def bench_traces(n: int, *, tokens: int = 500, seed: int = 0, pii_rate: float = 0.1,
                 dup_rate: float = 0.05) -> list[dict]:
    """`n` agent-like traces of about `tokens` words; a share carry PII or are near copies."""
    rng = random.Random(seed)
    vocab = _vocab(rng)
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    rows: list[dict] = []
    for i in range(n):
        if rows and rng.random() < dup_rate:
            src = rows[rng.randrange(len(rows))]
            rows.append({**src, "request_id": f"req{i:06d}", "trace_id": f"run{i:06d}"})
            continue
        prompt = _text(rng, vocab, tokens // 5)
        answer = _text(rng, vocab, tokens - tokens // 5)
        if rng.random() < pii_rate:
            kind, value = rng.choice(list(planted_values(rng).items()))
            answer += " " + _embed_secret(kind, value)
        answer += f" line {rng.randint(1, 999)} took {rng.randint(1, 99)}.{rng.randint(0, 9)} s"
        rows.append(_trace(i, "bench", ["sft"], prompt, answer, t0=t0))
    return rows
