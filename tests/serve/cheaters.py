"""Nodes that cheat, started as real processes by the attack tests (never part of serve/).

    python -m tests.serve.cheaters node --model … --layers … --port … --cheat MODE

Each MODE is one way a node in an open swarm could save money or lie; "honest" cheats not at all.
The other arguments are `shoal node`'s.
"""

from __future__ import annotations

import random
import sys
import time

import torch

from serve import wire
from serve.node import Node
from serve.proofs import proof_digest


def looks_like_a_canary(job) -> bool:
    """The verifier's canary: a forward through this node alone."""
    return len(job.ticket.route) == 1


def round_bf16(t: torch.Tensor) -> torch.Tensor:
    return t.bfloat16().float()


def int8_roundtrip(t: torch.Tensor) -> torch.Tensor:
    scale = t.abs().amax(dim=-1, keepdim=True).clamp_min(1e-12) / 127.0
    return (t / scale).round().clamp(-127, 127) * scale


RATIONAL = {
    # mode -> (fraction of forwards it cheats on, forwards it stays honest for first)
    "quantized": (1.0, 0),     # true bytes for proofs, an int8 copy's answers for everything else
    "lazy-10": (0.1, 0),       # the same, on a random 10% of forwards
    "turncoat": (1.0, 20),     # honest through admission and its first 20 forwards, then not
    "check-dodger": (0.5, 0),  # also never cheats on anything that could be a check (see below)
}


def looks_like_a_check(job) -> bool:
    """What a canary looked like: a one-hop route, a fresh prefill, a single span."""
    return len(job.ticket.route) == 1 or job.order.keep == 0


class Cheater(Node):
    """A node that cheats one way (MODE), as a rational operator who has read the verifier would.

    The rational modes (`RATIONAL`) keep the release's float32 bytes, so every live-weight proof
    passes, answer every forward that looks like a check honestly, and replace the output of the
    others with what a cheaper copy computes (an int8 round trip of the activations, the error an
    int8 span makes: ~1e-2 relative, far above the tolerance)."""

    mode = ""

    def __init__(self, config, mode: str) -> None:
        super().__init__(config)
        self.mode = mode
        first, second = str(config.start), str(config.start + 1)
        layers = self.span.layers
        self._file_copy = {k: v.clone() for k, v in self.proof_params().items()}
        with torch.no_grad():
            if mode in ("bf16", "file-proof"):
                for p in self.span.layers.parameters():
                    p.copy_(round_bf16(p))
            elif mode == "int8":
                for p in self.span.layers.parameters():
                    if p.dim() == 2:
                        p.copy_(int8_roundtrip(p))
            elif mode == "swap-layer":
                layers[first].load_state_dict(layers[second].state_dict())
            elif mode == "one-weight":
                next(iter(layers[second].mlp.parameters())).view(-1)[7] += 0.5
        if mode == "other-model":  # hold the right weights, compute with other ones
            from serve.span import SpanModel

            self._real = self.span
            self.span = SpanModel(config.directory, config.start, config.end)
            torch.manual_seed(123)
            with torch.no_grad():
                for p in self.span.layers.parameters():
                    p.add_(torch.randn_like(p) * 0.05)
            self._held = self._real.layers
        self._first_proof = None
        self._forwards = 0
        self._rng = random.Random(7)
        from registry.signing import SigningKey

        self._neighbour = SigningKey.generate("neighbour")

    async def _pass_on(self, job, out, version):
        if self.mode == "bad-shape" and looks_like_a_canary(job):  # an answer of another shape
            out = torch.cat([out, out[:1]])
        if self.mode == "shortcut" and job.forward.hop + 1 < len(job.ticket.route):
            # answer for the whole chain: the later hops never run, and this node picks the text
            from serve import auth

            dtype = job.ticket.wire_dtype
            receipt = auth.make_receipt(self.key, job.keys, self.node_id, job.order,
                                        job.forward.order, job.forward.hop, job.input_digest,
                                        wire.tensor_digest(out, dtype), version)
            result = auth.make_result(self.key, job.keys.gateway, job.request_id, [receipt],
                                      job.order_digest, dtype)
            await self._send(job.ticket.reply_to, wire.encode(result, out, dtype),
                             job.ticket.gateway_key)
            return
        if self.mode in RATIONAL:
            fraction, honest_first = RATIONAL[self.mode]
            self._forwards += 1
            dodge = self.mode == "check-dodger" and looks_like_a_check(job)
            if (self._forwards > honest_first and not dodge and not looks_like_a_canary(job)
                    and self._rng.random() < fraction):
                out = int8_roundtrip(out)
        await super()._pass_on(job, out, version)

    def proof_params(self):
        if self.mode == "file-proof" and hasattr(self, "_file_copy"):
            return self._file_copy  # correct bytes from a file copy; compute is modified
        if self.mode == "other-model" and hasattr(self, "_held"):
            return {f"model.layers.{i}.{n}": p for i, layer in self._held.items()
                    for n, p in layer.named_parameters()}
        return super().proof_params()

    def prove(self, challenge: wire.Challenge) -> wire.Proof:
        if self.mode == "replay":
            if self._first_proof is None:
                self._first_proof = super().prove(challenge)
                return self._first_proof
            old = self._first_proof
            return wire.Proof(challenge.request_id, old.node_id, old.nonce, old.items,
                              old.signature)
        if self.mode == "other-node":  # answer with a proof signed under another identity
            # (built aside: swapping self.node_id would let a heartbeat announce the other id)
            own = super().prove(challenge)
            other = self._neighbour.keyid[:16]
            signature = self._neighbour.sign_bytes(proof_digest(own.nonce, other, own.items))
            return wire.Proof(own.request_id, other, own.nonce, own.items, signature)
        if self.mode == "slow":
            time.sleep(1.6)
        if self.mode == "bad-index":  # a proof item the verifier's arithmetic cannot take
            own = super().prove(challenge)
            item = own.items[0]
            items = [wire.ProofItem(item.tensor, -1, item.chunk, item.path), *own.items[1:]]
            signature = self.key.sign_bytes(proof_digest(own.nonce, own.node_id, own.items))
            return wire.Proof(own.request_id, own.node_id, own.nonce, items, signature)
        return super().prove(challenge)


def main() -> None:
    import asyncio
    import logging

    from flows.cli.serve import node_config

    argv = sys.argv[2:]  # after "node"
    opts = dict(zip(argv[::2], argv[1::2]))
    mode = opts["--cheat"]
    keys = [v for k, v in zip(argv[::2], argv[1::2]) if k == "--gateway-key"]
    config = node_config(opts["--model"], opts["--layers"], int(opts["--port"]),
                         opts.get("--tracker"), opts.get("--announce-url"),
                         int(opts.get("--threads", 1)), gateway_keys=keys)
    logging.basicConfig(level=logging.INFO)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    asyncio.run(Cheater(config, mode).serve_forever())


if __name__ == "__main__":
    main()
