"""Node attestations: evidence, checked by the gateway, of what a node runs and which key it holds.

A node may carry an attestation in its signed record (`NodeRecord.attestation`). The `attested`
routing policy (serve/policy.py) admits a node only when an `AttestationVerifier` accepts it. The
interface is one method, `verify(node_public_key, node_version, evidence) -> Attested`, raising
`AttestationRejected` with the check that failed; one verifier per evidence format.

Shipped: `InTotoDsseVerifier`, an in-toto Statement (v1) in a DSSE envelope, signed by an
attestation key the maintainer trusts (`RoutingPolicyConfig.attesters`). The statement's subject
is the node's public key (by SHA-256), so an attestation cannot be replayed by another node; its
predicate (`PREDICATE_TYPE`) carries the software measurement (a SHA-256 the maintainer lists in
`measurements`), the weights version the node was measured serving, and an expiry. DSSE and the
key handling come from `securesystemslib` (the Secure Systems Lab's library behind TUF and in-toto),
not hand-written code: its pre-authentication encoding is what makes the signature cover the
payload type as well as the payload.

Who vouches is the point: the attester is whoever measured the node (the maintainer's own
provisioning, or a service that checked a hardware quote). Hardware formats would be verifiers of
their own, documented in docs/privacy.md and not shipped: AMD SEV-SNP reports (VCEK chain to AMD's
root, the launch measurement, REPORT_DATA binding the node key), Intel TDX quotes (DCAP
collateral, MRTD/RTMRs) and NVIDIA Confidential Computing GPU reports (NRAS or the local verifier).
"""

from __future__ import annotations

import copy
import hashlib
import json
import time
from dataclasses import dataclass
from typing import Any, Protocol

from serve.exceptions import ServeError

PAYLOAD_TYPE = "application/vnd.in-toto+json"
STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE = "https://shoal.dev/attestation/node/v1"
FORMAT = "in-toto-dsse"
MAX_EVIDENCE_BYTES = 16384
"""Largest attestation a node record may carry."""


class AttestationRejected(ServeError):
    """An attestation that does not prove what the policy needs; `check` names what failed."""

    def __init__(self, check: str, message: str) -> None:
        super().__init__(f"{check}: {message}")
        self.check = check


@dataclass(frozen=True)
class Attested:
    """What a verified attestation established."""

    format: str
    attester: str
    """Key id of the attestation key that signed it."""
    software: str
    """The software measurement (SHA-256 hex)."""
    weights: str
    """The weights version the node was measured serving."""
    expires_at: float


class AttestationVerifier(Protocol):
    format: str

    def verify(self, node_public_key: str, node_version: str, evidence: dict[str, Any]
               ) -> Attested: ...


def key_id(public_hex: str) -> str:
    """The id of an Ed25519 attestation key: SHA-256 of its raw public bytes, hex."""
    return hashlib.sha256(bytes.fromhex(public_hex)).hexdigest()


def _sslib_key(public_hex: str):
    from securesystemslib.signer import SSlibKey

    return SSlibKey(key_id(public_hex), "ed25519", "ed25519", {"public": public_hex})


def new_attester() -> tuple[Any, str]:
    """A fresh Ed25519 attestation key: (its securesystemslib signer, its public key hex)."""
    from cryptography.hazmat.primitives.serialization import load_pem_private_key
    from securesystemslib.signer import CryptoSigner

    generated = CryptoSigner.generate_ed25519()
    public = generated.public_key.keyval["public"]
    private = load_pem_private_key(generated.private_bytes, password=None)
    return CryptoSigner(private, _sslib_key(public)), public  # key id: `key_id(public)`


def subject_of(node_public_key: str) -> dict[str, Any]:
    return {"name": f"shoal-node:{node_public_key}",
            "digest": {"sha256": hashlib.sha256(bytes.fromhex(node_public_key)).hexdigest()}}


def make_attestation(signer: Any, node_public_key: str, software: str, weights: str,
                     valid_s: float = 86400.0) -> dict[str, Any]:
    """A DSSE envelope (as a dict) of a node statement, signed by `signer` (a securesystemslib
    `Signer` whose key id is `key_id` of its public key): what an attester hands a node."""
    from securesystemslib.dsse import Envelope

    statement = {"_type": STATEMENT_TYPE, "subject": [subject_of(node_public_key)],
                 "predicateType": PREDICATE_TYPE,
                 "predicate": {"software": {"sha256": software}, "weights": {"version": weights},
                               "expires_at": time.time() + valid_s}}
    envelope = Envelope(json.dumps(statement, sort_keys=True).encode(), PAYLOAD_TYPE, {})
    envelope.sign(signer)
    return {"format": FORMAT, **envelope.to_dict()}


class InTotoDsseVerifier:
    """Verifies `make_attestation` envelopes against trusted attester keys and measurements."""

    format = FORMAT

    def __init__(self, attesters: list[str], measurements: set[str] | None = None) -> None:
        self.keys = [_sslib_key(k) for k in attesters]
        self.measurements = measurements
        """Software measurements accepted (None: any, as long as a trusted key attested it)."""

    def verify(self, node_public_key: str, node_version: str, evidence: dict[str, Any]
               ) -> Attested:
        from securesystemslib.dsse import Envelope

        if not self.keys:
            raise AttestationRejected("attester", "no attestation key is trusted")
        if len(json.dumps(evidence)) > MAX_EVIDENCE_BYTES:
            raise AttestationRejected("size", f"evidence over {MAX_EVIDENCE_BYTES} bytes")
        if evidence.get("format") != FORMAT:
            raise AttestationRejected("format", f"format {evidence.get('format')!r} is not "
                                                f"{FORMAT!r}")
        try:
            # from_dict consumes what it reads: give it a copy, never the node's record
            envelope = Envelope.from_dict(copy.deepcopy(
                {k: v for k, v in evidence.items() if k != "format"}))
        except Exception as exc:  # malformed base64, missing fields
            raise AttestationRejected("envelope", f"malformed DSSE envelope: {exc}") from None
        if envelope.payload_type != PAYLOAD_TYPE:
            raise AttestationRejected("payload-type", f"{envelope.payload_type!r}")
        try:
            signers = envelope.verify(self.keys, 1)
        except Exception as exc:  # securesystemslib's VerificationError
            raise AttestationRejected("signature", f"not signed by a trusted attester: {exc}"
                                      ) from None
        try:
            statement = json.loads(envelope.payload)
            predicate = statement["predicate"]
            software = str(predicate["software"]["sha256"])
            weights = str(predicate["weights"]["version"])
            expires = float(predicate["expires_at"])
            subjects = statement["subject"]
        except (ValueError, KeyError, TypeError) as exc:
            raise AttestationRejected("statement", f"malformed statement: {exc}") from None
        if statement.get("_type") != STATEMENT_TYPE or \
                statement.get("predicateType") != PREDICATE_TYPE:
            raise AttestationRejected("statement", "not a shoal node statement")
        if subject_of(node_public_key) not in subjects:
            raise AttestationRejected("subject", "the statement is about another node's key")
        if expires <= time.time():
            raise AttestationRejected("expired", f"expired {time.time() - expires:.0f} s ago")
        if self.measurements is not None and software not in self.measurements:
            raise AttestationRejected("measurement", f"software {software[:16]}… is not listed")
        if weights != node_version:
            raise AttestationRejected("weights", f"measured serving {weights[:19]}…, announces "
                                                 f"{node_version[:19]}…")
        return Attested(FORMAT, next(iter(signers)), software, weights, expires)
