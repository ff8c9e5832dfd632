"""A node: serves one span of layers to the swarm over websockets.

It receives `Forward` frames, keeps one KV cache per session, runs everything that is waiting as
one batched forward (continuous batching: while a batch computes, the next one queues), and passes
each output straight to the next hop of the request's route, or, at the last hop, to the gateway's
`reply_to` address. Connections to next hops and to gateways are opened once and reused.

Sessions are dropped after an idle timeout or, least recently used first, when their caches exceed
the memory budget; a later request on a dropped session gets an `Error` with code
``session-evicted`` so the gateway re-prefills it elsewhere.

The node announces itself (span, versions, address, public key, load, measured speed) to a tracker.
It does not know about tokens, sampling or users.

Rollout: with a `ChannelWatch` the node follows a registry channel. When the verified head names a
new version it fetches only its span's files of that version, verifies them, loads them beside the
old ones and from then on offers the new version to new sessions; sessions that started on the old
version keep it (every `Forward` names its version) until they end, and the old weights are dropped
once no session uses them. A head that fails verification changes nothing: the node keeps serving
and reports why.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import torch

from serve import wire
from serve.links import Links, incoming
from serve.config import NodeConfig
from serve.rollout import VersionSet, Watcher, follow
from serve.span import SessionCache, SpanModel

log = logging.getLogger("shoal.node")


@dataclass
class Loaded:
    """One version's span in memory."""

    directory: Path
    span: SpanModel
    manifest: object = None
    trees: dict = field(default_factory=dict)


@dataclass
class NodeStats:
    batches: int = 0
    items: int = 0
    tokens: int = 0
    batch_sizes: Counter = field(default_factory=Counter)
    compute_s: float = 0.0
    evictions: int = 0

    def as_dict(self) -> dict:
        return {"batches": self.batches, "items": self.items, "tokens": self.tokens,
                "max_batch": max(self.batch_sizes, default=0),
                "batch_sizes": {str(k): v for k, v in sorted(self.batch_sizes.items())},
                "compute_s": round(self.compute_s, 4), "evictions": self.evictions}


