"""How a gateway finds nodes: the `NodeInfo` record, the `Discovery` interface (so a DHT can
replace the tracker later), and the checks every reader of signed node records applies.

`Discovery.nodes()` returns the live nodes of the swarm with their spans, versions, addresses,
keys, load, speed and trust status (routing skips evicted ones); `report()` tells the swarm a
verdict about a node.

`TrackerDiscovery` does not trust the tracker (docs/threat-model.md): it verifies every record it
reads (`check_record`: id = hash of key, signature, canonical form, issued within `max_age_s`) and
drops the ones that fail, logging each node and check once. A node's `status` is ``evicted`` only
through a verdict that verifies against the keys this gateway trusts (its own key and
`trusted_verdict_keys`). Any other sign of an eviction (a verdict by another key, a bad or missing
signature, the tracker's bare word) leaves the node ``ok`` and is listed in `NodeInfo.claims`, for
the verifier to check the node again at once. `report()` signs the verdict with the gateway's key.

Torch-free and fastapi-free: the tracker imports `check_record` and `check_verdict` from here.
"""

from __future__ import annotations

import json
import logging
import re
import time
from typing import TYPE_CHECKING, Any, Iterable, Protocol

from pydantic import BaseModel, Field

from serve.exceptions import RecordRejected, VerdictNotPosted
from serve.records import (MAX_SKEW_S, SIGNED_FIELDS, NodeRecord, Verdict, sign_verdict,
                           verify_record, verify_verdict)

if TYPE_CHECKING:
    from registry.signing import SigningKey

log = logging.getLogger("shoal.discovery")

MAX_LISTING_BYTES = 64 << 20
"""A tracker answer larger than this is refused (a lying tracker cannot exhaust memory)."""
MAX_VERDICTS_PER_NODE = 16
"""Verdicts read per node entry; more are ignored."""
_CHECK_NAME = re.compile(r"^[\w.-]{1,64}$")


class NodeInfo(BaseModel):
    """What a node signed about itself, and what discovery adds (trust status, claims, last
    seen)."""

    node_id: str
    url: str
    start: int = Field(ge=0)
    end: int = Field(gt=0)
    version: str
    """The version new sessions get on this node (its channel's head once loaded)."""
    versions: list[str] = []
    """Every version loaded (during a rollout: the old one until its sessions drain)."""
    channel: dict = {}
    """The channel watch: name, whether the last read verified, the error if not."""
    public_key: str
    pid: int | None = None
    """Process id, for local swarms (tests kill nodes by it)."""
    sessions: int = 0
    queue: int = 0
    ms_per_token_layer: float = 1.0
    stats: dict = {}
    attestation: dict | None = None
    """The node's attestation evidence, as signed in its record (checked by serve/policy.py)."""
    issued_at: float = 0.0
    """When the node signed this record (its clock)."""
    signature: str = ""
    """The node's signature over the record (`serve.records`); empty for unsigned sources such
    as `StaticDiscovery`."""
    status: str = "ok"
    """Trust status: ``ok``, or ``evicted`` by a verdict signed by a key this reader trusts."""
    verdict: dict | None = None
    """The trusted signed verdict that set ``evicted`` (with its evidence), if any."""
    claims: list[str] = []
    """Eviction claims this reader could not verify (a verdict by an untrusted key, a bad or
    missing signature, a tracker status without a verdict). They never evict; they are a reason
    to check the node again at once."""
    last_seen: float = 0.0
    """When the tracker last heard from the node (the tracker's clock, as it says)."""

    def serves(self, version: str) -> bool:
        return version == self.version or version in self.versions


def check_record(entry: Any, *, now: float | None = None,
                 max_age_s: float = MAX_SKEW_S) -> NodeRecord:
    """`serve.records.verify_record`, plus: the signed fields are in canonical form (exact types,
    no field left out), so what is relayed is what was checked. Any exception is a
    `RecordRejected` (fail closed)."""
    try:
        if not isinstance(entry, dict):
            raise RecordRejected("schema", "a node record is a JSON object")
        record = verify_record(entry, now=now, max_age_s=max_age_s)
        body = {k: v for k, v in entry.items() if k in SIGNED_FIELDS}
        if record.model_dump(mode="json") != body:
            raise RecordRejected("schema", f"the record of {record.node_id} is not in canonical "
                                 "form (coerced types or missing fields)")
        return record
    except RecordRejected:
        raise
    except Exception as exc:
        raise RecordRejected("schema", f"malformed record ({type(exc).__name__})") from None


