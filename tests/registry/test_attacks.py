"""Each attack on the registry, refused with the check that catches it.

Every test here would pass the attack through if its check were removed: they assert the specific
`VerificationError.check`, not just "some error".
"""

from __future__ import annotations

import json
import shutil

import pytest

from registry.exceptions import VerificationError
from registry.policy import expires_in, iso, utcnow
from registry.publish import (import_model, make_policy, promote, rotate_root, sign_all,
                              sign_version)
from registry.signing import Envelope
from tests.conftest import make_registry


def manifest_rel(version_id: str) -> str:
    return f"versions/{version_id.removeprefix('sha256:')}/manifest.json"


def read_env(store, rel: str) -> Envelope:
    return Envelope.model_validate_json(store.read(rel))


def write_env(store, rel: str, env: Envelope) -> None:
    store.write(rel, json.dumps(env.model_dump(mode="json")).encode())


@pytest.fixture
def published(registry, tiny_model_dir):
    """The tiny model imported unsigned into a fresh registry."""
    result = import_model(registry.store, tiny_model_dir, name="tiny")
    return registry, result.version_id


def check_of(excinfo) -> str:
    return excinfo.value.check


# manifests ---------------------------------------------------------------------------------------

def test_signed_manifest_is_accepted(published):
    reg, vid = published
    sign_version(reg.store, vid, reg.keys["release"])
    assert reg.client().manifest(vid).name == "tiny"


def test_tampered_manifest_byte_refused(published):
    reg, vid = published
    sign_version(reg.store, vid, reg.keys["release"])
    env = read_env(reg.store, manifest_rel(vid))
    env.signed["num_layers"] = 3
    write_env(reg.store, manifest_rel(vid), env)
    with pytest.raises(VerificationError) as exc:
        reg.client().manifest(vid)
    assert check_of(exc) == "manifest-digest"


def test_tampered_manifest_with_matching_id_fails_signature(published):
    reg, vid = published
    sign_version(reg.store, vid, reg.keys["release"])
    env = read_env(reg.store, manifest_rel(vid))
    env.signed["num_layers"] = 3  # the attacker also asks for the new id; the signature breaks
    with pytest.raises(VerificationError) as exc:
        reg.client().check_manifest(env)
    assert check_of(exc) == "bad-signature"


def test_unsigned_manifest_refused(published):
    reg, vid = published
    with pytest.raises(VerificationError) as exc:
        reg.client().manifest(vid)
    assert check_of(exc) == "unsigned"


def test_signature_by_key_outside_policy_refused(published):
    reg, vid = published
    sign_version(reg.store, vid, reg.keys["outsider"])
    with pytest.raises(VerificationError) as exc:
        reg.client().manifest(vid)
    assert check_of(exc) == "unknown-key"


def test_signature_by_revoked_key_refused(published):
    reg, vid = published
    sign_version(reg.store, vid, reg.keys["release"])
    client = reg.client()
    assert client.manifest(vid)  # trusted before the revocation
    k = reg.keys
    v2 = make_policy(version=2, registry="test-registry", roles={
        "root": ([k["root"], k["root2"]], 1), "release": ([k["release"], k["release2"]], 1),
        "promote": ([k["promote"], k["promote2"]], 1)}, revoked=[k["release"].keyid])
    rotate_root(reg.store, v2, [k["root"]])
    with pytest.raises(VerificationError) as exc:
        reg.client().manifest(vid)
    assert check_of(exc) == "revoked-key"


# tensors and files -------------------------------------------------------------------------------

@pytest.fixture
def signed_checkout(published, tmp_path):
    reg, vid = published
    sign_version(reg.store, vid, reg.keys["release"])
    client = reg.client()
    out = tmp_path / "checkout"
    client.checkout(vid, out)
    client.verify_dir(out)
    return reg, vid, client, out


def test_tampered_tensor_chunk_in_store_refused(signed_checkout, tmp_path):
    reg, vid, client, _ = signed_checkout
    entry = client.manifest(vid).files["model-layer-001.safetensors"]
    blob = reg.path / reg.store.blob_path(entry.sha256)
    data = bytearray(blob.read_bytes())
    data[-10] ^= 0x01
    blob.write_bytes(bytes(data))
    with pytest.raises(VerificationError) as exc:
        client.checkout(vid, tmp_path / "again")
    assert check_of(exc) == "file-hash"


def test_tampered_tensor_chunk_in_checkout_refused(signed_checkout):
    _, vid, client, out = signed_checkout
    shard = out / "model-layer-002.safetensors"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0x80
    shard.write_bytes(bytes(data))
    with pytest.raises(VerificationError) as exc:
        client.verify_dir(out)
    assert check_of(exc) == "file-hash"


