"""A node: serves one span of layers to the swarm over websockets.

It receives `Forward` frames, keeps one KV cache per session, runs everything that is waiting as
one batched forward (continuous batching: while a batch computes, the next one queues), and passes
each output straight to the next hop of the request's route, or, at the last hop, to the gateway's
`reply_to` address. Connections to next hops and to gateways are opened once and reused.

Sessions are dropped after an idle timeout or, least recently used first, when their caches exceed
the memory budget; a later request on a dropped session gets an `Error` with code
``session-evicted`` so the gateway re-prefills it elsewhere.

The node announces itself (span, versions, address, public key, load, measured speed) to a tracker,
or into the swarm's DHT (serve/dht_discovery.py), or both.
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
import json
import logging
import os
import time
from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import torch

from serve import auth, wire
from serve.admission import Admission, Job
from serve.config import NodeConfig
from serve.exceptions import FrameRejected
from serve.inflight import Forwarded, InFlight
from serve.links import Links, incoming
from serve.records import node_id_of, sign_record
from serve.rollout import VersionSet, Watcher, follow
from serve.span import SessionCache, SpanModel
from serve.transport import advertised_url, server_context, tls_enabled

log = logging.getLogger("shoal.node")
MAX_GATEWAYS = 64
"""Gateway keys a node keeps per-gateway state (audit stores, proof slots) for."""
MAX_PENDING_REPLIES = 256
"""Error reports to gateways in flight at once (`Node._in_background`)."""
REDIAL_S = 2.0
"""How long a node tries to dial a next hop that closed its link before reporting it down."""


@dataclass
class AuditStore:
    """One gateway's recent forwards: (receipt, [2, T, H] input and output), bounded in bytes."""

    items: OrderedDict = field(default_factory=OrderedDict)
    nbytes: int = 0

    def add(self, request_id: str, receipt: wire.Receipt, both: torch.Tensor,
            budget: int) -> None:
        self.items[request_id] = (receipt, both)
        self.nbytes += both.nbytes
        while self.nbytes > budget and self.items:
            _, (_, old) = self.items.popitem(last=False)
            self.nbytes -= old.nbytes


