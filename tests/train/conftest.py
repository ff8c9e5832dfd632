"""Tiny curated datasets and DeepSpeed runs shared by the training tests (2 CPU processes, gloo)."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from curate.builders import split
from curate.card import write_dataset
from curate.config import SplitConfig

WORDS = "the quick brown fox jumps over the lazy dog a swarm of machines serves an open model".split()
CARD = {"source": {}, "counts": {}, "config": {}, "config_digest": "test", "flow_run_id": "test",
        "scrubber": {}, "decontamination": {}}


def _question(rng: random.Random) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(6)) + "?"


def noised_copy(model_dir: Path, out: Path, scale: float, seed: int = 0) -> Path:
    """A copy of the model at `model_dir` with Gaussian noise of std `scale` on every parameter:
    a deliberately damaged candidate for the gate to refuse."""
    import torch

    from train.evaluate import load_model

    model, tok = load_model(model_dir)
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * scale)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def make_sft(root: Path, n: int = 96, seed: int = 0) -> Path:
    rng = random.Random(seed)
    rows = [{"messages": [{"role": "user", "content": _question(rng)},
                          {"role": "assistant", "content": "paris is the capital."}],
             "request_id": f"s{i}", "trace_id": f"t{i}"} for i in range(n)]
    card = write_dataset(root, "sft", split(rows, SplitConfig(eval_fraction=0.25)), CARD)
    return root / card.dataset_id


def make_dpo(root: Path, n: int = 96, seed: int = 1) -> Path:
    rng = random.Random(seed)
    rows = [{"prompt": [{"role": "user", "content": _question(rng)}],
             "chosen": [{"role": "assistant", "content": "paris is the capital."}],
             "rejected": [{"role": "assistant", "content": "the lazy dog jumps."}],
             "request_id": f"d{i}", "trace_id": f"t{i}"} for i in range(n)]
    card = write_dataset(root, "dpo", split(rows, SplitConfig(eval_fraction=0.25)), CARD)
    return root / card.dataset_id


@pytest.fixture(scope="session")
def data_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("datasets")


@pytest.fixture(scope="session")
def sft_dir(data_root) -> Path:
    return make_sft(data_root)


@pytest.fixture(scope="session")
def runs(tmp_path_factory, tiny_model_dir, sft_dir):
    """Runs launched once per session by name: {"sft": (config, summary), …}."""
    from train.config import TrainConfig
    from train.launch import Topology, launch

    done: dict = {}
    root = tmp_path_factory.mktemp("runs")

    def get(name: str, **settings):
        if name not in done:
            base = dict(kind="sft", model=str(tiny_model_dir), datasets=[str(sft_dir)],
                        output=str(root / name), lr=2e-3, micro_batch=4, max_len=64,
                        max_steps=8, epochs=4)
            config = TrainConfig(**{**base, **settings})
            done[name] = (config, launch(config, Topology(procs=2)))
        return done[name]

    return get


def state(directory: Path) -> dict:
    from safetensors.torch import load_file

    out = {}
    for f in sorted(Path(directory).glob("*.safetensors")):
        out.update(load_file(f))
    return out
