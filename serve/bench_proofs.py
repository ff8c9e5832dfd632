"""The verification part of `shoal bench swarm --proofs`.

Measured on the same node processes as the rest of the benchmark:

- aggregate throughput (16 concurrent sessions) with the verifier's schedule off and on, alternated
  over several rounds so drift hits both sides alike; for the default schedule (established nodes
  checked every 30 s on average) and for an aggressive one (every node every 1 s);
- the latency of one proof and of one canary fingerprint;
- the fingerprint tolerance's calibration: the relative error of honest nodes on canaries, next to
  that of bf16- and int8-rounded copies of the same span computed locally;
- the detection probability per challenge for a one-layer swap and for one changed chunk, and the
  number of challenges needed to reach 99 %.
"""

from __future__ import annotations

import asyncio
import math
import statistics
import time

import torch

from serve.proofs import DEFAULT_CHUNKS, span_tensors


def detection(manifest, start: int, end: int, chunks: int = DEFAULT_CHUNKS) -> dict:
    tensors = span_tensors(manifest, start, end)
    total = sum(n for _, n in tensors)
    in_layer = sum(n for name, n in tensors if name.startswith(f"model.layers.{start}."))

    def stats(frac: float) -> dict:
        p = 1 - (1 - frac) ** chunks
        need = 1 if p >= 0.99 else math.ceil(math.log(0.01) / math.log(1 - p))
        return {"per_challenge": p, "challenges_for_99pct": need}

    return {"span": f"{start}:{end}", "chunks_in_span": total, "chunks_per_challenge": chunks,
            "one_layer_swap": stats(in_layer / total), "one_chunk_changed": stats(1 / total)}


async def _aggregate(engine, prompt: list[int], sessions: int, tokens: int) -> float:
    from serve.gateway.engine import Outcome
    from serve.sampling import SamplingParams

    params = SamplingParams(max_tokens=tokens, temperature=0.0, ignore_eos=True)

    async def one() -> int:
        outcome = Outcome()
        async for _ in engine.generate(prompt, params, outcome, drafter="off"):
            pass
        return outcome.completion_tokens

    t0 = time.perf_counter()
    done = await asyncio.gather(*(one() for _ in range(sessions)))
    return sum(done) / (time.perf_counter() - t0)


def calibrate(verifier, head, manifest, start: int, end: int, canaries: int = 20) -> dict:
    """Relative error of bf16/int8-rounded copies of a span on the canaries (computed locally)."""
    from serve.gateway.verifier import CANARY_TEXTS
    from serve.span import SessionCache, SpanModel

    trusted = verifier.trusted_model()
    out = {}
    for kind in ("bf16", "int8"):
        copy = SpanModel(verifier._trusted_dir, start, end)
        with torch.no_grad():
            for p in copy.layers.parameters():
                if kind == "bf16":
                    p.copy_(p.bfloat16().float())
                elif p.dim() == 2:
                    scale = p.abs().amax(-1, keepdim=True).clamp_min(1e-12) / 127
                    p.copy_((p / scale).round().clamp(-127, 127) * scale)
        errs = []
        for text in (CANARY_TEXTS * canaries)[:canaries]:
            ids = head.tokenizer(text)["input_ids"]
            h = head.embed_ids(ids)
            if start:
                h = trusted.forward([(SessionCache(), h)], 0, start)[0]
            ref = trusted.forward([(SessionCache(), h)], start, end)[0]
            got = copy.forward([(SessionCache(), h)], start, end)[0]
            errs.append(float((got - ref).abs().max() / ref.abs().max()))
        out[f"{kind}_copy_rel_error_min"] = min(errs)
    return out


async def bench_proofs(pipeline, engine, head, manifest, trusted_dir, prompt: list[int],
                       rounds: int = 5, sessions: int = 16, tokens: int = 24) -> dict:
    from serve.gateway.verifier import Verifier, VerifierConfig

    nodes = sorted((n for n in await pipeline.discovery.nodes() if n.status == "ok"),
                   key=lambda n: n.start)
    widest = max(nodes, key=lambda n: n.end - n.start)
    results: dict = {"detection": detection(manifest, widest.start, widest.end)}
    probe = Verifier(pipeline, manifest, head, trusted_dir, VerifierConfig())
    proof_ms, canary_ms, honest = [], [], []
    for node in nodes:
        for _ in range(10):
            t0 = time.perf_counter()
            v = await probe.prove(node)
            proof_ms.append(1000 * (time.perf_counter() - t0))
            assert v.ok, v
            t0 = time.perf_counter()
            f = await probe.fingerprint(node)
            canary_ms.append(1000 * (time.perf_counter() - t0))
            honest.append(f.rel_error)
    results["proof_ms_median"] = statistics.median(proof_ms)
    results["fingerprint_ms_median"] = statistics.median(canary_ms)
    results["calibration"] = {"honest_rel_error_max": max(honest), "canaries": len(honest),
                              "tolerance": probe.config.tolerance,
                              **calibrate(probe, head, manifest, widest.start, widest.end)}
    for name, cfg in (("default", VerifierConfig()),
                      ("aggressive", VerifierConfig(interval_s=1.0, new_interval_s=1.0))):
        verifier = Verifier(pipeline, manifest, head, trusted_dir, cfg)
        for node in nodes:  # admitted and out of probation: the steady state
            await verifier.check(node)
            trust = verifier.trust[node.node_id]
            trust.passed = cfg.probation
            verifier.schedule(trust)
        admitted = len(verifier.events)
        off, on = [], []
        for _ in range(rounds):
            off.append(await _aggregate(engine, prompt, sessions, tokens))
            task = asyncio.create_task(verifier.run())
            on.append(await _aggregate(engine, prompt, sessions, tokens))
            task.cancel()
        results[name] = {"off_tok_s": off, "on_tok_s": on,
                         "overhead": 1 - statistics.median(on) / statistics.median(off),
                         "checks_during_measurement": len(verifier.events) - admitted,
                         "checks": len(verifier.events)}
    return results
