"""The evaluation harness: the same program scores production and a candidate.

- task metrics checked by a program, per shipped set (`train/evalsets`): exact match of the one
  tool call parsed back out of the answer the way the gateway parses `tool_calls` (`tool_calls`),
  or of a JSON call written as text (`tool_call`); an expected answer as a whole word, case aside
  (`words`, `contains`: "0" does not match "100"), and none of the item's `wrong` options; the
  whole reply (`exact`); an answer that parses as JSON (`json`). Prompts are rendered with their
  `tools` exactly as the gateway renders them (`serve.gateway.chat_format.render_messages`);
  greedy decoding, batched. Every set reports its accuracy with a 95 % Wilson interval and each
  item's outcome, what the gate's paired test reads;
- log-likelihood: mean log-probability per token of held-out answers (the `eval` split of the
  curated SFT set, or the chosen side of the DPO set), teacher-forced.

`metrics()` flattens a report into `{"<set>.accuracy": …, "loglik.mean": …}` and `outcomes()` into
`{"<set>.accuracy": {item id: passed}}`: what the gate reads.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from pathlib import Path

import torch

from train import data
from train.evalsets import GATE, load
from train.exceptions import EvalError
from train.stats import wilson
from train.tasks import check_call, match_call


def _has_word(text: str, word: str) -> bool:
    """`word` (or phrase) in `text` as a whole word, case aside."""
    return re.search(rf"(?<!\w){re.escape(word)}(?!\w)", text, re.I) is not None


def _bare(text: str) -> str:
    """A reply without surrounding spaces, quotes and final punctuation, lower case."""
    return re.sub(r"[\s.!\"']+$|^[\s\"']+", "", text).lower()


def _api_call(text: str) -> dict | None:
    """The one tool call the gateway would return in `tool_calls` for this completion (None when
    it would return none, or several)."""
    from curate.tool_calls import parse_tool_calls

    calls = parse_tool_calls(text)
    if len(calls) != 1:
        return None
    try:
        args = json.loads(calls[0]["function"]["arguments"])
    except ValueError:
        return None
    return {"name": calls[0]["function"]["name"], "arguments": args}


def score(item: dict, text: str) -> bool:
    check = item["check"]
    if check == "tool_calls":
        return match_call(_api_call(text), item["answer"])
    if check == "tool_call":
        return check_call(text, item["answer"])
    if check in ("contains", "words"):
        return any(_has_word(text, a) for a in item["answer"]) and not any(
            _has_word(text, w) for w in item.get("wrong", ()))
    if check == "exact":
        return _bare(text) in {_bare(a) for a in item["answer"]}
    if check == "json":
        start = min([i for i in (text.find("{"), text.find("[")) if i >= 0], default=-1)
        if start < 0:
            return False
        for end in range(len(text), start, -1):
            try:
                json.loads(text[start:end])
                return True
            except json.JSONDecodeError:
                continue
        return False
    raise EvalError(f"item {item.get('id')}: unknown check {check!r}")


def load_model(directory: Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(directory)
    model = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32).eval()
    return model, tokenizer


def render(tokenizer, prompt: list[dict] | dict) -> str:
    """A prompt as the gateway renders it: its messages, or an item's messages and `tools`."""
    from serve.gateway.chat_format import render_messages

    if isinstance(prompt, dict):
        return render_messages(tokenizer, prompt["messages"], prompt.get("tools"), tokenize=False)
    return render_messages(tokenizer, prompt, tokenize=False)


