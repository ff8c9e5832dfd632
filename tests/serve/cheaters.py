"""Nodes that cheat, started as real processes by the attack tests (never part of serve/).

    python -m tests.serve.cheaters node --model … --layers … --port … --cheat MODE

Each MODE is one way a node in an open swarm could save money or lie; "honest" cheats not at all.
The other arguments are `shoal node`'s.
"""

from __future__ import annotations

import sys
import time

import torch

from serve import wire
from serve.node import Node
from serve.proofs import proof_digest


def round_bf16(t: torch.Tensor) -> torch.Tensor:
    return t.bfloat16().float()


def int8_roundtrip(t: torch.Tensor) -> torch.Tensor:
    scale = t.abs().amax(dim=-1, keepdim=True).clamp_min(1e-12) / 127.0
    return (t / scale).round().clamp(-127, 127) * scale


class Cheater(Node):
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
        from registry.signing import SigningKey

        self._neighbour = SigningKey.generate("neighbour")

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
        return super().prove(challenge)


def main() -> None:
    import asyncio
    import logging

    from flows.cli.serve import node_config

    argv = sys.argv[2:]  # after "node"
    opts = dict(zip(argv[::2], argv[1::2]))
    mode = opts["--cheat"]
    config = node_config(opts["--model"], opts["--layers"], int(opts["--port"]),
                         opts.get("--tracker"), opts.get("--announce-url"),
                         int(opts.get("--threads", 1)))
    logging.basicConfig(level=logging.INFO)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    asyncio.run(Cheater(config, mode).serve_forever())


if __name__ == "__main__":
    main()
