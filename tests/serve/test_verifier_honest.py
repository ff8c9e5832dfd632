"""Honest nodes pass: 0 evictions over 1,000 challenges, fingerprints included."""

from __future__ import annotations

import asyncio
import json

import pytest

pytestmark = pytest.mark.slow


def test_honest_nodes_pass_a_thousand_checks(tiny_swarm):
    from registry.manifest import Manifest
    from serve.discovery import TrackerDiscovery
    from serve.gateway.head import Head
    from serve.gateway.pipeline import Pipeline
    from serve.gateway.verifier import Verifier, VerifierConfig

    models = tiny_swarm.home / "models"
    head_dir = next(p for p in models.iterdir() if p.name.endswith("-head"))
    full_dir = next(p for p in models.iterdir() if p.name.endswith("-full"))
    head = Head(head_dir)
    manifest = Manifest.model_validate(
        json.loads((head_dir / "manifest.json").read_text())["signed"])

    async def main():
        pipeline = Pipeline(TrackerDiscovery(tiny_swarm.tracker_url), head.num_layers,
                            manifest.version_id)
        await pipeline.start()
        verifier = Verifier(pipeline, manifest, head, full_dir, VerifierConfig(fingerprint_every=3))
        try:
            nodes = [n for n in await pipeline.discovery.nodes() if n.status == "ok"]
            assert len(nodes) == 3
            for i in range(1000):
                await verifier.check(nodes[i % 3])
        finally:
            await pipeline.stop()
        return verifier

    verifier = asyncio.run(main())
    proofs = [v for v in verifier.events if v.kind == "proof"]
    canaries = [v for v in verifier.events if v.kind == "fingerprint"]
    assert len(proofs) == 1000 and len(canaries) >= 330
    assert all(v.ok for v in verifier.events), [v for v in verifier.events if not v.ok][:3]
    assert not verifier.pipeline.evicted
    worst = max(v.rel_error for v in canaries)
    assert worst < verifier.config.tolerance / 10, worst  # a wide margin under the tolerance