def check_verdict(entry: Any, trusted: set[str] | frozenset[str], *,
                  now: float | None = None) -> Verdict:
    """`serve.records.verify_verdict`, plus the canonical-form check of `check_record`. Any
    exception is a `RecordRejected`."""
    try:
        if not isinstance(entry, dict):
            raise RecordRejected("schema", "a verdict is a JSON object")
        verdict = verify_verdict(entry, trusted, now=now)
        if verdict.model_dump(mode="json") != {k: v for k, v in entry.items()
                                               if k != "signature"}:
            raise RecordRejected("schema", "the verdict is not in canonical form")
        return verdict
    except RecordRejected:
        raise
    except Exception as exc:
        raise RecordRejected("schema", f"malformed verdict ({type(exc).__name__})") from None


def split_reason(check: str, detail: str) -> tuple[str, str]:
    """(check, detail) of a `report` call. The older form passes one reason such as
    ``proof failed [merkle]: …`` as `check`: the bracketed name becomes the check and the whole
    reason the detail."""
    if detail or _CHECK_NAME.match(check):
        return check, detail
    named = re.search(r"\[([\w.-]{1,64})\]", check)
    return (named.group(1) if named else "unspecified"), check


class Discovery(Protocol):
    async def nodes(self) -> list[NodeInfo]: ...

    async def report(self, node_id: str, status: str, check: str, detail: str = "",
                     evidence: dict | None = None) -> None:
        """Tell the swarm that `node_id` failed `check` (a short name such as ``merkle``), with
        `detail` and `evidence`. `report(node_id, status, reason)` with one free-text reason
        still works (`split_reason`)."""
        ...


class RecordFilter:
    """What every reader of relayed node records does with a batch of them: verify each
    (`check_record`), keep the newest per node, and log each refused node and check once.

    A relayed record older than one already read from that node is a rollback (an old address,
    an old version): it is refused, and the node keeps the newer record already read for as
    long as that one is fresh. So a relay that rolls records back gains nothing, and neither it
    nor a node whose clock stepped back makes the node vanish from routes."""

    def __init__(self, source: str, max_age_s: float = MAX_SKEW_S) -> None:
        self.source, self.max_age_s = source, max_age_s
        self._newest: dict[str, tuple[NodeRecord, dict[str, Any]]] = {}
        """node id -> the newest (record, entry) read: an older record of it is a rollback."""
        self._logged: set[tuple[str, str]] = set()

    def select(self, entries: Iterable[Any], now: float
               ) -> list[tuple[NodeRecord, dict[str, Any]]]:
        """(record, entry as relayed) of each node whose newest entry verifies."""
        best: dict[str, tuple[NodeRecord, dict[str, Any]]] = {}
        for entry in entries:
            try:
                record = check_record(entry, now=now, max_age_s=self.max_age_s)
            except RecordRejected as exc:
                node_id = entry.get("node_id") if isinstance(entry, dict) else None
                self._log_once(str(node_id)[:64], exc)
                continue
            held = self._newest.get(record.node_id)
            if held is not None and record.issued_at < held[0].issued_at:
                self._log_once(record.node_id, RecordRejected(
                    "replay", f"{self.source} relays an older record than one already read; "
                    "the newer one is kept"))
                record, entry = held
            held = best.get(record.node_id)
            if held is None or record.issued_at > held[0].issued_at:
                best[record.node_id] = (record, entry)
        self._newest = {k: v for k, v in self._newest.items()
                        if v[0].issued_at >= now - self.max_age_s}
        self._newest.update(best)
        return [(r, e) for r, e in best.values() if r.issued_at >= now - self.max_age_s]

    def _log_once(self, node_id: str, exc: RecordRejected) -> None:
        if (node_id, exc.check) in self._logged:
            return
        if len(self._logged) > 4096:  # bounded; a flood of ids only restarts the log
            self._logged.clear()
        self._logged.add((node_id, exc.check))
        # an older copy is routine where records are replicated (a DHT peer not yet updated)
        level = logging.DEBUG if exc.check == "replay" else logging.WARNING
        log.log(level, "dropping the record of node %r from %s: %s", node_id, self.source, exc)


