"""DeepSpeed on 2 CPU processes (gloo): SFT with ZeRO-2, LoRA with a merged export, the multi-host
path on loopback, DPO, and resume after a kill."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest
import torch

from serve.up import free_port
from tests.train.conftest import make_dpo, state
from train.config import TrainConfig
from train.launch import (Topology, command, environment, launch, release_shared_memory,
                          start, wait)

pytestmark = pytest.mark.slow


def test_sft_zero2_changes_every_parameter_and_lowers_heldout_loss(runs, tiny_model_dir):
    config, summary = runs("sft")
    assert summary.world_size == 2 and summary.zero_stage == 2
    assert summary.eval_after["loss"] < summary.eval_before["loss"] * 0.7
    before, after = state(tiny_model_dir), state(Path(config.output) / "model")
    assert set(before) == set(after)
    unchanged = [k for k in before if torch.equal(before[k], after[k])]
    assert unchanged == []
    log = [json.loads(x) for x in (Path(config.output) / "log.jsonl").read_text().splitlines()]
    assert [e["step"] for e in log] == list(range(1, 9)) and all(e["tokens"] > 0 for e in log)


def test_zero3_gathers_partitioned_weights_and_trains_like_zero2(runs):
    config2, zero2 = runs("sft")
    config3, zero3 = runs("zero3", zero="zero3")
    assert zero3.zero_stage == 3
    assert zero3.loss_curve == pytest.approx(zero2.loss_curve, rel=1e-4)
    a, b = state(Path(config3.output) / "model"), state(Path(config2.output) / "model")
    assert set(a) == set(b)
    for k in a:  # the export gathered every partitioned parameter (a missing or zeroed
        # partition differs by the weights' own size, ~1e-2); ZeRO-3 reduces gradients in
        # another order, and Adam turns that into up to ~lr/100 on the few elements whose
        # gradient is near zero: close element-wise, and equal on average
        torch.testing.assert_close(a[k], b[k], rtol=1e-3, atol=1e-4)
        assert (a[k] - b[k]).abs().float().mean() < 1e-6, k


def test_lora_export_equals_base_plus_scaled_adapter_product(runs, tiny_model_dir):
    from safetensors.torch import load_file

    config, summary = runs("lora", lora={"r": 4, "alpha": 8}, lr=5e-3)
    assert summary.eval_after["loss"] < summary.eval_before["loss"]
    assert summary.trainable_parameters < 20_000  # adapters only
    base, merged = state(tiny_model_dir), state(Path(config.output) / "model")
    adapter = load_file(Path(config.output) / "adapter" / "adapter_model.safetensors")
    scale = config.lora.alpha / config.lora.r
    checked = 0
    for name, w0 in base.items():
        prefix = "base_model.model." + name.removesuffix(".weight")
        a = adapter.get(prefix + ".lora_A.weight")
        if a is None:
            assert torch.equal(merged[name], w0), name  # untouched weights stay bit-identical
            continue
        b = adapter[prefix + ".lora_B.weight"]
        assert b.abs().sum() > 0  # B starts at zero: training moved it
        torch.testing.assert_close(merged[name], w0 + scale * (b @ a), rtol=1e-5, atol=1e-6)
        checked += 1
    assert checked == 4 * 4  # q, k, v, o in each of the 4 layers


def test_two_launches_with_node_ranks_train_one_model(runs, tiny_model_dir, tmp_path):
    """The multi-host path (hostfile + --no_ssh + node ranks): one process per host, one model;
    its loss curve equals the single-host 2-process run's. As root (CI) the two hosts are network
    namespaces on a bridge with addresses of their own (tests/deploy/netns.py), rank 0's host the
    master, gloo on each host's own interface; otherwise two launches on loopback."""
    from tests.deploy.netns import Hosts, can_make_namespaces

    config, single = runs("sft")
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("host-a slots=1\nhost-b slots=1\n")
    port = free_port()
    c0 = config.model_copy(update={"output": str(tmp_path / "host-a")})
    c1 = config.model_copy(update={"output": str(tmp_path / "host-b")})
    with contextlib.ExitStack() as stack:
        if can_make_namespaces() is None:
            hosts = stack.enter_context(Hosts())
            master = hosts.add("host-a")
            hosts.add("host-b")

            def start_on(name: str, c: TrainConfig, rank: int) -> subprocess.Popen:
                out = Path(c.output)
                out.mkdir(parents=True, exist_ok=True)
                (out / "config.json").write_text(c.model_dump_json(indent=2))
                topo = Topology(hostfile=hostfile, node_rank=rank, master_addr=master,
                                master_port=port)
                env = {**environment(topo), "GLOO_SOCKET_IFNAME": hosts.links[name]}
                return hosts.run(name, command(out / "config.json", topo), env=env,
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                 bufsize=1)

            p0, p1 = start_on("host-a", c0, 0), start_on("host-b", c1, 1)
        else:
            p0 = start(c0, Topology(hostfile=hostfile, node_rank=0, master_port=port))
            p1 = start(c1, Topology(hostfile=hostfile, node_rank=1, master_port=port))
        other: dict = {}
        t = threading.Thread(target=lambda: other.update(code=p1.wait(), out=p1.stdout.read()))
        t.start()
        summary = wait(p0, c0)
        t.join(timeout=120)
    assert other["code"] == 0, other["out"][-2000:]
    assert summary.world_size == 2
    assert summary.loss_curve == pytest.approx(single.loss_curve, rel=1e-5)
    a, b = state(tmp_path / "host-a" / "model"), state(Path(config.output) / "model")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)