async def _discard(ws) -> None:
    """Read and drop whatever a peer sends back on a link this node only sends on."""
    try:
        async for _ in ws:
            pass
    except Exception:  # the link closed, cleanly or not
        pass


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
        self.node_id = node_id_of(self.key.public_hex)
        self.tls = tls_enabled(config.tls, config.host) or config.via is not None
        self.url = (f"wss://{config.via}/via/{self.node_id}" if config.via else
                    advertised_url(config.host, config.port, config.announce_url, self.tls))
        self.sessions: dict[str, SessionCache] = {}
        self.session_owner: dict[str, str] = {}
        """Session -> the gateway key whose ticket opened it (no other key may use it)."""
        self.stats = NodeStats()
        self.ms_per_token_layer = 1.0
        self.attestation = (json.loads(config.attestation_file.read_text())
                            if config.attestation_file is not None else None)
        """Evidence an attester issued for this node's key, announced with its record."""
        span = self.span
        self.admission = Admission(self.node_id, self.key, config.start, config.end,
                                   span.hidden_size, span.context_length, config.gateway_keys)
        self.audits: OrderedDict[str, AuditStore] = OrderedDict()
        """Per gateway key: its recent forwards, kept for its spot checks (one gateway's traffic
        cannot push out another's)."""
        self._queue: asyncio.Queue = asyncio.Queue()
        self._links = Links(on_connect=_discard, max_size=1 << 20,
                            allow_plain=config.tls == "off", on_close=self._link_closed)
        """Links to next hops and gateways: nothing legitimate comes back on them."""
        self._in_flight = InFlight(self._links.max_links)
        """The forwards passed on lately, per next-hop link (`serve.inflight`)."""
        self._replies: set[asyncio.Task] = set()
        """Error reports on their way to gateways (each in a task of its own)."""
        self._proving: OrderedDict[str, asyncio.Semaphore] = OrderedDict()
        """One proof at a time per gateway key: another key's challenges cannot keep a
        gateway's own from being answered."""

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
        async with serve(self._handle, self.config.host, self.config.port,
                         max_size=self.config.max_frame_bytes, compression=None,
                         ping_interval=None,
                         ssl=server_context(self.key) if self.tls else None) as server:
            log.info("node %s serving layers %d:%d on %s", self.node_id, self.config.start,
                     self.config.end, self.url)
            tasks = [asyncio.create_task(self._worker()), asyncio.create_task(self._sweeper())]
            offers = None
            if self.config.via:  # reached through a NAT relay: keep offers open there
                from serve.nat_relay import Offers

                port = server.sockets[0].getsockname()[1]
                offers = Offers(self.config.via, self.key, port)
                tasks.append(asyncio.create_task(offers.run()))
            if self.config.tracker_url:
                tasks.append(asyncio.create_task(self._announcer(offers)))
            if self.config.dht is not None:
                from serve.dht_discovery import announce_forever, peer_for

                async def announce_on_dht() -> None:
                    if offers is not None:  # as for the tracker: only once it can be dialled
                        await offers.placed.wait()
                    await announce_forever(peer_for(self.config.dht, self.config.host),
                                           self.key, self.info)

                tasks.append(asyncio.create_task(announce_on_dht()))
            if self.watcher is not None:
                tasks.append(asyncio.create_task(self._watch()))
            await asyncio.gather(*tasks)

    async def _handle(self, ws) -> None:
        """Every frame of one connection. Nothing a peer sends may take the node down: a frame
        that fails its checks is answered with a signed error; a peer that keeps sending such
        frames is disconnected."""
        from websockets.exceptions import ConnectionClosed

        strikes = 0
        async for message, tensor in incoming(ws):
            try:
                await self._dispatch(ws, message, tensor)
            except ConnectionClosed:
                return
            except FrameRejected as exc:
                strikes += 1
                log.info("refused a %s frame: %s", type(message).__name__, exc)
                # about exactly this frame: nobody can relay it as an error about another request
                request_id = getattr(message, "request_id", "")
                error = self._error(request_id, exc.check, exc.detail,
                                    about=wire.header_digest(message))
                try:
                    await ws.send(wire.encode(error))
                except ConnectionClosed:
                    return
            except Exception:  # a bug must cost one frame, never the process
                strikes += 1
                log.exception("frame handling failed")
            if strikes > self.config.max_strikes:
                log.warning("closing a connection after %d refused frames", strikes)
                await ws.close()
                return

    async def _dispatch(self, ws, message: wire.Message, tensor: torch.Tensor | None) -> None:
        if isinstance(message, wire.Forward):
            job = self.admission.forward(message, tensor)
            await self._queue.put(job)
        elif isinstance(message, wire.Close):
            if not auth.verify(message.gateway_key, message.signature,
                               wire.close_bytes(message.session)):
                raise FrameRejected("close-signature", "the close is not signed by its key")
            if self.session_owner.get(message.session) == message.gateway_key:
                self._drop_session(message.session)
        elif isinstance(message, wire.Challenge):
            auth.check_challenge(message)
            self.admission.check_gateway(message.gateway_key)
            if message.version and message.version not in self.versions:
                raise FrameRejected("wrong-version", f"version {message.version[:19]}… is not "
                                    "loaded here")
            slot = self._proving.setdefault(message.gateway_key, asyncio.Semaphore(1))
            self._proving.move_to_end(message.gateway_key)
            while len(self._proving) > MAX_GATEWAYS:
                self._proving.popitem(last=False)
            if slot.locked():
                raise FrameRejected("busy", "a proof for this gateway is being computed")
            async with slot:
                proof = await asyncio.to_thread(self.prove, message)
            await ws.send(wire.encode(proof))
        elif isinstance(message, wire.Ping):
            record = sign_record(self.key, self.info())
            await ws.send(wire.encode(wire.Pong(message.request_id, self.node_id, record)))
        elif isinstance(message, wire.Audit):
            await ws.send(self._audit_reply(message))
        # results, errors, proofs and pongs are for gateways: a node ignores them

    def _error(self, request_id: str, code: str, text: str, node_id: str | None = None,
               about: bytes = b"") -> wire.Error:
        return auth.sign_error(self.key, request_id, code, text, node_id or self.node_id, about)

    async def _send(self, url: str, frame: bytes, peer_key: str) -> None:
        await self._links.send(url, frame, peer_key)

    async def _reply_error(self, job: Job | Forwarded, code: str, text: str,
                           node_id: str | None = None) -> None:
        self._report(job, code, text, node_id)

    def _report(self, job: Job | Forwarded, code: str, text: str,
                node_id: str | None = None) -> None:
        """Tell the session's gateway (the ticket's signed reply address) that a hop failed."""
        error = self._error(job.request_id, code, text, node_id, about=job.order_digest)
        self._in_background(self._deliver_error(job.ticket.reply_to, wire.encode(error),
                                                job.ticket.gateway_key, code), code)

    def _in_background(self, report, code: str) -> None:
        """Run the coroutine `report` in a task of its own, at most `MAX_PENDING_REPLIES` at
        once (beyond that it is dropped, logged): a reply address is whatever a ticket's signer
        chose, so one that stalls the dial must not hold the worker that computes for all."""
        if len(self._replies) >= MAX_PENDING_REPLIES:
            report.close()
            log.warning("dropped a %s report: %d reports are on their way", code,
                        len(self._replies))
            return
        task = asyncio.get_running_loop().create_task(report)
        self._replies.add(task)
        task.add_done_callback(self._replies.discard)

    async def _deliver_error(self, url: str, frame: bytes, peer_key: str, code: str) -> None:
        try:
            await self._send(url, frame, peer_key)
        except Exception as exc:  # the gateway itself is gone: nothing to tell
            log.warning("cannot report %s to the gateway: %s", code, exc)

    def _audit_reply(self, audit: wire.Audit) -> bytes:
        if not auth.verify(audit.gateway_key, audit.signature, wire.audit_bytes(audit)):
            raise FrameRejected("audit-signature", "the audit is not signed by its key")
        store = self.audits.get(audit.gateway_key)
        kept = store.items.get(audit.forward_id) if store is not None else None
        if kept is None:  # only the gateway that ordered a forward finds it here
            raise FrameRejected("audit", f"forward {audit.forward_id} is not kept here")
        receipt, tensors = kept
        return wire.encode(wire.AuditReply(audit.request_id, receipt), tensors)

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
            try:
                await self._run_batch(pending)
            except Exception:  # a bug costs this batch, never the node
                log.exception("batch failed")

    async def _run_batch(self, pending: list[Job]) -> None:
        groups: dict[tuple[str, int, int], list[Job]] = {}
        later = []
        seen_sessions = set()
        for job in pending:
            if job.session in seen_sessions:  # one step per session per batch, in order
                later.append(job)
                continue
            seen_sessions.add(job.session)
            problem = self._check(job)
            if problem:
                await self._reply_error(job, *problem)
                continue
            version = job.ticket.version or self.versions.current
            self.session_version[job.session] = version
            self.session_owner[job.session] = job.ticket.gateway_key
            groups.setdefault((version, job.hop.start, job.hop.end), []).append(job)
        for (version, start, end), jobs in groups.items():
            span = self.versions[version].span
            caches = [self.sessions.setdefault(j.session, SessionCache()) for j in jobs]
            for cache, job in zip(caches, jobs):
                cache.truncate(job.order.keep)
            t0 = time.perf_counter()
            try:
                outputs = await asyncio.to_thread(
                    span.forward, [(c, j.hidden) for c, j in zip(caches, jobs)], start, end)
            except Exception as exc:  # a bug or OOM: report, do not kill the node
                log.exception("forward failed")
                for job in jobs:
                    await self._reply_error(job, "compute-failed", str(exc)[:200])
                continue
            elapsed = time.perf_counter() - t0
            tokens = sum(j.hidden.shape[0] for j in jobs)
            self._record(len(jobs), tokens, elapsed, end - start)
            await asyncio.gather(*(self._pass_on(j, out, version)
                                   for j, out in zip(jobs, outputs)))
        self._enforce_budget()
        for job in later:
            await self._queue.put(job)

    def _check(self, job: Job) -> tuple[str, str] | None:
        """What can only be checked against the node's state when the job's turn comes."""
        version = job.ticket.version
        if version and version not in self.versions:
            return "wrong-version", (f"version {version[:19]}… is not loaded here (serving "
                                     f"{', '.join(v[:19] for v in self.versions)})")
        bound = self.session_version.get(job.session)
        if bound and version and bound != version:
            return "wrong-version", f"session {job.session} runs on {bound[:19]}…"
        owner = self.session_owner.get(job.session)
        if owner is not None and owner != job.ticket.gateway_key:
            return "session-owner", "the session belongs to another gateway"
        if owner is None and sum(o == job.ticket.gateway_key for o in self.session_owner.values()
                                 ) >= self.config.max_sessions_per_gateway:
            return "busy", "too many sessions for this gateway"
        cache = self.sessions.get(job.session)
        have = cache.length if cache else 0
        if job.order.keep > have:
            code = "session-evicted" if job.order.keep and cache is None else "cache-short"
            return code, (f"session {job.session} holds {have} positions, request keeps "
                          f"{job.order.keep} (evicted by idle timeout or memory budget; "
                          "re-prefill)")
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

    async def _pass_on(self, job: Job, out: torch.Tensor, version: str) -> None:
        """Sign and tag the receipt of this hop and send the output on: to the next hop of the
        ticket's route, or, from the last hop, to the gateway."""
        fwd, route = job.forward, job.ticket.route
        dtype = job.ticket.wire_dtype
        if not bool(torch.isfinite(out.to(wire.WIRE_DTYPES[dtype])).all()):
            # (e.g. huge but finite inputs from upstream overflowing float16): never sign an
            # output the gateway must reject as this hop's fault; report it, a failover
            await self._reply_error(job, "non-finite-output", "the output does not fit "
                                    f"{dtype} (non-finite values)")
            return
        receipt = auth.make_receipt(self.key, job.keys, self.node_id, job.order, fwd.order,
                                    fwd.hop, job.input_digest, wire.tensor_digest(out, dtype),
                                    version)
        self._keep_for_audit(job, receipt, out)
        receipts = [*fwd.receipts, receipt]
        if fwd.hop + 1 < len(route):
            nxt = route[fwd.hop + 1]
            frame = wire.encode(wire.Forward(fwd.ticket, fwd.ticket_sig, fwd.order, fwd.order_tags,
                                             fwd.hop + 1, receipts, dtype), out, dtype)
            try:
                await self._send(nxt.url, frame, nxt.public_key)
            except Exception as exc:  # why it failed stays here: no port-scan oracle
                log.warning("next hop %s unreachable: %s", nxt.node_id, exc)
                await self._reply_error(job, "next-hop-failed", "the next hop is unreachable",
                                        nxt.node_id)
            else:
                self._in_flight.passed_on((nxt.url, nxt.public_key), Forwarded(
                    job.request_id, job.order_digest, job.ticket, nxt.node_id,
                    time.monotonic()))
            return
        frame = wire.encode(auth.make_result(self.key, job.keys.gateway, job.request_id, receipts,
                                             job.order_digest, dtype), out, dtype)
        try:
            await self._send(job.ticket.reply_to, frame, job.ticket.gateway_key)
        except Exception as exc:
            log.warning("gateway unreachable: %s", exc)

    def _link_closed(self, link: tuple[str, str]) -> None:
        """The next hop at `link` closed its connection: the forwards it got lately may have
        died with it. Whether it is down is checked first (`_confirm_down`): a peer that is up
        closes a link for reasons of its own (frames someone else made this node pass on were
        refused, say), and a report would then blame a live node for every gateway at once."""
        lost = self._in_flight.lost(link)
        if lost:
            self._in_background(self._confirm_down(link, lost), "next-hop-failed")

    async def _confirm_down(self, link: tuple[str, str], lost: list[Forwarded]) -> None:
        """Dial the next hop again; only if that fails, tell each lost forward's gateway (each
        decides; an answered one is ignored). A live next hop is not blamed: the gateways whose
        forwards died with the link fall back to their own timeout."""
        try:
            await asyncio.wait_for(self._links.connect(*link), REDIAL_S)
        except Exception:
            log.warning("next hop %s is down with forwards of %d sessions in flight",
                        lost[0].next_node, len(lost))
            for sent in lost:
                self._report(sent, "next-hop-failed", "the next hop closed the connection and "
                             "does not answer a new one", sent.next_node)
        else:
            log.warning("next hop %s closed its link with forwards of %d sessions in flight, "
                        "and accepts a new one: not reported", lost[0].next_node, len(lost))

    def _keep_for_audit(self, job: Job, receipt: wire.Receipt, out: torch.Tensor) -> None:
        if out.shape != job.hidden.shape:
            return
        both = torch.stack([job.hidden, out.float()])
        key = job.ticket.gateway_key
        store = self.audits.setdefault(key, AuditStore())
        self.audits.move_to_end(key)
        while len(self.audits) > MAX_GATEWAYS:
            self.audits.popitem(last=False)
        store.add(job.request_id, receipt, both, self.config.audit_bytes)

    # housekeeping ------------------------------------------------------------------------------

    def _enforce_budget(self) -> None:
        total = sum(c.nbytes for c in self.sessions.values())
        for sid, cache in sorted(self.sessions.items(), key=lambda kv: kv[1].last_used):
            if total <= self.config.memory_budget_bytes:
                break
            total -= cache.nbytes
            self._drop_session(sid)
            self.stats.evictions += 1

    def _drop_session(self, session: str) -> None:
        self.sessions.pop(session, None)
        self.session_version.pop(session, None)
        self.session_owner.pop(session, None)

    async def _sweeper(self) -> None:
        while True:
            await asyncio.sleep(min(5.0, self.config.idle_timeout_s / 2))
            cutoff = time.monotonic() - self.config.idle_timeout_s
            for sid in [s for s, c in self.sessions.items() if c.last_used < cutoff]:
                self._drop_session(sid)
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
                "stats": self.stats.as_dict(), "attestation": self.attestation}

    async def _announcer(self, offers=None) -> None:
        """Announce to the tracker every `heartbeat_s`; a node behind a NAT relay (`offers`)
        first waits until it can be dialled there."""
        import httpx

        if offers is not None:
            await offers.placed.wait()
        async with httpx.AsyncClient(timeout=5) as http:
            while True:
                try:
                    await http.post(f"{self.config.tracker_url}/announce",
                                    json=sign_record(self.key, self.info()))
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

