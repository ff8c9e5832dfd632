"""The verification part of `shoal bench swarm --proofs`.

Measured on the same node processes as the rest of the benchmark:

- aggregate throughput (16 concurrent sessions) with the verifier's schedule off and on, alternated
  over several rounds so drift hits both sides alike; for the default schedule (established nodes
  checked every 30 s on average) and for an aggressive one (every node every 1 s);
- the latency of one proof and of one canary fingerprint;
- the fingerprint tolerance's calibration: the relative error of honest nodes on canaries, next to
  that of bf16- and int8-rounded copies of the same span computed locally;
- the detection probability per challenge for a one-layer swap and for one changed chunk, and the
  number of challenges needed to reach 99 %;
- the cost of the protocol's authentication per traversal (the gateway's order tags and chain
  check, every hop's order tag, link check, signed and tagged receipt, the result tag), as CPU
  time (the report sets it against the decode time per traversal measured in the same run), and
  once per session (ticket signature and key exchanges);
- the cost of a spot check (mirroring one forward on the trusted copy) and what the default rate
  of mirrored sessions costs, and the expected number of requests before a rational cheater that
  cheats on a fraction p of its forwards is evicted.
"""

from __future__ import annotations

import asyncio
import math
import os
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


def protocol_cost(route_len: int, hidden: int, repeats: int = 200) -> dict:
    """CPU microseconds the protocol adds to one traversal of `route_len` hops (decode, T=1, and
    a 128-position prefill), summed over the gateway and every hop, measured with real keys; and
    what a session's ticket costs once (signature, check and key exchanges at every hop)."""
    from registry.signing import SigningKey
    from serve import auth, wire
    from serve.records import node_id_of

    gateway = SigningKey.generate("gateway")
    keys = [SigningKey.generate(f"n{i}") for i in range(route_len)]
    route = [wire.Hop(node_id_of(k.public_hex), f"ws://n{i}", i, i + 1, k.public_hex)
             for i, k in enumerate(keys)]

    def session() -> tuple:
        ticket, signature = auth.make_ticket(gateway, os.urandom(8).hex(), route, "ws://g", "",
                                             "float32")
        opened = [auth.open_ticket(ticket, signature) for _ in keys]
        return (ticket, auth.gateway_keys(gateway, ticket, route),
                [auth.hop_keys(k, ticket, t, i) for i, (k, t) in enumerate(zip(keys, opened))])

    out = {}
    ticket, gateway_side, hop_side = session()
    for label, t in (("decode", 1), ("prefill_128", 128)):
        x = torch.randn(t, hidden)
        t0 = time.perf_counter()
        for _ in range(repeats):
            order, tags = auth.make_order(gateway_side, ticket, os.urandom(8).hex(), 0, t,
                                          wire.tensor_digest(x))
            parsed, receipts, digest = wire.unpack_order(order), [], wire.digest(order)
            for i, key in enumerate(keys):  # what each hop does
                got = auth.open_order(order, tags[i], hop_side[i].gateway, ticket)
                if receipts:
                    auth.check_link(receipts[-1], route[i - 1], i - 1, got, digest,
                                    hop_side[i].previous)
                d_in = wire.tensor_digest(x)
                receipts.append(auth.make_receipt(key, hop_side[i], route[i].node_id, got, order,
                                                  i, d_in, wire.tensor_digest(x), ""))
            result = auth.make_result(keys[-1], hop_side[-1].gateway, parsed.request_id,
                                      receipts, digest, "float32")
            assert auth.result_sender(result, route, gateway_side) == route_len - 1
            auth.check_chain(receipts, route, gateway_side, parsed, digest, wire.tensor_digest(x))
        out[f"{label}_us_per_traversal"] = 1e6 * (time.perf_counter() - t0) / repeats
    t0 = time.perf_counter()
    for _ in range(max(1, repeats // 10)):
        auth._SHARED.clear()  # a new peer every time: the worst case
        session()
    out["session_setup_us_all_hops"] = 1e6 * (time.perf_counter() - t0) / max(1, repeats // 10)
    signer = SigningKey.generate("s")
    data = os.urandom(200)
    sig = auth.sign(signer, data)
    t0 = time.perf_counter()
    for _ in range(repeats):
        auth.verify(signer.public_hex, sig, data)
    out["ed25519_verify_us"] = 1e6 * (time.perf_counter() - t0) / repeats
    t0 = time.perf_counter()
    for _ in range(repeats):
        auth.sign(signer, data)
    out["ed25519_sign_us"] = 1e6 * (time.perf_counter() - t0) / repeats
    t0 = time.perf_counter()
    for _ in range(repeats):
        auth.tag(data[:32], data)
    out["tag_us"] = 1e6 * (time.perf_counter() - t0) / repeats
    out["route_hops"] = route_len
    return out


def expected_requests(fraction: float, forwards_per_request: int, rate: float,
                      audits: int) -> float:
    """Expected requests before eviction for a node cheating on `fraction` of its forwards, when
    a share `rate` of sessions is mirrored and up to `audits` forwards of each are audited."""
    caught = 1 - (1 - fraction) ** min(forwards_per_request, audits)
    return math.inf if rate * caught == 0 else 1 / (rate * caught)


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


async def _mirror_cost(verifier, nodes, head, prompt: list[int], tokens: int) -> float:
    """Milliseconds the trusted copy spends mirroring one decode position of a session."""
    from serve.gateway.audit import Shadow
    from serve.gateway.verifier import hop_of

    shadow = Shadow(verifier, 1)
    route = [hop_of(n) for n in nodes]
    shadow._compute(route, 0, head.embed_ids(prompt))
    t0 = time.perf_counter()
    for i in range(tokens):
        shadow._compute(route, len(prompt) + i, head.embed_ids([prompt[-1]]))
    return 1000 * (time.perf_counter() - t0) / tokens


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
    shadow_ms = await _mirror_cost(probe, nodes, head, prompt, tokens)
    defaults = VerifierConfig()
    results["spot_checks"] = {
        "mirror_ms_per_token": shadow_ms,
        "default_rate": defaults.spot_check_sessions,
        "audits_per_session": defaults.spot_check_forwards,
        "expected_requests_before_eviction": {
            f"p={p}": expected_requests(p, tokens, defaults.spot_check_sessions,
                                        defaults.spot_check_forwards)
            for p in (1.0, 0.5, 0.1, 0.01)},
        "forwards_per_request": tokens}
    results["protocol"] = protocol_cost(len(nodes), head.config.hidden_size)
    for name, cfg in (("default", defaults),
                      ("aggressive", VerifierConfig(interval_s=1.0, new_interval_s=1.0,
                                                    spot_check_sessions=0.2))):
        verifier = Verifier(pipeline, manifest, head, trusted_dir, cfg)
        for node in nodes:  # admitted and out of probation: the steady state
            await verifier.check(node)
            trust = verifier.trust[node.node_id]
            trust.passed = cfg.probation
            verifier.schedule(trust)
        admitted = verifier.checks
        off, on = [], []
        for _ in range(rounds):
            off.append(await _aggregate(engine, prompt, sessions, tokens))
            task = asyncio.create_task(verifier.run())
            pipeline.mirror, pipeline.settle = verifier.mirror, verifier.settle
            on.append(await _aggregate(engine, prompt, sessions, tokens))
            pipeline.mirror = pipeline.settle = None
            task.cancel()
        results[name] = {"off_tok_s": off, "on_tok_s": on,
                         "overhead": 1 - statistics.median(on) / statistics.median(off),
                         "checks_during_measurement": verifier.checks - admitted,
                         "checks": verifier.checks}
    return results
