"""Honest nodes serving the real default model pass spot checks on real traffic: 0 false evictions
over more than 1,000 audited hops, with a wide margin under the tolerance.

Sessions are greedy and sampled, with and without speculation (so caches are rolled back), on
prompts that nothing in the project was tuned on; every session is mirrored.
"""

from __future__ import annotations

import asyncio
import time

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.real_model]

PROMPTS = [
    "Explain why the sky looks blue in two sentences.",
    "Convert 3.5 kilometres to miles and show the arithmetic.",
    "Write a haiku about a lighthouse in winter.",
    "List four uses of a paperclip other than holding paper.",
    "What does the Python expression sorted('banana') return?",
    "Summarise the plot of a heist story in one paragraph.",
    "Give me a JSON object with keys name, age and city for a fictional person.",
    "How do I reverse a linked list? Answer briefly.",
    "Translate 'good morning, how are you?' into French.",
    "Why do cats purr? Offer two hypotheses.",
]


def test_honest_nodes_pass_a_thousand_spot_checks(imported_default):
    from serve.discovery import TrackerDiscovery
    from serve.drafters import make_drafter
    from serve.gateway.engine import Engine, Outcome
    from serve.gateway.head import Head
    from serve.gateway.pipeline import Pipeline
    from serve.gateway.verifier import Verifier, VerifierConfig
    from serve.sampling import SamplingParams
    from serve.up import LocalSwarm, SwarmSpec

    reg, version_id, checkout = imported_default
    head = Head(checkout)
    manifest = reg.client().manifest(version_id)
    spec = SwarmSpec(model=version_id, nodes=3, gateway=False)

    async def main(swarm) -> Verifier:
        pipeline = Pipeline(TrackerDiscovery(swarm.tracker_url), head.num_layers, version_id,
                            return_port=swarm.return_port, return_url=swarm.return_url)
        await pipeline.start()
        verifier = Verifier(pipeline, manifest, head, checkout,
                            VerifierConfig(spot_check_sessions=1.0, spot_check_forwards=64))
        pipeline.gate = verifier.admits
        pipeline.mirror, pipeline.settle = verifier.mirror, verifier.settle
        engine = Engine(head, pipeline, {"prompt_lookup": make_drafter("prompt_lookup")},
                        "prompt_lookup")
        try:
            for node in await pipeline.discovery.nodes():
                await verifier.check(node, fingerprint=False)
            i = 0
            deadline = time.monotonic() + 900
            while spot_checks(verifier) < 1000 and time.monotonic() < deadline:
                prompt = PROMPTS[i % len(PROMPTS)]
                messages = [{"role": "user", "content": prompt}]
                ids = head.tokenizer.apply_chat_template(messages, add_generation_prompt=True,
                                                         tokenize=True, return_dict=True)
                params = SamplingParams(max_tokens=32, temperature=0.0 if i % 2 else 0.8,
                                        seed=i)
                async for _ in engine.generate(list(ids["input_ids"]), params, Outcome(),
                                               drafter="prompt_lookup" if i % 3 else "off"):
                    pass
                i += 1
                await asyncio.sleep(0.05)  # let the audit of the session that ended run
            for _ in range(200):  # the last audits
                if not [t for t in asyncio.all_tasks() if t is not asyncio.current_task()
                        and "settle" in repr(t.get_coro())]:
                    break
                await asyncio.sleep(0.1)
        finally:
            await pipeline.stop()
        return verifier

    with LocalSwarm(spec, reg.path.parent, head.num_layers).start() as swarm:
        verifier = asyncio.run(main(swarm))
    checks = [v for v in verifier.events if v.kind == "spot-check"]
    assert len(checks) >= 1000, len(checks)
    assert all(v.ok for v in checks), [v for v in checks if not v.ok][:3]
    assert not verifier.pipeline.evicted
    worst = max(v.rel_error for v in checks)
    print(f"spot checks: {len(checks)}, worst honest relative error {worst:.2e}")
    assert worst < verifier.config.tolerance / 10, worst


def spot_checks(verifier) -> int:
    return sum(v.kind == "spot-check" for v in verifier.events)
