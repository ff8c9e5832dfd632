"""Checking nodes: live-weight proofs, output fingerprints, and what happens to nodes that fail.

The verifier runs inside the gateway. Every node it discovers is challenged before the gateway
routes anything through it (admission), then again at random, exponentially distributed intervals:
often while a node is new, rarely once it has a record. Every third check also sends a canary: a
real sentence, embedded and run through the layers before the node's span by the gateway's own
trusted copy, sent to the node as an ordinary forward, and compared with the trusted recomputation
of the node's span (relative error max|out - ref| / max|ref| must stay under the tolerance).

Proofs show possession, canaries are recognisable; what a node actually computes on real traffic
is checked by spot checks (`serve.gateway.audit`): a secret random fraction of sessions is
mirrored on the trusted copy and audited when it ends.

Admission pins a node's (key, address, span); a record that changes any of them is a new node until
it passes again, and so is a node that left discovery and came back. Any error while checking a
node is a failed check (fail closed).

A node that fails any check is evicted: excluded from every route at once, reported to the tracker
with a signed verdict (so other gateways can avoid it), and the sessions running through it are
re-prefilled on a good route at their next step. Every result is appended to a JSONL event log.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import time
import uuid
from collections import deque
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from registry.manifest import Manifest
from serve import auth, wire
from serve.config import VerifierConfig
from serve.exceptions import HopFailed, ProofFailure
from serve.proofs import check_proof
from serve.discovery import NodeInfo
from serve.gateway.pipeline import UNREACHABLE, Expect

if TYPE_CHECKING:
    from serve.gateway.audit import Shadow

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
    busy: int = 0
    """Challenges in a row answered "busy" (retried; a fourth counts as a failure)."""
    pinned: tuple[str, str, int, int] | None = None
    """(key, address, start, end) the node was admitted with; a record that changes any of them
    sends the node back through admission."""


@dataclass
class CheckResult:
    """The outcome of one check of one node (kept in `Verifier.events` and the JSONL log)."""

    node_id: str
    kind: str
    ok: bool
    check: str = ""
    detail: str = ""
    at: float = field(default_factory=time.time)
    rel_error: float | None = None


def pin_of(node: NodeInfo) -> tuple[str, str, int, int]:
    return (node.public_key, node.url, node.start, node.end)


def hop_of(node: NodeInfo) -> wire.Hop:
    """A one-hop route through all of `node`'s layers."""
    return wire.Hop(node.node_id, node.url, node.start, node.end, node.public_key)


EVENTS_KEPT = 10_000
"""Checks kept in memory for the dashboard and tests (a long-running gateway checks forever)."""


