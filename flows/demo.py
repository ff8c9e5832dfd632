"""`make demo`: the project's main job on embedded defaults.

Today it sets up the signed genesis version and answers a chat from a verified checkout in
process. It grows into the whole flywheel: `shoal up` (a 3-node swarm and the gateway), a scripted
workload through the OpenAI SDK, curation, training, the eval gate, promotion and rollout.
"""

from __future__ import annotations

import time

from flows.config import ShoalConfig
from flows.genesis import ensure_genesis

DEMO_PROMPT = "What is the capital of France? Answer in one sentence."


def run_demo(cfg: ShoalConfig) -> None:
    from rich.console import Console

    from registry.manifest import short_id
    from serve.local import LocalModel

    console = Console()
    t0 = time.perf_counter()
    with console.status("setting up keys, registry and the genesis model…"):
        genesis = ensure_genesis(cfg, say=lambda m: console.log(m))
    client = cfg.client()
    record = client.channel("production")
    console.log(f"genesis {short_id(genesis.version_id)} "
                f"({'imported' if genesis.imported else 'already imported'}); production "
                f"#{record.sequence} -> {short_id(record.version)} (signature and snapshot checked)")
    directory = cfg.models_dir / record.version.removeprefix("sha256:")
    with console.status("fetching and verifying the production version…"):
        client.checkout(record.version, directory)
        client.verify_dir(directory)
    with console.status("loading the model and generating…"):
        model = LocalModel.load(directory)
        answer = model.chat([{"role": "user", "content": DEMO_PROMPT}], max_new_tokens=48)
    console.print(f"[bold]user:[/bold] {DEMO_PROMPT}")
    console.print(f"[bold]smollm2 (production {short_id(record.version)}):[/bold] {answer}")
    console.log(f"done in {time.perf_counter() - t0:.1f} s")
