"""Honest nodes pass: 0 evictions over 1,000 challenges, fingerprints included."""

from __future__ import annotations

import asyncio
import json

import pytest

pytestmark = pytest.mark.slow


def head_and_manifest(swarm):
    """The gateway-side head of the swarm's version and its manifest, from the checkout."""
    from registry.manifest import Manifest
    from serve.gateway.head import Head

    head_dir = next(p for p in (swarm.home / "models").iterdir() if p.name.endswith("-head"))
    return Head(head_dir), Manifest.model_validate(
        json.loads((head_dir / "manifest.json").read_text())["signed"])


def test_honest_nodes_pass_a_thousand_checks(tiny_swarm):
    from serve.discovery import TrackerDiscovery
    from serve.gateway.pipeline import Pipeline
    from serve.gateway.verifier import Verifier, VerifierConfig

    head, manifest = head_and_manifest(tiny_swarm)
    full_dir = next(p for p in (tiny_swarm.home / "models").iterdir()
                    if p.name.endswith("-full"))

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


def test_a_challenge_that_never_left_is_no_evidence(tiny_swarm):
    """A dial that fails (a refused connection, a TLS pin an on-path attacker broke) never
    reached the node: it is not evicted and no verdict is posted, but it gets no traffic until a
    check reaches it and passes again."""
    from serve.discovery import TrackerDiscovery
    from serve.gateway.pipeline import Pipeline
    from serve.gateway.verifier import Verifier, VerifierConfig

    head, manifest = head_and_manifest(tiny_swarm)
    reported = []

    async def main():
        discovery = TrackerDiscovery(tiny_swarm.tracker_url)
        pipeline = Pipeline(discovery, head.num_layers, manifest.version_id)
        await pipeline.start()

        async def report(node_id, status, check, detail="", evidence=None):
            reported.append((node_id, status, check))

        discovery.report = report
        verifier = Verifier(pipeline, manifest, head, None, VerifierConfig())
        try:
            node = next(n for n in await discovery.nodes() if n.status == "ok")
            await verifier.check(node)
            assert verifier.admits(node)
            cut_off = node.model_copy(update={"url": "ws://127.0.0.1:9"})  # nothing listens
            results = await verifier.check(cut_off)
            assert [r.check for r in results] == ["unreachable"] and not results[0].ok
            assert node.node_id not in pipeline.evicted and not reported
            assert verifier.trust[node.node_id].status == "new"
            assert not verifier.admits(cut_off) and not verifier.admits(node)
            await verifier.check(node)  # reached again: proven, admitted
            assert verifier.admits(node) and not reported
        finally:
            await pipeline.stop()

    asyncio.run(main())


def test_the_proof_deadline_times_the_proof_not_the_dial(tiny_swarm):
    """A node reached over a slow first connection (as through a NAT relay still waiting for the
    node's offer, or a TLS handshake across two splices) passes: the deadline starts when the
    challenge goes out on an open link. The slow part here is a TCP proxy that holds each new
    connection 1.5 s, past the 1 s deadline, before it splices it to the node."""
    from urllib.parse import urlsplit

    from serve.discovery import TrackerDiscovery
    from serve.gateway.pipeline import Pipeline
    from serve.gateway.verifier import Verifier, VerifierConfig
    from serve.nat_relay import splice

    head, manifest = head_and_manifest(tiny_swarm)

    async def main():
        pipeline = Pipeline(TrackerDiscovery(tiny_swarm.tracker_url), head.num_layers,
                            manifest.version_id)
        await pipeline.start()
        verifier = Verifier(pipeline, manifest, head, None, VerifierConfig(deadline_s=1.0))
        node = next(n for n in await pipeline.discovery.nodes() if n.status == "ok")
        target = urlsplit(node.url)

        async def slow_connect(reader, writer):
            await asyncio.sleep(1.5)
            up_reader, up_writer = await asyncio.open_connection(target.hostname, target.port)
            await asyncio.gather(splice(reader, up_writer), splice(up_reader, writer))

        proxy = await asyncio.start_server(slow_connect, "127.0.0.1", 0)
        far = node.model_copy(update={
            "url": f"ws://127.0.0.1:{proxy.sockets[0].getsockname()[1]}"})
        try:
            return await verifier.check(far, fingerprint=False)
        finally:
            proxy.close()
            await pipeline.stop()

    results = asyncio.run(main())
    assert [r.ok for r in results] == [True], results
    assert float(results[0].detail.split()[0]) < 1000, results[0].detail