class TrackerDiscovery:
    """Discovery through a tracker's HTTP API, verifying everything the tracker says."""

    def __init__(self, url: str, *, key: SigningKey | None = None,
                 trusted_verdict_keys: Iterable[str] = (), max_age_s: float = MAX_SKEW_S,
                 timeout_s: float = 5.0) -> None:
        """`key` signs this gateway's verdicts (without one, `report` raises); verdicts by `key`
        and by `trusted_verdict_keys` evict; records issued more than `max_age_s` ago (the
        liveness window) are dropped."""
        import httpx

        self.url = url.rstrip("/")
        self.key = key
        self.trusted = frozenset(k.lower() for k in trusted_verdict_keys) | (
            {key.public_hex} if key is not None else set())
        self.max_age_s = max_age_s
        self._http = httpx.AsyncClient(timeout=timeout_s)
        self._records = RecordFilter(self.url, max_age_s)

    async def nodes(self) -> list[NodeInfo]:
        entries = await self._listing()
        now = time.time()
        return [self._node(record, entry, now)
                for record, entry in self._records.select(entries, now)]

    async def _listing(self) -> list:
        async with self._http.stream("GET", f"{self.url}/nodes") as response:
            response.raise_for_status()
            data = bytearray()
            async for chunk in response.aiter_bytes():
                data += chunk
                if len(data) > MAX_LISTING_BYTES:
                    raise RecordRejected("size", f"the tracker's listing exceeds "
                                         f"{MAX_LISTING_BYTES} bytes")
        try:
            entries = json.loads(data)
        except (ValueError, RecursionError):
            raise RecordRejected("json", "the tracker's listing is not JSON") from None
        if not isinstance(entries, list):
            raise RecordRejected("schema", "the tracker's listing is not a list")
        return entries

    def _node(self, record: NodeRecord, entry: dict[str, Any], now: float) -> NodeInfo:
        return weigh_verdicts(record, entry, self.trusted, now)

    async def report(self, node_id: str, status: str, check: str, detail: str = "",
                     evidence: dict | None = None) -> None:
        """Sign a verdict with this gateway's key and post it to the tracker; raises
        `VerdictNotPosted` without a key or when the tracker refuses it."""
        if self.key is None:
            raise VerdictNotPosted(f"no signing key to sign the verdict on {node_id}")
        check, detail = split_reason(check, detail)
        signed = sign_verdict(self.key, node_id, status, check, detail, evidence)
        response = await self._http.post(f"{self.url}/nodes/{node_id}/status", json=signed)
        if response.status_code >= 300:
            raise VerdictNotPosted(f"the tracker refused the verdict on {node_id}: "
                                   f"{response.status_code} {response.text[:300]}")

    async def aclose(self) -> None:
        await self._http.aclose()


def weigh_verdicts(record: NodeRecord, entry: dict[str, Any], trusted: frozenset[str],
                   now: float) -> NodeInfo:
    """The `NodeInfo` of a verified record, with the verdicts relayed beside it weighed: one
    signed by a `trusted` key evicts, any other is a claim (and so is a relay's bare status)."""
    status, verdict, claims = "ok", None, []
    posted = entry.get("verdicts")
    if not isinstance(posted, list):
        posted = [entry.get("verdict")] if entry.get("verdict") is not None else []
    for v in posted[:MAX_VERDICTS_PER_NODE]:
        try:
            checked = check_verdict(v, trusted, now=now)
            if checked.node_id != record.node_id:
                raise RecordRejected("node-mismatch", f"about {checked.node_id}")
            status, verdict = "evicted", v
        except RecordRejected as exc:
            claims.append(_claim(v, exc))
    if status == "ok" and entry.get("status") not in (None, "ok") and not claims:
        claims.append(f"the tracker says {str(entry.get('status'))[:32]!r} without a "
                      "signed verdict")
    last_seen = entry.get("last_seen")
    return NodeInfo(**record.model_dump(), signature=entry["signature"], status=status,
                    verdict=verdict, claims=claims,
                    last_seen=float(last_seen) if isinstance(last_seen, (int, float)) and
                    not isinstance(last_seen, bool) else 0.0)


def _claim(v: Any, exc: RecordRejected) -> str:
    """One line describing an eviction claim that did not verify."""
    if not isinstance(v, dict):
        return f"a malformed verdict ({exc.check})"
    by = str(v.get("by", "?"))[:16]
    return (f"{str(v.get('status', '?'))[:16]} [{str(v.get('check', '?'))[:64]}] by {by}…: "
            f"not trusted here ({exc.check})")


class StaticDiscovery:
    """A fixed node list (tests and single-machine setups without a tracker)."""

    def __init__(self, nodes: list[NodeInfo]) -> None:
        self._nodes = nodes

    async def nodes(self) -> list[NodeInfo]:
        return list(self._nodes)

    async def report(self, node_id: str, status: str, check: str, detail: str = "",
                     evidence: dict | None = None) -> None:
        for n in self._nodes:
            if n.node_id == node_id:
                n.status = status