def test_tampered_chunk_fails_its_merkle_proof(signed_checkout):
    from registry.client import chunk_path, verify_chunk

    _, vid, client, out = signed_checkout
    manifest = client.manifest(vid)
    name = "model.layers.1.mlp.down_proj.weight"
    entry = manifest.tensors[name]
    with open(out / entry.file, "rb") as fh:
        fh.seek(entry.offset)
        chunk = fh.read(min(manifest.chunk_size, entry.nbytes))
    path = chunk_path(out, manifest, name, 0)
    assert verify_chunk(manifest, name, 0, chunk, path)
    assert not verify_chunk(manifest, name, 0, chunk[:-1] + bytes([chunk[-1] ^ 1]), path)
    assert not verify_chunk(manifest, "model.layers.2.mlp.down_proj.weight", 0, chunk, path)


def test_renamed_shard_refused(signed_checkout):
    _, _, client, out = signed_checkout
    (out / "model-layer-001.safetensors").rename(out / "model-layer-009.safetensors")
    with pytest.raises(VerificationError) as exc:
        client.verify_dir(out)
    assert check_of(exc) == "extra-file"


def test_missing_shard_refused(signed_checkout):
    _, _, client, out = signed_checkout
    (out / "model-layer-003.safetensors").unlink()
    with pytest.raises(VerificationError) as exc:
        client.verify_dir(out)
    assert check_of(exc) == "missing-file"


def test_extra_shard_refused(signed_checkout):
    _, _, client, out = signed_checkout
    shutil.copyfile(out / "model-layer-000.safetensors", out / "model-layer-004.safetensors")
    with pytest.raises(VerificationError) as exc:
        client.verify_dir(out)
    assert check_of(exc) == "extra-file"


def test_missing_blob_in_store_refused(signed_checkout, tmp_path):
    reg, vid, client, _ = signed_checkout
    entry = client.manifest(vid).files["model-layer-000.safetensors"]
    (reg.path / reg.store.blob_path(entry.sha256)).unlink()
    with pytest.raises(VerificationError) as exc:
        client.checkout(vid, tmp_path / "again")
    assert check_of(exc) == "missing-file"


# promotion and channels --------------------------------------------------------------------------

@pytest.fixture
def signed(published):
    reg, vid = published
    sign_version(reg.store, vid, reg.keys["release"])
    return reg, vid


def test_promotion_signed_with_release_key_refused(signed):
    reg, vid = signed
    with pytest.raises(VerificationError) as exc:
        promote(reg.store, vid, "production", [reg.keys["release"]])
    assert check_of(exc) == "wrong-role"
    assert not reg.store.exists("channels/production/head.json")


def forge_record(reg, vid, *, sequence, keys, expires=None, channel="production",
                 registry="test-registry", prev=None) -> Envelope:
    from registry.channels import ChannelRecord

    rec = ChannelRecord(registry=registry, channel=channel, version=vid, sequence=sequence,
                        expires=expires or expires_in(1), prev=prev, promoted_at=iso(utcnow()))
    return sign_all(Envelope(signed=rec.model_dump(mode="json")), keys)


def test_wrong_role_record_refused_by_client(signed):
    reg, vid = signed
    promote(reg.store, vid, "production", [reg.keys["promote"]])
    write_env(reg.store, "channels/production/head.json",
              forge_record(reg, vid, sequence=1, keys=[reg.keys["release"]]))
    with pytest.raises(VerificationError) as exc:
        reg.client().channel("production")
    assert check_of(exc) == "wrong-role"


def test_below_threshold_promotion_refused(tmp_path, tiny_model_dir):
    reg = make_registry(tmp_path, thresholds={"promote": 2})
    vid = import_model(reg.store, tiny_model_dir, name="tiny",
                       release_keys=[reg.keys["release"]]).version_id
    with pytest.raises(VerificationError) as exc:
        promote(reg.store, vid, "production", [reg.keys["promote"]])
    assert check_of(exc) == "threshold"
    record = promote(reg.store, vid, "production", [reg.keys["promote"], reg.keys["promote2"]])
    assert reg.client().channel("production").sequence == record.sequence == 1
    # a one-signature record slipped into the store directly is refused by clients too
    write_env(reg.store, "channels/production/head.json",
              forge_record(reg, vid, sequence=1, keys=[reg.keys["promote"]]))
    with pytest.raises(VerificationError) as exc:
        reg.client().channel("production")
    assert check_of(exc) == "threshold"


def two_promotions(reg, vid):
    promote(reg.store, vid, "production", [reg.keys["promote"]])
    old_head = reg.store.read("channels/production/head.json")
    old_snapshot = reg.store.read("snapshot.json")
    promote(reg.store, vid, "production", [reg.keys["promote"]], note="second")
    return old_head, old_snapshot


def test_channel_rollback_refused(signed):
    reg, vid = signed
    old_head, _ = two_promotions(reg, vid)
    client = reg.client()
    assert client.channel("production").sequence == 2
    reg.store.write("channels/production/head.json", old_head)
    with pytest.raises(VerificationError) as exc:
        client.channel("production")
    assert check_of(exc) == "channel-rollback"