@torch.inference_mode()
def generate(model, tokenizer, prompts: list[list[dict] | dict], *, max_new_tokens: int = 48,
             batch: int = 8) -> list[str]:
    """Greedy answers to chat prompts (message lists, or items with `messages` and `tools`),
    batched with left padding."""
    tokenizer.padding_side = "left"
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    out = []
    for i in range(0, len(prompts), batch):
        texts = [render(tokenizer, p) for p in prompts[i:i + batch]]
        enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        ids = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                             pad_token_id=pad)
        out += tokenizer.batch_decode(ids[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    return out


@torch.inference_mode()
def loglik(model, tokenizer, rows: list[dict], *, max_len: int = 256, batch: int = 8) -> dict:
    """Mean log-probability per answer token over held-out (prompt, answer) rows."""
    examples = []
    for row in rows:
        if "messages" in row:
            examples.append(data.encode_turn(tokenizer, row["messages"][:-1],
                                             row["messages"][-1:], max_len, row.get("tools")))
        else:
            examples.append(data.encode_turn(tokenizer, row["prompt"], row["chosen"], max_len,
                                             row.get("tools")))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    total, tokens = 0.0, 0
    for i in range(0, len(examples), batch):
        b = data.collate(examples[i:i + batch], pad)
        logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
        labels = b["labels"][:, 1:]
        mask = labels != data.IGNORE
        logp = torch.gather(torch.log_softmax(logits[:, :-1].float(), -1), 2,
                            labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
        total += float((logp * mask).sum())
        tokens += int(mask.sum())
    return {"mean": total / tokens if tokens else None, "tokens": tokens, "rows": len(rows)}


def version_cache_key(version_id: str) -> str:
    """The name under which a version's task-set scores are cached (32 hex of its digest)."""
    return version_id.removeprefix("sha256:")[:32]


def evaluate(model_dir: Path, *, sets: tuple[str, ...] = GATE,
             heldout_rows: list[dict] | None = None, limit: int | None = None,
             max_new_tokens: int = 48, batch: int = 8, cache_dir: Path | None = None,
             cache_key: str | None = None, items: dict[str, list[dict]] | None = None) -> dict:
    """Score one model directory on the task sets and the held-out answers.

    `items` names sets given inline (name → items), scored after the shipped `sets`.
    With `cache_dir` and `cache_key` (`version_cache_key(version id)`), task-set scores are kept
    and reused: greedy decoding of the same weights on the same items gives the same answers."""
    model, tokenizer = load_model(Path(model_dir))
    t0 = time.perf_counter()
    report: dict = {"model": str(model_dir), "sets": {}}
    given = {name: None for name in sets} | dict(items or {})
    for name, inline in given.items():
        chosen = (load(name) if inline is None else inline)[:limit]
        digest = hashlib.sha256(json.dumps(chosen, sort_keys=True).encode()).hexdigest()[:12]
        cached = cache_dir / f"{cache_key}-{name}-{digest}-{max_new_tokens}.json" \
            if cache_dir and cache_key else None
        if cached and cached.is_file():  # greedy decoding of one version: the same every time
            report["sets"][name] = json.loads(cached.read_text())
            continue
        answers = generate(model, tokenizer, chosen, max_new_tokens=max_new_tokens, batch=batch)
        passed = [score(it, a) for it, a in zip(chosen, answers)]
        report["sets"][name] = {
            "accuracy": sum(passed) / len(chosen) if chosen else None, "n": len(chosen),
            "ci95": list(wilson(sum(passed), len(chosen))),
            "samples": [{"id": it["id"], "passed": ok, "answer": a[:200]}
                        for it, a, ok in list(zip(chosen, answers, passed))[:5]],
            "outcomes": {it["id"]: ok for it, ok in zip(chosen, passed)},
            "failed_ids": [it["id"] for it, ok in zip(chosen, passed) if not ok]}
        if cached:
            cached.parent.mkdir(parents=True, exist_ok=True)
            cached.write_text(json.dumps(report["sets"][name]))
    if heldout_rows:
        report["loglik"] = loglik(model, tokenizer, heldout_rows)
    report["seconds"] = round(time.perf_counter() - t0, 1)
    return report


def outcomes(report: dict) -> dict[str, dict[str, bool]]:
    """`{"<set>.accuracy": {item id: passed}}`: the per-item results the gate's paired test
    reads."""
    return {f"{name}.accuracy": s["outcomes"] for name, s in report["sets"].items()
            if s.get("outcomes")}


def metrics(report: dict) -> dict[str, float]:
    out = {f"{name}.accuracy": s["accuracy"] for name, s in report["sets"].items()
           if s["accuracy"] is not None}
    if report.get("loglik", {}).get("mean") is not None:
        out["loglik.mean"] = report["loglik"]["mean"]
    return out
