"""A registry read over HTTP from another host: `registry.server` (what `shoal registry serve`
runs) in front of the tree, fsspec's HTTP filesystem behind `Store`, the root pinned from a
fingerprint. The transport is untrusted: a server that alters a byte is caught by the client."""

from __future__ import annotations

import shutil
import threading
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from registry.client import RegistryClient, root_fingerprint
from registry.exceptions import VerificationError
from registry.server import make_server
from registry.storage import Store


@contextmanager
def served(root: Path):
    server = make_server(root, "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_a_node_checks_out_its_span_over_http_pinned_by_fingerprint(tiny_registry, tmp_path):
    reg, version_id = tiny_registry
    fingerprint = root_fingerprint((reg.path / "root" / "1.root.json").read_bytes())
    with served(reg.path) as url:
        client = RegistryClient(Store(url), tmp_path / "trust", fingerprint=fingerprint)
        assert client.versions() == [version_id]  # directory listing over HTTP
        directory, manifest = client.checkout_role(version_id, tmp_path / "models", "span",
                                                   (0, 2))
        assert manifest.num_layers == 4
        assert sorted(p.name for p in directory.iterdir()) == sorted(
            {"manifest.json", *manifest.files_for("span", (0, 2))})
        RegistryClient(Store(str(reg.path)), tmp_path / "local").verify_dir(directory,
                                                                             partial=True)
        assert httpx.get(f"{url}/tmp/").status_code == 404  # uploads in progress: not served


def test_a_wrong_fingerprint_pins_nothing(tiny_registry, tmp_path):
    reg, version_id = tiny_registry
    with served(reg.path) as url:
        client = RegistryClient(Store(url), tmp_path / "trust", fingerprint="00" * 32)
        with pytest.raises(VerificationError) as refused:
            client.manifest(version_id)
        assert refused.value.check == "root-fingerprint"
        assert not (tmp_path / "trust" / "root.json").exists()


def test_a_server_that_alters_a_blob_is_caught(tiny_registry, tmp_path):
    reg, version_id = tiny_registry
    copy = tmp_path / "mirror"
    shutil.copytree(reg.path, copy)
    manifest = RegistryClient(Store(str(reg.path)), tmp_path / "local").manifest(version_id)
    blob = copy / "blobs" / "sha256" / manifest.files["config.json"].sha256
    blob.write_bytes(blob.read_bytes().replace(b"4", b"5", 1))
    fingerprint = root_fingerprint((copy / "root" / "1.root.json").read_bytes())
    with served(copy) as url:
        client = RegistryClient(Store(url), tmp_path / "trust", fingerprint=fingerprint)
        with pytest.raises(VerificationError, match="config.json"):
            client.checkout_role(version_id, tmp_path / "models", "span", (0, 2))


def test_shoal_registry_pin_checks_the_fingerprint_over_http(tiny_registry, tmp_path,
                                                             monkeypatch):
    from typer.testing import CliRunner

    from flows.cli import app

    reg, _ = tiny_registry
    fingerprint = root_fingerprint((reg.path / "root" / "1.root.json").read_bytes())
    with served(reg.path) as url:
        monkeypatch.setenv("SHOAL_HOME", str(tmp_path / "home"))
        monkeypatch.setenv("SHOAL_REGISTRY", url)
        wrong = CliRunner().invoke(app, ["registry", "pin", "ab" * 32])
        assert wrong.exit_code == 1 and "root-fingerprint" in wrong.output
        assert not (tmp_path / "home" / "trust" / "root.json").exists()
        right = CliRunner().invoke(app, ["registry", "pin", fingerprint])
        assert right.exit_code == 0, right.output
        assert (tmp_path / "home" / "trust" / "root.json").read_bytes() == \
            (reg.path / "root" / "1.root.json").read_bytes()
