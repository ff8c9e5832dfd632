"""Checking nodes: live-weight proofs, output fingerprints, and what happens to nodes that fail.

The verifier runs inside the gateway. Every node it discovers is challenged before the gateway
routes anything through it (admission), then again at random, exponentially distributed intervals:
often while a node is new, rarely once it has a record. Every third check also sends a canary: a
real sentence, embedded and run through the layers before the node's span by the gateway's own
trusted copy, sent to the node as an ordinary forward, and compared with the trusted recomputation
of the node's span (relative error max|out - ref| / max|ref| must stay under the tolerance).

A node that fails any check is evicted: excluded from every route at once, reported to the tracker
(so other gateways avoid it), and the sessions running through it are re-prefilled on a good route
at their next step. Every verdict is appended to a JSONL event log.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from registry.manifest import Manifest
from serve import wire
from serve.config import VerifierConfig
from serve.exceptions import HopFailed, ProofFailure
from serve.proofs import check_proof
from serve.discovery import NodeInfo

log = logging.getLogger("shoal.verifier")

CANARY_TEXTS = [
    "Please summarise the following meeting notes in three bullet points.",
    "def parse(line):\n    key, _, value = line.partition('=')\n    return key.strip(), value",
    "What is the difference between a list and a tuple in Python?",
    '{"name": "search", "arguments": {"query": "train times to Lyon", "limit": 3}}',
    "Write a polite email asking to move our call to Thursday afternoon.",
]


@dataclass
class Trust:
    node_id: str
    status: str = "new"
    """new -> trusted (passed admission) -> evicted."""
    checks: int = 0
    passed: int = 0
    last_error: float | None = None
    next_check: float = 0.0
    reason: str = ""


@dataclass
class Verdict:
    node_id: str
    kind: str
    ok: bool
    check: str = ""
    detail: str = ""
    at: float = field(default_factory=time.time)
    rel_error: float | None = None


class Verifier:
    def __init__(self, pipeline, manifest: Manifest, head, trusted_dir: Path | None,
                 config: VerifierConfig | None = None) -> None:
        self.pipeline, self.manifest, self.head = pipeline, manifest, head
        self.config = config or VerifierConfig()
        self.trust: dict[str, Trust] = {}
        self.events: list[Verdict] = []
        self.used_nonces: set[bytes] = set()
        self._trusted = None
        self._trusted_dir = trusted_dir
        self._references: dict[tuple[int, int, str], tuple[torch.Tensor, torch.Tensor]] = {}
        """Trusted (input, output) per (span, canary): deterministic, so computed once."""

    # admission gate used by routing -----------------------------------------------------------

    def admits(self, node: NodeInfo) -> bool:
        t = self.trust.get(node.node_id)
        return t is not None and t.status == "trusted"

    # checks ----------------------------------------------------------------------------------

    async def prove(self, node: NodeInfo) -> Verdict:
        nonce = os.urandom(32)
        challenge = wire.Challenge(uuid.uuid4().hex, nonce, node.node_id, self.config.chunks,
                                   self.pipeline.version or "")
        t0 = time.perf_counter()
        try:
            proof = await self.pipeline.request(node.url, challenge, node_id=node.node_id,
                                                timeout_s=max(5.0, 3 * self.config.deadline_s))
        except HopFailed as exc:
            if exc.code == "wrong-version":  # mid-rollout: it no longer (or not yet) has it
                return Verdict(node.node_id, "proof", False, "wrong-version", str(exc))
            return Verdict(node.node_id, "proof", False, "unreachable", str(exc))
        except Exception as exc:
            return Verdict(node.node_id, "proof", False, "unreachable", str(exc))
        elapsed = time.perf_counter() - t0
        if not isinstance(proof, wire.Proof):
            return Verdict(node.node_id, "proof", False, "protocol", "no proof in the answer")
        try:
            check_proof(proof, nonce=nonce, node_id=node.node_id, public_key=node.public_key,
                        manifest=self.manifest, start=node.start, end=node.end,
                        count=self.config.chunks, used_nonces=self.used_nonces,
                        elapsed_s=elapsed, deadline_s=self.config.deadline_s)
        except ProofFailure as exc:
            return Verdict(node.node_id, "proof", False, exc.check, exc.detail)
        return Verdict(node.node_id, "proof", True, detail=f"{elapsed * 1000:.1f} ms")

    def trusted_model(self):
        """The gateway's own copy of every layer, from a verified checkout."""
        if self._trusted is None:
            from serve.span import SpanModel

            self._trusted = SpanModel(self._trusted_dir, 0, self.head.num_layers)
        return self._trusted

    async def fingerprint(self, node: NodeInfo, text: str | None = None) -> Verdict:
        from serve.span import SessionCache

        text = text or random.choice(CANARY_TEXTS)
        ids = self.head.tokenizer(text)["input_ids"]
        trusted = self.trusted_model()

        def reference() -> tuple[torch.Tensor, torch.Tensor]:
            hidden = self.head.embed_ids(ids)
            if node.start > 0:
                hidden = trusted.forward([(SessionCache(), hidden)], 0, node.start)[0]
            return hidden, trusted.forward([(SessionCache(), hidden)], node.start, node.end)[0]

        key = (node.start, node.end, text)
        if key not in self._references:
            self._references[key] = await asyncio.to_thread(reference)
        inputs, expected = self._references[key]
        hop = wire.Hop(node.node_id, node.url, node.start, node.end)
        session = uuid.uuid4().hex
        try:
            out = await self.pipeline.traverse(session, [hop], inputs, 0, count=False)
        except Exception as exc:
            return Verdict(node.node_id, "fingerprint", False, "unreachable", str(exc))
        finally:
            self.pipeline.close_session(session, [hop])
        rel = float((out - expected).abs().max() / expected.abs().max().clamp_min(1e-12))
        ok = rel <= self.config.tolerance
        return Verdict(node.node_id, "fingerprint", ok, "" if ok else "fingerprint",
                       f"relative error {rel:.2e} (tolerance {self.config.tolerance:.0e})", rel_error=rel)

    async def check(self, node: NodeInfo, *, fingerprint: bool | None = None) -> list[Verdict]:
        """One scheduled check; evicts on failure."""
        t = self.trust.setdefault(node.node_id, Trust(node.node_id))
        t.checks += 1
        verdicts = [await self.prove(node)]
        if verdicts[0].check == "wrong-version":
            # not evidence of cheating, but no more routing for this version until it proves
            # again: a node cannot dodge proofs by claiming the version is gone
            self._record(verdicts[0])
            if t.status == "trusted":
                t.status, t.passed = "new", 0
            self.schedule(t)
            return verdicts
        every = self.config.fingerprint_every
        if fingerprint is None:
            fingerprint = bool(every) and self._trusted_dir is not None and (
                t.checks == 1 or t.checks % every == 0)
        if verdicts[0].ok and fingerprint:
            verdicts.append(await self.fingerprint(node))
        for v in verdicts:
            self._record(v)
        if all(v.ok for v in verdicts):
            t.passed += 1
            if t.status == "new":
                t.status = "trusted"
        else:
            bad = next(v for v in verdicts if not v.ok)
            await self.evict(node.node_id, f"{bad.kind} failed [{bad.check}]: {bad.detail}")
        self.schedule(t)
        return verdicts

    def schedule(self, t: Trust) -> None:
        """Next check at an exponentially distributed delay: unpredictable for the node."""
        mean = self.config.new_interval_s if t.passed < self.config.probation else \
            self.config.interval_s
        t.next_check = time.monotonic() + random.expovariate(1.0 / mean)

    async def evict(self, node_id: str, reason: str) -> None:
        t = self.trust.setdefault(node_id, Trust(node_id))
        t.status, t.reason = "evicted", reason
        log.warning("evicting node %s: %s", node_id, reason)
        self.pipeline.evict(node_id)
        try:
            await self.pipeline.discovery.report(node_id, "evicted", reason)
        except Exception as exc:
            log.warning("could not report the eviction: %s", exc)

    def _record(self, verdict: Verdict) -> None:
        self.events.append(verdict)
        if self.config.log_path is not None:
            self.config.log_path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.config.log_path, "a") as fh:
                fh.write(json.dumps(asdict(verdict)) + "\n")

    # schedule ----------------------------------------------------------------------------------

    async def run(self, poll_s: float = 0.3) -> None:
        while True:
            try:
                for node in await self.pipeline.discovery.nodes():
                    if self.pipeline.version and not node.serves(self.pipeline.version):
                        continue
                    t = self.trust.get(node.node_id)
                    if node.status == "evicted" and (t is None or t.status != "evicted"):
                        await self.evict(node.node_id, "evicted by another verifier")
                    elif t is None or (t.status != "evicted" and time.monotonic() >= t.next_check):
                        await self.check(node)
            except Exception as exc:  # discovery hiccups must not stop verification
                log.warning("verifier round failed: %s", exc)
            await asyncio.sleep(poll_s)

    def summary(self) -> dict:
        return {"nodes": {k: asdict(v) for k, v in self.trust.items()},
                "events": len(self.events),
                "failures": sum(not v.ok for v in self.events)}
