"""A registry in an S3-compatible object store (`SHOAL_REGISTRY=s3://bucket/prefix`, the `s3`
extra: s3fs behind fsspec): published there by the maintainer's tools, read by a node that pins
its root by fingerprint and checks out its span, every byte verified. The store is moto's
S3-compatible server on 127.0.0.1 (the wire protocol of S3, MinIO and the like); a tampered
object is caught like a tampered file."""

from __future__ import annotations

import os

import pytest

from registry.client import RegistryClient, root_fingerprint
from registry.exceptions import VerificationError
from registry.storage import Store
from serve.up import free_port
from tests.conftest import make_registry

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def bucket():
    """An S3-compatible endpoint with one bucket; the AWS_* variables botocore reads point at it
    (an operator sets the same ones for MinIO or any S3 service)."""
    import boto3
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    saved = {k: os.environ.get(k) for k in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID",
                                            "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")}
    os.environ.update(AWS_ENDPOINT_URL=f"http://127.0.0.1:{port}", AWS_ACCESS_KEY_ID="shoal",
                      AWS_SECRET_ACCESS_KEY="shoal-secret", AWS_DEFAULT_REGION="us-east-1")
    boto3.client("s3").create_bucket(Bucket="weights")
    try:
        yield "s3://weights"
    finally:
        server.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def test_a_registry_published_to_s3_is_checked_out_verified(bucket, tiny_model_dir, tmp_path):
    import boto3

    from registry.publish import import_model

    url = f"{bucket}/registry"
    reg = make_registry(tmp_path / "maintainer", url=url)
    version_id = import_model(reg.store, tiny_model_dir, name="tiny",
                              release_keys=[reg.keys["release"]]).version_id
    store = Store(url)
    fingerprint = root_fingerprint(store.read("root/1.root.json"))
    client = RegistryClient(store, tmp_path / "trust", fingerprint=fingerprint)
    assert client.versions() == [version_id]
    directory, manifest = client.checkout_role(version_id, tmp_path / "models", "span", (0, 2))
    assert sorted(p.name for p in directory.iterdir()) == sorted(
        {"manifest.json", *manifest.files_for("span", (0, 2))})
    # an object rewritten in the bucket (by whoever runs the store) is caught
    s3 = boto3.client("s3")
    key = f"registry/blobs/sha256/{manifest.files['config.json'].sha256}"
    body = s3.get_object(Bucket="weights", Key=key)["Body"].read()
    s3.put_object(Bucket="weights", Key=key, Body=body.replace(b"4", b"5", 1))
    fresh = RegistryClient(Store(url), tmp_path / "trust2", fingerprint=fingerprint)
    with pytest.raises(VerificationError, match="config.json"):
        fresh.checkout_role(version_id, tmp_path / "models2", "span", (0, 2))
    # and a network registry is never pinned on first use
    with pytest.raises(VerificationError, match="root-unpinned"):
        RegistryClient(Store(url), tmp_path / "trust3").manifest(version_id)