class Node:
    def __init__(self, config: NodeConfig, span: SpanModel | None = None, key=None) -> None:
        from registry.signing import SigningKey

        self.config = config
        self.versions: VersionSet[Loaded] = VersionSet(config.version_id, Loaded(
            config.directory, span or SpanModel(config.directory, config.start, config.end)))
        self.session_version: dict[str, str] = {}
        self.watcher = Watcher(config.watch) if config.watch else None
        self.key = key or SigningKey.generate("node")
        self.node_id = self.key.keyid[:16]
        self.url = config.announce_url or f"ws://{config.host}:{config.port}"
        self.sessions: dict[str, SessionCache] = {}
        self.stats = NodeStats()
        self.ms_per_token_layer = 1.0
        self._queue: asyncio.Queue = asyncio.Queue()
        self._links = Links()

    @property
    def span(self) -> SpanModel:
        """The span of the current version (what new sessions run on)."""
        return self.versions.active.span

    @span.setter
    def span(self, value: SpanModel) -> None:
        self.versions.active.span = value

    # network -----------------------------------------------------------------------------------

    async def serve_forever(self) -> None:
        from websockets.asyncio.server import serve

        if self.config.threads:
            torch.set_num_threads(self.config.threads)
        async with serve(self._handle, self.config.host, self.config.port, max_size=None,
                         compression=None, ping_interval=None):
            log.info("node %s serving layers %d:%d on %s", self.node_id, self.config.start,
                     self.config.end, self.url)
            tasks = [asyncio.create_task(self._worker()), asyncio.create_task(self._sweeper())]
            if self.config.tracker_url:
                tasks.append(asyncio.create_task(self._announcer()))
            if self.watcher is not None:
                tasks.append(asyncio.create_task(self._watch()))
            await asyncio.gather(*tasks)

    async def _handle(self, ws) -> None:
        from websockets.exceptions import ConnectionClosed

        async for message, tensor in incoming(ws):
            if isinstance(message, wire.Forward):
                await self._queue.put((message, tensor))
            elif isinstance(message, wire.Close):
                self.sessions.pop(message.session, None)
                self.session_version.pop(message.session, None)
            elif isinstance(message, wire.Challenge):
                if message.version and message.version not in self.versions:
                    answer = wire.Error(message.request_id, "wrong-version",
                                        f"version {message.version[:19]}… is not loaded here",
                                        self.node_id)
                    try:
                        await ws.send(wire.encode(answer))
                    except ConnectionClosed:
                        return
                    continue
                proof = await asyncio.to_thread(self.prove, message)
                try:
                    await ws.send(wire.encode(proof))
                except ConnectionClosed:
                    return
            elif isinstance(message, wire.Ping):
                try:
                    await ws.send(wire.encode(wire.Pong(message.request_id, self.node_id,
                                                        self.info())))
                except ConnectionClosed:
                    return

    async def _send(self, url: str, frame: bytes) -> None:
        await self._links.send(url, frame)

    async def _reply_error(self, msg: wire.Forward, code: str, text: str, node_id: str) -> None:
        try:
            await self._send(msg.reply_to, wire.encode(wire.Error(msg.request_id, code, text,
                                                                  node_id)))
        except Exception as exc:  # the gateway itself is gone: nothing to tell
            log.warning("cannot report %s to %s: %s", code, msg.reply_to, exc)

    # proofs ------------------------------------------------------------------------------------

    def proof_params(self, span: SpanModel | None = None) -> dict[str, torch.Tensor]:
        """The tensors proofs are read from: the very parameters the forward pass uses."""
        span = span or self.span
        return {f"model.layers.{i}.{name}": p for i, layer in span.layers.items()
                for name, p in layer.named_parameters()}

    def prove(self, challenge: wire.Challenge) -> wire.Proof:
        from registry import merkle
        from registry.manifest import Manifest, split_levels
        from serve.proofs import live_chunk, proof_digest, select_chunks, span_tensors

        version = challenge.version or self.versions.current
        loaded = self.versions.get(version)
        if loaded is None:  # unloaded since the challenge arrived: prove what is served
            loaded, version = self.versions.active, self.versions.current
        if loaded.manifest is None:
            import json

            envelope = json.loads((loaded.directory / "manifest.json").read_text())
            loaded.manifest = Manifest.model_validate(envelope["signed"])
        manifest = loaded.manifest
        params = self.proof_params() if version == self.versions.current else \
            self.proof_params(loaded.span)
        picks = select_chunks(challenge.nonce, self.node_id,
                              span_tensors(manifest, self.config.start, self.config.end),
                              challenge.count)
        items = []
        for name, index in picks:
            entry = manifest.tensors[name]
            levels = loaded.trees.get(name)
            if levels is None:
                levels = loaded.trees[name] = split_levels(
                    self._sidecar(loaded.directory, entry.file)[name], entry.chunks)
            items.append(wire.ProofItem(name, index,
                                        live_chunk(params[name], index, manifest.chunk_size),
                                        merkle.path_of(levels, index)))
        signature = self.key.sign_bytes(proof_digest(challenge.nonce, self.node_id, items))
        return wire.Proof(challenge.request_id, self.node_id, challenge.nonce, items, signature)

    @staticmethod
    def _sidecar(directory: Path, shard: str) -> dict[str, bytes]:
        from safetensors.numpy import load_file

        path = directory / (shard.removesuffix(".safetensors") + ".merkle")
        return {k: v.tobytes() for k, v in load_file(str(path)).items()}

    # compute -----------------------------------------------------------------------------------

    async def _worker(self) -> None:
        while True:
            first = await self._queue.get()
            pending = [first]
            while not self._queue.empty() and len(pending) < self.config.max_batch:
                pending.append(self._queue.get_nowait())
            await self._run_batch(pending)

    async def _run_batch(self, pending: list) -> None:
        groups: dict[tuple[str, int, int], list] = {}
        later = []
        seen_sessions = set()
        for msg, hidden in pending:
            if msg.session in seen_sessions:  # one step per session per batch, in order
                later.append((msg, hidden))
                continue
            seen_sessions.add(msg.session)
            hop = msg.route[msg.hop]
            problem = self._check(msg, hop, hidden)
            if problem:
                await self._reply_error(msg, problem[0], problem[1], self.node_id)
                continue
            version = msg.version or self.versions.current
            self.session_version[msg.session] = version
            groups.setdefault((version, hop.start, hop.end), []).append((msg, hidden))
        for (version, start, end), items in groups.items():
            span = self.versions[version].span
            caches = [self.sessions.setdefault(m.session, SessionCache()) for m, _ in items]
            for cache, (m, _) in zip(caches, items):
                cache.truncate(m.keep)
            t0 = time.perf_counter()
            try:
                outputs = await asyncio.to_thread(
                    span.forward, [(c, h) for c, (_, h) in zip(caches, items)], start, end)
            except Exception as exc:  # a bug or OOM: report, do not kill the node
                log.exception("forward failed")
                for m, _ in items:
                    await self._reply_error(m, "compute-failed", str(exc), self.node_id)
                continue
            elapsed = time.perf_counter() - t0
            tokens = sum(h.shape[0] for _, h in items)
            self._record(len(items), tokens, elapsed, end - start)
            await asyncio.gather(*(self._pass_on(m, out) for (m, _), out in zip(items, outputs)))
        self._enforce_budget()
        for item in later:
            await self._queue.put(item)

    def _check(self, msg: wire.Forward, hop: wire.Hop, hidden) -> tuple[str, str] | None:
        if hop.node_id != self.node_id:
            return "wrong-node", f"hop {msg.hop} names node {hop.node_id}, this is {self.node_id}"
        if not (self.config.start <= hop.start < hop.end <= self.config.end):
            return "wrong-span", (f"layers {hop.start}:{hop.end} requested, this node serves "
                                  f"{self.config.start}:{self.config.end}")
        if msg.version and msg.version not in self.versions:
            return "wrong-version", (f"version {msg.version[:19]}… is not loaded here (serving "
                                     f"{', '.join(v[:19] for v in self.versions)})")
        bound = self.session_version.get(msg.session)
        if bound and msg.version and bound != msg.version:
            return "wrong-version", f"session {msg.session} runs on {bound[:19]}…"
        if hidden is None or hidden.dim() != 2 or hidden.shape[1] != self.span.hidden_size:
            return "bad-tensor", f"expected hidden states [T, {self.span.hidden_size}]"
        cache = self.sessions.get(msg.session)
        have = cache.length if cache else 0
        if msg.keep > have:
            code = "session-evicted" if msg.keep and cache is None else "cache-short"
            return code, (f"session {msg.session} holds {have} positions, request keeps "
                          f"{msg.keep} (evicted by idle timeout or memory budget; re-prefill)")
        return None

    def _record(self, batch: int, tokens: int, elapsed: float, layers: int) -> None:
        s = self.stats
        s.batches += 1
        s.items += batch
        s.tokens += tokens
        s.batch_sizes[batch] += 1
        s.compute_s += elapsed
        sample = 1000 * elapsed / max(1, layers)
        self.ms_per_token_layer = 0.8 * self.ms_per_token_layer + 0.2 * sample

    async def _pass_on(self, msg: wire.Forward, out: torch.Tensor) -> None:
        if msg.hop + 1 < len(msg.route):
            nxt = msg.route[msg.hop + 1]
            fwd = wire.Forward(msg.request_id, msg.session, msg.route, msg.hop + 1, msg.keep,
                               msg.reply_to, msg.wire_dtype, msg.version)
            try:
                await self._send(nxt.url, wire.encode(fwd, out, msg.wire_dtype))
            except Exception as exc:
                await self._reply_error(msg, "next-hop-failed", f"cannot reach {nxt.url}: {exc}",
                                        nxt.node_id)
            return
        result = wire.Result(msg.request_id, msg.session, self.node_id, msg.wire_dtype)
        try:
            await self._send(msg.reply_to, wire.encode(result, out, msg.wire_dtype))
        except Exception as exc:
            log.warning("gateway %s unreachable: %s", msg.reply_to, exc)

    # housekeeping ------------------------------------------------------------------------------

    def _enforce_budget(self) -> None:
        total = sum(c.nbytes for c in self.sessions.values())
        for sid, cache in sorted(self.sessions.items(), key=lambda kv: kv[1].last_used):
            if total <= self.config.memory_budget_bytes:
                break
            total -= cache.nbytes
            del self.sessions[sid]
            self.session_version.pop(sid, None)
            self.stats.evictions += 1

    async def _sweeper(self) -> None:
        while True:
            await asyncio.sleep(min(5.0, self.config.idle_timeout_s / 2))
            cutoff = time.monotonic() - self.config.idle_timeout_s
            for sid in [s for s, c in self.sessions.items() if c.last_used < cutoff]:
                del self.sessions[sid]
                self.session_version.pop(sid, None)
                self.stats.evictions += 1

    # rollout -----------------------------------------------------------------------------------

    async def _watch(self) -> None:
        """Follow the channel: load the span of each new head and offer it to new sessions at
        once; sessions keep the version they started on until they end."""

        async def load(version: str) -> Loaded:
            start, end = self.config.start, self.config.end
            directory = await asyncio.to_thread(self.watcher.checkout, version, "span",
                                                (start, end))
            span = await asyncio.to_thread(SpanModel, directory, start, end)
            return Loaded(directory, span)

        async def ready(_version: str) -> bool:
            return True

        async def unload(_version: str, _loaded: Loaded) -> None:
            pass

        def on_error(error: str) -> None:
            self.watcher.state.update(ok=False, error=error)

        await follow(self.watcher, self.versions, load=load, ready=ready,
                     in_use=lambda: set(self.session_version.values()), unload=unload,
                     on_error=on_error)

    def info(self) -> dict:
        return {"node_id": self.node_id, "url": self.url, "start": self.config.start,
                "end": self.config.end, "version": self.versions.current,
                "versions": sorted(self.versions),
                "channel": dict(self.watcher.state) if self.watcher else {},
                "public_key": self.key.public_hex, "sessions": len(self.sessions),
                "pid": os.getpid(),
                "queue": self._queue.qsize(), "ms_per_token_layer": self.ms_per_token_layer,
                "stats": self.stats.as_dict()}

    async def _announcer(self) -> None:
        import httpx

        async with httpx.AsyncClient(timeout=5) as http:
            while True:
                try:
                    await http.post(f"{self.config.tracker_url}/announce", json=self.info())
                except httpx.HTTPError as exc:
                    log.warning("tracker unreachable: %s", exc)
                await asyncio.sleep(self.config.heartbeat_s)


def run_node(config: NodeConfig, key=None) -> None:
    """Blocking entry point (used by `shoal node`)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    try:
        asyncio.run(Node(config, key=key).serve_forever())
    except KeyboardInterrupt:
        pass