def test_snapshot_rollback_refused(signed):
    reg, vid = signed
    old_head, old_snapshot = two_promotions(reg, vid)
    client = reg.client()
    client.channel("production")
    reg.store.write("channels/production/head.json", old_head)
    reg.store.write("snapshot.json", old_snapshot)
    with pytest.raises(VerificationError) as exc:
        client.channel("production")
    assert check_of(exc) == "snapshot-rollback"


def test_expired_channel_record_refused(signed):
    reg, vid = signed
    promote(reg.store, vid, "production", [reg.keys["promote"]])
    stale = forge_record(reg, vid, sequence=1, keys=[reg.keys["promote"]],
                         expires=iso(utcnow().replace(year=utcnow().year - 1)))
    write_env(reg.store, "channels/production/head.json", stale)
    with pytest.raises(VerificationError) as exc:
        reg.client().channel("production")
    assert check_of(exc) == "channel-expired"


def test_expired_snapshot_refused(signed):
    reg, vid = signed
    promote(reg.store, vid, "production", [reg.keys["promote"]], days=-1)
    with pytest.raises(VerificationError) as exc:
        reg.client().channel("production")
    assert check_of(exc) == "snapshot-expired"


def test_record_from_older_snapshot_refused(signed):
    reg, vid = signed
    old_head, _ = two_promotions(reg, vid)
    reg.store.write("channels/production/head.json", old_head)  # a fresh client: nothing seen yet
    with pytest.raises(VerificationError) as exc:
        reg.client().channel("production")
    assert check_of(exc) == "mix-and-match"


def test_record_from_another_registry_refused(signed, tmp_path, tiny_model_dir):
    reg, vid = signed
    promote(reg.store, vid, "production", [reg.keys["promote"]])
    other = make_registry(tmp_path / "other")
    # the other registry uses the same promote key (a maintainer of both) but another identity
    forged = forge_record(other, vid, sequence=1, keys=[reg.keys["promote"]],
                          registry="another-registry")
    write_env(reg.store, "channels/production/head.json", forged)
    with pytest.raises(VerificationError) as exc:
        reg.client().channel("production")
    assert check_of(exc) == "mix-and-match"


def test_history_is_append_only_chain(signed):
    reg, vid = signed
    two_promotions(reg, vid)
    history = reg.client().history("production")
    assert [r.sequence for r in history] == [1, 2] and history[1].note == "second"
    with pytest.raises(VerificationError) as exc:
        reg.store.write_new("channels/production/0000000001.json", b"{}")
    assert check_of(exc) == "append-only"
    forged = forge_record(reg, vid, sequence=2, keys=[reg.keys["promote"]], prev="0" * 64)
    write_env(reg.store, "channels/production/0000000002.json", forged)
    with pytest.raises(VerificationError) as exc:
        reg.client().history("production")
    assert check_of(exc) == "history-chain"


def test_legitimate_rollback_is_a_higher_record(signed, tiny_model_dir, tmp_path):
    from tests.helpers import make_tiny_llama

    reg, old = signed
    make_tiny_llama(tmp_path / "v2", seed=1)
    new = import_model(reg.store, tmp_path / "v2", name="tiny",
                       release_keys=[reg.keys["release"]]).version_id
    client = reg.client()
    promote(reg.store, old, "production", [reg.keys["promote"]])
    promote(reg.store, new, "production", [reg.keys["promote"]])
    assert client.channel("production").version == new
    promote(reg.store, old, "production", [reg.keys["promote"]], note="rollback")
    record = client.channel("production")
    assert (record.version, record.sequence) == (old, 3)


# root rotation -----------------------------------------------------------------------------------

def policy_v(reg, version, root_keys):
    k = reg.keys
    return make_policy(version=version, registry="test-registry", roles={
        "root": (root_keys, 1), "release": ([k["release"]], 1), "promote": ([k["promote"]], 1)})


def test_rotation_needs_old_and_new_root_keys(registry):
    k = registry.keys
    new_root = k["outsider"]
    with pytest.raises(VerificationError) as exc:  # only the new key: refused by the old root
        rotate_root(registry.store, policy_v(registry, 2, [new_root]), [new_root])
    assert "old root keys" in str(exc.value)
    with pytest.raises(VerificationError) as exc:  # only the old key: refused by the new root
        rotate_root(registry.store, policy_v(registry, 2, [new_root]), [k["root"]])
    assert "new root keys" in str(exc.value)
    rotate_root(registry.store, policy_v(registry, 2, [new_root]), [k["root"], new_root])
    assert registry.client().policy().version == 2


def test_rotation_that_skips_a_version_refused(registry):
    k = registry.keys
    v3 = sign_all(Envelope(signed=policy_v(registry, 3, [k["root"]]).model_dump(mode="json")),
                  [k["root"]])
    write_env(registry.store, "root/2.root.json", v3)  # served where v2 should be
    with pytest.raises(VerificationError) as exc:
        registry.client().policy()
    assert check_of(exc) == "root-version"
