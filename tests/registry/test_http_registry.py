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
        (reg.path / "tmp").mkdir(exist_ok=True)
        (reg.path / "tmp" / "upload").write_bytes(b"half")
        (reg.path / "root" / ".secret").write_bytes(b"dot file")
        for path in ("/tmp/", "/tmp/upload", "//tmp/upload", "/root/../tmp/upload",
                     "/%74mp/upload", "/root/.secret", "/root/%2esecret"):
            # uploads in progress and dot files: not served, however the path is spelt
            assert httpx.get(f"{url}{path}").status_code == 404, path
        assert httpx.get(f"{url}/root/1.root.json").status_code == 200


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


def test_a_server_that_changes_its_answer_cannot_slip_in_its_own_root(tiny_registry, tmp_path):
    """The fingerprint is checked on the bytes that are pinned: a server that shows the genuine
    first root once and its own next gets refused, and nothing is pinned."""
    import http.server
    import threading

    from tests.conftest import make_registry

    reg, version_id = tiny_registry
    genuine = (reg.path / "root" / "1.root.json").read_bytes()
    forged = (make_registry(tmp_path / "attacker").path / "root" / "1.root.json").read_bytes()
    assert forged != genuine
    answers = iter([genuine] + [forged] * 10)

    class Flipping(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = next(answers) if self.path.endswith("root/1.root.json") else None
            self.send_response(200 if body else 404)
            self.send_header("Content-Length", str(len(body or b"")))
            self.end_headers()
            self.wfile.write(body or b"")

        do_HEAD = do_GET

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Flipping)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        client = RegistryClient(Store(f"http://127.0.0.1:{server.server_port}"),
                                tmp_path / "trust", fingerprint=root_fingerprint(genuine))
        try:
            client.policy()
        except Exception:
            pass  # whatever else fails, the forged root must not be pinned
        pinned = tmp_path / "trust" / "root.json"
        assert not pinned.exists() or pinned.read_bytes() == genuine
    finally:
        server.shutdown()


def test_a_network_registry_is_not_pinned_on_first_use(tiny_registry, tmp_path):
    reg, version_id = tiny_registry
    with served(reg.path) as url:
        with pytest.raises(VerificationError, match="root-unpinned"):
            RegistryClient(Store(url), tmp_path / "trust").manifest(version_id)
        assert not (tmp_path / "trust" / "root.json").exists()


def test_a_fingerprint_given_later_is_checked_against_the_pin(tiny_registry, tmp_path):
    """A trust directory pinned to one registry does not pass a fingerprint check for another."""
    from tests.conftest import make_registry

    reg, version_id = tiny_registry
    RegistryClient(Store(str(reg.path)), tmp_path / "trust").manifest(version_id)  # local: pinned
    other = make_registry(tmp_path / "other").path
    theirs = root_fingerprint((other / "root" / "1.root.json").read_bytes())
    with pytest.raises(VerificationError, match="root-fingerprint"):  # the store matches; the pin not
        RegistryClient(Store(str(other)), tmp_path / "trust", fingerprint=theirs).policy()
    good = root_fingerprint((reg.path / "root" / "1.root.json").read_bytes())
    RegistryClient(Store(str(reg.path)), tmp_path / "trust", fingerprint=good).policy()


def test_an_invite_carries_the_fingerprint_joiners_pin(tiny_registry, tmp_path, monkeypatch):
    """`shoal swarm invite` in the maintainer's home names its registry's fingerprint; a node
    joining with that invite pins the registry it reads over HTTP only if it matches, with no
    `--root-fingerprint` of its own."""
    from typer.testing import CliRunner

    from flows.cli import app
    from serve.invite import decode_invite

    reg, _ = tiny_registry
    fingerprint = root_fingerprint((reg.path / "root" / "1.root.json").read_bytes())
    monkeypatch.setenv("SHOAL_HOME", str(tmp_path / "maintainer"))
    monkeypatch.setenv("SHOAL_REGISTRY", str(reg.path))
    made = CliRunner().invoke(app, ["swarm", "invite", "--name", "s", "--peer", "127.0.0.1:9"])
    assert made.exit_code == 0, made.output
    invite = decode_invite(made.stdout.strip().splitlines()[0])
    assert invite.registry == fingerprint
    bare = CliRunner().invoke(app, ["swarm", "invite", "--root-fingerprint", "none"])
    assert decode_invite(bare.stdout.strip().splitlines()[0]).registry is None
    bad = CliRunner().invoke(app, ["swarm", "invite", "--root-fingerprint", "XYZ"])
    assert bad.exit_code != 0 and "64 lowercase hex" in bad.output
    forged = invite.model_copy(update={"registry": "ab" * 32}).encode()
    with served(reg.path) as url:
        monkeypatch.setenv("SHOAL_HOME", str(tmp_path / "joiner"))
        monkeypatch.setenv("SHOAL_REGISTRY", url)
        refused = CliRunner().invoke(app, ["node", "--join", forged, "--model", "tiny@production",
                                           "--layers", "0:2", "--port", "1"])
        assert refused.exit_code != 0 and "root-fingerprint" in str(refused.output) + str(
            refused.exception), refused.output
        assert not (tmp_path / "joiner" / "trust" / "root.json").exists()
        from flows.cli.serve import _dht, _pin_root

        _pin_root(_dht([invite.encode()], 0).invite.registry)  # what `shoal node --join` does
        assert (tmp_path / "joiner" / "trust" / "root.json").read_bytes() == \
            (reg.path / "root" / "1.root.json").read_bytes()
