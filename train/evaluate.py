"""The evaluation harness: the same program scores production and a candidate.

- task metrics checked by a program, per shipped set (`train/evalsets`): exact match of the tool
  call (`tool_call`), an expected string in the answer (`contains`), an answer that parses as JSON
  (`json`); greedy decoding, batched;
- log-likelihood: mean log-probability per token of held-out answers (the `eval` split of the
  curated SFT set, or the chosen side of the DPO set), teacher-forced.

`metrics()` flattens a report into `{"<set>.accuracy": …, "loglik.mean": …}`, what the gate reads.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from train import data
from train.evalsets import load
from train.exceptions import EvalError
from train.tasks import check_call


def score(item: dict, text: str) -> bool:
    check = item["check"]
    if check == "tool_call":
        return check_call(text, item["answer"])
    if check == "contains":
        return any(a.lower() in text.lower() for a in item["answer"])
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


@torch.inference_mode()
def generate(model, tokenizer, prompts: list[list[dict]], *, max_new_tokens: int = 48,
             batch: int = 8) -> list[str]:
    """Greedy answers to chat prompts, batched with left padding."""
    tokenizer.padding_side = "left"
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    out = []
    for i in range(0, len(prompts), batch):
        texts = [tokenizer.apply_chat_template([data.flatten(m) for m in p], tokenize=False,
                                               add_generation_prompt=True)
                 for p in prompts[i:i + batch]]
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
                                             row["messages"][-1:], max_len))
        else:
            examples.append(data.encode_turn(tokenizer, row["prompt"], row["chosen"], max_len))
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


def evaluate(model_dir: Path, *, sets: tuple[str, ...] = ("tools_heldout", "regression"),
             heldout_rows: list[dict] | None = None, limit: int | None = None,
             max_new_tokens: int = 48, batch: int = 8, cache_dir: Path | None = None,
             cache_key: str | None = None) -> dict:
    """Score one model directory on the task sets and the held-out answers.

    With `cache_dir` and `cache_key` (`version_cache_key(version id)`), task-set scores are kept
    and reused: greedy decoding of the same weights on the same items gives the same answers."""
    model, tokenizer = load_model(Path(model_dir))
    t0 = time.perf_counter()
    report: dict = {"model": str(model_dir), "sets": {}}
    for name in sets:
        cached = cache_dir / f"{cache_key}-{name}-{limit}-{max_new_tokens}.json" \
            if cache_dir and cache_key else None
        if cached and cached.is_file():  # greedy decoding of one version: the same every time
            report["sets"][name] = json.loads(cached.read_text())
            continue
        items = load(name)[:limit]
        answers = generate(model, tokenizer, [it["messages"] for it in items],
                           max_new_tokens=max_new_tokens, batch=batch)
        passed = [score(it, a) for it, a in zip(items, answers)]
        report["sets"][name] = {
            "accuracy": sum(passed) / len(items) if items else None, "n": len(items),
            "samples": [{"id": it["id"], "passed": ok, "answer": a[:200]}
                        for it, a, ok in list(zip(items, answers, passed))[:5]],
            "failed_ids": [it["id"] for it, ok in zip(items, passed) if not ok]}
        if cached:
            cached.parent.mkdir(parents=True, exist_ok=True)
            cached.write_text(json.dumps(report["sets"][name]))
    if heldout_rows:
        report["loglik"] = loglik(model, tokenizer, heldout_rows)
    report["seconds"] = round(time.perf_counter() - t0, 1)
    return report


def metrics(report: dict) -> dict[str, float]:
    out = {f"{name}.accuracy": s["accuracy"] for name, s in report["sets"].items()
           if s["accuracy"] is not None}
    if report.get("loglik", {}).get("mean") is not None:
        out["loglik.mean"] = report["loglik"]["mean"]
    return out
