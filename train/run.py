"""What the DeepSpeed launcher starts on every process: `python -m train.run CONFIG.json`.

One loop serves SFT, distillation (the served model's outputs, into a draft cut from the target's
first layers and trained on the target's full next-token distribution) and DPO (against a frozen
copy of the starting weights). Rank 0 writes `log.jsonl` (one line per optimizer step: loss
averaged over ranks, learning rate, tokens, tokens/s, and for DPO the rewards and margin),
checkpoints go to `checkpoints/` through DeepSpeed (model, optimizer, scheduler and the step), and
a run that finds a checkpoint resumes from it with the same batch order. At the end rank 0 exports
HF safetensors to `model/` and writes `summary.json` (`train.records.TrainSummary`, or
`StoppedSummary` for a run that leaves early).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from train import data
from train.config import TrainConfig
from train.exceptions import TrainConfigError
from train.model import build, export
from train.records import StoppedSummary, TrainSummary


def _precision(ds_config: dict, cpu: bool) -> None:
    """fp32 on CPU; on GPUs bf16 where supported, else fp16 with loss scaling ("auto")."""
    from deepspeed.accelerator import get_accelerator

    bf16 = ds_config.setdefault("bf16", {})
    fp16 = ds_config.setdefault("fp16", {})
    if cpu:
        bf16["enabled"] = fp16["enabled"] = False
        return
    if bf16.get("enabled") == "auto":
        bf16["enabled"] = get_accelerator().is_bf16_supported()
        fp16["enabled"] = not bf16["enabled"]


def sequence_logps(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Sum of log-probabilities of the labelled tokens of each sequence."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    labels = batch["labels"][:, 1:]
    mask = labels != data.IGNORE
    logp = torch.gather(F.log_softmax(logits[:, :-1].float(), dim=-1), 2,
                        labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return (logp * mask).sum(-1)


def dpo_terms(policy, reference, chosen: dict, rejected: dict, beta: float) -> dict:
    width = max(chosen["input_ids"].shape[1], rejected["input_ids"].shape[1])
    both = {k: torch.cat([_pad_to(chosen[k], width, k), _pad_to(rejected[k], width, k)])
            for k in chosen}
    n = chosen["input_ids"].shape[0]
    policy_lp = sequence_logps(policy, both)
    with torch.no_grad():
        ref_lp = sequence_logps(reference, both)
    reward = beta * (policy_lp - ref_lp)
    margin = reward[:n] - reward[n:]
    return {"loss": -F.logsigmoid(margin).mean(), "reward_chosen": reward[:n].mean().detach(),
            "reward_rejected": reward[n:].mean().detach(), "margin": margin.mean().detach(),
            "accuracy": (margin > 0).float().mean()}


def _pad_to(t: torch.Tensor, width: int, key: str) -> torch.Tensor:
    if t.shape[1] >= width:
        return t
    fill = data.IGNORE if key == "labels" else 0
    return F.pad(t, (0, width - t.shape[1]), value=fill)


def distill_terms(student, teacher, batch: dict) -> dict:
    """KL(target ‖ draft) over the answer tokens: the draft learns the target's whole next-token
    distribution, not only its greedy choice (more signal per token than plain SFT)."""
    logits = student(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    with torch.no_grad():
        target = teacher(input_ids=batch["input_ids"],
                         attention_mask=batch["attention_mask"]).logits
    mask = (batch["labels"][:, 1:] != data.IGNORE).unsqueeze(-1)
    log_p = F.log_softmax(target[:, :-1].float(), -1)
    log_q = F.log_softmax(logits[:, :-1].float(), -1)
    kl = (log_p.exp() * (log_p - log_q) * mask).sum() / mask.sum().clamp(min=1)
    agree = ((logits[:, :-1].argmax(-1) == target[:, :-1].argmax(-1)) & mask.squeeze(-1)).sum()
    return {"loss": kl, "agreement": agree.float() / mask.sum().clamp(min=1)}


class Run:
    """The state of one process of a run."""

    def __init__(self, config: TrainConfig) -> None:
        import deepspeed
        import torch.distributed as dist
        from deepspeed.accelerator import get_accelerator

        self.config = config
        self.out = Path(config.output)
        self.cpu = get_accelerator().device_name() == "cpu"
        deepspeed.init_distributed(dist_backend="gloo" if self.cpu else "nccl")
        self.rank, self.world = dist.get_rank(), dist.get_world_size()
        if self.cpu:  # share the host's cores among the processes on it
            local = int(os.environ.get("LOCAL_WORLD_SIZE", self.world))
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // local))
        torch.manual_seed(config.seed)
        self.dpo = config.kind == "dpo"
        self._load_data()
        self._build_engine()

    def _load_data(self) -> None:
        """Tokenize the datasets' train and eval splits; plan this rank's micro-batches."""
        from transformers import AutoTokenizer

        config = self.config
        self.tokenizer = AutoTokenizer.from_pretrained(config.model)
        self.pad_id = self.tokenizer.pad_token_id
        if self.pad_id is None:
            self.pad_id = self.tokenizer.eos_token_id
        encode = data.encode_pairs if self.dpo else data.encode_lm
        self.train_set = encode(self.tokenizer, data.load_rows(config.datasets, "train"),
                                config.max_len)
        self.eval_set = encode(self.tokenizer, data.load_rows(config.datasets, "eval"),
                               config.max_len)
        micro = data.micro_batches(len(self.train_set), seed=config.seed, epoch=0,
                                   micro=config.micro_batch, rank=self.rank, world=self.world)
        self.steps_per_epoch = len(micro) // config.grad_accum
        if self.steps_per_epoch == 0:
            raise TrainConfigError(f"{len(self.train_set)} examples make no full step of "
                                   f"grad_accum={config.grad_accum}")
        self.total = self.steps_per_epoch * config.epochs
        if config.max_steps:
            self.total = min(self.total, config.max_steps)

    def _build_engine(self) -> None:
        """The trained model under DeepSpeed, plus the frozen reference (DPO) or teacher (draft)."""
        import deepspeed

        config = self.config
        model = build(config)
        self.reference = build(config, trainable=False) if self.dpo else None
        self.teacher = None
        if config.kind == "distill" and config.draft_layers:  # the full target teaches the draft
            self.teacher = build(config.model_copy(update={"draft_layers": None, "lora": None,
                                                           "freeze_layers_below": 0}),
                                 trainable=False)
        ds_config = config.deepspeed_json()
        ds_config["train_micro_batch_size_per_gpu"] = config.micro_batch
        ds_config["gradient_accumulation_steps"] = config.grad_accum
        ds_config["train_batch_size"] = config.micro_batch * config.grad_accum * self.world
        _precision(ds_config, self.cpu)
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=0.0)
        total = self.total  # linear decay to 10 % of the learning rate
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda s: max(0.1, 1.0 - 0.9 * s / max(1, total)))
        self.engine, _, _, self.scheduler = deepspeed.initialize(
            model=model, optimizer=optimizer, lr_scheduler=schedule, config=ds_config)
        for frozen in (self.reference, self.teacher):
            if frozen is not None:
                frozen.to(self.engine.device)
        self.trainable = sum(p.numel() for p in params)

    # -- batches ---------------------------------------------------------------------------------

    def _batch(self, indices: list[int], examples) -> dict:
        dev = self.engine.device
        if self.dpo:
            chosen = data.collate([examples[i][0] for i in indices], self.pad_id)
            rejected = data.collate([examples[i][1] for i in indices], self.pad_id)
            return {"chosen": {k: v.to(dev) for k, v in chosen.items()},
                    "rejected": {k: v.to(dev) for k, v in rejected.items()}}
        return {k: v.to(dev) for k, v in data.collate([examples[i] for i in indices],
                                                      self.pad_id).items()}

    def _terms(self, batch: dict) -> dict:
        if self.dpo:
            return dpo_terms(self.engine, self.reference, batch["chosen"], batch["rejected"],
                             self.config.dpo_beta)
        if self.teacher is not None:
            return distill_terms(self.engine, self.teacher, batch)
        return {"loss": self.engine(**batch).loss}

    def _tokens(self, batch: dict) -> int:
        if self.dpo:
            return int(batch["chosen"]["attention_mask"].sum() +
                       batch["rejected"]["attention_mask"].sum())
        return int(batch["attention_mask"].sum())

    def _mean(self, values: dict) -> dict:
        import torch.distributed as dist

        keys = sorted(values)
        t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64)
        dist.all_reduce(t)
        return {k: float(v) / self.world for k, v in zip(keys, t)}

    # -- evaluation ------------------------------------------------------------------------------

    @torch.no_grad()
    def evaluate(self) -> dict:
        """Mean loss (and DPO margin / accuracy) on the eval split, averaged over ranks."""
        if not self.eval_set:
            return {}
        self.engine.eval()
        n = len(self.eval_set)
        per = self.config.micro_batch
        sums: dict[str, float] = {}
        count = 0
        for b in range(self.config.eval_batches):
            indices = [(self.rank * per + b * per * self.world + i) % n for i in range(per)]
            terms = self._terms(self._batch(indices, self.eval_set))
            for k, v in terms.items():
                sums[k] = sums.get(k, 0.0) + float(v)
            count += 1
            if (b + 1) * per * self.world >= n:
                break
        self.engine.train()
        return self._mean({k: v / count for k, v in sums.items()})

    # -- the loop --------------------------------------------------------------------------------

    def train(self) -> TrainSummary | StoppedSummary:
        ckpt = self.out / "checkpoints"
        start, history, eval_before = 0, [], None
        if (ckpt / "latest").is_file():
            _, client = self.engine.load_checkpoint(str(ckpt))
            start, history, eval_before = client["step"], client["history"], client["eval_before"]
            self._say(f"resumed at step {start}/{self.total}")
        if eval_before is None:
            eval_before = self.evaluate()
        self.engine.train()
        log = open(self.out / "log.jsonl", "a") if self.rank == 0 else None
        t_start = time.perf_counter()
        tokens_done = 0
        for step in range(start, self.total):
            epoch, within = divmod(step, self.steps_per_epoch)
            micro = data.micro_batches(len(self.train_set), seed=self.config.seed, epoch=epoch,
                                       micro=self.config.micro_batch, rank=self.rank,
                                       world=self.world)
            t0 = time.perf_counter()
            sums: dict[str, float] = {}
            tokens = 0
            for m in micro[within * self.config.grad_accum:(within + 1) * self.config.grad_accum]:
                batch = self._batch(m, self.train_set)
                terms = self._terms(batch)
                self.engine.backward(terms["loss"])
                self.engine.step()
                tokens += self._tokens(batch)
                for k, v in terms.items():
                    sums[k] = sums.get(k, 0.0) + float(v.detach()) / self.config.grad_accum
            sums["tokens"] = tokens * self.world  # so the mean over ranks is the sum of tokens
            row = self._mean(sums)
            row["tokens"] = int(row["tokens"])
            elapsed = time.perf_counter() - t0
            tokens_done += row["tokens"]
            entry = {"step": step + 1, "epoch": epoch, **{k: round(v, 6) for k, v in row.items()},
                     "lr": self.scheduler.get_last_lr()[0], "step_s": round(elapsed, 3),
                     "tokens_per_s": round(row["tokens"] / elapsed, 1)}
            history.append(entry)
            if log:
                log.write(json.dumps(entry) + "\n")
                log.flush()
            self._say(f"step {step + 1}/{self.total} loss {entry['loss']:.4f} "
                      f"{entry['tokens_per_s']:.0f} tok/s")
            if self.config.save_every and (step + 1) % self.config.save_every == 0:
                self._save(ckpt, step + 1, history, eval_before)
            if self.config.stop_after_steps and step + 1 - start >= self.config.stop_after_steps \
                    and step + 1 < self.total:
                return self._stop(ckpt, step + 1, history, eval_before, log)
        wall = time.perf_counter() - t_start
        self._save(ckpt, self.total, history, eval_before)
        eval_after = self.evaluate()
        state = self._gather_state()
        summary = TrainSummary(
            kind=self.config.kind, steps=self.total, world_size=self.world,
            trainable_parameters=self.trainable, eval_before=eval_before, eval_after=eval_after,
            loss_first=history[0]["loss"] if history else None,
            loss_last=history[-1]["loss"] if history else None,
            loss_curve=[h["loss"] for h in history],
            tokens=int(sum(h["tokens"] for h in history)),
            tokens_per_s=round(tokens_done / wall, 1) if wall and tokens_done else None,
            config_digest=self.config.digest(), zero_stage=self.engine.zero_optimization_stage())
        if self.rank == 0:
            export(self.config, state, self.tokenizer, self.out)
            summary.save(self.out)
            log.close()
        import torch.distributed as dist

        dist.barrier()
        return summary

    def _stop(self, ckpt: Path, step: int, history: list, eval_before: dict,
              log) -> StoppedSummary:
        """Checkpoint and leave before the end; the next launch resumes from here."""
        self._save(ckpt, step, history, eval_before)
        summary = StoppedSummary(kind=self.config.kind, stopped_at=step, steps=self.total,
                                 loss_curve=[h["loss"] for h in history])
        if self.rank == 0:
            summary.save(self.out)
            log.close()
        self._say(f"stopped after step {step}; launch again to resume")
        import torch.distributed as dist

        dist.barrier()
        return summary

    def _save(self, ckpt: Path, step: int, history: list, eval_before: dict) -> None:
        self.engine.save_checkpoint(str(ckpt), tag=f"step{step}", client_state={
            "step": step, "history": history, "eval_before": eval_before})

    def _gather_state(self) -> dict[str, torch.Tensor]:
        """The full trained state on rank 0 (ZeRO-3 parameters are gathered first)."""
        module = self.engine.module
        if self.engine.zero_optimization_stage() == 3:
            from deepspeed.runtime.zero import GatheredParameters

            state = {}
            for name, p in module.named_parameters():
                with GatheredParameters([p]):
                    if self.rank == 0:
                        state[name] = p.detach().clone().cpu()
            if self.rank == 0:  # persistent buffers only (rotary tables are rebuilt on load)
                persistent = set(module.state_dict())
                state.update({n: b.detach().clone().cpu() for n, b in module.named_buffers()
                              if n in persistent})
            return state
        return {k: v.detach().clone().cpu() for k, v in module.state_dict().items()} \
            if self.rank == 0 else {}

    def _say(self, message: str) -> None:
        if self.rank == 0:
            print(f"[train] {message}", flush=True)


def main(argv: list[str] | None = None) -> int:
    args = argv if argv is not None else sys.argv[1:]
    if len(args) != 1:
        print("usage: python -m train.run CONFIG.json", file=sys.stderr)
        return 2
    config = TrainConfig.model_validate_json(Path(args[0]).read_text())
    Path(config.output).mkdir(parents=True, exist_ok=True)
    Run(config).train()
    return 0


if __name__ == "__main__":
    sys.exit(main())