class Verifier:
    def __init__(self, pipeline, manifest: Manifest, head, trusted_dir: Path | None,
                 config: VerifierConfig | None = None) -> None:
        self.pipeline, self.manifest, self.head = pipeline, manifest, head
        self.config = config or VerifierConfig()
        self.trust: dict[str, Trust] = {}
        self.events: deque[CheckResult] = deque(maxlen=EVENTS_KEPT)
        """The latest checks (older ones are in the JSONL log, when configured)."""
        self.checks = 0
        """Checks recorded since start."""
        self.failures = 0
        """Failed checks recorded since start."""
        self.used_nonces: set[bytes] = set()
        self._claims_seen: dict[str, set[str]] = {}
        self._missing: dict[str, list[int]] = {}
        """Per node: [audits answered, audits answered "not kept"]."""
        self._trusted = None
        self._trusted_dir = trusted_dir
        self._references: dict[tuple[int, int, str], tuple[torch.Tensor, torch.Tensor]] = {}
        """Trusted (input, output) per (span, canary): deterministic, so computed once."""
        self.on_verdict = None
        """Optional `on_verdict(node_id, ok)`: every check's outcome (the usage meter's)."""

    # admission gate used by routing -----------------------------------------------------------

    def admits(self, node: NodeInfo) -> bool:
        t = self.trust.get(node.node_id)
        return t is not None and t.status == "trusted" and t.pinned == pin_of(node)

    # checks ----------------------------------------------------------------------------------

    async def prove(self, node: NodeInfo) -> CheckResult:
        nonce = os.urandom(32)
        challenge = auth.sign_challenge(self.pipeline.key, uuid.uuid4().hex, nonce, node.node_id,
                                        self.config.chunks, self.pipeline.version or "")
        try:  # the link first: the deadline times the proof, not the dial (for a node behind a
            # NAT relay that is a TCP connect, the relay pairing, TLS through two splices)
            await self.pipeline.connect(node.url, node.public_key)
        except Exception as exc:  # nothing reached the node: no evidence against it
            return CheckResult(node.node_id, "proof", False, UNREACHABLE,
                               f"unreachable ({type(exc).__name__}: {exc})"[:300])
        t0 = time.perf_counter()
        try:
            proof = await self.pipeline.request(node.url, challenge, node_id=node.node_id,
                                                public_key=node.public_key,
                                                timeout_s=max(5.0, 3 * self.config.deadline_s),
                                                expect=Expect([hop_of(node)],
                                                              wire.header_digest(challenge)))
        except HopFailed as exc:
            if exc.code in ("wrong-version", "busy", UNREACHABLE):
                # mid-rollout, proving for another, or never reached (`check` decides)
                return CheckResult(node.node_id, "proof", False, exc.code, str(exc))
            return CheckResult(node.node_id, "proof", False, "no-answer", str(exc))
        except Exception as exc:  # the challenge reached the node, which did not answer in time
            return CheckResult(node.node_id, "proof", False, "no-answer",
                               f"{type(exc).__name__}: {exc}"[:300])
        elapsed = time.perf_counter() - t0
        if not isinstance(proof, wire.Proof):
            return CheckResult(node.node_id, "proof", False, "protocol", "no proof in the answer")
        try:
            check_proof(proof, nonce=nonce, node_id=node.node_id, public_key=node.public_key,
                        manifest=self.manifest, start=node.start, end=node.end,
                        count=self.config.chunks, used_nonces=self.used_nonces,
                        elapsed_s=elapsed, deadline_s=self.config.deadline_s)
        except ProofFailure as exc:
            return CheckResult(node.node_id, "proof", False, exc.check, exc.detail)
        except Exception as exc:  # a malformed proof (bad index, wrong types) fails closed
            return CheckResult(node.node_id, "proof", False, "malformed",
                               f"{type(exc).__name__}: {exc}"[:300])
        return CheckResult(node.node_id, "proof", True, detail=f"{elapsed * 1000:.1f} ms")

    def trusted_model(self):
        """The gateway's own copy of every layer, from a verified checkout."""
        if self._trusted is None:
            from serve.span import SpanModel

            self._trusted = SpanModel(self._trusted_dir, 0, self.head.num_layers)
        return self._trusted

    async def fingerprint(self, node: NodeInfo, text: str | None = None) -> CheckResult:
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
        hop = hop_of(node)
        session = uuid.uuid4().hex
        try:
            out = await self.pipeline.traverse(session, [hop], inputs, 0, count=False)
        except HopFailed as exc:  # the node's signed frames already show what went wrong
            check = exc.code if exc.code in ("malformed", "shortcut", UNREACHABLE) \
                else "no-answer"
            return CheckResult(node.node_id, "fingerprint", False, check, str(exc))
        except Exception as exc:
            return CheckResult(node.node_id, "fingerprint", False, "no-answer",
                               f"{type(exc).__name__}: {exc}"[:300])
        finally:
            self.pipeline.close_session(session, [hop])
        if not isinstance(out, torch.Tensor) or out.shape != expected.shape:
            return CheckResult(node.node_id, "fingerprint", False, "malformed",
                               f"answer of shape {getattr(out, 'shape', None)}, expected "
                               f"{tuple(expected.shape)}")
        rel = float((out - expected).abs().max() / expected.abs().max().clamp_min(1e-12))
        ok = rel <= self.config.tolerance  # NaN compares False: a NaN answer fails
        return CheckResult(node.node_id, "fingerprint", ok, "" if ok else "fingerprint",
                       f"relative error {rel:.2e} (tolerance {self.config.tolerance:.0e})", rel_error=rel)

    async def check(self, node: NodeInfo, *, fingerprint: bool | None = None
                    ) -> list[CheckResult]:
        """One scheduled check; evicts on failure. Any error while checking is a failed check."""
        t = self.trust.setdefault(node.node_id, Trust(node.node_id))
        if t.pinned != pin_of(node):
            if t.status == "trusted":  # a changed record is a new node until it proves again
                log.info("node %s changed its record; re-admitting", node.node_id)
                t.status, t.passed = "new", 0
            t.pinned = pin_of(node)
        t.checks += 1
        try:
            results = await self._run_checks(node, t, fingerprint)
        except Exception as exc:  # fail closed: a check that cannot finish has failed
            log.exception("check of %s failed with an error", node.node_id)
            results = [CheckResult(node.node_id, "check", False, "error",
                                   f"{type(exc).__name__}: {exc}"[:300])]
        if results and results[0].check == "busy" and t.busy < 3:
            t.busy += 1  # the node is proving for someone else: ask again soon, a few times
            t.next_check = time.monotonic() + 0.5
            return results
        t.busy = 0
        if results and all(v.ok or v.check == UNREACHABLE for v in results) and not all(
                v.ok for v in results):
            # a frame never left this gateway (a refused dial or TLS pin): no evidence against
            # the node, and an on-path attacker could cause it, so no eviction and no verdict;
            # but no traffic either until a later check reaches it and passes
            for v in results:
                self._record(v)
            if t.status == "trusted":
                t.status, t.passed = "new", 0
            t.next_check = time.monotonic() + self.config.new_interval_s
            return results
        if results and results[0].check == "wrong-version":
            # not evidence of cheating, but no more routing for this version until it proves
            # again: a node cannot dodge proofs by claiming the version is gone
            self._record(results[0])
            if t.status == "trusted":
                t.status, t.passed = "new", 0
            self.schedule(t)
            return results
        for v in results:
            self._record(v)
        if results and all(v.ok for v in results):
            t.passed += 1
            if t.status == "new":
                t.status = "trusted"
        else:
            bad = next((v for v in results if not v.ok), None)
            reason = f"{bad.kind} failed [{bad.check}]: {bad.detail}" if bad else "no result"
            await self.evict(node.node_id, reason)
        self.schedule(t)
        return results

    async def _run_checks(self, node: NodeInfo, t: Trust, fingerprint: bool | None
                          ) -> list[CheckResult]:
        results = [await self.prove(node)]
        if results[0].check == "wrong-version":
            return results
        every = self.config.fingerprint_every
        if fingerprint is None:
            fingerprint = bool(every) and self._trusted_dir is not None and (
                t.checks == 1 or t.checks % every == 0)
        if results[0].ok and fingerprint:
            results.append(await self.fingerprint(node))
        return results

    def schedule(self, t: Trust) -> None:
        """Next check at an exponentially distributed delay: unpredictable for the node."""
        mean = self.config.new_interval_s if t.passed < self.config.probation else \
            self.config.interval_s
        t.next_check = time.monotonic() + random.expovariate(1.0 / mean)

    async def on_evidence(self, node_id: str, reason: str, evidence: dict) -> None:
        """A frame the node signed proves it cheated (e.g. it answered for the whole chain)."""
        self._record(CheckResult(node_id, "traffic", False, reason.split("]")[0].strip("["),
                                 reason))
        await self.evict(node_id, f"traffic failed {reason}")

    async def evict(self, node_id: str, reason: str) -> None:
        t = self.trust.setdefault(node_id, Trust(node_id))
        t.status, t.reason = "evicted", reason
        log.warning("evicting node %s: %s", node_id, reason)
        self.pipeline.evict(node_id)
        try:
            await self.pipeline.discovery.report(node_id, "evicted", reason)
        except Exception as exc:
            log.warning("could not report the eviction: %s", exc)

    def _record(self, verdict: CheckResult) -> None:
        self.events.append(verdict)
        self.checks += 1
        self.failures += not verdict.ok
        if self.on_verdict is not None:
            self.on_verdict(verdict.node_id, verdict.ok)
        if self.config.log_path is not None:
            self.config.log_path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.config.log_path, "a") as fh:
                fh.write(json.dumps(asdict(verdict)) + "\n")

    # spot checks on real traffic ---------------------------------------------------------------

    def mirror(self) -> "Shadow | None":
        """Secretly choose whether the session starting now is mirrored and audited."""
        from serve.gateway.audit import Shadow

        if self._trusted_dir is None or random.random() >= self.config.spot_check_sessions:
            return None
        return Shadow(self, self.config.spot_check_forwards)

    async def settle(self, shadow: "Shadow") -> None:
        """Audit a mirrored session that ended; evict the first hop found cheating."""
        try:
            findings = await shadow.finish()
        except Exception as exc:  # the mirror failed: no finding either way
            log.warning("spot check could not run: %s", exc)
            return
        for f in findings:
            if f.check == "skipped":
                continue
            if f.check == "missing":  # a node that "no longer has" what it signed, too often
                seen = self._missing.setdefault(f.node_id, [0, 0])
                seen[1] += 1
                if seen[1] >= 8 and seen[1] > seen[0]:
                    f = type(f)(f.node_id, False, "audit-missing", f"{seen[1]} audited forwards "
                                f"not kept against {seen[0]} shown")
                else:
                    continue
            elif f.ok:
                self._missing.setdefault(f.node_id, [0, 0])[0] += 1
            self._record(CheckResult(f.node_id, "spot-check", f.ok, f.check, f.detail,
                                     rel_error=f.rel_error))
            if not f.ok:
                await self.evict(f.node_id, f"spot-check failed [{f.check}]: {f.detail}")

    # schedule ----------------------------------------------------------------------------------

    async def run(self, poll_s: float = 0.3) -> None:
        while True:
            try:
                listed = await self.pipeline.discovery.nodes()
                self.departed({n.node_id for n in listed})
                for node in listed:
                    if self.pipeline.version and not node.serves(self.pipeline.version):
                        continue
                    t = self.trust.get(node.node_id)
                    if node.status == "evicted" and (t is None or t.status != "evicted"):
                        await self.evict(node.node_id, "evicted by a trusted verdict")
                    elif t is None or (t.status != "evicted" and time.monotonic() >= t.next_check):
                        await self.check(node)
                    elif t.status != "evicted" and self._new_claims(node):
                        await self.check(node)  # a claim is a reason to look again, now
            except Exception as exc:  # discovery hiccups must not stop verification
                log.warning("verifier round failed: %s", exc)
            await asyncio.sleep(poll_s)

    def departed(self, listed: set[str]) -> None:
        """Trusted nodes that discovery no longer lists (their records expired: they died or
        left) are new again, so one that comes back, same key and address or not, carries no
        traffic before it passes a check."""
        for t in self.trust.values():
            if t.status == "trusted" and t.node_id not in listed:
                log.info("node %s left discovery; it is checked again if it returns", t.node_id)
                t.status, t.passed, t.next_check = "new", 0, 0.0

    def _new_claims(self, node: NodeInfo) -> bool:
        """Whether discovery lists eviction claims about `node` not acted on yet (verdicts by
        keys this gateway does not trust: a reason to check again, never an eviction)."""
        fresh = set(node.claims) - self._claims_seen.setdefault(node.node_id, set())
        self._claims_seen[node.node_id] |= fresh
        return bool(fresh)

    def summary(self, full: bool = False) -> dict:
        """Each node's status and, for an evicted one, why. `full` (maintainers only) adds the
        schedule, counts and pins."""
        if not full:
            return {"nodes": {k: {"status": v.status, "reason": v.reason}
                              for k, v in self.trust.items()}}
        return {"nodes": {k: asdict(v) for k, v in self.trust.items()},
                "events": self.checks, "failures": self.failures}
