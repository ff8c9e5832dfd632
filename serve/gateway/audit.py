"""Spot checks on real traffic: a verifier secretly mirrors a few sessions on its trusted copy
and, once such a session ends, audits what the nodes signed for it.

A node cannot tell a mirrored session from any other: it is chosen at random when the session
starts, nothing about its frames differs, and the audits arrive only after every forward of the
session was computed, signed and answered. For each audited forward the hop must hand back the
input and output its receipt committed to (digests must match); the verifier compares the output
with its own computation of the same layers on the same token history (relative error under the
calibrated tolerance). The first (forward, hop) in time and route order whose output deviates is the
culprit: every later deviation is downstream of it.

The trusted computation runs off the request path, in a thread, one forward at a time per session.
"""

from __future__ import annotations

import asyncio
import logging
import random
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from serve import auth, wire
from serve.exceptions import HopFailed
from serve.gateway.pipeline import Expect

if TYPE_CHECKING:
    from serve.gateway.verifier import Verifier

log = logging.getLogger("shoal.audit")


@dataclass
class Forward:
    """One traversal part of a mirrored session, with the trusted output of each of its hops."""

    request_id: str
    route: list[wire.Hop]
    reference: list[torch.Tensor] = field(default_factory=list)


@dataclass
class Finding:
    """What auditing one hop of one forward showed."""

    node_id: str
    ok: bool
    check: str = ""
    detail: str = ""
    rel_error: float | None = None
    evidence: dict = field(default_factory=dict)


class Shadow:
    """The trusted mirror of one session: the same positions kept and added as the real one."""

    def __init__(self, verifier: "Verifier", max_audits: int) -> None:
        self.verifier = verifier
        self.max_audits = max_audits
        self.forwards: list[Forward] = []
        self._caches: dict[tuple[int, int], object] = {}
        self._lock = asyncio.Lock()
        self._pending: list[asyncio.Task] = []

    def observe(self, parts: list[tuple[list[wire.Hop], str]], keep: int,
                inputs: torch.Tensor) -> None:
        """A traversal of the real session finished: mirror it (in order, off the hot path)."""
        self._pending.append(asyncio.get_running_loop().create_task(
            self._mirror(parts, keep, inputs)))

    async def _mirror(self, parts, keep: int, inputs: torch.Tensor) -> None:
        async with self._lock:
            refs = await asyncio.to_thread(self._compute, [h for p, _ in parts for h in p],
                                           keep, inputs)
            i = 0
            for route, request_id in parts:
                self.forwards.append(Forward(request_id, route, refs[i:i + len(route)]))
                i += len(route)

    def _compute(self, hops: list[wire.Hop], keep: int, hidden: torch.Tensor
                 ) -> list[torch.Tensor]:
        from serve.span import SessionCache

        trusted = self.verifier.trusted_model()
        if keep == 0:
            self._caches.clear()
        outs = []
        for hop in hops:
            cache = self._caches.setdefault((hop.start, hop.end), SessionCache())
            cache.truncate(min(keep, cache.length))
            if cache.length != keep:  # a route changed mid-session: nothing to compare
                raise RuntimeError("mirror lost track of the session's cache")
            hidden = trusted.forward([(cache, hidden)], hop.start, hop.end)[0]
            outs.append(hidden)
        return outs

    async def finish(self) -> list[Finding]:
        """Audit a random subset of the mirrored forwards, oldest first; stop at the first
        deviation (the culprit)."""
        await asyncio.gather(*self._pending, return_exceptions=True)
        chosen = sorted(random.sample(range(len(self.forwards)),
                                      min(self.max_audits, len(self.forwards))))
        findings = []
        for index in chosen:
            fwd = self.forwards[index]
            results = await asyncio.gather(*(self._audit(fwd, k) for k in range(len(fwd.route))))
            findings.extend(results)
            bad = [f for f in results if not f.ok]
            if bad:
                return findings[:len(findings) - len(results)] + [bad[0]]
        return findings

    async def _audit(self, fwd: Forward, k: int) -> Finding:
        hop = fwd.route[k]
        pipeline = self.verifier.pipeline
        try:
            chain = pipeline.receipts.get(fwd.request_id)
            if chain is None or len(chain) != len(fwd.route):
                return Finding(hop.node_id, True, "skipped", "receipts no longer kept here")
            signed = chain[k]
            audit = auth.sign_audit(pipeline.key, fwd.request_id)
            answer = await pipeline.request(hop.url, audit, node_id=hop.node_id, timeout_s=10.0,
                                            public_key=hop.public_key,
                                            expect=Expect([hop], wire.header_digest(audit)))
        except HopFailed as exc:
            if exc.code == "audit":  # no longer kept: counted, failed only when it is the rule
                return Finding(hop.node_id, True, "missing", str(exc)[:300])
            return Finding(hop.node_id, False, "audit-unanswered", str(exc)[:300])
        except Exception as exc:  # no answer to an audit is a failed audit
            return Finding(hop.node_id, False, "audit-unanswered", str(exc)[:300])
        try:
            reply, tensors = answer
            if not auth.same_receipt(reply.receipt, signed):
                return Finding(hop.node_id, False, "audit-receipt",
                               "the audit answer carries another receipt than the one signed")
            if not auth.check_receipt_signature(reply.receipt, hop):  # tagged, not signed
                return Finding(hop.node_id, False, "receipt-signature",
                               "the receipt of the audited forward is not signed by the node")
            if tensors is None or tensors.dim() != 3 or tensors.shape[0] != 2:
                return Finding(hop.node_id, False, "audit-malformed", "not a [2, T, H] tensor")
            dtype = pipeline.wire_dtype
            inp, out = tensors[0], tensors[1]
            if (wire.tensor_digest(inp, dtype), wire.tensor_digest(out, dtype)) != (
                    signed.input_digest, signed.output_digest):
                return Finding(hop.node_id, False, "audit-digest",
                               "the activations shown are not the ones the receipt signed")
            ref = fwd.reference[k]
            if out.shape != ref.shape:
                return Finding(hop.node_id, False, "audit-malformed",
                               f"output {tuple(out.shape)}, reference {tuple(ref.shape)}")
            rel = float((out - ref).abs().max() / ref.abs().max().clamp_min(1e-12))
            ok = rel <= self.verifier.config.tolerance  # NaN fails
            return Finding(hop.node_id, ok, "" if ok else "spot-check",
                           f"relative error {rel:.2e} on forward {fwd.request_id[:8]}, layers "
                           f"{hop.start}:{hop.end}", rel,
                           evidence={} if ok else {"request_id": fwd.request_id, "hop": k,
                                                   "rel_error": rel,
                                                   "receipt_signature": signed.signature.hex()})
        except Exception as exc:  # fail closed
            return Finding(hop.node_id, False, "audit-error", f"{type(exc).__name__}: {exc}"[:300])
