"""The maintainer's whole job from the CLI: keys, a registry whose production needs 2 of 2
maintainers, proposals each signs in turn, a staging key that cannot move production, any REF for
promote and rollback, rotation and revocation, and clear errors instead of new keys or bare
'not found's."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from flows.cli import app
from flows.config import ShoalConfig


def ok(*args: str) -> str:
    result = CliRunner().invoke(app, list(args), catch_exceptions=False)
    assert result.exit_code == 0, (args, result.output)
    return result.output


def error(*args: str) -> str:
    result = CliRunner().invoke(app, list(args), catch_exceptions=False)
    assert result.exit_code == 1, (args, result.output)
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    return lines[0]


def version_of(import_output: str) -> str:
    return import_output.split("@", 1)[1].split()[0]


def test_an_empty_home_says_how_to_start(env):
    assert "`shoal registry init`" in error("model", "list")
    assert "`shoal registry init`" in error("model", "show", "production")
    assert "`shoal registry init`" in error("registry", "show")
    assert "shoal keys create" in ok("keys", "list")


def test_k_of_n_promotion_rotation_and_revocation(env, tiny_model_dir, tmp_path):
    from tests.helpers import make_tiny_llama

    ok("keys", "create", "maintainer-root", "maintainer-release", "maintainer-staging", "alice",
       "bob")
    missing = error("registry", "init", "--promote-key", "alice", "--promote-key", "carol")
    assert "`shoal keys create carol`" in missing and not (env / "keys" / "carol.pem").exists()
    ok("registry", "init", "--promote-key", "alice", "--promote-key", "bob",
       "--threshold", "promote=2")
    policy = ok("registry", "show")
    assert "promote   2 of 2: alice, bob" in policy and "staging   1 of 1: maintainer-staging" \
        in policy
    listed = ok("keys", "list").splitlines()
    assert listed[0].split() == ["SIGNING", "KEY", "KEY", "ID", "FILE", "ROLES"]
    assert any(line.startswith("alice") and "promote,snapshot" in line for line in listed)

    v1 = version_of(ok("model", "import", str(tiny_model_dir), "--name", "tiny",
                       "--key", "maintainer-release"))
    no_key = error("promote", "tiny@" + v1[7:19], "--channel", "production", "--key", "dave")
    assert "no signing key 'dave'" in no_key and "`shoal keys create dave`" in no_key
    assert not (env / "keys" / "dave.pem").exists()
    assert "[wrong-role]" in error("promote", v1[7:19], "--channel", "production",
                                   "--key", "maintainer-staging")

    first = ok("promote", "tiny@" + v1[7:19], "--channel", "production", "--key", "alice")
    assert "proposed: 1 of 2 'promote' signatures" in first
    assert "(proposed, awaiting signatures)" in ok("channel", "history", "production")
    cfg = ShoalConfig.from_env()
    assert not cfg.client().has_channel("production")
    ok("promote", v1[7:19], "--channel", "production", "--key", "bob")
    assert cfg.client().channel("production").version == v1

    # any REF: a channel name; staging is signed by the staging key by default
    ok("promote", "production", "--channel", "staging")
    assert cfg.client().channel("staging").version == v1

    # revocation keeps every threshold satisfiable, and a revoked key never signs again
    assert "would have 1 key(s) for threshold 2" in error("registry", "revoke-key", "bob")
    ok("registry", "rotate-root", "--threshold", "promote=1")
    ok("registry", "revoke-key", "bob")
    assert "revoked   bob" in ok("registry", "show")
    assert "[revoked-key]" in error("promote", "staging", "--channel", "production",
                                    "--key", "bob")

    make_tiny_llama(tmp_path / "v2", seed=4)
    v2 = version_of(ok("model", "import", str(tmp_path / "v2"), "--name", "tiny",
                       "--key", "maintainer-release"))
    ok("promote", "tiny@" + v2[7:19], "--channel", "production", "--key", "alice")
    assert cfg.client().channel("production").version == v2
    ok("rollback", "--channel", "production", "--key", "alice")  # to the version before
    record = cfg.client().channel("production")
    assert (record.version, record.sequence) == (v1, 3)
    assert f"rollback to {v1}" in record.note


def test_keys_list_names_accounts_and_shows_ids_that_revoke_accepts(env):
    created = ok("keys", "create", "--role", "contributor", "alice")
    account, key_id = created.split()[1], created.split()[3]
    listed = ok("keys", "list").splitlines()
    header = next(i for i, line in enumerate(listed) if line.startswith("API KEY ID"))
    row = listed[header + 1].split()
    assert row == [key_id, account, "alice", "contributor", "active"]
    assert f"revoked {key_id}" in ok("keys", "revoke", row[0])
    assert ok("keys", "list").splitlines()[header + 1].split()[-1] == "revoked"
    ok("keys", "create", "maintainer-root")
    assert "`shoal registry revoke-key maintainer-root`" in error("keys", "revoke",
                                                                  "maintainer-root")


def test_another_maintainers_public_key_joins_a_role(env):
    from registry.signing import SigningKey

    ok("keys", "create", "maintainer-root", "maintainer-release", "maintainer-staging",
       "maintainer-promote")
    ok("registry", "init")
    carol = SigningKey.generate("carol")  # made on carol's machine; only the public half travels
    assert "public only" in ok("keys", "add", "carol", carol.public_hex)
    assert "not an Ed25519 public key" in error("keys", "add", "dave", "xyz")
    ok("registry", "rotate-root", "--promote-key", "maintainer-promote", "--promote-key", "carol")
    assert "promote   1 of 2: carol, maintainer-promote" in ok("registry", "show")
    assert "carol.pem" not in {p.name for p in (env / "keys").iterdir()}
