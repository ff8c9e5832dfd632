"""Routing policies: an in-toto/DSSE attestation verified (and every forgery refused by name),
allowlists, a request that narrows its account's policy, and a route that either meets the
policy or is refused naming it."""

from __future__ import annotations

import asyncio
import base64
import json

import pytest

from registry.signing import SigningKey
from serve.attestation import (AttestationRejected, InTotoDsseVerifier, make_attestation,
                               new_attester)
from serve.discovery import NodeInfo, StaticDiscovery
from serve.exceptions import NoRoute
from serve.gateway.pipeline import Pipeline
from serve.policy import RoutingPolicies, RoutingPolicyConfig
from serve.records import node_id_of

VERSION = "sha256:" + "ab" * 32
SOFTWARE = "cd" * 32


def node(i: int, start: int, end: int, attestation: dict | None = None) -> NodeInfo:
    key = SigningKey.generate(f"n{i}")
    return NodeInfo(node_id=node_id_of(key.public_hex), url=f"ws://127.0.0.1:{9000 + i}",
                    start=start, end=end, version=VERSION, public_key=key.public_hex,
                    attestation=attestation)


def test_attestation_binds_key_software_and_weights():
    attester, public = new_attester()
    rogue, _ = new_attester()
    n = node(0, 0, 4)
    verifier = InTotoDsseVerifier([public], measurements={SOFTWARE})
    good = make_attestation(attester, n.public_key, SOFTWARE, VERSION)
    assert verifier.verify(n.public_key, VERSION, good).software == SOFTWARE
    other = node(1, 0, 4)
    payload = json.loads(base64.b64decode(good["payload"]))
    payload["predicate"]["software"]["sha256"] = "ee" * 32
    tampered = {**good, "payload": base64.b64encode(json.dumps(payload).encode()).decode()}
    cases = {
        "signature": (n.public_key, VERSION, make_attestation(rogue, n.public_key, SOFTWARE,
                                                              VERSION)),
        "subject": (other.public_key, VERSION, good),  # replayed by another node
        "weights": (n.public_key, "sha256:" + "99" * 32, good),
        "measurement": (n.public_key, VERSION, make_attestation(attester, n.public_key,
                                                                "ee" * 32, VERSION)),
        "expired": (n.public_key, VERSION, make_attestation(attester, n.public_key, SOFTWARE,
                                                            VERSION, valid_s=-1)),
        "format": (n.public_key, VERSION, {**good, "format": "sev-snp"}),
        "envelope": (n.public_key, VERSION, {"format": "in-toto-dsse", "payload": 3}),
    }
    for check, (key, version, evidence) in cases.items():
        with pytest.raises(AttestationRejected) as info:
            verifier.verify(key, version, evidence)
        assert info.value.check == check, (check, str(info.value))
    with pytest.raises(AttestationRejected, match="signature"):
        verifier.verify(n.public_key, VERSION, tampered)


def test_request_narrows_its_accounts_policy_never_widens_it():
    p = RoutingPolicies(RoutingPolicyConfig(accounts={"acme": "attested"}))
    assert p.required("acme", "any") == ("attested",)
    assert p.required("acme", None) == ("attested",)
    assert p.required("other", "allowlist") == ("allowlist",)
    assert p.required("other", None) == () and p.filter_for("other", "any") is None
    with pytest.raises(ValueError, match="not one of"):
        p.required("other", "trusted-ish")


def test_routes_only_through_nodes_the_policy_admits():
    attester, public = new_attester()
    a_plain, b_plain = node(0, 0, 2), node(1, 2, 4)
    a_att = node(2, 0, 2)
    a_att.attestation = make_attestation(attester, a_att.public_key, SOFTWARE, VERSION)
    b_att = node(3, 2, 4)
    b_att.attestation = make_attestation(attester, a_att.public_key, SOFTWARE, VERSION)  # stolen
    for n in (a_plain, b_plain):
        n.ms_per_token_layer = 0.0  # the cheapest route, whenever it is allowed
    policies = RoutingPolicies(RoutingPolicyConfig(attesters=[public], measurements={SOFTWARE},
                                                   allowlist={a_att.node_id, b_plain.node_id}))
    pipeline = Pipeline(StaticDiscovery([a_plain, b_plain, a_att, b_att]), 4, VERSION)

    def route(asked: str) -> list[str]:
        hops = asyncio.run(pipeline.route(policies.filter_for(None, asked)))
        return [h.node_id for h in hops]

    assert route("any") == [a_plain.node_id, b_plain.node_id]
    assert route("allowlist") == [a_att.node_id, b_plain.node_id]
    with pytest.raises(NoRoute, match="routing policy 'attested': no live node serves layers 2:4"):
        route("attested")  # b_att's attestation names another node's key
    b_att.attestation = make_attestation(attester, b_att.public_key, SOFTWARE, VERSION)
    assert route("attested") == [a_att.node_id, b_att.node_id]
