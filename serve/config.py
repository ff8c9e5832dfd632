"""The typed configurations of serve/'s processes: tracker, node, gateway, verifier and channel
watch.

Each config owns its defaults and constraints; the CLI (`flows/cli/`) and `serve.up.LocalSwarm`
pass only what a user set, so a default is written down once, here. The module imports nothing
heavy (no torch), so `shoal --help` can read the defaults.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from serve.invite import Invite
from serve.policy import RoutingPolicyConfig
from serve.records import MAX_SKEW_S

WireDtype = Literal["float32", "bfloat16", "float16"]
TlsMode = Literal["auto", "on", "off"]
"""Hop transport (serve/transport.py): ``auto`` is TLS (``wss://``, pinned to identity keys)
unless bound to loopback; ``on`` always; ``off`` plain ``ws://``, dialled off loopback too."""
DEFAULT_PROOF_CHUNKS = 16
"""Chunks a live-weight proof opens (`serve.proofs.DEFAULT_CHUNKS`)."""


class _Config(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def _public_keys(keys: set[str]) -> set[str]:
    """Ed25519 public keys as 64 lower-case hex digits; anything else is refused."""
    out = set()
    for key in keys:
        k = key.strip().lower()
        if len(k) != 64 or any(c not in "0123456789abcdef" for c in k):
            raise ValueError(f"{key!r} is not an Ed25519 public key (64 hex digits)")
        out.add(k)
    return out


class TrackerConfig(_Config):
    """The tracker process: how long nodes stay listed, who may post verdicts, and its bounds.

    The tracker trusts nothing it is sent (docs/threat-model.md): every bound here is what one
    peer can make it hold at most."""

    host: str = "127.0.0.1"
    """Address to bind."""
    port: int = Field(7000, ge=0, le=65535)
    """HTTP port nodes announce to and gateways read."""
    ttl_s: float = Field(5.0, gt=0)
    """A node not heard from for this long is no longer listed."""
    verdict_keys: set[str] = Field(default_factory=set)
    """Ed25519 public keys (hex) of the gateways and maintainers whose signed verdicts are
    accepted. Empty: no verdict is accepted at all."""
    max_nodes: int = Field(1024, ge=1)
    """Most node records held. When full, records that are neither listed nor replayable any
    more are dropped first; beyond that a new id is refused (known ids still update)."""
    max_record_bytes: int = Field(16384, ge=1024)
    """Largest announcement body accepted."""
    max_verdict_bytes: int = Field(65536, ge=1024)
    """Largest verdict body accepted (verdicts carry their evidence)."""
    max_verdict_nodes: int = Field(4096, ge=1)
    """Most nodes with verdicts kept (at most one verdict per node and key); oldest dropped."""

    @field_validator("verdict_keys")
    @classmethod
    def _verdict_keys(cls, keys: set[str]) -> set[str]:
        return _public_keys(keys)


class ChannelWatch(_Config):
    """Follow a registry channel and roll out its new versions."""

    channel: str = Field(min_length=1)
    """The channel to follow, e.g. `production`."""
    registry_url: str
    """Registry tree (local path or fsspec URL)."""
    trust_dir: Path
    """This process's pinned root and highest-seen sequences."""
    models_dir: Path
    """Where verified checkouts go."""
    poll_s: float = Field(2.0, gt=0)
    """Seconds between reads of the channel head."""
    drain_grace_s: float = Field(5.0, ge=0)
    """How long an old version stays loaded after its last session ends."""


class DhtConfig(_Config):
    """This process's peer in a swarm's DHT (serve/dht.py) and the liveness of node records
    there (docs/serving.md, Discovery without a tracker)."""

    invite: Invite
    """The swarm: name, membership secret, bootstrap peers (serve/invite.py)."""
    host: str | None = None
    """Address the UDP socket binds (None: the process's own `host`)."""
    port: int = Field(0, ge=0, le=65535)
    """UDP port (0: any free port; bootstrap peers need a fixed one)."""
    ttl_s: float = Field(6.0, gt=0, le=MAX_SKEW_S)
    """A record issued longer ago than this is dropped by storing peers and readers: a node
    that stops announcing leaves every route within about this long."""
    announce_s: float = Field(1.5, gt=0)
    """Seconds between a node's announcements (well under `ttl_s`)."""
    refresh_s: float = Field(1.0, gt=0)
    """Seconds between a reader's lookups of the swarm's records."""
    rpc_timeout_s: float = Field(1.0, gt=0)
    """A DHT peer that has not answered after this long counts as gone for that request."""
    ksize: int = Field(20, ge=1, le=64)
    """Kademlia's k: peers that store each key, and bucket size."""
    alpha: int = Field(3, ge=1, le=16)
    """Kademlia's alpha: lookups in flight per step."""
    max_nodes: int = Field(1024, ge=1, le=1024)
    """Most node records (and index entries) one peer stores for the swarm (at most 1024: a
    larger index no longer fits the one datagram that answers a lookup)."""


class NodeConfig(_Config):
    """One node process: which span of which version it serves, where, and its limits."""

    directory: Path
    """Verified checkout holding (at least) the span's shards, config and index."""
    start: int = Field(ge=0)
    """First layer of the span."""
    end: int = Field(gt=0)
    """One past the last layer of the span."""
    version_id: str
    """The version the node serves first."""
    port: int = Field(ge=0, le=65535)
    """Websocket port to listen on."""
    host: str = "127.0.0.1"
    """Address to bind."""
    announce_url: str | None = None
    """Address peers should dial, as announced in the signed record: a ``ws(s)://`` URL, or a
    host (``HOST`` or ``HOST:PORT``) the scheme and port are added to (None: the bind address).
    Needed when `host` is a wildcard such as 0.0.0.0, or behind a relay or port forward."""
    tls: TlsMode = "auto"
    """Transport of the websocket port and of the links this node dials."""
    via: str | None = None
    """``HOST:PORT`` of a NAT relay (serve/nat_relay.py) that peers reach this node through,
    when it cannot accept connections itself: the node offers connections there and announces
    ``wss://HOST:PORT/via/<id>``; TLS is on, end to end."""
    tracker_url: str | None = None
    """Tracker to announce to (None: no announcements)."""
    dht: DhtConfig | None = None
    """Announce into this swarm's DHT as well (None: tracker only)."""
    idle_timeout_s: float = Field(300.0, gt=0)
    """A session unused this long is dropped."""
    memory_budget_bytes: int = Field(2 << 30, gt=0)
    """KV caches beyond this are dropped, least recently used first."""
    max_batch: int = Field(64, ge=1)
    """Most forwards run as one batch."""
    heartbeat_s: float = Field(1.0, gt=0)
    """Seconds between announcements."""
    threads: int | None = Field(None, ge=1)
    """Torch threads (None: torch's default)."""
    watch: ChannelWatch | None = None
    """Follow this registry channel and roll out its new versions (None: serve one version)."""
    gateway_keys: set[str] = Field(default_factory=set)
    """Public keys of the gateways this node works for (empty: any gateway that signs)."""
    max_sessions_per_gateway: int = Field(512, ge=1)
    """Sessions one gateway key may hold here at once."""
    max_frame_bytes: int = Field(64 << 20, ge=1 << 16)
    """Largest websocket frame accepted (a longer prefill is refused before it is read)."""
    max_strikes: int = Field(32, ge=1)
    """Refused frames after which a connection is closed."""
    audit_bytes: int = Field(64 << 20, ge=0)
    """Memory for recent forwards kept so a gateway can spot-check them."""
    attestation_file: Path | None = None
    """An attestation of this node's key and software (a DSSE envelope as JSON,
    serve/attestation.py), announced for gateways' `attested` routing policy."""


class VerifierConfig(_Config):
    """How the gateway checks nodes (docs/proofs.md)."""

    chunks: int = Field(DEFAULT_PROOF_CHUNKS, ge=1, le=256)
    """Chunks opened per proof."""
    deadline_s: float = Field(1.0, gt=0)
    """A proof arriving later than this after the challenge was sent fails."""
    interval_s: float = Field(30.0, gt=0)
    """Mean time between checks of an established node."""
    new_interval_s: float = Field(2.0, gt=0)
    """Mean time between checks during probation."""
    probation: int = Field(5, ge=0)
    """Checks before a node counts as established."""
    fingerprint_every: int = Field(3, ge=0)
    """Every n-th check also sends a canary (0: never)."""
    tolerance: float = Field(1e-4, gt=0)
    """Max relative error of a canary's output. Calibrated (docs/proofs.md): honest nodes measure
    0 to ~1e-6, a bf16-rounded copy of a SmolLM2 span >= 6.5e-4, an int8 one >= 3e-3."""
    log_path: Path | None = None
    """Append every verdict to this JSONL file (None: keep them in memory only)."""
    spot_check_sessions: float = Field(0.02, ge=0, le=1)
    """Fraction of real sessions secretly mirrored on the trusted copy and audited when they end
    (needs the full copy; docs/threat-model.md)."""
    spot_check_forwards: int = Field(32, ge=1)
    """Most forwards audited per mirrored session (chosen at random among its forwards)."""


class DashboardConfig(_Config):
    """What the gateway's dashboard (`/dashboard`, serve/gateway/dashboard/) reads besides the
    gateway itself. Every part is optional: a page says what is missing instead of failing."""

    registry_url: str | None = None
    """Registry tree for the maintainer page (channel history, candidates) and the lineage on
    the contributor page (None: those parts say there is no registry)."""
    trust_dir: Path | None = None
    """Pinned root of the registry client the dashboard reads with."""
    prefect_ui_url: str | None = None
    """A Prefect server's UI (e.g. http://127.0.0.1:4200): the maintainer page lists its last
    flow runs, each linked there (None: runs are listed from the registry's lineage)."""


class BatchConfig(_Config):
    """The Batch API's bounds and how its scheduler fills the swarm (docs/serving.md, Batch)."""

    max_sessions: int = Field(12, ge=1, le=1024)
    """Batch lines running at once while no interactive request runs (node batching turns
    them into micro-batches that keep every stage of the pipeline busy)."""
    busy_sessions: int = Field(1, ge=0, le=1024)
    """Batch lines running at once while interactive requests run (new lines wait below it)."""
    stagger_s: float = Field(0.01, ge=0, le=10)
    """Pause between starting two lines, so sessions enter the pipeline at different stages
    instead of moving in lockstep."""
    max_file_bytes: int = Field(64 * 2**20, gt=0)
    """Largest input file (the gateway's upload bound, `ApiLimits.max_upload_bytes`, applies
    first)."""
    max_owner_bytes: int = Field(2**30, gt=0)
    """Most bytes of files one owner may keep stored (an upload beyond is refused; deleting
    files frees room)."""
    max_lines: int = Field(50_000, gt=0)
    """Most lines one input file may hold."""
    max_attempts: int = Field(3, ge=1, le=100)
    """Tries of a line the swarm could not answer (no route, a failed hop) before it fails."""
    poll_s: float = Field(0.2, gt=0)
    """Longest wait between two looks at the job table."""


class GatewayConfig(_Config):
    """The gateway process: the version it serves, its API, routing, speculation and checks."""

    directory: Path
    """Verified checkout holding config, tokenizer and the shared (non-layer) shards."""
    version_id: str
    """The version served first."""
    model_name: str
    """The model's name in the API (`GET /v1/models`)."""
    tracker_url: str
    """Where nodes are discovered."""
    dht: DhtConfig | None = None
    """Discover nodes through this swarm's DHT instead of the tracker."""
    host: str = "127.0.0.1"
    """Address to bind (HTTP and the return port)."""
    port: int = Field(8000, ge=0, le=65535)
    """HTTP port of the OpenAI-compatible API."""
    return_port: int = Field(0, ge=0, le=65535)
    """Websocket port last hops answer on (0: any free port)."""
    return_url: str | None = None
    """Address last hops dial to answer, as signed into tickets: a ``ws(s)://`` URL or a host
    (``HOST`` or ``HOST:PORT``; e.g. a relay in front of the return port). None: `host`, which
    must then not be a wildcard."""
    tls: TlsMode = "auto"
    """Transport of the return port and of the links to nodes (serve/transport.py)."""
    api_keys: set[str] = Field(default_factory=set)
    """Accepted static bearer keys (empty: open; a trace store's accounts replace them)."""
    timeout_s: float = Field(60.0, gt=0)
    """A traversal that has not answered after this long fails over."""
    wire_dtype: WireDtype = "float32"
    """Dtype of hidden states on the wire."""
    chain: bool = True
    """Chain forwarding (each node passes on to the next); False calls nodes one by one."""
    drafter: str | None = "prompt_lookup"
    """Default drafter for requests that do not choose one (None: no speculation)."""
    draft_model_dir: Path | None = None
    """Verified checkout of a draft model; enables the `draft_model` drafter."""
    verify: bool = True
    """Challenge nodes with live-weight proofs (admission, then at random intervals)."""
    trusted_dir: Path | None = None
    """Verified full checkout for output fingerprints (None: proofs only)."""
    verifier: VerifierConfig = Field(default_factory=VerifierConfig)
    """How nodes are checked."""
    trusted_verdict_keys: set[str] = Field(default_factory=set)
    """Public keys (hex) of other gateways and maintainers whose signed verdicts evict a node
    here as well. The gateway's own key is always trusted; a verdict by any other key only
    makes the verifier check the node again at once."""
    traces_dir: Path | None = None
    """Trace store directory (LanceDB tables + durable log). None: static API keys, no capture."""
    routing_policy: RoutingPolicyConfig = Field(default_factory=RoutingPolicyConfig)
    """Which nodes requests may be routed through: per account, allowlist, attesters
    (serve/policy.py)."""
    watch: ChannelWatch | None = None
    """Follow this channel and roll out its new versions (None: serve `version_id` only)."""
    state_dir: Path | None = None
    """Durable gateway state (batch files, jobs, usage meter) in `gateway.db` here. None: no
    Batch API and no usage meter."""
    batch: BatchConfig = Field(default_factory=BatchConfig)
    """Batch API bounds and scheduling."""
    dashboard: DashboardConfig = Field(default_factory=DashboardConfig)
    """Where the dashboard finds the registry and the Prefect UI."""

    @field_validator("trusted_verdict_keys")
    @classmethod
    def _trusted_verdict_keys(cls, keys: set[str]) -> set[str]:
        return _public_keys(keys)


def defaults(config: type[BaseModel]) -> dict[str, object]:
    """Field name -> default of a config class (what the CLI shows in `--help`)."""
    return {name: f.get_default(call_default_factory=True)
            for name, f in config.model_fields.items() if not f.is_required()}