def test_dpo_raises_the_heldout_margin(tiny_model_dir, tmp_path):
    dpo_dir = make_dpo(tmp_path / "data")
    config = TrainConfig(kind="dpo", model=str(tiny_model_dir), datasets=[str(dpo_dir)],
                         output=str(tmp_path / "dpo"), lr=2e-3, micro_batch=4, max_len=64,
                         max_steps=8, epochs=4, dpo_beta=0.1)
    port = free_port()
    segments = f"deepspeed_allreduce_buffer_{os.getuid()}_127.0.0.1_{port}_*"
    seen: set[Path] = set()
    done = threading.Event()

    def watch() -> None:  # DeepSpeed's CPU all-reduce segments while the run is alive
        while not done.is_set():
            seen.update(Path("/dev/shm").glob(segments))
            time.sleep(0.2)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        summary = launch(config, Topology(procs=2, master_port=port))
    finally:
        done.set()
        watcher.join()
    assert len(seen) == 2  # one per rank, ~70 MB of memory each ...
    assert not list(Path("/dev/shm").glob(segments))  # ... and released when the run ends
    before, after = summary.eval_before, summary.eval_after
    assert abs(before["margin"]) < 1e-4  # policy == reference at the start
    assert after["margin"] > 0.5 and after["accuracy"] == 1.0
    log = [json.loads(x) for x in (tmp_path / "dpo" / "log.jsonl").read_text().splitlines()]
    assert {"reward_chosen", "reward_rejected", "margin"} <= set(log[-1])


def test_a_killed_launch_resumes_from_its_last_checkpoint(runs, tmp_path):
    """kill -9 of the whole launch group right after a checkpoint: the next launch resumes and
    continues the uninterrupted run's loss trajectory to the same weights."""
    reference_config, reference = runs("sft")
    config = reference_config.model_copy(update={"output": str(tmp_path / "run"),
                                                 "save_every": 2, "stop_after_steps": 6})
    proc = start(config, Topology(procs=2))
    latest = tmp_path / "run" / "checkpoints" / "latest"
    deadline = time.time() + 240
    while not (latest.is_file() and latest.read_text().strip() == "step4"):
        assert time.time() < deadline and proc.poll() is None, "no checkpoint at step 4"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    release_shared_memory(proc.args)  # a killed run never unlinks its all-reduce segments
    resumed = launch(config.model_copy(update={"stop_after_steps": None, "save_every": 0}),
                     Topology(procs=2))
    text = (tmp_path / "run" / "launcher.log").read_text()
    assert "resumed at step 4/8" in text or "resumed at step 6/8" in text
    assert resumed.loss_curve == pytest.approx(reference.loss_curve, rel=1e-5)
    a, b = state(tmp_path / "run" / "model"), state(Path(reference_config.output) / "model")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)


def test_bad_configs_are_refused_with_the_setting_named(tiny_model_dir, sft_dir, tmp_path):
    with pytest.raises(ValueError, match="zero='zero9'"):
        TrainConfig(kind="sft", model=str(tiny_model_dir), datasets=[str(sft_dir)],
                    output=str(tmp_path), zero="zero9")
    with pytest.raises(ValueError, match="draft_layers"):
        TrainConfig(kind="sft", model=str(tiny_model_dir), datasets=[str(sft_dir)],
                    output=str(tmp_path), draft_layers=1)
