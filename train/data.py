"""Datasets in TRL formats → token ids with loss masks, and deterministic batches.

SFT and distillation rows (`messages`) train on the last assistant turn only; DPO rows
(`prompt`/`chosen`/`rejected`) give two sequences that share the prompt. Rows in TRL's tool format
(a `tools` column of JSON schemas, assistant turns with `tool_calls`) are rendered by the gateway's
own renderer (`serve.gateway.chat_format.render_messages`), so training sees exactly the tokens
serving renders for the same conversation and tools. Batch order
depends only on (seed, epoch), so a resumed run sees exactly the batches it would have seen.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

import torch

from train.exceptions import TrainConfigError

IGNORE = -100


def flatten(message: dict) -> dict:
    """A message whose content is plain text (tool calls appended as JSON)."""
    content = message.get("content") or ""
    if isinstance(content, list):
        content = " ".join(p.get("text", "") for p in content if isinstance(p, dict))
    calls = message.get("tool_calls") or []
    if calls:
        rendered = json.dumps([{"name": c.get("function", {}).get("name"),
                                "arguments": c.get("function", {}).get("arguments")}
                               for c in calls])
        content = f"{content}\n{rendered}" if content else rendered
    return {"role": message["role"], "content": content}


def _template(tokenizer, messages: list[dict], generation_prompt: bool,
              tools: list[dict] | None = None) -> list[int]:
    from serve.gateway.chat_format import render_messages

    text = render_messages(tokenizer, messages, tools, add_generation_prompt=generation_prompt,
                           tokenize=False)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


@dataclass
class Example:
    ids: list[int]
    labels: list[int]


def encode_turn(tokenizer, prompt: list[dict], answer: list[dict], max_len: int,
                tools: list[dict] | None = None) -> Example:
    """Prompt + answer (with the request's `tools`), with the loss on the answer only; the prompt
    is cut from the left."""
    prompt_ids = _template(tokenizer, prompt, True, tools)
    full = _template(tokenizer, prompt + answer, False, tools)
    if full[:len(prompt_ids)] != prompt_ids:  # templates that rewrite earlier turns
        prompt_ids = full[:len(prompt_ids)]
    answer_ids = full[len(prompt_ids):]
    keep_prompt = max(1, max_len - len(answer_ids))
    prompt_ids = prompt_ids[-keep_prompt:]
    ids = (prompt_ids + answer_ids)[:max_len]
    labels = ([IGNORE] * len(prompt_ids) + answer_ids)[:max_len]
    return Example(ids, labels)


def load_rows(dataset_dirs: list[str], split: str) -> list[dict]:
    from curate.card import load_card, load_split

    rows: list[dict] = []
    for d in dataset_dirs:
        if not (Path(d) / "card.json").is_file():
            raise TrainConfigError(f"dataset {d!r} has no card.json (is it a curate output?)")
        load_card(Path(d))
        rows += load_split(Path(d), split)
    return rows


def encode_lm(tokenizer, rows: list[dict], max_len: int) -> list[Example]:
    out = []
    for row in rows:
        messages = row["messages"]
        if not messages or messages[-1]["role"] != "assistant":
            raise TrainConfigError(f"row {row.get('request_id', '?')}: the last message must be "
                                   "the assistant's answer")
        out.append(encode_turn(tokenizer, messages[:-1], messages[-1:], max_len,
                               row.get("tools")))
    return out


def encode_pairs(tokenizer, rows: list[dict], max_len: int) -> list[tuple[Example, Example]]:
    return [(encode_turn(tokenizer, r["prompt"], r["chosen"], max_len, r.get("tools")),
             encode_turn(tokenizer, r["prompt"], r["rejected"], max_len, r.get("tools")))
            for r in rows]


def collate(examples: list[Example], pad_id: int) -> dict[str, torch.Tensor]:
    width = max(len(e.ids) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for i, e in enumerate(examples):
        ids[i, :len(e.ids)] = torch.tensor(e.ids)
        labels[i, :len(e.labels)] = torch.tensor(e.labels)
        mask[i, :len(e.ids)] = 1
    return {"input_ids": ids, "labels": labels, "attention_mask": mask}


def order(n: int, seed: int, epoch: int) -> list[int]:
    idx = list(range(n))
    random.Random(seed * 1_000_003 + epoch).shuffle(idx)
    return idx


def micro_batches(n: int, *, seed: int, epoch: int, micro: int, rank: int,
                  world: int) -> list[list[int]]:
    """This rank's micro-batches of example indices for one epoch (every rank gets as many)."""
    idx = order(n, seed, epoch)
    per_step = micro * world
    steps = len(idx) // per_step
    if steps == 0:
        raise TrainConfigError(f"{n} examples cannot fill one step of {micro} × {world} processes; "
                               "lower micro_batch or add data")
    return [idx[s * per_step + rank * micro: s * per_step + (rank + 1) * micro]
            for s in range(steps)]
