"""The `shoal` command line: fast help, key handling, genesis setup, one-line errors."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import time

import pytest
from typer.testing import CliRunner

from flows.cli import app
from flows.config import ShoalConfig


def run(*args: str):
    return CliRunner().invoke(app, list(args), catch_exceptions=False)


def test_help_is_fast_and_does_not_import_torch():
    code = ("import sys, time; t = time.perf_counter(); from flows.cli import app\n"
            "try:\n    app(['--help'])\nexcept SystemExit:\n    pass\n"
            "print('loaded', [m for m in sys.modules if m.startswith('flows.cli.')])\n"
            "print('TORCH' if 'torch' in sys.modules else 'NO-TORCH')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "model" in out.stdout and out.stdout.strip().endswith("NO-TORCH")
    assert "loaded []" in out.stdout  # the root's help imports no command module
    shoal = os.path.join(os.path.dirname(sys.executable), "shoal")
    best = min(_timed([shoal, "--help"]) for _ in range(3))
    assert best < 1.0, f"shoal --help took {best:.2f} s"


def _timed(cmd: list[str]) -> float:
    t = time.perf_counter()
    subprocess.run(cmd, capture_output=True, check=True)
    return time.perf_counter() - t


def test_keys_create_list_and_permissions(env):
    result = run("keys", "create", "alice")
    assert result.exit_code == 0, result.output
    pem = env / "keys" / "alice.pem"
    assert stat.S_IMODE(pem.stat().st_mode) == 0o600
    assert "alice" in run("keys", "list").output
    again = run("keys", "create", "alice")
    assert again.exit_code == 1 and "already exists" in again.output


def test_encrypted_key_needs_its_passphrase(env, monkeypatch):
    from registry.exceptions import KeyError_
    from registry.signing import load_key

    monkeypatch.setenv("SHOAL_KEY_PASSPHRASE", "correct horse")
    assert run("keys", "create", "bob").exit_code == 0
    assert b"ENCRYPTED" in (env / "keys" / "bob.pem").read_bytes()
    assert "encrypted" in run("keys", "list").output
    assert load_key(env / "keys", "bob", "correct horse").name == "bob"
    with pytest.raises(KeyError_, match="passphrase|decrypt"):
        load_key(env / "keys", "bob", "wrong")
    with pytest.raises(KeyError_):
        load_key(env / "keys", "bob", None)


def _registry() -> None:
    from flows.genesis import ensure_keys, ensure_registry

    cfg = ShoalConfig.from_env()
    ensure_registry(cfg, ensure_keys(cfg))


def test_import_errors_are_one_clear_line(env, tmp_path):
    _registry()
    result = run("model", "import", str(tmp_path / "missing"))
    assert result.exit_code == 1
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert lines == [f"error: {tmp_path / 'missing'}: no such file or directory"]
    (tmp_path / "junk.gguf").write_bytes(b"GGUF" + os.urandom(4096))
    result = run("model", "import", str(tmp_path / "junk.gguf"))
    assert result.exit_code == 1 and "junk.gguf" in result.output.splitlines()[-1]


def test_import_exit_code_from_the_real_entry_point(env, tmp_path):
    _registry()
    shoal = os.path.join(os.path.dirname(sys.executable), "shoal")
    out = subprocess.run([shoal, "model", "import", str(tmp_path)], capture_output=True,
                         text=True, env={**os.environ, "SHOAL_HOME": str(env)})
    assert out.returncode == 1
    assert out.stderr.strip().splitlines()[-1] == (
        f"error: {tmp_path}: not a model directory (no config.json)")


def test_genesis_setup_is_idempotent_and_promotes(env, tiny_model_dir):
    from flows.genesis import ensure_genesis

    cfg = ShoalConfig.from_env()
    first = ensure_genesis(cfg, say=lambda _: None, source=tiny_model_dir, name="tiny")
    assert first.imported and first.promoted
    second = ensure_genesis(cfg, say=lambda _: None, source=tiny_model_dir, name="tiny")
    assert second == type(first)(first.version_id, imported=False, promoted=False)
    assert cfg.client().channel("production").version == first.version_id
    history = run("channel", "history", "production")
    assert history.exit_code == 0 and "genesis" in history.output
    listed = run("model", "list")
    assert "verified" in listed.output and "tiny" in listed.output
    verified = run("model", "verify", "tiny@production")
    assert verified.exit_code == 0 and verified.output.startswith("OK tiny@")


def test_promote_and_rollback_commands(env, tiny_model_dir, tmp_path):
    from flows.genesis import ensure_genesis
    from tests.helpers import make_tiny_llama

    cfg = ShoalConfig.from_env()
    old = ensure_genesis(cfg, say=lambda _: None, source=tiny_model_dir, name="tiny").version_id
    make_tiny_llama(tmp_path / "v2", seed=3)
    out = run("model", "import", str(tmp_path / "v2"), "--name", "tiny")
    assert out.exit_code == 0 and "unsigned" in out.output
    new = out.output.split("@", 1)[1].split()[0]
    refused = run("promote", new, "--channel", "production", "--key", "maintainer-promote")
    assert refused.exit_code == 1 and "[unsigned]" in refused.output
    assert run("model", "sign", new, "--key", "maintainer-release").exit_code == 0
    assert run("promote", new, "--channel", "production",
               "--key", "maintainer-promote").exit_code == 0
    assert cfg.client().channel("production").version == new
    back = run("rollback", "--channel", "production", "--to", old, "--key", "maintainer-promote")
    assert back.exit_code == 0, back.output
    record = cfg.client().channel("production")
    assert (record.version, record.sequence) == (old, 3)


MODULES = ("registry", "serve", "flow", "traces", "bench")


def test_the_root_lists_every_command_of_every_module_with_its_own_summary():
    import inspect

    from flows.cli import ENTRIES, module_commands

    for module in MODULES:
        commands = module_commands(module)
        assert {n for n, (m, _) in ENTRIES.items() if m == module} == set(commands), module
        for name, command in commands.items():
            assert ENTRIES[name][1] == inspect.cleandoc(command.help).split("\n\n")[0], name


def _command_paths():
    from flows.cli import ENTRIES, load

    for name in ENTRIES:
        yield (name,)
        for sub in getattr(load(name), "commands", {}):
            yield name, sub


def test_every_command_in_the_help_tree_resolves():
    top = run("--help")
    assert top.exit_code == 0
    for path in _command_paths():
        if len(path) == 1:
            assert f" {path[0]} " in top.output, path
        result = run(*path, "--help")
        assert result.exit_code == 0, (path, result.output)
        assert f"Usage: root {' '.join(path)} " in result.output, (path, result.output)


class _NoAccounts:
    """A trace store without accounts (a real one takes seconds to create its tables)."""

    def account(self, account_id: str):
        from traces.exceptions import NotFound

        raise NotFound(f"no account {account_id}")

    def create_grant(self, account, scopes, days):
        raise AssertionError("a grant for an unknown account")


NO_REGISTRY = " (no registry at {home}/registry: create one with `shoal registry init`)"


@pytest.mark.parametrize("args, message", [
    (["model", "show", "nosuchversion"], "'nosuchversion': no channel or version matches"
     + NO_REGISTRY),
    (["up", "--model", "nosuch"], "'nosuch': no channel or version matches" + NO_REGISTRY),
    (["bench", "registry", "--model", "nosuch"], "'nosuch': no channel or version matches"
     + NO_REGISTRY),
    (["bench", "swarm", "--delays", "5,x"], "--delays '5,x': expected comma-separated floats"),
    (["grants", "create", "--contributor", "nosuch", "--scope", "sft"], "no account nosuch"),
    (["flow", "train", "--set", "lr"], "--set 'lr': expected KEY=VALUE"),
    (["flow", "train", "--hold", "regression.accuracy=-1"],
     "--hold 'regression.accuracy=-1': expected METRIC=DELTA with DELTA ≥ 0"),
], ids=["registry", "serve", "bench", "bench-input", "traces", "flow", "flow-gate"])
def test_errors_are_one_line_and_exit_1_in_every_command_module(env, monkeypatch, args, message):
    monkeypatch.setattr(ShoalConfig, "trace_store", lambda self: _NoAccounts())
    result = run(*args)
    assert result.exit_code == 1, result.output
    expected = f"error: {message.format(home=env)}"
    assert [line for line in result.output.splitlines() if line.strip()] == [expected]


def test_gate_options_replace_only_the_tables_they_name():
    from flows.cli.flow import _gate
    from train.gate import GateConfig

    assert _gate("sft", None, None) is None  # the kind's default gate
    default = GateConfig()
    assert _gate("sft", ["loglik.mean=0.5"], None) == {
        "improve": {"loglik.mean": 0.5}, "hold": default.hold, "alpha": default.alpha}
    assert _gate("sft", None, ["regression.accuracy=0.2", "json.accuracy=0"]) == {
        "improve": default.improve, "hold": {"regression.accuracy": 0.2, "json.accuracy": 0.0},
        "alpha": default.alpha}
    assert _gate("distill", None, ["acceptance.rate=0.1"])["improve"] == {"acceptance.rate": 0.02}
