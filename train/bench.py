"""`shoal bench train`: SFT tokens/s of DeepSpeed against a plain torch loop, side by side.

Both train the same model on the same tokenized rows with the same global batch and AdamW:
- torch: one process, all cores, `loss.backward(); optimizer.step()`;
- DeepSpeed: `procs` processes through the launcher (ZeRO-2, gloo on CPU), the cores shared.
Tokens/s counts non-padding tokens, first optimizer step excluded (warm-up). On CPU the gradient
exchange (gloo) costs seconds per step for a 135M model, so the default accumulates 4 micro-steps
per exchange (ZeRO-1); `--zero zero2 --grad-accum 1` shows the cost of exchanging every step.
Writes `train.json` and `train.png`.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import torch

from train import data
from train.config import TrainConfig
from train.launch import Topology, launch


def _rows(n: int) -> list[dict]:
    from train.tasks import answer_text, items

    return [{"messages": it["messages"] + [{"role": "assistant",
                                              "content": answer_text(it["answer"])}],
             "request_id": f"b{i}", "trace_id": f"b{i}"}
            for i, it in enumerate(items(n, seed=7))]


def torch_loop(model_dir: Path, rows: list[dict], *, batch: int, steps: int, max_len: int,
               lr: float, accum: int = 1) -> dict:
    """`steps` micro-steps of `batch` sequences, the optimizer stepping every `accum` of them."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model.config.use_cache = False
    model.train()
    examples = data.encode_lm(tok, rows, max_len)
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    order = data.order(len(examples), 0, 0)
    times, tokens = [], []
    for s in range(steps):
        idx = [order[(s * batch + i) % len(order)] for i in range(batch)]
        b = data.collate([examples[i] for i in idx], pad)
        t0 = time.perf_counter()
        loss = model(**b).loss / accum
        loss.backward()
        if (s + 1) % accum == 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t0)
        tokens.append(int(b["attention_mask"].sum()))
    skip = accum  # the first optimizer step is warm-up
    return {"tokens_per_s": sum(tokens[skip:]) / sum(times[skip:]), "steps": steps,
            "step_s": times, "threads": torch.get_num_threads()}


def run_train_bench(model_dir: Path, out_dir: Path, *, steps: int = 4, micro_batch: int = 4,
                    procs: int = 2, max_len: int = 128, zero: str = "zero1",
                    grad_accum: int = 4) -> dict:
    from curate.builders import split
    from curate.card import write_dataset
    from curate.config import SplitConfig

    rows = _rows(steps * micro_batch * procs * grad_accum + 16)
    with tempfile.TemporaryDirectory() as tmp:
        card = write_dataset(Path(tmp), "sft", split(rows, SplitConfig(eval_fraction=0.0)),
                             {"source": {}, "counts": {}, "config": {}, "config_digest": "bench",
                              "flow_run_id": "bench", "scrubber": {}, "decontamination": {}})
        config = TrainConfig(kind="sft", model=str(model_dir), datasets=[f"{tmp}/{card.dataset_id}"],
                             output=f"{tmp}/run", micro_batch=micro_batch, max_steps=steps,
                             max_len=max_len, zero=zero, lr=1e-5, grad_accum=grad_accum)
        t0 = time.perf_counter()
        launch(config, Topology(procs=procs))
        ds_wall = time.perf_counter() - t0
        log = [json.loads(x) for x in Path(f"{tmp}/run/log.jsonl").read_text().splitlines()]
    ds_rate = sum(e["tokens"] for e in log[1:]) / sum(e["step_s"] for e in log[1:])
    plain = torch_loop(model_dir, rows, batch=micro_batch * procs, steps=steps * grad_accum,
                       max_len=max_len, lr=1e-5, accum=grad_accum)
    report = {"model": str(model_dir), "steps": steps,
              "global_batch": micro_batch * procs * grad_accum, "grad_accum": grad_accum,
              "max_len": max_len, "deepspeed": {"procs": procs, "zero": zero,
                                                "tokens_per_s": round(ds_rate, 1),
                                                "launch_wall_s": round(ds_wall, 1),
                                                "step_s": [e["step_s"] for e in log]},
              "torch": {**plain, "tokens_per_s": round(plain["tokens_per_s"], 1)},
              "ratio_deepspeed_over_torch": round(ds_rate / plain["tokens_per_s"], 3),
              "goal_ratio": 0.9}
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "train.json").write_text(json.dumps(report, indent=2))
    _plot(report, out_dir / "train.png")
    return report


def _plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    labels = ["torch (1 proc)", f"DeepSpeed ({report['deepspeed']['procs']} procs, "
                                  f"{report['deepspeed']['zero']})"]
    values = [report["torch"]["tokens_per_s"], report["deepspeed"]["tokens_per_s"]]
    ax.bar(labels, values, color=["#999999", "#4477aa"])
    ax.set_ylabel("SFT tokens / s")
    ax.set_title(f"ratio {report['ratio_deepspeed_over_torch']:.2f} (goal ≥ 0.9)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
